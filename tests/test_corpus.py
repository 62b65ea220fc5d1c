import gzip
import json

import pytest

from domainlm.config import CorpusConfig
from domainlm.corpus import curate, iter_corpus_texts
from domainlm.corpus.filters import drop_reason, normalize_text
from domainlm.corpus.readers import InputError, read_jsonl


def test_normalize_text():
    assert normalize_text("ﬁne\u00a0 text\x07 here\r\n\r\n\r\n\nnext") == "fine text here\n\nnext"
    assert normalize_text("Å", "NFC") == "\u00c5"
    assert normalize_text("  \t ") == ""


def test_drop_reasons():
    config = CorpusConfig(sources=[{"format": "python-docs"}], min_words=3)
    assert drop_reason("", config) == "empty"
    assert drop_reason("two words", config) == "too_short"
    assert drop_reason("three whole words", config) is None


def test_every_document_is_accounted_for(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("one two three four five\n\nshort\none two three four five\nsix seven eight nine ten\n")
    jsonl = tmp_path / "b.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        for text in ("alpha beta gamma delta epsilon", "", "alpha beta gamma delta epsilon", "zeta eta theta iota kappa"):
            handle.write(json.dumps({"body": text}) + "\n")
    config = CorpusConfig(sources=[{"path": str(txt)}, {"path": str(jsonl), "text_field": "body"}],
                          min_words=3, heldout_fraction=0.0)
    stats = curate(config, tmp_path / "out")
    assert stats["read"] == 9
    assert stats["kept"] == 4
    assert stats["dropped"] == {"empty": 2, "too_short": 1, "duplicate": 2}
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())
    assert sorted(iter_corpus_texts(tmp_path / "out")) == sorted([
        "one two three four five", "six seven eight nine ten",
        "alpha beta gamma delta epsilon", "zeta eta theta iota kappa"])
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 4


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_jsonl(str(path), "text"))
    path.write_text('{"body": "no text field"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: expected an object with a string field 'text'"):
        list(read_jsonl(str(path), "text"))


def test_invalid_utf8_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "bytes.txt"
    path.write_bytes(b"valid words here and more\ninvalid \xff\xfe bytes in this line\n")
    config = CorpusConfig(sources=[{"path": str(path)}], min_words=3, heldout_fraction=0.0)
    stats = curate(config, tmp_path / "out")
    assert stats["kept"] == 2
    assert any("\ufffd" in t for t in iter_corpus_texts(tmp_path / "out"))

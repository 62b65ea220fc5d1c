import gzip
import json
import pickle
import random

import pytest
import zstandard

from domainlm.config import SourceConfig
from domainlm.corpus.readers import Unit, detect_format, plan_units, read_unit
from domainlm.errors import InputError
from domainlm.io import iter_jsonl


def read_source(path, unit_bytes=2**30, **fields):
    source = SourceConfig(path=str(path), **fields)
    return [record for unit in plan_units([source], unit_bytes) for record in read_unit(unit, source)]


def ids_and_texts(records):
    return [(r["id"], r.get("text", r.get("skip"))) for r in records]


LINES = ["first line", "", "third line"]
JSON_LINES = "".join(json.dumps({"text": t, "other": 1}) + "\n" for t in LINES)


@pytest.mark.parametrize("name, opener", [
    ("a.txt", open), ("a.txt.gz", gzip.open), ("a.txt.zst", zstandard.open),
    ("a.jsonl", open), ("a.jsonl.gz", gzip.open), ("a.jsonl.zst", zstandard.open), ("a.json", open),
])
def test_line_formats(tmp_path, name, opener):
    path = tmp_path / name
    with opener(path, "wb") as handle:
        handle.write(("\n".join(LINES) + "\n" if ".txt" in name else JSON_LINES).encode())
    records = read_source(path)
    # A blank line (txt) or blank text (JSON) is a document with empty text: every line counts.
    assert ids_and_texts(records) == [(f"{name}:{i}", t) for i, t in enumerate(LINES, start=1)]
    assert all(r["source"] == name and r["invalid_bytes"] == 0 for r in records)


def test_json_list(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"text": "one"}, {"body": "x"}, 3, {"text": "four"}], indent=2))
    records = read_source(path)
    assert ids_and_texts(records) == [("list.json[0]", "one"), ("list.json[1]", "missing_text"),
                                      ("list.json[2]", "not_an_object"), ("list.json[3]", "four")]
    path.write_text('[{"text": "one"},\n {"text": oops}]')
    assert ids_and_texts(read_source(path)) == [("list.json:2", "invalid_json")]


def test_parquet_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    table = pa.table({"id": [1, 2, 3], "body": ["alpha", None, "gamma"]})
    pq.write_table(table, path, row_group_size=2)
    source = SourceConfig(path=str(path), text_field="body")
    units = plan_units([source], 2**30)
    assert [u.row_group for u in units] == [0, 1]
    records = [r for u in units for r in read_unit(u, source)]
    assert ids_and_texts(records) == [("p.parquet:0:0", "alpha"), ("p.parquet:0:1", "missing_text"),
                                      ("p.parquet:1:0", "gamma")]
    with pytest.raises(InputError, match=r"p.parquet: no column 'text' \(columns: id, body\)"):
        read_source(path)


def test_csv_quoted_multiline_and_large_field(tmp_path):
    path = tmp_path / "c.csv"
    big = "word " * 100_000  # over csv's default 128 KiB field limit
    path.write_text(f'id,text\n1,"line one\nline two, with comma"\n\n2,{big}\n3\n')
    records = read_source(path)
    assert ids_and_texts(records) == [("c.csv:0", "line one\nline two, with comma"), ("c.csv:1", big),
                                      ("c.csv:2", "invalid_csv")]
    assert records[2]["detail"].startswith("c.csv:6: 1 field, but the header has 2 (id, text)")
    with pytest.raises(InputError, match=r"c.csv: no column 'body' \(header: \['id', 'text'\]\)"):
        read_source(path, text_field="body")


def csv_skips(records):
    return [(r["id"], r["detail"]) for r in records if r.get("skip") == "invalid_csv"]


def test_csv_rows_with_another_field_count_are_counted_skips(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text('id,text,year\n'
                    '1,"A quoted text, with commas, stays whole",2001\n'
                    '2,An unquoted comma, cuts this text short,2002\n'
                    '3,"spans\ntwo lines, and keeps them",2003\n'
                    '\n'
                    '4,a lost field\n'
                    '5,extra fields at the end,2005,,\n'
                    '6,last,2006\n')
    records = read_source(path)
    assert ids_and_texts(records) == [
        ("notes.csv:0", "A quoted text, with commas, stays whole"), ("notes.csv:1", "invalid_csv"),
        ("notes.csv:2", "spans\ntwo lines, and keeps them"), ("notes.csv:3", "invalid_csv"),
        ("notes.csv:4", "invalid_csv"), ("notes.csv:5", "last")]  # ids: data rows, skipped ones numbered too
    assert csv_skips(records) == [
        ("notes.csv:1", "notes.csv:3: 4 fields, but the header has 3 (id, text, year); an unquoted comma in a "
                        "text? put such a field in double quotes"),
        ("notes.csv:3", "notes.csv:7: 2 fields, but the header has 3 (id, text, year); a missing field, or a "
                        "line break in an unquoted field?"),
        ("notes.csv:4", "notes.csv:8: 5 fields, but the header has 3 (id, text, year); an unquoted comma in a "
                        "text? put such a field in double quotes")]


def test_a_one_column_csv_with_an_unquoted_comma_skips_that_row(tmp_path):
    path = tmp_path / "one.csv.gz"  # compressed, CRLF line ends and a byte-order mark: same lines
    with gzip.open(path, "wb") as handle:
        handle.write(b'\xef\xbb\xbftext\r\nfirst document\r\nsecond, cut at the comma\r\n"third, quoted"\r\n')
    records = read_source(path)
    assert ids_and_texts(records) == [("one.csv.gz:0", "first document"), ("one.csv.gz:1", "invalid_csv"),
                                      ("one.csv.gz:2", "third, quoted")]
    assert records[1]["detail"].startswith("one.csv.gz:3: 2 fields, but the header has 1 (text)")


def test_csv_broken_quoting_is_a_skip_not_a_changed_or_merged_document(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('id,text\n'
                    '1,"closing quote" then more text\n'
                    '2,"a ""doubled"" quote is fine"\n'
                    '3,a "quote" inside an unquoted field is text\n'
                    '4,"opened on line 5\n'
                    '5,and never closed\n'
                    '6,so these rows are not documents\n')
    records = read_source(path)
    assert ids_and_texts(records) == [
        ("q.csv:0", "invalid_csv"), ("q.csv:1", 'a "doubled" quote is fine'),
        ("q.csv:2", 'a "quote" inside an unquoted field is text'), ("q.csv:3", "invalid_csv")]
    assert records[0]["detail"].startswith("q.csv:2: not readable as CSV (',' expected after '\"'")
    assert records[3]["detail"] == ("q.csv:5-7: not readable as CSV: a quoted field that opens on line 5 never "
                                    "closes (the rest of the file would be one field)")


def test_txt_files_folder(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (folder / name).write_text(f"text of {name}\nsecond line")
    (folder / "notes.md").write_text("not read")
    assert detect_format(str(folder)) == "txt-files"
    source = SourceConfig(path=str(folder))
    units = plan_units([source], unit_bytes=30)  # each file is ~25 bytes: two per unit
    assert [u.files for u in units] == [("a.txt", "b.txt"), ("sub/c.txt",)]
    records = [r for u in units for r in read_unit(u, source)]
    assert ids_and_texts(records) == [(f"docs/{n}", f"text of {n}\nsecond line")
                                      for n in ("a.txt", "b.txt", "sub/c.txt")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .txt files"):
        plan_units([SourceConfig(path=str(tmp_path / "empty"))], 2**20)


def test_hf_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": ["one", "two"], "label": [0, 1]})
    data.save_to_disk(str(tmp_path / "ds"))
    assert detect_format(str(tmp_path / "ds")) == "hf-disk"
    assert ids_and_texts(read_source(tmp_path / "ds")) == [("ds:0", "one"), ("ds:1", "two")]
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "dd"))
    assert detect_format(str(tmp_path / "dd")) == "hf-disk"
    assert [r["id"] for r in read_source(tmp_path / "dd", split="test")] == ["dd/test:0", "dd/test:1"]
    with pytest.raises(InputError, match=r"no split 'dev' \(splits: train, test\)"):
        read_source(tmp_path / "dd", split="dev")
    with pytest.raises(InputError, match=r"no column 'body' \(columns: text, label\)"):
        read_source(tmp_path / "ds", text_field="body")


def test_hf_disk_saved_with_zero_rows_reads_as_no_documents(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": ["one", "two", "three"]})
    empty = data.filter(lambda row: False).flatten_indices()  # saved with no data file at all
    empty.save_to_disk(str(tmp_path / "empty"))
    assert read_source(tmp_path / "empty") == []
    datasets.DatasetDict({"train": data, "test": empty}).save_to_disk(str(tmp_path / "dd"))
    assert read_source(tmp_path / "dd", split="test") == []
    assert [r["id"] for r in read_source(tmp_path / "dd", split="train")] == ["dd/train:0", "dd/train:1", "dd/train:2"]
    with pytest.raises(InputError, match=r"empty: no column 'body' \(columns: text\)"):  # its columns are kept
        read_source(tmp_path / "empty", text_field="body")


def test_hf_disk_shards_read_in_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"document {i}" for i in range(10)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "sharded"), num_shards=3)
    assert ids_and_texts(read_source(tmp_path / "sharded")) == [(f"sharded:{i}", t) for i, t in enumerate(texts)]
    empty = datasets.Dataset.from_dict({"text": texts}).filter(lambda row: False)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts}), "test": empty}).save_to_disk(
        str(tmp_path / "dd"), num_shards={"train": 3, "test": 2})
    assert [r["text"] for r in read_source(tmp_path / "dd", split="train")] == texts
    assert read_source(tmp_path / "dd", split="test") == []


def test_hf_disk_that_datasets_cannot_load_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": [f"document {i}" for i in range(4)]})
    data.save_to_disk(str(tmp_path / "missing"), num_shards=2)
    (tmp_path / "missing" / "data-00001-of-00002.arrow").unlink()  # an incomplete copy
    with pytest.raises(InputError, match=r"missing: `datasets` cannot load this saved dataset \(FileNotFoundError: "
                                         r".*data-00001-of-00002.arrow.*\); an incomplete copy\?"):
        read_source(tmp_path / "missing")
    data.save_to_disk(str(tmp_path / "cut"))
    with open(tmp_path / "cut" / "data-00000-of-00001.arrow", "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(InputError, match=r"cut: `datasets` cannot load this saved dataset"):
        read_source(tmp_path / "cut", format="hf-disk")
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "dd"))
    monkeypatch.setattr(datasets.Dataset, "load_from_disk", lambda *args, **kwargs: [][0])  # as datasets 2-4 fail
    with pytest.raises(InputError, match=r"dd \(split 'train'\): `datasets` cannot load this saved dataset "
                                         r"\(IndexError: list index out of range\)"):
        read_source(tmp_path / "dd", split="train")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"plain: not a dataset saved with save_to_disk \(no dataset_info.json"):
        read_source(tmp_path / "plain", format="hf-disk")


def test_hf_hub_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = SourceConfig(path="some/dataset", format="hf-hub")
    with pytest.raises(InputError, match="needs a network.*save_to_disk.*hf-disk"):
        [r for u in plan_units([source], 2**20) for r in read_unit(u, source)]


def test_byte_range_units_read_every_line_once(tmp_path):
    rng = random.Random(0)
    lines = [rng.choice(["", "x", "short line", "é" * rng.randint(1, 300), "word " * rng.randint(1, 50)])
             for _ in range(400)]
    for suffix, content in (("txt", lines), ("jsonl", [json.dumps({"text": t}) for t in lines])):
        path = tmp_path / f"r.{suffix}"
        path.write_bytes(("\r\n".join(content[:50]) + "\r\n" + "\n".join(content[50:]) + "\n").encode())
        size = path.stat().st_size
        source = SourceConfig(path=str(path))
        whole = list(read_unit(Unit(0, str(path)), source))
        assert len(whole) == 400 and [r["id"] for r in whole][-1] == f"r.{suffix}:400"
        data = path.read_bytes()
        edges = [data.index(b"\n") + 1, data.index(b"\r\n") + 1]  # a line start; between \r and \n
        for _ in range(20):  # random split points, line numbers counted by each unit
            cuts = sorted({0, size, *edges, *(rng.randrange(size) for _ in range(rng.randint(1, 12)))})
            units = [Unit(0, str(path), start, end) for start, end in zip(cuts, cuts[1:], strict=False)]
            assert [r for u in units for r in read_unit(u, source)] == whole
        planned = plan_units([source], unit_bytes=1024)  # line-aligned, line numbers from planning
        assert len(planned) > 5 and all(u.newlines_before is not None for u in planned)
        assert [r for u in planned for r in read_unit(u, source)] == whole
        assert [u.key for u in planned[:2]] == ["s0-u00000", "s0-u00001"]


def test_units_pickle_and_compressed_files_are_one_unit(tmp_path):
    path = tmp_path / "big.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("some words\n" * 5000)
    units = plan_units([SourceConfig(path=str(tmp_path / "big.txt.gz"))], unit_bytes=1024)
    assert len(units) == 1
    assert pickle.loads(pickle.dumps(units[0])) == units[0]


def test_invalid_utf8_counted_and_replaced(tmp_path):
    path = tmp_path / "bytes.txt"
    path.write_bytes(b"fine\ninvalid \xff\xfe here\ngenuine \xef\xbf\xbd and \xff\n")
    records = read_source(path)
    assert [(r["text"], r["invalid_bytes"]) for r in records] == [
        ("fine", 0), ("invalid \ufffd\ufffd here", 2), ("genuine \ufffd and \ufffd", 1)]
    jsonl = tmp_path / "bytes.jsonl"
    jsonl.write_bytes(b'{"text": "bad \xff byte", "x": "\xfe"}\n{"text": "lone \\ud800 escape"}\n')
    assert [(r["text"], r["invalid_bytes"]) for r in read_source(jsonl)] == [
        ("bad \ufffd byte", 1), ("lone \ufffd escape", 1)]
    csv_path = tmp_path / "bytes.csv"
    csv_path.write_bytes(b"text\nbad \xff byte\n")
    assert [(r["text"], r["invalid_bytes"]) for r in read_source(csv_path)] == [("bad \ufffd byte", 1)]


def test_huge_single_line(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_bytes(b"w" * 50_000_000 + b"\nafter\n")
    units = plan_units([SourceConfig(path=str(path))], unit_bytes=2**20)
    assert len(units) == 2  # the first range is stretched to the end of the long line
    records = [r for u in units for r in read_unit(u, SourceConfig(path=str(path)))]
    assert [(r["id"], len(r["text"])) for r in records] == [("huge.txt:1", 50_000_000), ("huge.txt:2", 5)]


def test_malformed_json_lines_are_skips(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n[1, 2]\n\n{"body": "x"}\n{"text": null}\n{"text": 5}\n'
                    + "[" * 100_000 + "\n")
    records = read_source(path)
    assert ids_and_texts(records) == [
        ("bad.jsonl:1", "ok"), ("bad.jsonl:2", "invalid_json"), ("bad.jsonl:3", "not_an_object"),
        ("bad.jsonl:5", "missing_text"), ("bad.jsonl:6", "missing_text"), ("bad.jsonl:7", "missing_text"),
        ("bad.jsonl:8", "invalid_json")]
    assert [r["detail"].split("(")[1] for r in records[3:6]] == ["not found)", "found null)", "found int)"]
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):  # the strict reader of task files
        list(iter_jsonl(path))


def test_detect_format():
    assert [detect_format(p) for p in ("a.parquet", "a.csv.gz", "a.json.zst", "a.JSONL", "a.md", "a.txt.gz")] == [
        "parquet", "csv", "jsonl", "jsonl", "txt", "txt"]

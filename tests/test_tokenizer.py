import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import synthetic_texts
from domainlm.config import TokenizerConfig
from domainlm.tokenizer import save_for_transformers, train_wordpiece, vocabulary_fit


def test_fit_by_hand():
    vocab = {"[UNK]": 0, "gene": 1, "kin": 2, "##ase": 3, "the": 4}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fit = vocabulary_fit(tokenizer, ["the kinase gene", "the gene"])
    # 5 words -> the(1) kin ##ase(2) gene(1) the(1) gene(1) = 6 pieces; 1 of 5 words split
    assert fit["words"] == 5
    assert fit["fertility"] == 6 / 5
    assert fit["split_share"] == 1 / 5
    assert fit["most_split"] == ["kinase"]


def test_fit_counts_every_word_even_past_a_saved_truncation():
    tokenizer = train_wordpiece(synthetic_texts(200), TokenizerConfig(vocab_size=150, min_frequency=1))
    tokenizer.enable_truncation(max_length=4)
    fit = vocabulary_fit(tokenizer, ["protein kinase binds receptor " * 10])
    assert fit["words"] == 40 and fit["fertility"] >= 1.0


def test_trained_tokenizer_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_wordpiece(synthetic_texts(200), TokenizerConfig(vocab_size=150, min_frequency=1))
    save_for_transformers(tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    encoded = loaded("Protein kinase binds")
    assert encoded["input_ids"][0] == loaded.cls_token_id and encoded["input_ids"][-1] == loaded.sep_token_id
    assert loaded.mask_token == "[MASK]" and loaded.pad_token_id == 0
    assert loaded.decode(encoded["input_ids"], skip_special_tokens=True) == "protein kinase binds"


# ------------------------------------------------ what a model sees = what its vocabulary was trained on
def corpus_tokenizer(lines: list[str], tmp_path, lowercase: bool, form: str = "NFKC"):
    """A domain tokenizer trained as the stages do (corpus-normalised text), saved for transformers."""
    from domainlm.corpus.filters import normalize_text

    texts = [normalize_text(line, form) for line in lines]
    tokenizer = train_wordpiece(texts, TokenizerConfig(vocab_size=400, min_frequency=1, lowercase=lowercase), form)
    save_for_transformers(tokenizer, tmp_path / "tokenizer", model_max_length=128)
    return tokenizer, tmp_path / "tokenizer"


# Case 05: compatibility characters the corpus stage folds with NFKC (micro sign, superscript, ligature).
SKEWED = ["the dose was 33 µg per m² daily and ﬁbrosis of the liver was graded today.",
          "plasma level of 61 µg per litre and lung ﬁbrosis progressed slowly today.",
          "body surface area 98 m² measured and patients with ﬁbrosis received 4 µg today."] * 20
# Case 06: upper-case gene names in a cased corpus.
GENES = ["EGFR strongly regulates the cohort and NF-kB binds cell growth in sample 992.",
         "BRCA1 in vivo phosphorylates cell growth and PD-L1 modulates inflammation in sample 924.",
         "TP53 rapidly inhibits the receptor and KRAS regulates gene transcription in sample 574."] * 20


def test_raw_text_gets_the_ids_of_its_corpus_normalised_form(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from domainlm.corpus.filters import normalize_text

    tokenizer, folder = corpus_tokenizer(SKEWED, tmp_path, lowercase=False)
    raw = "the dose was 33 µg per m² daily and ﬁbrosis of the liver"
    expected = tokenizer.encode(normalize_text(raw)).ids
    assert tokenizer.encode(raw).ids == expected
    assert tokenizer.token_to_id("[UNK]") not in expected  # was 3 [UNK] (µg, m², ﬁbrosis)
    assert "μg" in tokenizer.encode(raw).tokens and "fibrosis" in tokenizer.encode(raw).tokens
    for loader in (AutoTokenizer, PreTrainedTokenizerFast):  # the loaders that read tokenizer.json's normaliser
        assert loader.from_pretrained(folder)(raw)["input_ids"] == expected, loader.__name__


def slow_bert_loader():
    """transformers' slow BERT tokenizer (vocab.txt): BertTokenizerLegacy in v5, BertTokenizer before."""
    import transformers

    return getattr(transformers, "BertTokenizerLegacy", None) or transformers.models.bert.BertTokenizer


@pytest.mark.parametrize("lowercase", [False, True])
def test_every_transformers_loader_gives_our_ids(lowercase, tmp_path):
    import transformers

    tokenizer, folder = corpus_tokenizer(GENES + SKEWED, tmp_path, lowercase=lowercase)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    assert settings["do_lower_case"] is lowercase and settings["strip_accents"] is lowercase
    assert settings["tokenize_chinese_chars"] is True and (folder / "vocab.txt").exists()
    # NFKC-normal text: what every loader can reproduce (BERT classes rebuild a normaliser without a Unicode form).
    texts = ["EGFR binds BRCA1 and NF-kB in sample 12.", "Café \u03bcg-free TP53, fibrosis \u4e2d\u6587 KRAS"]
    loaders = [transformers.AutoTokenizer, transformers.BertTokenizer, transformers.BertTokenizerFast,
               transformers.PreTrainedTokenizerFast, slow_bert_loader()]
    for text in texts:
        expected = tokenizer.encode(text).ids
        for loader in loaders:
            assert loader.from_pretrained(folder)(text)["input_ids"] == expected, (loader.__name__, text)
    if not lowercase:  # case 06: was e ##g ##f ##r with BertTokenizer(Fast)
        assert transformers.BertTokenizerFast.from_pretrained(folder).tokenize("EGFR binds") == ["EGFR", "binds"]


def test_tokenizer_fingerprint_includes_the_corpus_normalisation(tmp_path):
    from domainlm.config import RunConfig
    from domainlm.tokenizer import settings

    (tmp_path / "c.txt").write_text("a b c\n")
    config = {"name": "t", "run_dir": str(tmp_path / "run"), "corpus": {"sources": [{"path": str(tmp_path / "c.txt")}]}}
    nfkc = settings(RunConfig(**config))
    config["corpus"]["normalization"] = "NFC"
    assert nfkc["normalization"] == "NFKC" and settings(RunConfig(**config)) != nfkc


# ------------------------------------------------------------------------------ reproducibility
TRAIN_IN_A_FRESH_PROCESS = """
import sys
sys.path.insert(0, {tests!r})
from conftest import synthetic_texts
from domainlm.config import TokenizerConfig
from domainlm.tokenizer import train_wordpiece
train_wordpiece(synthetic_texts(300), TokenizerConfig(vocab_size=150, min_frequency=1)).save(sys.argv[1])
"""


def test_training_twice_in_fresh_processes_gives_a_byte_identical_tokenizer(tmp_path):
    # Unpinned, `tokenizers` numbered the ## pieces in hash-map order: here 3 processes gave 3 vocabularies.
    script = TRAIN_IN_A_FRESH_PROCESS.format(tests=str(Path(__file__).parent))
    for name in ("first.json", "second.json"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()


def test_reserved_continuation_pieces_stay_ordinary_entries():
    tokenizer = train_wordpiece(synthetic_texts(300), TokenizerConfig(vocab_size=150, min_frequency=1))
    data = json.loads(tokenizer.to_str())
    assert [t["content"] for t in data["added_tokens"]] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "##e" in tokenizer.get_vocab()
    assert "##e" not in tokenizer.encode("protein ##e").tokens  # typed text is never matched as a special token
    assert tokenizer.decode(tokenizer.encode("enzyme inhibitor").ids) == "enzyme inhibitor"


def test_training_refuses_a_one_shot_iterator():
    with pytest.raises(TypeError, match="re-iterable"):
        train_wordpiece(iter(synthetic_texts(10)), TokenizerConfig(vocab_size=150, min_frequency=1))

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import synthetic_texts
from domainlm.config import TokenizerConfig
from domainlm.tokenizer import SUBWORD_MODELS, save_for_transformers, train_wordpiece, vocabulary_fit


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
    from domainlm.corpus.normalize import normalize_text

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

    from domainlm.corpus.normalize import normalize_text

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


@pytest.mark.slow  # trains in two fresh Python processes
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


# ------------------------------------------------- every sub-word model: WordPiece, byte-level BPE, Unigram
ACCENTS = ["Café naïve T-cells and the Zürich cohort showed ﬁbrosis of 5 µg per m² in vivo.",
           "The naïve receptor binds EGFR; café-au-lait spots (NF-kB) grew in 12 patients."] * 20
PROBES = ["Protein kinase binds", "EGFR binds BRCA1 and NF-kB in sample 12.",
          "Café naïve T-cells, ﬁbrosis of 5 µg per m²", "naïve  T-cells\tbind\n\nthe ZÜRICH receptor 中文 ☃"]


def trained(model: str, lowercase: bool, tmp_path, lines=None):
    """A `model` tokenizer trained by the stage's function on corpus-normalised text, and its saved folder."""
    from domainlm.corpus.normalize import normalize_text
    from domainlm.tokenizer import train_tokenizer

    texts = [normalize_text(line) for line in (lines or GENES + SKEWED + ACCENTS)]
    tokenizer = train_tokenizer(texts, TokenizerConfig(model=model, vocab_size=400, min_frequency=1,
                                                       lowercase=lowercase))
    save_for_transformers(tokenizer, tmp_path / model, model_max_length=128)
    return tokenizer, tmp_path / model


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("model", ["wordpiece", "bpe", "unigram"])
def test_every_model_round_trips_through_auto_tokenizer_with_identical_ids(model, lowercase, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer, folder = trained(model, lowercase, tmp_path)
    for loader in (AutoTokenizer, PreTrainedTokenizerFast):
        loaded = loader.from_pretrained(folder)
        for text in PROBES:  # raw text: casing, accents, NFKC compatibility characters, odd whitespace
            assert loaded(text)["input_ids"] == tokenizer.encode(text).ids, (loader.__name__, text)
        for first, second in zip(PROBES, PROBES[1:], strict=False):
            assert loaded(first, second)["input_ids"] == tokenizer.encode(first, second).ids, (first, second)
    family = SUBWORD_MODELS[model].specials
    for role, token in family.items():  # the post-processor's tokens are the loader's, with the same ids
        assert getattr(loaded, f"{role}_token") == token
        assert getattr(loaded, f"{role}_token_id") == tokenizer.token_to_id(token)
    ids = loaded(PROBES[0])["input_ids"]
    assert (ids[0], ids[-1]) == (loaded.cls_token_id, loaded.sep_token_id)
    assert loaded.decode(ids, skip_special_tokens=True).strip() == (PROBES[0].lower() if lowercase else PROBES[0])
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast" and settings["do_lower_case"] is lowercase


def test_byte_level_and_unigram_vocabularies_use_roberta_special_tokens_and_ids():
    from domainlm.tokenizer import train_tokenizer

    for model in ("bpe", "unigram"):
        tokenizer = train_tokenizer(synthetic_texts(200), TokenizerConfig(model=model, vocab_size=300, min_frequency=1))
        assert [tokenizer.id_to_token(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        assert tokenizer.encode("kinase", "gene").tokens[:1] == ["<s>"]
        pair = tokenizer.encode("kinase", "gene").tokens
        assert pair.count("</s>") == 3 and pair[-1] == "</s>"  # <s> A </s> </s> B </s>, as RoBERTa
    bpe = train_tokenizer(synthetic_texts(200), TokenizerConfig(model="bpe", vocab_size=300, min_frequency=1))
    assert bpe.token_to_id("<unk>") not in bpe.encode("Zürich 中文 ☃").ids  # every byte is a symbol


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_class_specific_loaders_of_a_cased_vocabulary_give_our_ids(model, tmp_path):
    # RobertaTokenizer rebuilds byte-level BPE from add_prefix_space; XLM-R's class reads a Unigram with
    # our special tokens and ids. Neither lower-cases nor applies a Unicode form: NFKC-normal cased text.
    import transformers

    tokenizer, folder = trained(model, False, tmp_path)
    loader = transformers.RobertaTokenizer if model == "bpe" else transformers.XLMRobertaTokenizer
    for text in ["EGFR binds BRCA1 and NF-kB in sample 12.", "Café naïve T-cells, fibrosis of 5 μg"]:
        assert loader.from_pretrained(folder)(text)["input_ids"] == tokenizer.encode(text).ids, text


@pytest.mark.slow  # trains in fresh Python processes
@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_other_models_train_to_a_byte_identical_tokenizer_in_fresh_processes(model, tmp_path):
    # Unigram's scores were summed, and its re-added characters numbered, in hash-map order.
    script = TRAIN_IN_A_FRESH_PROCESS.format(tests=str(Path(__file__).parent)).replace(
        "train_wordpiece", "train_tokenizer").replace("min_frequency=1)", f"min_frequency=1, model={model!r})")
    for name in ("first.json", "second.json"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()


def test_the_fingerprint_of_a_wordpiece_run_is_the_one_from_before_bpe_and_unigram(tmp_path):
    from domainlm.config import RunConfig
    from domainlm.tokenizer import settings

    (tmp_path / "c.txt").write_text("a b c\n")
    config = {"name": "t", "run_dir": str(tmp_path / "run"), "corpus": {"sources": [{"path": str(tmp_path / "c.txt")}]}}
    recorded = settings(RunConfig(**config))["tokenizer"]
    assert recorded["kind"] == "wordpiece" and "model" not in recorded  # the key it had: old runs stay fresh
    assert settings(RunConfig(**config | {"tokenizer": {"model": "bpe"}}))["tokenizer"]["kind"] == "bpe"


# ------------------------------------------------ issue 20: a vocabulary of another size than requested
def _many_characters(count: int) -> list[str]:
    """Words over an alphabet of Greek, Cyrillic and Latin letters (about 150 characters)."""
    import random

    letters = [chr(c) for c in [*range(0x3B1, 0x3CA), *range(0x430, 0x450), *range(0xE0, 0x100), *range(0x61, 0x7B)]]
    letters += [chr(c) for c in range(0x4E00, 0x4E00 + 60)]  # and 60 CJK characters
    rng = random.Random(0)
    return [" ".join("".join(rng.choice(letters) for _ in range(5)) for _ in range(12)) for _ in range(count)]


def test_a_vocabulary_larger_than_requested_says_its_alphabet_and_the_fix():
    from domainlm.tokenizer import train_tokenizer, vocabulary_size_note

    texts = _many_characters(300)
    config = TokenizerConfig(vocab_size=128, min_frequency=1)
    tokenizer = train_wordpiece(texts, config)
    normalised = [tokenizer.normalizer.normalize_str(text) for text in texts]  # accents stripped, CJK spaced
    characters = len({char for text in normalised for char in text if not char.isspace()})
    continuations = sum(token.startswith("##") and len(token) == 3 for token in tokenizer.get_vocab())
    size = tokenizer.get_vocab_size()
    assert size == characters + continuations + 5 > 128  # the alphabet alone: no merges at all
    assert vocabulary_size_note(tokenizer, config) == (
        f"tokenizer: the trained vocabulary has {size} entries, not tokenizer.vocab_size 128: every wordpiece "
        f"vocabulary keeps its alphabet ({characters} characters, {continuations} '##' continuations and 5 special "
        f"tokens: {size} entries), which leaves 0 of the 128 for pieces of words (0 learned: common words stay "
        f"split into characters); raise tokenizer.vocab_size well above {size}")
    bpe = TokenizerConfig(model="bpe", vocab_size=128, min_frequency=1)
    assert vocabulary_size_note(train_tokenizer(synthetic_texts(50), bpe), bpe).endswith(
        "every bpe vocabulary keeps its alphabet (256 byte symbols and 5 special tokens: 261 entries), which leaves "
        "0 of the 128 for pieces of words (0 learned: common words stay split into characters); raise "
        "tokenizer.vocab_size well above 261")
    assert vocabulary_size_note(train_wordpiece(synthetic_texts(300), config), config) is None  # fits exactly


@pytest.mark.parametrize("model, cause", [
    ("wordpiece", "no more pairs of pieces that occur tokenizer.min_frequency (2) times or more; this is all the "
                  "vocabulary it supports (more text or a lower min_frequency gives more)"),
    ("bpe", "no more pairs of pieces that occur tokenizer.min_frequency (2) times or more"),
    ("unigram", "too few distinct words and pieces; this is all the vocabulary it supports (more text gives more)"),
])
def test_a_vocabulary_smaller_than_requested_says_the_corpus_is_too_small(model, cause):
    from domainlm.tokenizer import train_tokenizer, vocabulary_size_note

    config = TokenizerConfig(model=model, vocab_size=2000)
    tokenizer = train_tokenizer(["the cat sat on the mat"] * 5, config)
    assert tokenizer.get_vocab_size() < 2000
    assert vocabulary_size_note(tokenizer, config).startswith(
        f"tokenizer: the trained vocabulary has {tokenizer.get_vocab_size()} entries, not tokenizer.vocab_size 2000: "
        f"the training text has {cause}")


def test_a_unigram_vocabulary_smaller_than_the_alphabet_is_refused_in_one_line():
    from domainlm.errors import ConfigError
    from domainlm.tokenizer import train_tokenizer

    texts = _many_characters(100)  # a Unigram vocabulary must hold every character: the trainer raised
    characters = len({char for text in texts for char in text.replace(" ", "")}) + 1  # and ▁, a word's start
    with pytest.raises(ConfigError, match=rf"^tokenizer.vocab_size 128: a unigram vocabulary holds every character "
                                          rf"of the corpus, and it has {characters} \(with the 5 special tokens, "
                                          rf"{characters + 5} entries before any piece of a word\); raise "
                                          rf"tokenizer.vocab_size well above {characters + 5}"):
        train_tokenizer(texts, TokenizerConfig(model="unigram", vocab_size=128))


def test_the_tokenizer_stage_warns_and_records_a_vocabulary_of_another_size(tiny_recipe, caplog):
    from domainlm.config import config_from_dict
    from domainlm.io import read_json
    from domainlm.pipeline import run_stage

    tiny_recipe["tokenizer"] = {"model": "bpe", "vocab_size": 128}
    config = config_from_dict(tiny_recipe)
    run_stage(config, "corpus")
    with caplog.at_level("WARNING", logger="domainlm.tokenizer"):
        run_stage(config, "tokenizer")
    note = ("tokenizer: the trained vocabulary has 261 entries, not tokenizer.vocab_size 128: every bpe vocabulary "
            "keeps its alphabet (256 byte symbols and 5 special tokens: 261 entries), which leaves 0 of the 128 for "
            "pieces of words (0 learned: common words stay split into characters); raise tokenizer.vocab_size well "
            "above 261")
    assert note in caplog.messages
    fit = read_json(config.directory / "tokenizer" / "fit.json")
    assert (fit["requested_vocab_size"], fit["vocab_size_note"], fit["domain"]["vocab_size"]) == (128, note, 261)
    counts = read_json(config.directory / "tokenizer" / "manifest.json")["counts"]
    assert (counts["vocab_size"], counts["requested_vocab_size"], counts["vocab_size_note"]) == (261, 128, note)

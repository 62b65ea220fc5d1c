"""Evaluate says when a model directory's tokenizer lower-cases a cased vocabulary, or keeps the
case of an uncased one (evaluate.finetune.tokenizer_casing, and the field in each run's result)."""

import json
import logging

import pytest

from conftest import synthetic_texts
from domainlm.config import EvaluateConfig, TaskConfig, TokenizerConfig
from domainlm.evaluate.finetune import finetune, tokenizer_casing
from domainlm.tasks.load import load_task
from domainlm.tokenizer import save_for_transformers, train_wordpiece

GENES = ["EGFR strongly regulates the cohort and NF-kB binds cell growth in Sample 992.",
         "BRCA1 in vivo phosphorylates cell growth and PD-L1 modulates inflammation.",
         "TP53 rapidly inhibits the receptor and KRAS regulates Gene Transcription."]


def model_dir(tmp_path, lowercase: bool, declared: dict | None = None):
    """A tiny BERT with a domain vocabulary trained with `lowercase`; `declared` replaces its
    tokenizer_config.json (as a third-party checkpoint's may say something else)."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / f"model-{lowercase}"
    tokenizer = train_wordpiece(GENES * 20, TokenizerConfig(vocab_size=300, min_frequency=1, lowercase=lowercase))
    save_for_transformers(tokenizer, folder, model_max_length=64)
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=64)).save_pretrained(folder)
    if declared is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(declared))
    return folder


def loaded_casing(folder):
    from transformers import AutoTokenizer

    return tokenizer_casing(AutoTokenizer.from_pretrained(folder))


@pytest.mark.parametrize("lowercase", [False, True])
def test_a_tokenizer_saved_here_fits_its_vocabulary(lowercase, tmp_path):
    casing = loaded_casing(model_dir(tmp_path, lowercase))
    assert casing["lowercases"] is lowercase and casing["mismatch"] is None
    assert (casing["upper_share"] > 0.05) is not lowercase


def test_a_cased_checkpoint_read_lower_cased_is_named(tmp_path):
    # A BertTokenizer config without do_lower_case: transformers lower-cases by default.
    casing = loaded_casing(model_dir(tmp_path, lowercase=False, declared={"tokenizer_class": "BertTokenizer"}))
    assert casing["lowercases"] is True and casing["upper_entries"] > 0
    assert "lower-cases text" in casing["mismatch"] and "do_lower_case: false" in casing["mismatch"]


def test_an_uncased_vocabulary_read_cased_is_named(tmp_path):
    declared = {"tokenizer_class": "BertTokenizer", "do_lower_case": False}
    casing = loaded_casing(model_dir(tmp_path, lowercase=True, declared=declared))
    assert casing["lowercases"] is False and casing["upper_entries"] == 0
    assert "keeps case" in casing["mismatch"]


def test_the_casing_finding_is_logged_and_kept_in_the_run_result(tmp_path, caplog):
    lines = [{"text": text, "label": "a" if "EGFR" in text else "b"} for text in GENES * 4]
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = load_task(TaskConfig(name="genes", type="classification", format="jsonl",
                                **{s: str(tmp_path / f"{s}.jsonl") for s in ("train", "dev", "test")}))
    folder = model_dir(tmp_path, lowercase=False, declared={"tokenizer_class": "BertTokenizer"})
    with caplog.at_level(logging.WARNING, logger="domainlm"):
        result = finetune(folder, True, task, seed=0, lr=1e-3, config=EvaluateConfig(epochs=1, batch_size=4, max_length=32))
    assert result["tokenizer_casing"]["mismatch"].startswith("the tokenizer lower-cases text")
    assert json.loads(json.dumps(result["tokenizer_casing"])) == result["tokenizer_casing"]  # goes into the run's JSON
    assert any("lower-cases text" in r.getMessage() and str(folder) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_byte_level_and_unigram_vocabularies_fit_their_casing(model, lowercase, tmp_path):
    # A byte-level BPE holds every byte as an entry (capitals, and `Ã` for half of `é`) whatever its casing.
    from transformers import AutoTokenizer

    from domainlm.tokenizer import train_tokenizer

    texts = GENES * 20 + [text.title() for text in synthetic_texts(200)] + ["Café naïve Zürich"] * 5
    tokenizer = train_tokenizer(texts, TokenizerConfig(model=model, vocab_size=400, min_frequency=1, lowercase=lowercase))
    save_for_transformers(tokenizer, tmp_path / "tokenizer")
    casing = tokenizer_casing(AutoTokenizer.from_pretrained(tmp_path / "tokenizer"))
    assert casing["lowercases"] is lowercase and casing["mismatch"] is None
    assert (casing["upper_share"] > 0.05) is not lowercase

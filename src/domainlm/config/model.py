"""The `model:` section: the encoder's size, or the checkpoint that continued pretraining starts from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from domainlm.config.base import Section
from domainlm.errors import ConfigError

PRESETS: dict[str, dict[str, int]] = {
    # name: layers, hidden, heads, intermediate
    "micro": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "tiny": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "mini": dict(num_layers=6, hidden_size=384, num_heads=6, intermediate_size=1536),
    "small": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}


class ModelConfig(Section):
    preset: Literal["micro", "tiny", "mini", "small", "base"] = "tiny"
    """Size preset; any of the fields below overrides it."""
    num_layers: int | None = Field(default=None, ge=1)
    """Transformer layers."""
    hidden_size: int | None = Field(default=None, ge=8)
    """Width of the hidden states (a multiple of `num_heads`)."""
    num_heads: int | None = Field(default=None, ge=1)
    """Attention heads per layer."""
    intermediate_size: int | None = Field(default=None, ge=8)
    """Width of each layer's MLP (4 x hidden in BERT)."""
    max_position: int = Field(default=512, ge=16)
    """Rows of the position table: the longest input the model (and its exported tokenizer) accepts."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout of the exported model, which fine-tuning uses (see `pretrain.dropout` for pretraining)."""
    init_from: str | None = None
    """Continue pretraining a local Hugging Face checkpoint (BERT, RoBERTa, MiniLM, ELECTRA):
    its architecture and tokenizer replace the preset and the domain tokenizer."""
    extend_vocab: int = Field(default=0, ge=0)
    """With init_from: add up to this many of the domain tokenizer's most useful new tokens to the
    checkpoint's vocabulary (new embeddings start as the mean of their old pieces)."""

    def resolved(self) -> dict[str, int]:
        """The preset's sizes with the fields given here put over them."""
        sizes = dict(PRESETS[self.preset])
        for key in sizes:
            if getattr(self, key) is not None:
                sizes[key] = getattr(self, key)
        if sizes["hidden_size"] % sizes["num_heads"]:
            raise ConfigError(
                f"model: hidden_size {sizes['hidden_size']} must be divisible by num_heads {sizes['num_heads']}"
            )
        return sizes

"""The `model:` section: the encoder's layout and size, or the checkpoint that continued pretraining starts from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from domainlm.config.base import Section
from domainlm.errors import ConfigError

PRESETS: dict[str, dict[str, int]] = {
    # name: layers, hidden, heads, intermediate (the BERT layout)
    "micro": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "tiny": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "mini": dict(num_layers=6, hidden_size=384, num_heads=6, intermediate_size=1536),
    "small": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}
MODERNBERT_PRESETS: dict[str, dict[str, int]] = {
    # The ModernBERT layout: deeper and narrower, a GeGLU of 1.5 x hidden (its input projection
    # is 3 x hidden), layer counts that keep the global layers 0, 3, 6, ... Base and large are the
    # published sizes (Warner et al. 2024, table 4); the others are for a CPU.
    "micro": dict(num_layers=3, hidden_size=128, num_heads=2, intermediate_size=192),
    "tiny": dict(num_layers=6, hidden_size=256, num_heads=4, intermediate_size=384),
    "mini": dict(num_layers=9, hidden_size=384, num_heads=6, intermediate_size=576),
    "small": dict(num_layers=12, hidden_size=512, num_heads=8, intermediate_size=768),
    "base": dict(num_layers=22, hidden_size=768, num_heads=12, intermediate_size=1152),
    "large": dict(num_layers=28, hidden_size=1024, num_heads=16, intermediate_size=2624),
}
# One size table per layout, keyed by `model.architecture`.
ARCHITECTURE_PRESETS = {"bert": PRESETS, "modernbert": MODERNBERT_PRESETS}
# Keys only the modernbert layout reads (with the bert layout they stay unset).
MODERNBERT_KEYS = ("local_window", "global_every", "global_rope_theta", "local_rope_theta")
GROWTH_KEYS = ("grow_from", "grow_depth", "grow_init")


class ModelConfig(Section):
    # Keys added with the modernbert layout and with model growth: a bert-layout model that is not
    # grown keeps the fingerprint it had before them.
    LATER = {"architecture": ("architecture", *MODERNBERT_KEYS), "grow_from": GROWTH_KEYS}

    architecture: Literal["bert", "modernbert"] = "bert"
    """The encoder layout trained from scratch: `bert` (post-LN, learned positions, GELU MLP;
    exported as BertForMaskedLM) or `modernbert` (Warner et al. 2024: pre-LN without biases, rotary
    positions, GeGLU, local attention on most layers and global every `global_every`-th; exported as
    ModernBertForMaskedLM). With `init_from` the checkpoint's layout is used (modernbert here then
    requires a ModernBERT checkpoint)."""
    preset: Literal["micro", "tiny", "mini", "small", "base", "large"] = "tiny"
    """Size preset of the architecture (`large`: modernbert only); any of the fields below overrides it."""
    num_layers: int | None = Field(default=None, ge=1)
    """Transformer layers."""
    hidden_size: int | None = Field(default=None, ge=8)
    """Width of the hidden states (a multiple of `num_heads`)."""
    num_heads: int | None = Field(default=None, ge=1)
    """Attention heads per layer."""
    intermediate_size: int | None = Field(default=None, ge=8)
    """Width of each layer's MLP (4 x hidden in BERT; in ModernBERT the GeGLU's width, 1.5 x hidden)."""
    max_position: int = Field(default=512, ge=16)
    """Rows of the position table (ModernBERT: the range its rotary positions are trained for): the
    longest input the model (and its exported tokenizer) accepts."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout of the exported model, which fine-tuning uses (see `pretrain.dropout` for pretraining;
    ModernBERT was trained with 0)."""
    local_window: int | None = None
    """modernbert: tokens a local layer sees, a token's own included: those at most local_window / 2
    positions away in its document (a positive even number; default 128, ModernBERT's)."""
    global_every: int | None = Field(default=None, ge=1)
    """modernbert: layers 0, n, 2n, ... attend globally, the others locally (default 3, ModernBERT's)."""
    global_rope_theta: float | None = Field(default=None, gt=0)
    """modernbert: rotary base of the global layers (default 160,000, ModernBERT's after its context extension)."""
    local_rope_theta: float | None = Field(default=None, gt=0)
    """modernbert: rotary base of the local layers (default 10,000)."""
    init_from: str | None = None
    """Continue pretraining a local Hugging Face checkpoint (BERT, RoBERTa, MiniLM, ELECTRA,
    ModernBERT): its architecture and tokenizer replace the preset and the domain tokenizer."""
    extend_vocab: int = Field(default=0, ge=0)
    """With init_from: add up to this many of the domain tokenizer's most useful new tokens to the
    checkpoint's vocabulary (new embeddings start as the mean of their old pieces). Needs WordPiece
    vocabularies on both sides."""
    grow_from: str | None = None
    """Grow a smaller trained encoder (a local Hugging Face masked-LM directory of the BERT or
    ModernBERT layout, e.g. a domainlm export; plain or `pkg://` path) into the size this section
    describes, then pretrain it (bert2BERT, Chen et al. 2022). Its layout, tokenizer, positions and
    other settings are kept; only num_layers, hidden_size, num_heads and intermediate_size change:
    hidden_size a multiple of the source's, the same head size, no fewer layers or MLP units."""
    grow_depth: Literal["stack", "interleave"] = "stack"
    """With grow_from: how the added layers are filled: `stack` repeats the source's layer sequence
    on top of itself (1..L, 1..L; StackBERT, bert2BERT), `interleave` repeats each layer in place (1, 1, 2, 2)."""
    grow_init: Literal["fpi", "aki"] = "fpi"
    """With grow_from: `fpi` (function-preserving: the widened model gives the source's logits; its
    copied units stay identical unless dropout sets them apart) or `aki` (bert2BERT's advanced
    knowledge initialisation: a layer's new units take their weights from the layer above)."""

    @field_validator("local_window")
    @classmethod
    def _even_window(cls, window: int | None) -> int | None:
        if window is not None and (window < 2 or window % 2):
            raise ValueError("must be a positive even number: a token sees local_window / 2 positions on each "
                             "side (ModernBERT: 128)")
        return window

    def layout_problem(self) -> str | None:
        """What is wrong with the layout keys, or None: ModernBERT's keys set on the BERT layout,
        or a preset the architecture has no size for. (Checked by the whole config, whose error
        messages read better than a section's.)"""
        if self.architecture == "bert":
            for key in MODERNBERT_KEYS:
                if getattr(self, key) is not None:
                    return (f"model.{key} {getattr(self, key)} applies to model.architecture modernbert, but "
                            f"model.architecture is 'bert': set model.architecture: modernbert, or remove model.{key}")
        if self.preset not in ARCHITECTURE_PRESETS[self.architecture]:
            return (f"model.preset '{self.preset}' has no {self.architecture} size; {self.architecture} presets: "
                    f"{', '.join(ARCHITECTURE_PRESETS[self.architecture])}")
        return None

    def resolved(self) -> dict[str, Any]:
        """The preset's sizes with the fields given here put over them (and, for modernbert, its
        keys that are set): the keyword arguments of the architecture's model config."""
        sizes: dict[str, Any] = dict(ARCHITECTURE_PRESETS[self.architecture][self.preset])
        for key in sizes:
            if getattr(self, key) is not None:
                sizes[key] = getattr(self, key)
        if sizes["hidden_size"] % sizes["num_heads"]:
            raise ConfigError(
                f"model: hidden_size {sizes['hidden_size']} must be divisible by num_heads {sizes['num_heads']}"
            )
        if self.architecture == "modernbert":
            if (sizes["hidden_size"] // sizes["num_heads"]) % 2:
                raise ConfigError(f"model: modernbert rotates pairs of dimensions, so hidden_size / num_heads must be "
                                  f"even; got {sizes['hidden_size']} / {sizes['num_heads']}")
            sizes |= {key: getattr(self, key) for key in MODERNBERT_KEYS if getattr(self, key) is not None}
        return sizes

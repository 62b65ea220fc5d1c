"""The encoder protocol: what every layout (`bert.Bert`, `modernbert.ModernBert`) and every
objective's trained module provide, so that compile, FSDP, SPDF, growth and the FLOP counter ask
the model instead of matching class or attribute names; and the masked positions a loss is
computed on (`MaskedTargets`).

A layout is a `MaskedLM`: `forward(input_ids, position_ids, attn)` gives hidden states,
`mlm_logits` vocabulary logits. Every trained module (a layout, or ELECTRA's pair) is an `Encoder`:
- `layers()`: its transformer layers, in order (what compile compiles, FSDP shards, SPDF masks);
- `parameter_groups()`: its parameter names by role, "embedding" (lookup tables and the tied
  decoder's vocabulary bias), "encoder" and "head";
- `flops_per_position(seq_len, density)` and `flops_per_masked()`: a forward's FLOPs per row
  position and per predicted position (Kaplan et al. 2020: 2 per weight a token passes through).
`tests/test_architecture.py` checks every layout and objective against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from domainlm.pretrain.attention import Attention

GROUPS = ("embedding", "encoder", "head")
# The members every trained module provides (`tests/test_architecture.py` calls each on every layout and objective).
PROTOCOL = ("layers", "parameter_groups", "flops_per_position", "flops_per_masked")


class Encoder(nn.Module):
    """What compile, FSDP, SPDF, growth and the FLOP counter ask of a trained module."""

    def layers(self) -> list[nn.Module]:
        """The transformer layers, in order."""
        raise NotImplementedError(f"{type(self).__name__}.layers")

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names (as `named_parameters` gives them) by role, one of `GROUPS`."""
        raise NotImplementedError(f"{type(self).__name__}.parameter_groups")

    def flops_per_position(self, seq_len: int, density: float = 1.0) -> float:
        """Forward FLOPs of one row position in a row of `seq_len`, the layers' linear weights at `density`."""
        raise NotImplementedError(f"{type(self).__name__}.flops_per_position")

    def flops_per_masked(self) -> float:
        """Forward FLOPs of the MLM head on one predicted position (0 without a head)."""
        raise NotImplementedError(f"{type(self).__name__}.flops_per_masked")


def layer_linears(model: Encoder) -> dict[str, nn.Linear]:
    """The linear layers directly inside the model's transformer layers, by qualified name."""
    return {f"{name}.{child}": linear for name, layer in zip(layer_names(model), model.layers(), strict=True)
            for child, linear in layer.named_children() if isinstance(linear, nn.Linear)}


def layer_names(model: Encoder) -> list[str]:
    """The qualified names of the model's transformer layers, in order."""
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layer)] for layer in model.layers()]


def non_embedding_parameters(model: Encoder) -> int:
    """Parameters outside the embedding group (token, position and type tables, the vocabulary
    bias): what sets a step's compute apart from the vocabulary's size (equal-compute arms must
    match here)."""
    embedding = set(model.parameter_groups()["embedding"])
    return sum(p.numel() for name, p in model.named_parameters() if name not in embedding)


class MaskedLM(Encoder):
    """What the layouts share: `forward(input_ids, position_ids, attn)` gives hidden states,
    `mlm_logits` turns them into vocabulary logits, and the loss is computed on the masked
    positions only. A layout keeps its layers in `blocks`, names its top-level parameters by role
    in `EMBEDDING` and `HEAD`, and (with an MLM head) has `head_dense` and a decoder tied to `tok_embed`."""

    EMBEDDING = ("tok_embed", "pos_embed", "type_embed", "head_bias")
    HEAD = ("head_dense", "head_norm")

    def layers(self) -> list[nn.Module]:
        return list(self.blocks)

    def parameter_groups(self) -> dict[str, list[str]]:
        groups = {group: [] for group in GROUPS}
        for name, _ in self.named_parameters():
            root = name.split(".")[0]
            groups["embedding" if root in self.EMBEDDING else "head" if root in self.HEAD else "encoder"].append(name)
        return groups

    def flops_per_position(self, seq_len: int, density: float = 1.0) -> float:
        """Every linear weight once (the layers' at `density`; the MLM head's dense layer is per
        masked position), plus attention's two matrix products over the row: 4 x seq_len x width per layer."""
        inside = layer_linears(self).values()
        head = {id(getattr(self, name, None)) for name in self.HEAD}
        other = sum(m.weight.numel() for m in self.modules()
                    if isinstance(m, nn.Linear) and m not in inside and id(m) not in head)
        attention = 4 * seq_len * self.config.hidden_size * len(self.layers())
        return 2 * (density * sum(m.weight.numel() for m in inside) + other) + attention

    def flops_per_masked(self) -> float:
        """The head's dense layer and the vocabulary projection (the tied embeddings)."""
        if not hasattr(self, "head_dense"):
            return 0
        return 2 * (self.head_dense.weight.numel() + self.tok_embed.weight.numel())

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mlm_loss(self, input_ids, position_ids, attn: Attention, labels, reduction: str = "mean",
                 targets: MaskedTargets | None = None) -> torch.Tensor:
        """Cross-entropy (mean, or sum) over positions whose label is not -100. The vocabulary
        projection runs only on those (masked) positions: ~15% of the work of a full head.
        `targets`: those positions, found on the host so that the GPU never waits for a
        data-dependent shape (`masked_targets`; a fixed-capacity buffer keeps every shape static);
        found here from `labels` when not given."""
        hidden = self(input_ids, position_ids, attn)
        if targets is None:
            targets = MaskedTargets.of(attn.select(labels).reshape(-1))
        logits = self.masked_logits(hidden.reshape(-1, hidden.shape[-1]), targets)
        return F.cross_entropy(logits.float(), targets.labels, reduction=reduction)

    def masked_logits(self, flat_hidden: torch.Tensor, targets: MaskedTargets) -> torch.Tensor:
        """(K, V) vocabulary logits of the masked positions `targets.index` of (N, H) hidden states."""
        return self.mlm_logits(flat_hidden.index_select(0, targets.index))


@dataclass
class MaskedTargets:
    """The masked positions of a (micro-)batch in the layout the model computes in: `index` (K,)
    their flat positions, `labels` (K,) the original ids, `draws` an objective's per-position
    random draws (K,) each (ELECTRA's "noise" samples its replacements; `objectives.OBJECTIVES`).
    With a fixed capacity K the buffers are padded (index 0, label -100, draws 0), so their shapes
    never change between steps; `overflow` counts masked positions that did not fit (left out of
    the loss)."""

    index: torch.Tensor
    labels: torch.Tensor
    draws: dict[str, torch.Tensor] = field(default_factory=dict)
    overflow: int = 0

    @classmethod
    def of(cls, flat_labels: torch.Tensor, flat_draws: dict[str, torch.Tensor] | None = None,
           capacity: int | None = None) -> MaskedTargets:
        """From (N,) labels (-100 where nothing is predicted) and (N,) per-position draws, in order."""
        index = torch.nonzero(flat_labels != -100).flatten()
        overflow = 0
        if capacity is not None:
            overflow = max(0, len(index) - capacity)
            index = index[:capacity]
        labels = flat_labels.index_select(0, index)
        draws = {name: values.index_select(0, index) for name, values in (flat_draws or {}).items()}
        if capacity is not None and len(index) < capacity:
            pad = capacity - len(index)
            index = torch.cat([index, index.new_zeros(pad)])
            labels = torch.cat([labels, labels.new_full((pad,), -100)])
            draws = {name: torch.cat([values, values.new_zeros(pad)]) for name, values in draws.items()}
        return cls(index, labels, draws, overflow)

    def to(self, device: torch.device | str) -> MaskedTargets:
        move = {"device": device, "non_blocking": True}
        return MaskedTargets(self.index.to(**move), self.labels.to(**move),
                             {name: values.to(**move) for name, values in self.draws.items()}, self.overflow)


def masked_targets(labels: torch.Tensor, real: torch.Tensor | None, draws: dict[str, torch.Tensor] | None = None,
                   capacity: int | None = None) -> MaskedTargets:
    """The masked positions (label != -100) of a host batch in the layout the model computes in:
    `labels` (B, T), `real` the (B, T) real-token mask when padding is removed (varlen; None
    otherwise), `draws` (B, T) each, an objective's per-position draws; `capacity` pads to a fixed size."""
    def flat(tensor):
        return tensor.reshape(-1) if real is None else tensor[real]

    return MaskedTargets.of(flat(labels), {name: flat(values) for name, values in (draws or {}).items()}, capacity)


def masked_capacity(positions: int, rate: float) -> int:
    """A fixed number of masked positions that a micro-batch of `positions` row positions almost
    never exceeds at mask rate `rate`: the expected count (as if every position were a real token)
    plus eight binomial standard deviations (whole words and spans vary more than single tokens),
    rounded up to a multiple of 64, at most `positions`. Every slot costs a row of the vocabulary
    projection, so the headroom is kept small; the rare overflow is left out of the loss."""
    expected = positions * rate
    spread = 8 * math.sqrt(positions * rate * (1 - rate))
    return min(positions, 64 * math.ceil((expected + spread) / 64))



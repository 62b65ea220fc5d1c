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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from domainlm.pretrain.attention import Attention

GROUPS = ("embedding", "encoder", "head")


class MaskedLM(nn.Module):
    """What the training encoders share: `forward(input_ids, position_ids, attn)` gives hidden
    states, `mlm_logits` turns them into vocabulary logits, and the loss is computed on the masked
    positions only."""

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
    their flat positions, `labels` (K,) the original ids, `noise` (K,) uniform draws for ELECTRA's
    sampling (or None). With a fixed capacity K the buffers are padded (index 0, label -100, noise
    0), so their shapes never change between steps; `overflow` counts masked positions that did not
    fit (left out of the loss)."""

    index: torch.Tensor
    labels: torch.Tensor
    noise: torch.Tensor | None = None
    overflow: int = 0

    @classmethod
    def of(cls, flat_labels: torch.Tensor, flat_noise: torch.Tensor | None = None,
           capacity: int | None = None) -> MaskedTargets:
        """From (N,) labels (-100 where nothing is predicted) and per-position noise, in order."""
        index = torch.nonzero(flat_labels != -100).flatten()
        overflow = 0
        if capacity is not None:
            overflow = max(0, len(index) - capacity)
            index = index[:capacity]
        labels = flat_labels.index_select(0, index)
        noise = None if flat_noise is None else flat_noise.index_select(0, index)
        if capacity is not None and len(index) < capacity:
            pad = capacity - len(index)
            index = torch.cat([index, index.new_zeros(pad)])
            labels = torch.cat([labels, labels.new_full((pad,), -100)])
            noise = None if noise is None else torch.cat([noise, noise.new_zeros(pad)])
        return cls(index, labels, noise, overflow)

    def to(self, device: torch.device | str) -> MaskedTargets:
        move = {"device": device, "non_blocking": True}
        return MaskedTargets(self.index.to(**move), self.labels.to(**move),
                             None if self.noise is None else self.noise.to(**move), self.overflow)


def masked_targets(labels: torch.Tensor, real: torch.Tensor | None, noise: torch.Tensor | None = None,
                   capacity: int | None = None) -> MaskedTargets:
    """The masked positions (label != -100) of a host batch in the layout the model computes in:
    `labels` (B, T), `real` the (B, T) real-token mask when padding is removed (varlen; None
    otherwise), `noise` (B, T) ELECTRA's sampling draws (or None); `capacity` pads to a fixed size."""
    def flat(tensor):
        return tensor.reshape(-1) if real is None else tensor[real]

    return MaskedTargets.of(flat(labels), None if noise is None else flat(noise), capacity)


def masked_capacity(positions: int, rate: float) -> int:
    """A fixed number of masked positions that a micro-batch of `positions` row positions almost
    never exceeds at mask rate `rate`: the expected count (as if every position were a real token)
    plus eight binomial standard deviations (whole words and spans vary more than single tokens),
    rounded up to a multiple of 64, at most `positions`. Every slot costs a row of the vocabulary
    projection, so the headroom is kept small; the rare overflow is left out of the loss."""
    expected = positions * rate
    spread = 8 * math.sqrt(positions * rate * (1 - rate))
    return min(positions, 64 * math.ceil((expected + spread) / 64))



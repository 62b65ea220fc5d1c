"""Pretraining compute in FLOPs, counted the usual way (Kaplan et al. 2020): a forward costs
2 FLOPs per weight a token passes through, a training step 3 forwards' worth (the backward twice
the forward). What a position passes through: every linear layer (the transformer layers',
sparsified ones at their density), attention's two matrix products over the row (4 x row length x
width per layer), and on the masked positions only the MLM head (its dense layer and the
vocabulary projection). Embedding lookups, norms and activations are left out (a few percent).

Sparse layers are counted as SPDF does (Thangarasa et al. 2023): at their density in forward and
backward (`flops`), beside what the same steps cost dense (`flops_dense_equivalent`). A teacher
(distillation) adds its forward on every position and, when its logits are distilled, its head
on the masked positions.
"""

from __future__ import annotations

from domainlm.pretrain.encoder import Encoder


def forward_flops(model: Encoder, seq_len: int, positions: int, masked: int, density: float = 1.0,
                  head: bool = True) -> float:
    """FLOPs of one forward of `model` over `positions` row positions of length `seq_len`, of which
    `masked` go through the MLM head (`head` False: none do); the transformer layers' linear
    weights at `density` (1.0: dense). What a position costs, the model says (`Encoder`)."""
    per_masked = model.flops_per_masked() if head else 0
    return model.flops_per_position(seq_len, density) * positions + per_masked * masked


def pretraining_flops(model: Encoder, seq_len: int, positions: int, masked: int, sparsity: float = 0.0,
                      teacher: Encoder | None = None, teacher_logits: bool = True) -> dict[str, float]:
    """Training FLOPs of a run that computed `positions` row positions (padding included: the
    kernels compute on it) with `masked` predicted positions: `flops` as spent (sparse layers at
    1 - sparsity), `flops_dense_equivalent` as the same steps would cost dense; both include the
    teacher's forwards."""
    extra = 0.0
    if teacher is not None:
        extra = forward_flops(teacher, seq_len, positions, masked, head=teacher_logits)
    return {"flops": 3 * forward_flops(model, seq_len, positions, masked, 1 - sparsity) + extra,
            "flops_dense_equivalent": 3 * forward_flops(model, seq_len, positions, masked) + extra}

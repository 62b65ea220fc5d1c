"""Optimisation pieces shared by pretraining and fine-tuning: learning-rate schedules, AdamW
parameter groups, and seeding."""

from __future__ import annotations

import math
import random

SCHEDULES = ("linear", "cosine", "one-cycle", "wsd")


def lr_schedule(kind: str, warmup_steps: int, total_steps: int, decay_fraction: float = 0.2):
    """LR multiplier for step `step` (0-based), for `torch.optim.lr_scheduler.LambdaLR`.

    - linear: linear warmup 0 -> 1, then linear decay to 0 at `total_steps` (BERT).
    - cosine: linear warmup, then half a cosine down to 0.
    - one-cycle: warmup from 1/25 of the peak, then a cosine down to 1/10,000 of it (torch's OneCycleLR).
    - wsd: warmup, stable at the peak, then linear decay to 0 over the last `decay_fraction` of the
      steps (warmup-stable-decay: a run can be extended before the decay starts).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule '{kind}' (expected {', '.join(SCHEDULES)})")
    warmup_steps = max(1, warmup_steps)
    decay_start = max(warmup_steps, int(round(total_steps * (1 - decay_fraction))))

    def factor(step: int) -> float:
        if step < warmup_steps:
            start = 1 / 25 if kind == "one-cycle" else 0.0
            return start + (1 - start) * (step + 1) / warmup_steps
        if kind == "wsd":
            if step < decay_start:
                return 1.0
            return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        floor = 1e-4 if kind == "one-cycle" else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups of a `torch.nn.Module`: weight decay on matrices only; none on biases and
    LayerNorm (as BERT)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

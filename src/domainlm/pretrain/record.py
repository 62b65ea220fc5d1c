"""What a pretraining run has done so far: per-step losses (and each objective loss), learning
rates, tokens, time, skipped steps. It is a checkpoint's `state.json`, the stage's history and the
core of its summary; steps' losses wait on the device until `flush` (one wait for many steps)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from domainlm.errors import TrainingDiverged

log = logging.getLogger(__name__)

# `final_loss` is the mean over this many last steps (a fixed window: no bookkeeping key moves it).
FINAL_LOSS_STEPS = 10


@dataclass
class TrainingRecord:
    loss_names: list[str]  # the objective's losses, in the order `parts` keeps them
    world_size: int = 1
    step: int = 0
    losses: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)  # per-objective losses (ELECTRA: mlm and rtd)
    learning_rates: list[float] = field(default_factory=list)
    elapsed: float = 0.0  # seconds spent in train steps, across resumes
    real_tokens: int = 0
    positions: int = 0  # row positions, padding included (sdpa / flex compute on them)
    masked_tokens: int = 0  # positions predicted (what the MLM head computes on)
    skipped_steps: list[int] = field(default_factory=list)  # steps whose loss or gradient was NaN/inf
    bad_in_a_row: int = 0
    grad_norm: float = math.nan  # of the last step
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # steps still on the device

    # What state.json holds (older checkpoints may lack the later keys: their defaults apply).
    SAVED = ("step", "losses", "parts", "learning_rates", "elapsed", "real_tokens", "positions", "skipped_steps",
             "masked_tokens", "world_size")

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        """A step's loss, gradient norm and (with more than one) its parts, still on the device."""
        row = [loss, grad_norm, *(parts.values() if len(parts) > 1 else [])]
        self.pending.append((step, torch.stack(row)))

    def flush(self) -> list[tuple[int, float]]:
        """Bring the waiting steps' losses to the host, record them, the gradient norm and skipped
        steps; (step, loss) of each."""
        if not self.pending:
            return []
        steps = [step for step, _ in self.pending]
        rows = torch.stack([row for _, row in self.pending]).tolist()
        self.pending = []
        for step, (value, grad_norm, *parts) in zip(steps, rows, strict=True):
            self.losses.append(value)
            self.grad_norm = grad_norm
            if not (math.isfinite(value) and math.isfinite(grad_norm)):
                self.skipped_steps.append(step)  # the weights stayed as they were
            for key, part in zip(self.loss_names, parts, strict=False):
                self.parts.setdefault(key, []).append(part)
        return [(step, row[0]) for step, row in zip(steps, rows, strict=True)]

    def check_finite(self, step: int, loss: float, max_bad_steps: int, where: Any) -> None:
        """Count steps in a row whose loss was not finite; TrainingDiverged after `max_bad_steps`
        (`where`: the checkpoint folder the message points to)."""
        if math.isfinite(loss):
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1  # the update was skipped, so the weights (and any checkpoint) stay sound
        log.warning("pretrain: step %d: non-finite loss (%s), update skipped", step, loss)
        if self.bad_in_a_row >= max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_in_a_row} steps in a row ended with a non-finite loss (last at step "
                f"{step}); stopped. Lower pretrain.lr; the last good checkpoint is in {where}.")

    def log(self, progress, curves, steps: int) -> None:
        """The mean loss of the last `steps` steps and tokens/s on the progress bar, and every
        curve to `curves` (TensorBoard; None: none)."""
        finite = [x for x in self.losses[-steps:] if math.isfinite(x)] or [math.nan]
        loss, tokens_per_s = sum(finite) / len(finite), self.real_tokens / max(self.elapsed, 1e-9)
        progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
        if curves is not None:
            curves.add(self.step, **{"pretrain/loss": loss, "pretrain/lr": self.learning_rates[-1],
                                     "pretrain/real_tokens_per_s": tokens_per_s, "pretrain/grad_norm": self.grad_norm})

    def history(self, log_every: int) -> dict[str, Any]:
        """What the stage's history.json holds: per-step loss, learning rate and objective losses."""
        return {"loss": self.losses, "lr": self.learning_rates, "log_every": log_every, **self.parts}

    def state(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.SAVED}

    def load_state(self, state: dict[str, Any]) -> None:
        for key in self.SAVED:
            if key in state and key != "world_size":  # the world may change between runs
                setattr(self, key, state[key])

    def summary(self) -> dict[str, Any]:
        tail = self.losses[-FINAL_LOSS_STEPS:]
        return {"steps": self.step, "final_loss": sum(tail) / len(tail), "real_tokens_seen": self.real_tokens,
                "step_seconds": round(self.elapsed, 2), "real_tokens_per_s": self.real_tokens / max(self.elapsed, 1e-9),
                "padding_share": 1 - self.real_tokens / max(self.positions, 1), "positions": self.positions,
                "masked_tokens": self.masked_tokens, "skipped_steps": self.skipped_steps, "world_size": self.world_size}

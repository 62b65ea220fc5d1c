"""Pretraining objectives, one row per objective: the trainer looks one up and never names it.

A row says what the objective adds to the model (`build`: the module trained from a layout's
config; `loss_module`: what computes its losses, with any parts the optimizer trains beside the
model, such as a distillation projection), its per-batch draws (`draws`, made after masking from
the masking generator, so a checkpoint resumes them), its losses (each with the batch count it is
normalised by, and its weight) and what it exports (a stock `transformers` model, the auto class
that loads it, and the logits the export must reproduce).

- `mlm`: masked language modelling (its masking modes, whole-word, token, span, are the data's:
  `data.mask_tokens`);
- `electra`: replaced-token detection (Clark et al. 2020; `electra.Electra`);
- `distill`: MLM plus a frozen teacher's logits and hidden states (`distill.Distiller`), the
  objective of a run with `pretrain.teacher`.

A new objective is its own module and one row here (`tests/test_objectives.py` adds a toy one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from domainlm.config import PretrainConfig
from domainlm.pretrain.architectures import LayoutConfig, new_model, to_hf_masked_lm
from domainlm.pretrain.attention import Attention
from domainlm.pretrain.distill import Distiller
from domainlm.pretrain.electra import Electra, to_hf_electra
from domainlm.pretrain.encoder import Encoder, MaskedLM, MaskedTargets

# The batch count a loss is normalised by: masked positions, or real tokens.
COUNTS = ("masked", "real")


class LossModule(nn.Module):
    """Computes an objective's summed losses of one micro-batch: `forward(input_ids, position_ids,
    attn, real, targets)` -> {loss name: summed loss} (what DDP / FSDP wrap). `model` is the
    trained encoder; `extra_parts()` what else the optimizer trains and a checkpoint keeps, by name."""

    def __init__(self, model: Encoder):
        super().__init__()
        self.model = model

    def extra_parts(self) -> dict[str, nn.Module]:
        return {}


class MaskedLMLoss(LossModule):
    def forward(self, input_ids, position_ids, attn: Attention, real, targets: MaskedTargets):
        return {"mlm": self.model.mlm_loss(input_ids, position_ids, attn, None, reduction="sum", targets=targets)}


class ElectraLoss(LossModule):
    def forward(self, input_ids, position_ids, attn: Attention, real, targets: MaskedTargets):
        return self.model.losses(input_ids, position_ids, attn, real, targets)


class DistillationLoss(LossModule):
    def __init__(self, model: MaskedLM, distiller: Distiller):
        super().__init__(model)
        self.distiller = distiller

    def forward(self, input_ids, position_ids, attn: Attention, real, targets: MaskedTargets):
        return self.distiller.losses(self.model, input_ids, position_ids, attn, real, targets)

    def extra_parts(self) -> dict[str, nn.Module]:
        projection = self.distiller.projection
        return {} if projection is None else {"projection": projection}


def replacement_draws(labels: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """ELECTRA: one uniform draw per masked position (labels (B, T), -100 elsewhere), which samples
    the generator's replacement; 0 elsewhere."""
    masked = labels != -100
    noise = torch.zeros(masked.shape).masked_scatter_(masked, torch.rand(int(masked.sum()), generator=generator))
    return {"noise": noise}


def no_draws(labels: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {}


def masked_lm_logits(model: MaskedLM, ids, positions, attn) -> torch.Tensor:
    return model.mlm_logits(model(ids, positions, attn))


def replaced_token_logits(model: Electra, ids, positions, attn) -> torch.Tensor:
    return model.rtd_logits(model.discriminator(ids, positions, attn))


def distillation_loss(model: MaskedLM, config: PretrainConfig, teacher: MaskedLM | None) -> DistillationLoss:
    distiller = Distiller(teacher, model.config.hidden_size, config.distill_logits, config.distill_hidden,
                          config.distill_temperature)
    return DistillationLoss(model, distiller)


@dataclass(frozen=True)
class Objective:
    counts: dict[str, str]  # every loss it can compute -> the batch count (`COUNTS`) it is normalised by
    weights: Callable[[PretrainConfig], dict[str, float]]  # the losses a run computes, weighted, in record order
    build: Callable[[LayoutConfig, PretrainConfig], Encoder]  # a fresh model (drawn from the global RNG)
    loss_module: Callable[[Encoder, PretrainConfig, Any], LossModule]  # (model, settings, teacher)
    export: Callable[[Encoder, LayoutConfig | None], Any]  # (trained model, exported config) -> transformers model
    loader: str  # the transformers auto class that reads the export back
    outputs: Callable[[Encoder, Any, Any, Attention], torch.Tensor]  # the logits the export reproduces
    draws: Callable[[torch.Tensor, torch.Generator], dict[str, torch.Tensor]] = field(default=no_draws)


OBJECTIVES: dict[str, Objective] = {
    "mlm": Objective(
        counts={"mlm": "masked"}, weights=lambda c: {"mlm": 1.0},
        build=lambda layout, c: new_model(layout), loss_module=lambda model, c, teacher: MaskedLMLoss(model),
        export=to_hf_masked_lm, loader="AutoModelForMaskedLM", outputs=masked_lm_logits),
    "electra": Objective(
        counts={"mlm": "masked", "rtd": "real"}, weights=lambda c: {"mlm": 1.0, "rtd": c.rtd_weight},
        build=lambda layout, c: Electra(layout, c.generator_fraction),
        loss_module=lambda model, c, teacher: ElectraLoss(model), draws=replacement_draws,
        export=to_hf_electra, loader="AutoModelForPreTraining", outputs=replaced_token_logits),
    "distill": Objective(
        counts={"mlm": "masked", "kd": "masked", "hidden": "real"},
        weights=lambda c: {"mlm": 1.0} | {k: w for k, w in (("kd", c.distill_logits), ("hidden", c.distill_hidden)) if w},
        build=lambda layout, c: new_model(layout), loss_module=distillation_loss,
        export=to_hf_masked_lm, loader="AutoModelForMaskedLM", outputs=masked_lm_logits),
}


def objective_name(config: PretrainConfig, teacher: Any = None) -> str:
    """The row a run uses: `pretrain.objective`, or `distill` when a teacher is given."""
    return "distill" if teacher is not None else config.objective

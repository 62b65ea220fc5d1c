"""The `experiment:` section: pretraining arms that share one budget."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from pydantic import Field, field_validator

from domainlm.config.base import Section, unique_names

# Arm keys that name a model directory, and so may name an earlier arm's export as `arm:<name>`.
ARM_PATH_KEYS = (("model", "init_from"), ("model", "grow_from"), ("pretrain", "teacher"),
                 ("pretrain", "difficulty_model"))
# The recipe sections an arm may replace keys of (an arm only pretrains).
ARM_SECTIONS = ("corpus", "tokenizer", "model", "pretrain")


class ArmConfig(Section):
    """One pretraining arm of an experiment: the recipe's corpus / tokenizer / model / pretrain
    sections with these keys replaced (nested mappings are merged, lists replaced)."""

    name: str
    """Names the arm: its run lives in `runs/<name>/arms/<arm>/`, and `evaluate.models` refer to it."""
    corpus: dict[str, Any] = Field(default_factory=dict)
    """Keys of the recipe's `corpus` section this arm replaces (e.g. other `sources`)."""
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    """Keys of the `tokenizer` section this arm replaces."""
    model: dict[str, Any] = Field(default_factory=dict)
    """Keys of the `model` section this arm replaces (e.g. `init_from`, `extend_vocab`)."""
    pretrain: dict[str, Any] = Field(default_factory=dict)
    """Keys of the `pretrain` section this arm replaces (`max_steps` is set by the budget). A path
    key (`model.init_from`, `model.grow_from`, `pretrain.teacher`, `pretrain.difficulty_model`)
    may say `arm:<name>`: the export of an earlier arm (growth from a small arm, a teacher arm)."""
    seed: int | None = None
    """Pretraining seed of this arm (default: the run's): an arm repeated with another seed
    measures how much the pretraining seed alone moves the scores."""
    share: float = Field(default=1.0, gt=0)
    """This arm's share of the budget relative to the others' (all 1: equal shares). E.g. a small
    model for half an arm's budget (share 0.5), grown from it for the other half (share 0.5),
    against a large model for a whole one (share 1)."""

    def arm_references(self) -> dict[str, str]:
        """`section.key` -> arm name of every `arm:<name>` value among the path keys."""
        out = {}
        for section, key in ARM_PATH_KEYS:
            value = getattr(self, section).get(key)
            if isinstance(value, str) and value.startswith("arm:"):
                out[f"{section}.{key}"] = value[len("arm:"):]
        return out


class ExperimentConfig(Section):
    """Several pretraining arms at equal compute; evaluate then compares their models (named by
    `arm:` in evaluate.models) with any other models of the recipe."""

    arms: list[ArmConfig] = Field(min_length=1)
    """The arms, each pretrained as its own run."""
    budget_tokens: int = Field(ge=1)
    """Pretraining budget of the whole experiment in row positions (steps x batch_size x
    seq_len), split between the arms by their `share` (equally by default: each arm gets the same
    number of steps of the same shape). Real (non-padding) tokens and FLOPs per arm are recorded
    beside it."""

    @field_validator("arms")
    @classmethod
    def _unique(cls, arms: list[ArmConfig]) -> list[ArmConfig]:
        arms = unique_names(arms, "arm")
        for number, arm in enumerate(arms):
            earlier = [a.name for a in arms[:number]]
            for key, name in arm.arm_references().items():
                if name not in earlier:
                    raise ValueError(f"arm '{arm.name}': {key} arm:{name} must name an earlier arm (arms run in "
                                     f"order; earlier: {', '.join(earlier) or 'none'})")
        return arms


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: nested mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def arm_steps(experiment: ExperimentConfig, pretrain: dict[str, Any], share: float = 1.0) -> int:
    """Steps that spend an arm's share of the budget (`share` over all arms' shares) with this
    arm's batch shape (`pretrain`: its section as a mapping). Exact integer arithmetic: equal
    shares give budget // arms // row positions. A shape that is not a pair of positive integers
    (which validation then names) counts 1 step."""
    row = pretrain.get("batch_size"), pretrain.get("seq_len")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in row):
        return 1
    shares = [Fraction(arm.share) for arm in experiment.arms]
    positions = Fraction(experiment.budget_tokens) * Fraction(share) / sum(shares)
    return max(1, math.floor(positions / (row[0] * row[1])))

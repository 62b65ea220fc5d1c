"""The `experiment:` section: pretraining arms that share one budget."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from domainlm.config.base import Section, unique_names


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
    """Keys of the `pretrain` section this arm replaces (`max_steps` is set by the budget)."""


class ExperimentConfig(Section):
    """Several pretraining arms at equal compute; evaluate then compares their models (named by
    `arm:` in evaluate.models) with any other models of the recipe."""

    arms: list[ArmConfig] = Field(min_length=1)
    """The arms, each pretrained as its own run."""
    budget_tokens: int = Field(ge=1)
    """Pretraining budget of the whole experiment in row positions (steps x batch_size x
    seq_len), split equally between the arms: each arm gets the same number of steps of the same
    shape. Real (non-padding) tokens per arm are recorded beside it."""

    @field_validator("arms")
    @classmethod
    def _unique(cls, arms: list[ArmConfig]) -> list[ArmConfig]:
        return unique_names(arms, "arm")

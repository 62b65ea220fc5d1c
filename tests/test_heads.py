"""The per-target table of fine-tuning (`evaluate.heads.HEADS`) is complete for every task type: a
new type or target that lacks a member fails here, not in the middle of a run."""

import dataclasses
import re
from pathlib import Path

import pytest

from domainlm.evaluate.heads import HEADS, Head, Layout
from domainlm.tasks.metrics import task_metrics
from domainlm.tasks.types import TASK_TYPES

# Members a head may leave out (None): a transformers head class with one loss names no
# `problem_type`; soft targets (distillation) and unlabeled text in the task's shape (self-training
# and distillation) are needed by the types marked `self_training` only.
OPTIONAL = {"problem_type", "soft_loss", "unlabeled", "uncertainty"}  # None says: not for this target
FOR_SELF_TRAINING = ("soft_loss", "unlabeled")

# One gold value per target, to check that each type's headline metric is computed for it.
SAMPLE_GOLD = {"class": "a", "classes": ["a"], "number": 1.0, "tags": ["B-X", "O"], "choice": "0", "ranking": {"d": 1}}
HEADED = [name for name, kind in TASK_TYPES.items() if not kind.ranks]  # retrieval ranks documents: no head


def test_active_learning_reads_a_distribution_where_a_target_has_one():
    assert {target: head.uncertainty for target, head in HEADS.items()} == {
        "class": "example", "classes": None, "number": None, "tags": "words", "choice": "example"}


@pytest.mark.parametrize("name", HEADED)
def test_every_task_type_has_a_head_with_every_member(name):
    kind = TASK_TYPES[name]
    assert kind.target in HEADS, f"{name}: no row for target {kind.target!r} in evaluate.heads.HEADS"
    head = HEADS[kind.target]
    for member in dataclasses.fields(Head):
        if member.name not in OPTIONAL:
            assert getattr(head, member.name) is not None, f"{name}: {member.name}"
    for member in dataclasses.fields(Layout):
        assert getattr(head.layout, member.name) is not None, f"{name}: layout.{member.name}"
    if kind.self_training:
        for member in FOR_SELF_TRAINING:
            assert getattr(head, member) is not None, f"{name} offers self-training and distillation: {member}"


@pytest.mark.parametrize("name", HEADED)
def test_every_head_names_a_transformers_class_and_loss(name):
    import transformers

    head = HEADS[TASK_TYPES[name].target]
    assert head.auto_class.startswith("AutoModelFor") and hasattr(transformers, head.auto_class)
    assert head.problem_type in (None, "single_label_classification", "multi_label_classification", "regression")


@pytest.mark.parametrize("name", TASK_TYPES)
def test_every_task_type_scores_its_headline_metric(name):
    kind = TASK_TYPES[name]
    assert kind.target in SAMPLE_GOLD, f"add a sample gold value for target {kind.target!r}"
    gold = [SAMPLE_GOLD[kind.target]] * 2 if kind.target != "number" else [1.0, 2.0]  # Pearson needs variance
    predicted = [list(g) for g in gold] if kind.ranks else gold  # a ranking: document ids, best first
    assert kind.headline in task_metrics(name, gold, predicted)


def test_evaluate_never_asks_for_a_target_by_name():
    """Whatever differs per target is a member of its head, not a branch in the evaluate stage."""
    folder = Path(__file__).resolve().parents[1] / "src" / "domainlm" / "evaluate"
    names = "|".join(sorted({kind.target for kind in TASK_TYPES.values()}))
    branch = re.compile(rf"\.target (==|!=|in|not in) |[=!]= \"({names})\"")
    found = [f"{path.name}:{n}" for path in sorted(folder.glob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, found

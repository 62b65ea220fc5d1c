"""Nested subsamples of a task for learning curves: how well does a model do with few labels.

A curve's points are sizes k. For a task with classes a sample holds k training examples per
class; for token tasks (sentences) and regression it holds k examples. Per subsample seed the
samples are nested: the k-sample lies inside the 2k-sample, so a curve shows what more labels
add, not which other examples were drawn (the few-shot setting of Gao et al. 2021, LM-BFF, and
Perez et al. 2021, "True few-shot learning", drawn nested as learning-curve studies do). Every class
is present: a class with fewer than k training examples gives all it has, and the sample records
how many (`CurveSample.short`).

Dev comes from the original dev split, drawn the same nested way at the same k, and is never
larger than the training sample (Perez et al.: a few-shot run has no large dev set to choose on):
when it would be, the dev examples drawn last are left out.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass

from domainlm.tasks.load import Task

NO_LABEL = "(no label)"
"""The class a multi-label example without any label counts toward."""

# Per target: the classes one example counts toward in a per-class sample; targets left out
# (tags, number) are sampled in examples (sentences, for token tasks).
_CLASSES_OF = {
    "class": lambda x: [str(x["label"])],
    "classes": lambda x: [str(label) for label in x["label"]] or [NO_LABEL],
    "choice": lambda x: [str(x["label"])],  # the right answer's position
}


def per_class(target: str) -> bool:
    """Whether a curve's sizes count examples per class for this target (else examples in all)."""
    return target in _CLASSES_OF


def size_unit(target: str) -> str:
    """What a curve's size counts for this target, as the report says it."""
    return "labels per class" if per_class(target) else {"tags": "sentences", "ranking": "queries"}.get(target, "examples")


def nested_samples(examples: list[dict], target: str, sizes: list[int], seed: int) -> list[list[int]]:
    """For each of `sizes` (ascending), indices into `examples` in the order drawn, each list a
    prefix of the next. Per-class targets: the examples are visited in a seeded order, and one is
    taken while any of its classes has fewer than k taken, so a single-label class gets exactly
    min(k, its examples) and a multi-label class at least that (examples carry several classes).
    Other targets: the first k of the seeded order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    classes_of = _CLASSES_OF.get(target)
    samples, chosen, taken, counts = [], [], set(), Counter()
    for size in sorted(sizes):
        if classes_of is None:
            chosen = order[:size]
        else:  # continue from the smaller sample: it stays inside this one
            for index in order:
                if index in taken:
                    continue
                classes = classes_of(examples[index])
                if any(counts[c] < size for c in classes):
                    taken.add(index)
                    chosen.append(index)
                    counts.update(classes)
        samples.append(list(chosen))
    return samples


@dataclass(frozen=True)
class CurveSample:
    """One point of a curve for one subsample seed: which training and dev examples it holds."""

    size: int
    """k: examples per class, or examples in all (`per_class`)."""
    seed: int
    """The subsample seed."""
    train: list[int]
    """Indices into the task's training split, ascending."""
    dev: list[int]
    """Indices into the task's dev split, ascending; never more than `train`."""
    short: dict[str, int]
    """Classes with fewer than `size` training examples: how many it has (all taken). Token tasks
    and regression: {"examples": n} when the split holds fewer than `size`."""
    dev_cut: int
    """Dev examples drawn at this size but left out so that dev is no larger than train."""

    def record(self) -> dict:
        """What the evaluate stage saves of it: counts, not indices."""
        return {"size": self.size, "subsample_seed": self.seed, "train": len(self.train), "dev": len(self.dev),
                "short": self.short, "dev_cut": self.dev_cut}


def curve_samples(task: Task, sizes: list[int], seed: int) -> list[CurveSample]:
    """The nested samples of `task` at each of `sizes` (ascending) for one subsample seed."""
    trains = nested_samples(task.train, task.target, sizes, seed)
    devs = nested_samples(task.dev, task.target, sizes, seed)
    classes_of = _CLASSES_OF.get(task.target)
    samples = []
    for size, train, dev in zip(sorted(sizes), trains, devs, strict=True):
        if classes_of:
            counts = Counter(c for i in train for c in classes_of(task.train[i]))
            short = {c: n for c, n in sorted(counts.items()) if n < size}
        else:
            short = {"examples": len(train)} if len(train) < size else {}
        kept = dev[: len(train)]  # drawn order: the cut keeps the samples nested
        samples.append(CurveSample(size, seed, sorted(train), sorted(kept), short, len(dev) - len(kept)))
    return samples


def subsampled(task: Task, sample: CurveSample) -> Task:
    """`task` with only the sample's training and dev examples (its classes and test split as they
    were: every model is scored on the same full test set with the same head)."""
    note = f"learning curve: {sample.size} {size_unit(task.target)} (subsample seed {sample.seed}): train {len(sample.train)}, " \
           f"dev {len(sample.dev)}"
    return dataclasses.replace(task, train=[task.train[i] for i in sample.train],
                               dev=[task.dev[i] for i in sample.dev], notes=[*task.notes, note])

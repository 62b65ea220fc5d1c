"""A task's train / dev / test examples, read by the generic readers and the recipe's mapping (no
task-specific code), with its classes and what was done to its data.

An example is a dict of the roles its type needs: {"text", "label"} (classification, relation),
plus "text_pair" (pair-classification, yes-no-qa, regression over pairs), {"text", "label": [..]}
(multi-label), {"text", "choices", "label": "<index>"} (multiple-choice), {"tokens", "tags"}
(token-classification; gold tags as read, in any of IO / BIO / BIOES).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field

from domainlm import demo
from domainlm.config import TaskConfig
from domainlm.errors import InputError
from domainlm.tasks.readers import example, read_split
from domainlm.tasks.tagging import to_scheme
from domainlm.tasks.types import TASK_TYPES

log = logging.getLogger(__name__)

ENTITY_TOKENS = ["[E1]", "[/E1]", "[E2]", "[/E2]"]


@dataclass
class Task:
    name: str
    type: str
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    labels: list[str]
    """Class names; for token-classification the tags of the training scheme (`tagging`)."""
    metric: str = ""
    tagging: str = "bio"
    max_length: int | None = None
    notes: list[str] = field(default_factory=list)
    """What was done to the data (held-out splits with their seed, subsampling)."""
    extra_tokens: list[str] = field(default_factory=list)
    """Tokens the model's tokenizer must learn (relation markers)."""

    def __post_init__(self):
        self.metric = self.metric or TASK_TYPES[self.type].headline

    @property
    def target(self) -> str:
        """What one example's gold is: class, classes, number, tags or choice (`tasks.types`)."""
        return TASK_TYPES[self.type].target

    def gold(self, split: str) -> list:
        """The gold value of each example of `split` (tags for token tasks, else the label)."""
        return [x["tags"] if self.target == "tags" else x["label"] for x in getattr(self, split)]

    def texts(self, splits=("train", "dev", "test")) -> list[str]:
        """Plain text of the examples (for decontamination and the domain-distance score)."""
        out = []
        for split in splits:
            for x in getattr(self, split):
                if "tokens" in x:
                    out.append(" ".join(x["tokens"]))
                else:
                    out.append(" ".join([x["text"], x.get("text_pair", ""), *x.get("choices", [])]).strip())
        return out


def mark_entities(text: str, markers: list[str], mode: str) -> str:
    """Rewrite a text whose two entities are wrapped in `markers` (start1, end1, start2, end2):
    `mark` -> [E1] mention [/E1] ... [E2] mention [/E2]; `replace` -> [E1] ... [E2]."""
    if mode == "text":
        return text
    for (start, end), number in ((markers[:2], 1), (markers[2:], 2)):
        pattern = re.compile(re.escape(start) + r"\s*(.*?)\s*" + re.escape(end), re.S)
        if mode == "replace":
            text = pattern.sub(f"[E{number}]", text, count=1)
        else:
            text = pattern.sub(lambda m, n=number: f"[E{n}] {m.group(1)} [/E{n}]", text, count=1)
    return text


def _held_out(examples: list, size: float, seed: int) -> tuple[list, list]:
    """(rest, held out): a seeded share (< 1) or count of `examples`."""
    count = round(size * len(examples)) if size < 1 else int(size)
    if not 0 < count < len(examples):
        raise InputError(f"cannot hold out {count} of {len(examples)} examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def _subsample(examples: list, limit: int | None, seed: int) -> list:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def _read(config: TaskConfig) -> dict[str, list[dict] | None]:
    """Each split's examples as configured (None for a split to be held out of train)."""
    if config.format == "python-docs":
        return {split: demo.TASKS[config.name](split) for split in ("train", "dev", "test")}
    splits = {}
    for split in ("train", "dev", "test"):
        spec = config.split_config(split)
        splits[split] = None if spec is None else [example(r, config) for r in read_split(config, spec)]
    return splits


# Per target: the training examples and tagging scheme -> the task's classes (the head's outputs).
_CLASSES = {
    "class": lambda train, scheme: sorted({x["label"] for x in train}),
    "classes": lambda train, scheme: sorted({label for x in train for label in x["label"]}),
    "number": lambda train, scheme: [],
    "tags": lambda train, scheme: sorted({t for x in train for t in to_scheme(x["tags"], scheme)} | {"O"}),
    "choice": lambda train, scheme: [str(i) for i in range(max(len(x["choices"]) for x in train))],
}


def _complete_splits(config: TaskConfig, splits: dict[str, list[dict] | None]) -> list[str]:
    """Hold dev / test out of train where they have no file (in place); the notes saying so."""
    notes = []
    for split, size in (("test", config.test_size), ("dev", config.dev_size)):
        if splits[split] is None:
            try:
                splits["train"], splits[split] = _held_out(splits["train"], size, config.split_seed)
            except InputError as err:
                raise InputError(f"task '{config.name}': no {split} file, and {split}_size {size:g}: {err}") from None
            notes.append(f"{split}: {len(splits[split])} examples held out of train (split_seed {config.split_seed})")
            log.info("task %s: %s", config.name, notes[-1])
    for split, examples in splits.items():
        if not examples:
            raise InputError(f"task '{config.name}': the {split} split is empty")
    return notes


def load_task(config: TaskConfig, seed: int = 0) -> Task:
    """Read a task's splits (held-out dev / test carved from train when missing; subsampled as
    configured, the same for every model)."""
    kind = TASK_TYPES[config.type]
    splits = _read(config)
    notes = _complete_splits(config, splits)
    if kind.entity_markers:
        for examples in splits.values():
            for x in examples:
                x["text"] = mark_entities(x["text"], config.entity_markers or [], config.entity_mode)
    limits = {"train": config.max_train_examples, "dev": config.max_eval_examples, "test": config.max_eval_examples}
    kept = {split: _subsample(splits[split], limit, seed) for split, limit in limits.items()}
    notes += [f"{split}: {len(kept[split])} of {len(splits[split])} examples (seed {seed})"
              for split in limits if len(kept[split]) < len(splits[split])]
    labels = _CLASSES[kind.target](splits["train"], config.tagging)
    extra = {"mark": ENTITY_TOKENS, "replace": ENTITY_TOKENS[::2]}.get(config.entity_mode, []) \
        if kind.entity_markers else []
    return Task(config.name, config.type, kept["train"], kept["dev"], kept["test"], labels, metric=config.metric or "",
                tagging=config.tagging, max_length=config.max_length, notes=notes, extra_tokens=extra)


def task_eval_texts(configs: list[TaskConfig]) -> dict[str, list[str]]:
    """The full dev and test text of every task (what decontamination protects), by task name."""
    texts = {}
    for config in configs:
        loaded = load_task(config.model_copy(update={"max_eval_examples": None}))
        texts[config.name] = loaded.texts(("dev", "test"))
    return texts

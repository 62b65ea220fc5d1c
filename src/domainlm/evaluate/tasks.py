"""Tasks: train / dev / test examples of one type, read by the generic readers and the recipe's
mapping (no task-specific code).

An example is a dict of the roles its type needs: {"text", "label"} (classification, relation),
plus "text_pair" (pair-classification, yes-no-qa, regression over pairs), {"text", "label": [..]}
(multi-label), {"text", "choices", "label": "<index>"} (multiple-choice), {"tokens", "tags"}
(token-classification; gold tags as read, in any of IO / BIO / BIOES).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from domainlm.config import TaskConfig
from domainlm.corpus.readers import InputError
from domainlm.evaluate.metrics import HEADLINE, to_scheme
from domainlm.evaluate.readers import example, read_split

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
        self.metric = self.metric or HEADLINE[self.type]

    def gold(self, split: str) -> list:
        return [x["tags"] if self.type == "token-classification" else x["label"] for x in getattr(self, split)]

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
    if config.format == "python-docs":
        from domainlm import demo

        read = demo.module_task if config.name == "docstring-module" else demo.params_task
        if config.type == "token-classification":
            return {s: [{"tokens": w, "tags": t} for w, t in read(s)] for s in ("train", "dev", "test")}
        return {s: [{"text": x, "label": y} for x, y in read(s)] for s in ("train", "dev", "test")}
    splits = {}
    for split in ("train", "dev", "test"):
        spec = config.split_config(split)
        splits[split] = None if spec is None else [example(r, config) for r in read_split(config, spec)]
    return splits


def load_task(config: TaskConfig, seed: int = 0) -> Task:
    """Read a task's splits (held-out dev / test carved from train when missing; subsampled as
    configured, the same for every model)."""
    splits = _read(config)
    notes = []
    for split, size in (("test", config.test_size), ("dev", config.dev_size)):
        if splits[split] is None:
            try:
                splits["train"], splits[split] = _held_out(splits["train"], size, config.split_seed)
            except InputError as err:
                raise InputError(f"task '{config.name}': no {split} file, and {split}_size {size:g}: {err}") from None
            notes.append(f"{split}: {len(splits[split])} examples held out of train (split_seed {config.split_seed})")
            print(f"task {config.name}: {notes[-1]}")
    for split, examples in splits.items():
        if not examples:
            raise InputError(f"task '{config.name}': the {split} split is empty")
    if config.type == "relation":
        for examples in splits.values():
            for x in examples:
                x["text"] = mark_entities(x["text"], config.entity_markers or [], config.entity_mode)
    train = _subsample(splits["train"], config.max_train_examples, seed)
    dev = _subsample(splits["dev"], config.max_eval_examples, seed)
    test = _subsample(splits["test"], config.max_eval_examples, seed)
    for split, kept, full in (("train", train, splits["train"]), ("dev", dev, splits["dev"]), ("test", test, splits["test"])):
        if len(kept) < len(full):
            notes.append(f"{split}: {len(kept)} of {len(full)} examples (seed {seed})")
    if config.type == "token-classification":
        labels = sorted({t for x in splits["train"] for t in to_scheme(x["tags"], config.tagging)} | {"O"})
    elif config.type == "multi-label":
        labels = sorted({label for x in splits["train"] for label in x["label"]})
    elif config.type == "regression":
        labels = []
    elif config.type == "multiple-choice":
        labels = [str(i) for i in range(max(len(x["choices"]) for x in splits["train"]))]
    else:
        labels = sorted({x["label"] for x in splits["train"]})
    extra = {"mark": ENTITY_TOKENS, "replace": ENTITY_TOKENS[::2]}.get(config.entity_mode, []) \
        if config.type == "relation" else []
    return Task(config.name, config.type, train, dev, test, labels, metric=config.metric or "",
                tagging=config.tagging, max_length=config.max_length, notes=notes, extra_tokens=extra)

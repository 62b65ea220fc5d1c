"""Task readers: each task becomes train / dev / test lists of examples and a label set.

- classification examples: `(text, label)`
- token-classification examples: `(words, tags)` with IOB2 tags
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from domainlm.config import TaskConfig
from domainlm.corpus.readers import InputError, iter_jsonl, open_text


@dataclass
class Task:
    name: str
    type: str  # "classification" | "token-classification"
    train: list
    dev: list
    test: list
    labels: list[str]  # class names, or the tag set for token classification

    @property
    def metric(self) -> str:
        """The headline metric of the task."""
        return "entity_f1" if self.type == "token-classification" else "micro_f1"


def read_jsonl_examples(path: str, text_field: str, label_field: str) -> list[tuple[str, str]]:
    examples = []
    for number, record in iter_jsonl(path):
        for field in (text_field, label_field):
            if field not in record:
                raise InputError(f"{path}:{number}: missing field '{field}'")
        examples.append((str(record[text_field]), str(record[label_field])))
    return examples


def read_conll(path: str) -> list[tuple[list[str], list[str]]]:
    """`token<TAB>tag` lines (the tag is the last column), a blank line between sentences."""
    sentences, words, tags = [], [], []
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if words:
                    sentences.append((words, tags))
                    words, tags = [], []
                continue
            columns = line.split("\t") if "\t" in line else line.split()
            if len(columns) < 2:
                raise InputError(f"{path}:{number}: expected 'token<TAB>tag', got {line!r}")
            words.append(columns[0])
            tags.append(columns[-1])
    if words:
        sentences.append((words, tags))
    return sentences


def _subsample(examples: list, limit: int | None, seed: int) -> list:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def load_task(config: TaskConfig, seed: int = 0) -> Task:
    """Read a task's three splits (subsampled as configured, the same for every model)."""
    if config.format == "python-docs":
        from domainlm import demo

        read = demo.module_task if config.name == "docstring-module" else demo.params_task
        splits = {split: read(split) for split in ("train", "dev", "test")}
    elif config.format == "conll":
        splits = {split: read_conll(getattr(config, split)) for split in ("train", "dev", "test")}
    else:
        splits = {split: read_jsonl_examples(getattr(config, split), config.text_field, config.label_field)
                  for split in ("train", "dev", "test")}
    for split, examples in splits.items():
        if not examples:
            raise InputError(f"task '{config.name}': the {split} split is empty")
    train = _subsample(splits["train"], config.max_train_examples, seed)
    dev = _subsample(splits["dev"], config.max_eval_examples, seed)
    test = _subsample(splits["test"], config.max_eval_examples, seed)
    if config.type == "token-classification":
        labels = sorted({t for _, tags in splits["train"] for t in tags} | {"O"})
    else:
        labels = sorted({label for _, label in splits["train"]})
    return Task(config.name, config.type, train, dev, test, labels)

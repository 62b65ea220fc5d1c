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
from collections import Counter
from dataclasses import dataclass, field

from domainlm import demo
from domainlm.config import TaskConfig
from domainlm.errors import ConfigError, InputError
from domainlm.tasks.mapping import example, explode
from domainlm.tasks.readers import read_split
from domainlm.tasks.retrieval import Collection, read_retrieval
from domainlm.tasks.tagging import spans, to_scheme
from domainlm.tasks.types import TASK_TYPES

log = logging.getLogger(__name__)

ENTITY_TOKENS = ["[E1]", "[/E1]", "[E2]", "[/E2]"]
SPLITS = ("train", "dev", "test")


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
    """What was done to the data and what is odd in it (held-out splits with their seed,
    subsampling, dev/test labels never seen in train, replaced invalid UTF-8, unmarked entities)."""
    unseen_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per dev / test split: each label (entity type, for token tasks) that no training example
    carries, and how many of the split's examples carry it (they can never be predicted right)."""
    invalid_utf8: int = 0
    """Characters of the task's files that were invalid UTF-8, replaced by U+FFFD."""
    extra_tokens: list[str] = field(default_factory=list)
    """Tokens the model's tokenizer must learn (relation markers)."""
    template: str | None = None
    """Prompt-based fine-tuning's template (the recipe's, else the type's; None: it does not apply)."""
    documents: dict[str, str] = field(default_factory=dict)
    """retrieval: the collection every query's documents are ranked from (id -> title and text)."""
    titles: dict[str, str] = field(default_factory=dict)
    """retrieval: the titles of the documents that have one (id -> title)."""
    verbalizer: dict[str, list[str]] = field(default_factory=dict)
    """Prompt-based fine-tuning: the recipe's words per label (the others are found automatically)."""

    def __post_init__(self):
        self.metric = self.metric or TASK_TYPES[self.type].headline

    @property
    def ranks(self) -> bool:
        """Whether models rank `documents` per query (retrieval) instead of predicting a label."""
        return TASK_TYPES[self.type].ranks

    @property
    def target(self) -> str:
        """What one example's gold is: class, classes, number, tags or choice (`tasks.types`)."""
        return TASK_TYPES[self.type].target

    def gold(self, split: str) -> list:
        """The gold value of each example of `split` (tags for token tasks, relevant documents for
        retrieval, else the label)."""
        key = {"tags": "tags", "ranking": "relevant"}.get(self.target, "label")
        return [x[key] for x in getattr(self, split)]

    def texts(self, splits=("train", "dev", "test")) -> list[str]:
        """Plain text of the examples as the model reads them (for the domain-distance score;
        decontamination looks for `task_eval_texts`, the text as a corpus would hold it)."""
        out = []
        for split in splits:
            for x in getattr(self, split):
                if "tokens" in x:
                    out.append(" ".join(x["tokens"]))
                elif "relevant" in x:  # a query, then its relevant documents
                    out += [x["text"], *(self.documents[d] for d in x["relevant"])]
                else:
                    out.append(" ".join([x["text"], x.get("text_pair", ""), *x.get("choices", [])]).strip())
        return out


def _entity_patterns(markers: list[str]) -> list[re.Pattern]:
    """The regular expressions of entity 1 and entity 2 (start, mention, end) of `markers`."""
    return [re.compile(re.escape(start) + r"\s*(.*?)\s*" + re.escape(end), re.S)
            for start, end in (markers[:2], markers[2:])]


def mark_entities(text: str, markers: list[str], mode: str) -> str:
    """Rewrite a text whose two entities are wrapped in `markers` (start1, end1, start2, end2):
    `mark` -> [E1] mention [/E1] ... [E2] mention [/E2]; `replace` -> [E1] ... [E2]."""
    if mode == "text":
        return text
    for pattern, number in zip(_entity_patterns(markers), (1, 2), strict=True):
        if mode == "replace":
            text = pattern.sub(f"[E{number}]", text, count=1)
        else:
            text = pattern.sub(lambda m, n=number: f"[E{n}] {m.group(1)} [/E{n}]", text, count=1)
    return text


def unmark_entities(text: str, markers: list[str]) -> str:
    """`text` as written before its entities were wrapped in `markers`: each mention kept, every
    marker (an unpaired one too) removed, runs of whitespace made one space."""
    for pattern in _entity_patterns(markers):  # as `mark_entities` finds them (so "@" never eats "@@")
        text = pattern.sub(lambda m: m.group(1), text, count=1)
    for marker in sorted(markers, key=len, reverse=True):
        text = text.replace(marker, " ")
    return " ".join(text.split())


def has_entities(text: str, markers: list[str]) -> bool:
    """Whether both entities of `text` are wrapped in `markers`."""
    return all(pattern.search(text) for pattern in _entity_patterns(markers))


def _held_out(groups: list, size: float, seed: int) -> tuple[list, list]:
    """(rest, held out): a seeded share (< 1) or count of `groups` (the examples of one record)."""
    count = round(size * len(groups)) if size < 1 else int(size)
    if not 0 < count < len(groups):
        raise InputError(f"cannot hold out {count} of {len(groups)} records")
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(groups) if i not in held], [groups[i] for i in sorted(held)]


def _subsample(examples: list, limit: int | None, seed: int) -> list:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def _pairs(config: TaskConfig, spec) -> tuple[list[dict], int]:
    """A retrieval split of (query, document) pair records as {"text", "text_pair"} examples."""
    records, invalid = read_split(config, spec)
    return [example(record, config) for record in records], invalid


def _read(config: TaskConfig) -> tuple[dict[str, list[list[dict]] | None], dict[str, int], Collection, list[str]]:
    """(each split's examples as configured, grouped by the record they came from — None for a
    split to be held out of train; the invalid UTF-8 characters replaced in each file read; a
    retrieval task's documents (empty for other types); notes on what was left out)."""
    if config.format == "python-docs":
        return {split: [[x] for x in demo.TASKS[config.name](split)] for split in SPLITS}, {}, Collection(), []
    if TASK_TYPES[config.type].target == "ranking":
        return read_retrieval(config, lambda spec: _pairs(config, spec))
    splits, invalid = {}, {}
    for split in SPLITS:
        spec = config.split_config(split)
        if spec is None:
            splits[split] = None
            continue
        records, invalid[spec.path] = read_split(config, spec)
        splits[split] = [[example(part, config) for part in explode(record, config)] for record in records]
    return splits, invalid, Collection(), []


# Per target: the training examples and tagging scheme -> the task's classes (the head's outputs).
_CLASSES = {
    "class": lambda train, scheme: sorted({x["label"] for x in train}),
    "classes": lambda train, scheme: sorted({label for x in train for label in x["label"]}),
    "number": lambda train, scheme: [],
    "tags": lambda train, scheme: sorted({t for x in train for t in to_scheme(x["tags"], scheme)} | {"O"}),
    "choice": lambda train, scheme: [str(i) for i in range(max(len(x["choices"]) for x in train))],
    "ranking": lambda train, scheme: [],
}

# Per target: the labels one example carries (entity types for tags), to find those unseen in train.
_LABELS_OF = {
    "class": lambda x: {x["label"]},
    "classes": lambda x: set(x["label"]),
    "number": lambda x: set(),
    "tags": lambda x: {entity_type for _, _, entity_type in spans(x["tags"])},
    "choice": lambda x: set(),
    "ranking": lambda x: set(),
}


def unseen_labels(target: str, train: list[dict], evaluated: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Per split of `evaluated` (dev, test): each label no `train` example carries, with the number
    of the split's examples that carry it; splits without such labels are left out."""
    labels_of = _LABELS_OF[target]
    seen = set().union(*(labels_of(x) for x in train))
    unseen = {}
    for split, examples in evaluated.items():
        counts = Counter(label for x in examples for label in labels_of(x) - seen)
        if counts:
            unseen[split] = dict(sorted(counts.items()))
    return unseen


def _complete_splits(config: TaskConfig, groups: dict[str, list[list[dict]] | None]) -> tuple[dict, list[str]]:
    """(each split's examples grouped by record, dev / test held out of train by record where they
    have no file; the notes saying so). InputError for a split left empty."""
    notes = []
    for split, size in (("test", config.test_size), ("dev", config.dev_size)):
        if groups[split] is None:
            try:
                groups["train"], groups[split] = _held_out(groups["train"], size, config.split_seed)
            except InputError as err:
                raise InputError(f"task '{config.name}': no {split} file, and {split}_size {size:g}: {err}") from None
            count = sum(len(group) for group in groups[split])
            notes.append(f"{split}: {count} examples held out of train (split_seed {config.split_seed})")
            log.info("task %s: %s", config.name, notes[-1])
    zero_shot = TASK_TYPES[config.type].target == "ranking" and not config.train  # test queries only
    for split in ("test",) if zero_shot else SPLITS:
        if not any(groups[split]):
            raise InputError(f"task '{config.name}': the {split} split is empty")
    if zero_shot:
        notes.append("no training queries: only models that need no fine-tuning are scored (BM25, zero-shot)")
    return groups, notes


def _flat(groups: list[list[dict]]) -> list[dict]:
    return [x for group in groups for x in group]


def _mark(config: TaskConfig, splits: dict[str, list[dict]]) -> list[str]:
    """Rewrite each relation example's entity markers as `entity_mode` says (in place); notes on
    examples without both entities marked. InputError when a split has none marked."""
    markers, notes = config.entity_markers, []
    if not markers:  # entity_mode: text without markers: the texts stay as they are
        return notes
    for split, examples in splits.items():
        unmarked = sum(not has_entities(x["text"], markers) for x in examples)
        if unmarked == len(examples):
            spec = config.split_config(split) or config.split_config("train")
            raise InputError(f"task '{config.name}': no {split} example ({spec.path}) has both entities marked "
                             f"with {' '.join(markers)}; check `entity_markers` (first text: "
                             f"{examples[0]['text'][:80]!r})")
        if unmarked:
            notes.append(f"{split}: {unmarked} of {len(examples)} examples lack the entity markers "
                         f"{' '.join(markers)}")
        for x in examples:
            x["text"] = mark_entities(x["text"], markers, config.entity_mode)
    return notes


def _findings(config: TaskConfig, unseen: dict[str, dict[str, int]], invalid: dict[str, int]) -> list[str]:
    """Notes on what a reader of the results must know: unseen labels, replaced invalid UTF-8."""
    what = "entity types" if TASK_TYPES[config.type].target == "tags" else "labels"
    notes = [f"{split}: {what} never seen in train: "
             + ", ".join(f"{label} ({n} example{'s' * (n != 1)})" for label, n in found.items())
             for split, found in unseen.items()]
    if sum(invalid.values()):
        notes.append("invalid UTF-8 replaced by U+FFFD: " + ", ".join(f"{n} characters in {path}"
                                                                       for path, n in invalid.items() if n))
    for note in notes:
        log.warning("task %s: %s", config.name, note)
    return notes


def _examples(config: TaskConfig) -> tuple[dict[str, list[list[dict]]], list[str], dict[str, int], Collection]:
    """(each split's examples grouped by the record they came from, held out of train where a
    split has no file, relation entities rewritten as `entity_mode` says; the notes; the invalid
    UTF-8 characters replaced per file; a retrieval task's documents)."""
    groups, invalid, collection, found = _read(config)
    groups, notes = _complete_splits(config, groups)
    if TASK_TYPES[config.type].entity_markers:
        notes += _mark(config, {split: _flat(groups[split]) for split in SPLITS})  # rewrites the shared dicts
    return groups, found + notes, invalid, collection


def load_task(config: TaskConfig, seed: int = 0) -> Task:
    """Read a task's splits (held-out dev / test carved from train when missing; subsampled as
    configured, the same for every model), with notes on what was done and what is odd."""
    kind = TASK_TYPES[config.type]
    groups, notes, invalid, collection = _examples(config)
    splits = {split: _flat(groups[split]) for split in SPLITS}
    limits = {"train": config.max_train_examples, "dev": config.max_eval_examples, "test": config.max_eval_examples}
    kept = {split: _subsample(splits[split], limit, seed) for split, limit in limits.items()}
    notes += [f"{split}: {len(kept[split])} of {len(splits[split])} examples (seed {seed})"
              for split in limits if len(kept[split]) < len(splits[split])]
    unseen = unseen_labels(kind.target, splits["train"], {"dev": kept["dev"], "test": kept["test"]})
    notes += _findings(config, unseen, invalid)
    labels = _CLASSES[kind.target](splits["train"], config.tagging)
    extra = {"mark": ENTITY_TOKENS, "replace": ENTITY_TOKENS[::2]}.get(config.entity_mode, []) \
        if kind.entity_markers else []
    prompt = config.prompt
    verbalizer = (prompt.verbalizer if prompt else None) or {}
    if unknown := [label for label in verbalizer if label not in labels]:
        raise ConfigError(f"tasks.{config.name}.prompt.verbalizer: label {unknown[0]!r} is not a class of the task's "
                          f"training split ({', '.join(labels)})")
    return Task(config.name, config.type, kept["train"], kept["dev"], kept["test"], labels, metric=config.metric or "",
                tagging=config.tagging, max_length=config.max_length, notes=notes, extra_tokens=extra,
                unseen_labels=unseen, invalid_utf8=sum(invalid.values()),
                template=(prompt.template if prompt else None) or kind.template, verbalizer=verbalizer,
                documents=collection.texts, titles=collection.titles)


# How decontamination reads a task: the settings that only shape what a model is fed are set to
# leave the text as written (the markers are then stripped by `unmark_entities`, and an exploded
# record is looked for as its whole text, not as `context` windows), so they never change what is
# looked for, nor the corpus stage's fingerprint.
_AS_WRITTEN = {"entity_mode": "text", "context": "none", "max_train_examples": None, "max_eval_examples": None}


_SLOT = re.compile(r"\{(text|text_pair|mask)\}")


def prompt_text(template: str, example: dict, mask_token: str) -> str:
    """`example` in a prompt template: its text and text_pair where the template has them, the
    model's mask token for `{mask}` (one pass: braces inside the example's text stay as written)."""
    return _SLOT.sub(lambda m: mask_token if m.group(1) == "mask" else str(example.get(m.group(1), "")), template)


def _main_text(x: dict, markers: list[str] | None) -> str:
    """An example's first text as written: tokens joined by spaces (the matcher's words ignore the
    spacing around punctuation), a relation's entities unmarked."""
    if "tokens" in x:
        return " ".join(x["tokens"])
    return unmark_entities(x["text"], markers) if markers else x["text"]


def corpus_texts(x: dict, markers: list[str] | None = None, documents: dict[str, str] | None = None) -> list[str]:
    """The texts of one example as a corpus could hold them, each on its own: the text, its second
    text (a pair's, a question's context; never joined to the first), and for multiple choice the
    question followed by its right answer (never the options joined), for a retrieval query its
    relevant documents (from `documents`). `markers`: a relation's entity markers, which are
    stripped."""
    text = _main_text(x, markers)
    texts = [text, x.get("text_pair", "")]
    texts += [documents[d] for d in x.get("relevant", ())]  # a retrieval query's relevant documents
    if "choices" in x:
        texts.append(f"{text} {x['choices'][int(x['label'])]}")
    return [t for t in texts if t.strip()]


def record_texts(record: list[dict], markers: list[str] | None = None,
                 documents: dict[str, str] | None = None) -> list[str]:
    """The texts of one record's examples (`corpus_texts`), and for a record exploded into several
    texts (an abstract's sentences) those texts joined in order, as the document they came from."""
    texts = [t for x in record for t in corpus_texts(x, markers, documents)]
    parts = list(dict.fromkeys(_main_text(x, markers) for x in record))
    if len(parts) > 1:
        texts.append(" ".join(parts))
    return texts


def task_eval_texts(configs: list[TaskConfig]) -> dict[str, list[str]]:
    """Per task name, its distinct dev and test texts as a corpus would hold them (what
    decontamination looks for): markers stripped, entities as written, each text of an example on
    its own. The same whatever the fine-tuning-only settings (`entity_mode`, `context`, `tagging`,
    subsampling)."""
    texts = {}
    for config in configs:
        groups, _, _, collection = _examples(config.model_copy(update=_AS_WRITTEN))
        documents = collection.texts
        markers = config.entity_markers if TASK_TYPES[config.type].entity_markers else None
        found = {}  # insertion-ordered set
        for record in groups["dev"] + groups["test"]:
            found.update(dict.fromkeys(record_texts(record, markers, documents)))
        texts[config.name] = list(found)
    return texts

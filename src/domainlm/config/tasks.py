"""The `tasks:` list: where each task's files are and how their records map to the roles of its type."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from domainlm.config.base import Section, input_exists
from domainlm.demo import TASKS as DEMO_TASKS
from domainlm.tasks.types import TASK_TYPES


class SplitConfig(Section):
    """One split of a task: a file (or HF dataset folder), optionally only some of its records."""

    path: str
    """The split's file (or `hf` dataset folder)."""
    ids: str | None = None
    """Keep only records whose `id` field is listed in this file (a JSON list, the keys of a JSON
    object, or one id per line)."""
    exclude_ids: str | None = None
    """Drop records whose `id` is listed in this file (same forms)."""
    split: str | None = None
    """For `hf` datasets saved with `save_to_disk` as a DatasetDict: which split."""


PLACEHOLDERS = ("{text}", "{text_pair}", "{mask}")  # what a prompt template may hold


class PromptConfig(Section):
    """How prompt-based fine-tuning (a model entry's `finetuning: prompt`) puts this task to a
    masked LM: the template around the input and the words that stand for each label
    (docs/evaluation.md, "Prompt-based fine-tuning")."""

    template: str | None = None
    """The input as the masked LM reads it: `{text}` (and `{text_pair}` for pair types) where the
    example's texts go, `{mask}` once where the label word is predicted, e.g. "{text} It was
    {mask}." (default: the task type's, `tasks.types`)."""
    verbalizer: dict[str, str | list[str]] | None = None
    """Label -> the word (or words, their logits averaged) that stands for it, each one token of
    the model's vocabulary, e.g. {positive: great, negative: terrible}. Labels left out get a word
    found automatically: the label's name when it is one token, else the word the pretrained masked
    LM favours most for that label's training examples (docs/evaluation.md)."""

    @field_validator("template")
    @classmethod
    def _one_mask(cls, template: str | None) -> str | None:
        if template is None:
            return None
        if template.count("{mask}") != 1:
            raise ValueError("a template needs `{mask}` exactly once: where the masked LM predicts the label word, "
                             'e.g. "{text} It was {mask}."')
        if "{text}" not in template:
            raise ValueError("a template needs `{text}`: where the example's text goes")
        unknown = set(re.findall(r"\{[^{}]*\}", template)) - set(PLACEHOLDERS)
        if unknown:
            raise ValueError(f"unknown placeholder {sorted(unknown)[0]}; a template may hold {', '.join(PLACEHOLDERS)}")
        return template

    @field_validator("verbalizer")
    @classmethod
    def _words(cls, verbalizer: dict | None) -> dict[str, list[str]] | None:
        if verbalizer is None:
            return None
        words = {label: [value] if isinstance(value, str) else value for label, value in verbalizer.items()}
        for label, listed in words.items():
            if not listed or any(not word.strip() or len(word.split()) != 1 for word in listed):
                raise ValueError(f"label {label!r}: give one or more single words (each one token of the "
                                 f"model's vocabulary), got {verbalizer[label]!r}")
        return words


class TaskConfig(Section):
    # Added after runs existed: without a prompt section (retrieval's files), fingerprints leave it out.
    LATER = {"prompt": ("prompt",), "queries": ("queries",), "documents": ("documents",)}

    name: str
    """Names the task in results and the report (unique in the recipe)."""
    type: Literal[tuple(TASK_TYPES)]
    """classification (text -> label), multi-label (text -> labels), pair-classification (text,
    text_pair -> label), regression (text[, text_pair] -> number), token-classification (tokens ->
    tags), relation (text with two marked entities -> label), multiple-choice (text + choices ->
    index of the right choice), yes-no-qa (question, context -> yes / no / maybe), retrieval
    (query -> documents ranked from `documents`); the table in `domainlm.tasks.types`."""
    format: Literal["jsonl", "json", "csv", "tsv", "conll", "hf", "python-docs"] = "jsonl"
    """jsonl: one object per line. json: a list of objects, or an object of id -> object (the id
    becomes field `id`). csv / tsv: rows with a header line, or named by `columns`. conll: one token
    per line, columns separated by tabs or spaces, a blank line between sentences (2 columns
    `token tag` or 4 columns CoNLL-2003 style: tokens from `fields.tokens`, tags from `fields.tags`,
    by default the first and the last column). hf: a dataset saved with `datasets.save_to_disk`.
    python-docs: a task built from Python's own documentation (see `domainlm.demo`). A retrieval
    task with `queries` reads its splits as qrels: tsv, the default there."""
    train: str | SplitConfig = ""
    """The training split: a path, or `{path, ids, exclude_ids, split}`."""
    dev: str | SplitConfig | None = None
    """Missing: `dev_size` of train is held out as dev (a seeded, logged split)."""
    test: str | SplitConfig | None = None
    """Missing: `test_size` of train is held out as test (a seeded, logged split)."""
    fields: dict[str, str | int | list[str]] = Field(default_factory=dict)
    """Where each role is found in a record: text, text_pair, label, tokens, tags, choices, id
    (field names; column numbers for headerless csv/tsv/conll; for `choices` a list-valued field or
    a list of fields). Defaults: text -> "text", label -> "label", tokens -> column 0, tags -> the
    last column. A list-valued text field is joined with spaces."""
    columns: list[str] | None = None
    """Column names of a csv / tsv file without a header line."""
    comment_prefix: str | None = None
    """Lines starting with this are skipped (csv / tsv / conll), e.g. "###" or "# doc 12". In conll
    a comment is a whole line where a sentence may start, never a line inside a sentence nor one
    that reads as a token line (a tab, or the file's columns with a valid tag): a token `#` or
    `#2` stays a token."""
    label_separator: str | None = None
    """multi-label: labels given as one string joined by this separator."""
    label_names: list[str] | None = Field(default=None, min_length=1)
    """Names of integer label or tag ids, in id order (id i is `label_names[i]`), for files and `hf`
    datasets that give ids without names (ClassLabel names are read by themselves), e.g.
    [O, B-Chemical, I-Chemical]. Integer tags without names are an error; integer classes without
    names stay class names ("0", "1")."""
    explode: list[str] | None = Field(default=None, min_length=1)
    """Fields holding parallel lists (e.g. [sentences, labels] of an abstract, PubMed RCT style):
    each record becomes one example per position, each listed field taking its element there (the
    other fields are shared). Lists of unequal length are an error; held-out splits keep a record's
    examples together."""
    context: Literal["none", "all", "neighbours"] = "none"
    """With `explode`: the exploded text's context, given to the model as the second text: `all`
    the whole list joined (the abstract), `neighbours` the elements before and after it."""
    tagging: Literal["io", "bio", "bioes"] = "bio"
    """Tagging scheme the token-classification model is trained with (gold tags may be in any of
    IO / BIO / BIOES; predictions are scored as entities against the gold entities). A gold tag
    that is neither `O` nor prefixed (B-, I-, E-, S-, L-, U-) is an error, except with `io`, which
    reads a bare type (`Disease`) as IO's `I-Disease`."""
    entity_markers: list[str] | None = Field(default=None, min_length=4, max_length=4)
    """relation: the four strings around entity 1 and entity 2 in the text (start, end, start,
    end), e.g. ["<<", ">>", "[[", "]]"]."""
    entity_mode: Literal["text", "mark", "replace"] = "mark"
    """relation: `mark` puts [E1] ... [/E1] and [E2] ... [/E2] tokens around the entities; `replace`
    replaces each entity mention by a [E1] / [E2] placeholder; `text` leaves the markers as text."""
    metric: str | None = None
    """Headline metric (default by type: entity_f1, micro_f1, pearson or accuracy)."""
    dev_size: float = Field(default=0.1, gt=0)
    """Held-out share (< 1) or count (>= 1) of train used as dev when `dev` is missing."""
    test_size: float = Field(default=0.2, gt=0)
    """Held-out share (< 1) or count (>= 1) of train used as test when `test` is missing."""
    split_seed: int = 0
    """Seed of the held-out splits (logged with the task)."""
    max_length: int | None = Field(default=None, ge=8)
    """Longest input in tokens for this task (default: evaluate.max_length)."""
    max_train_examples: int | None = Field(default=None, ge=1)
    """Subsample the training split (seeded, the same for every model)."""
    max_eval_examples: int | None = Field(default=None, ge=1)
    """Subsample dev and test (seeded, the same for every model)."""
    queries: str | None = None
    """retrieval in the BEIR layout: the queries file (JSONL `{"_id", "text"}`, `queries.jsonl`); the
    splits are then relevance judgements (`qrels/{train,dev,test}.tsv`: query-id, corpus-id, score,
    with or without the header line; TREC's 4-column qrels too). Without it, a retrieval split is
    a file of (query, relevant document) pairs read like any other type's (`fields.text`: the
    query, `fields.text_pair`: the document)."""
    documents: str | None = None
    """retrieval: the document collection, JSONL `{"_id", "title", "text"}` (BEIR's `corpus.jsonl`;
    `id` for `_id`, `title` optional) or text with one document per line (ids `line-<n>`). Needed
    with `queries`; with pairs, documents added to the pairs' own as candidates (distractors)."""
    prompt: PromptConfig | None = None
    """Prompt-based fine-tuning's template and verbalizer for this task (None: the type's template
    and automatic label words); read only by model entries with `finetuning: prompt`."""

    @model_validator(mode="before")
    @classmethod
    def _qrels_format(cls, data):
        """With `queries` (BEIR's layout) the splits are qrels, TSV: the format need not be written."""
        if isinstance(data, dict) and data.get("queries") and "format" not in data:
            return data | {"format": "tsv"}
        return data

    @field_validator("train", "dev", "test", mode="before")
    @classmethod
    def _split(cls, value):
        return {"path": value} if isinstance(value, str) and value else value

    def split_config(self, split: str) -> SplitConfig | None:
        """The configured file of `split` (train, dev or test), or None when it is held out of train."""
        value = getattr(self, split)
        return value or None

    def files(self, splits=("train", "dev", "test")) -> list[str]:
        """Every file the given splits read (data and id lists); a held-out split reads train."""
        specs = [self.split_config(s) or self.split_config("train") for s in splits if self.format != "python-docs"]
        paths = [p for spec in specs if spec for p in (spec.path, spec.ids, spec.exclude_ids)]
        paths += [self.queries, self.documents]
        return list(dict.fromkeys(p for p in paths if p))

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.format == "python-docs":
            if self.name not in DEMO_TASKS:
                raise ValueError(f"python-docs task name must be one of {', '.join(DEMO_TASKS)}, got '{self.name}'")
            return self
        if not self.train and not (self.queries and self.test):  # a BEIR set may hold test queries only
            raise ValueError(f"task '{self.name}' needs a `train` file")
        for split in ("train", "dev", "test"):
            spec = self.split_config(split)
            if spec is None:
                continue
            for what in ("path", "ids", "exclude_ids"):
                value = getattr(spec, what)
                if value and not input_exists(value):
                    label = "file" if what == "path" else f"{what} file"
                    raise ValueError(f"task '{self.name}' {split} {label} not found: {value}")
        if TASK_TYPES[self.type].entity_markers and self.entity_mode != "text" and not self.entity_markers:
            raise ValueError(f"task '{self.name}' (relation): give `entity_markers` (the 4 strings around the "
                             f"two entities) or set entity_mode: text")
        self._check_explode()
        self._check_prompt()
        self._check_retrieval()
        return self

    def _check_retrieval(self) -> None:
        """`queries` and `documents` belong to retrieval; the BEIR layout needs both, its qrels as TSV."""
        for key in ("queries", "documents"):
            value = getattr(self, key)
            if value and TASK_TYPES[self.type].target != "ranking":
                raise ValueError(f"task '{self.name}': `{key}` belongs to retrieval tasks, not {self.type}")
            if value and not input_exists(value):
                raise ValueError(f"task '{self.name}' {key} file not found: {value}")
        if self.queries and not self.documents:
            raise ValueError(f"task '{self.name}': `queries` (the BEIR layout) needs `documents` (corpus.jsonl)")
        if self.queries and self.format != "tsv":
            raise ValueError(f"task '{self.name}': with `queries` the splits are qrels files; set format: tsv "
                             f"(got {self.format})")

    def _check_prompt(self) -> None:
        """A prompt section needs a type prompt-based fine-tuning applies to, and a template that
        holds the type's texts."""
        if self.prompt is None:
            return
        kind = TASK_TYPES[self.type]
        if kind.template is None:
            supported = ", ".join(name for name, t in TASK_TYPES.items() if t.template)
            raise ValueError(f"task '{self.name}': prompt: prompt-based fine-tuning applies to {supported}, not "
                             f"{self.type}; remove tasks.{self.name}.prompt")
        template = self.prompt.template or kind.template
        if kind.text_pair == "yes" and "{text_pair}" not in template:
            raise ValueError(f"task '{self.name}': prompt.template needs `{{text_pair}}`: a {self.type} example has "
                             f"a second text (got {template!r})")
        if kind.text_pair == "no" and "{text_pair}" in template:
            raise ValueError(f"task '{self.name}': prompt.template holds `{{text_pair}}`, but a {self.type} "
                             f"example has one text (got {template!r})")

    def _check_explode(self) -> None:
        """`context` needs the text field exploded, and a type whose second text it can be."""
        if self.context == "none":
            return
        text = self.fields.get("text", "text")
        if text not in (self.explode or []):
            raise ValueError(f"task '{self.name}': context: {self.context} needs the text field {text!r} in "
                             f"`explode` (got explode: {self.explode})")
        if TASK_TYPES[self.type].text_pair == "yes" or TASK_TYPES[self.type].target in ("tags", "choice"):
            raise ValueError(f"task '{self.name}': context: {self.context} gives a second text, which a "
                             f"{self.type} task cannot take; use classification, multi-label, relation or "
                             f"regression")

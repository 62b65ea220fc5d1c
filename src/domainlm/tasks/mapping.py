"""Records to examples, by the recipe's declarative mapping: which field holds each role (text,
label, tokens, ...), and what each role's value must be.

Every value is checked where it is read, and a bad one is refused naming its place (`file:line`),
the field, the value as the file wrote it and what was expected: a null or a list where one label
is expected, a number or null where text is expected, a tag that is not a tag, an integer id with
no `label_names`. Nothing the file did not hold is made up by `str()` ("None", "12345", "[1, 2]").
`explode` turns one record of parallel lists (an abstract's sentences and their labels) into one
record per position before the roles are picked.
"""

from __future__ import annotations

import json
import math
from typing import Any

from domainlm.config import TaskConfig
from domainlm.errors import InputError
from domainlm.tasks.tagging import tag_problem
from domainlm.tasks.types import TASK_TYPES

DEFAULT_FIELDS = {"text": "text", "text_pair": "text_pair", "label": "label", "tokens": "tokens", "tags": "tags",
                  "choices": "choices", "id": "id"}


def required_fields(task: TaskConfig) -> list[tuple[str, str]]:
    """(role, field name) for every field a record of `task` must hold (what a header must name)."""
    fields = DEFAULT_FIELDS | task.fields
    kind = TASK_TYPES[task.type]
    roles = ["tokens", "tags"] if kind.target == "tags" else ["text"] if kind.target == "ranking" else ["text", "label"]
    roles += ["text_pair"] if kind.text_pair == "yes" else []
    pairs = [(role, fields[role]) for role in roles]
    if kind.target == "choice":
        choices = fields["choices"]
        pairs += [("choices", name) for name in (choices if isinstance(choices, list) else [choices])]
    return [(role, name) for role, name in pairs if isinstance(name, str)]


def _shown(value: Any) -> str:
    """A value as the file wrote it, shortened: null, 12345, ["a", 1], "text"."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _get(record: dict, field, role: str) -> Any:
    if field not in record:
        raise InputError(f"{record.get('_where', '?')}: missing field {field!r} (the task's `{role}`); "
                         f"record has {sorted(str(k) for k in record if not str(k).startswith('_'))}")
    return record[field]


def _refuse(record: dict, field, role: str, value, expected: str) -> InputError:
    """The error for a role's value: its place, field (None: a CoNLL column), value and what was expected."""
    what = f"field {field!r} (the task's `{role}`)" if field is not None else f"the task's `{role}`"
    return InputError(f"{record.get('_where', '?')}: {what} is {_shown(value)}; expected {expected}")


def _text(record: dict, field, role: str) -> str:
    """A text role: a string, or a list of strings joined by spaces (never null or a number)."""
    value = _get(record, field, role)
    parts = value if isinstance(value, list) else [value]
    if not all(isinstance(part, str) for part in parts):
        raise _refuse(record, field, role, value, "text (a string, or a list of strings)")
    return " ".join(parts)


def _named(value, task: TaskConfig, record: dict, field, role: str):
    """An integer id (or a string of digits) as its name in `label_names`; without `label_names`,
    or for any other value, the value itself."""
    if not task.label_names or isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        index, count = int(value), len(task.label_names)
        if not 0 <= index < count:
            unlabelled = " (-1 marks an unlabelled example in HF datasets: this split has no gold labels)"
            raise _refuse(record, field, role, value, f"an id of `label_names` (0 to {count - 1})"
                          + (unlabelled if index == -1 else ""))
        return task.label_names[index]
    return value


def _class_name(value, task: TaskConfig, record: dict, field, role: str = "label") -> str:
    """One class: a string or a number (an id named by `label_names` when given), stripped."""
    value = _named(value, task, record, field, role)
    if value is None or isinstance(value, list | dict):
        raise _refuse(record, field, role, value, "one label (a string or an integer)")
    name = str(value).strip()
    if not name:
        raise _refuse(record, field, role, value, "a label, not an empty string")
    return name


def _multi_label(label, record: dict, task: TaskConfig) -> dict[str, Any]:
    field = (DEFAULT_FIELDS | task.fields)["label"]
    if isinstance(label, str):
        label = label.split(task.label_separator) if task.label_separator else [label]
    elif label is None or isinstance(label, dict):
        raise _refuse(record, field, "label", label, "a list of labels (or a string; [] for none)")
    values = label if isinstance(label, list) else [label]
    names = {_class_name(v, task, record, field) for v in values if not (isinstance(v, str) and not v.strip())}
    return {"label": sorted(names)}


def _number(label, record: dict, task: TaskConfig) -> dict[str, Any]:
    try:
        number = float(label) if not isinstance(label, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise _refuse(record, (DEFAULT_FIELDS | task.fields)["label"], "label", label, "a finite number")
    return {"label": number}


def _choice(label, record: dict, task: TaskConfig) -> dict[str, Any]:
    spec = (DEFAULT_FIELDS | task.fields)["choices"]
    if isinstance(spec, list):
        choices = [_text(record, name, "choices") for name in spec]
    else:
        options = _get(record, spec, "choices")
        if not isinstance(options, list):
            raise _refuse(record, spec, "choices", options, "a list of choices")
        choices = [_option(option, record, spec) for option in options]
    return {"choices": choices, "label": _choice_index(label, choices, record, task)}


def _option(option, record: dict, field) -> str:
    """One choice of a list: text (a list of strings is joined) or a number, never null."""
    if isinstance(option, int | float) and not isinstance(option, bool):
        return str(option)
    return _text({"_where": record.get("_where"), field: option}, field, "choices")


def _choice_index(label, choices: list[str], record: dict, task: TaskConfig) -> str:
    """The right choice as an index string: from an index, a letter (A, B, ...) or the choice text."""
    if label is None or isinstance(label, list | dict | bool):
        raise _refuse(record, (DEFAULT_FIELDS | task.fields)["label"], "label", label,
                      "an index, a letter or a choice's text")
    text = str(label).strip()
    if text.isdigit() and int(text) < len(choices):
        return text
    if len(text) == 1 and text.isalpha() and ord(text.upper()) - ord("A") < len(choices):
        return str(ord(text.upper()) - ord("A"))
    if text in choices:
        return str(choices.index(text))
    raise InputError(f"{record.get('_where', '?')}: answer {label!r} is not an index, a letter or one of the "
                     f"{len(choices)} choices")


# Per target (except tags): a record's label value -> the example's gold roles.
_GOLD = {
    "class": lambda label, record, task: {
        "label": _class_name(label, task, record, (DEFAULT_FIELDS | task.fields)["label"])},
    "classes": _multi_label,
    "number": _number,
    "choice": _choice,
}


def _place(record: dict, i: int) -> str:
    """Where token `i` of a record is: its file line (CoNLL), else the record and the token index."""
    if "_lines" in record:
        return f"{record['_where'].rpartition(':')[0]}:{record['_lines'][i]}"
    return f"{record.get('_where', '?')} token {i}"


def _tag(value, i: int, record: dict, field, task: TaskConfig) -> str:
    """One gold tag, checked: a tag string (an integer id named by `label_names`)."""
    where = {"_where": _place(record, i)}
    value = _named(value, task, where, field, "tags")
    digits = isinstance(value, str) and value.strip().isdigit()
    if (isinstance(value, int) and not isinstance(value, bool)) or digits:
        raise _refuse(where, field, "tags", value, "a tag name: these look like integer tag ids; give their "
                      "names in id order as the task's `label_names`, e.g. [O, B-Chemical, I-Chemical]")
    if not isinstance(value, str):
        raise _refuse(where, field, "tags", value, "a tag (O, B-Type, I-Type, ...)")
    problem = tag_problem(value.strip(), bare_types=task.tagging == "io")
    if problem:
        hint = "; if the tags are bare entity types (IO without I-), set `tagging: io`" \
            if "no scheme prefix" in problem else ""
        what = f"field {field!r}" if field is not None else "the tag column"
        raise InputError(f"{where['_where']}: tag {value!r} ({what}) {problem}{hint}")
    return value.strip()


def _token_example(record: dict, task: TaskConfig) -> dict[str, Any]:
    fields = DEFAULT_FIELDS | task.fields
    if task.format == "conll":  # the reader already took the columns that `fields` names (and checked tokens)
        tokens, tags, field = record["tokens"], record["tags"], None
    else:
        tokens, tags, field = _get(record, fields["tokens"], "tokens"), _get(record, fields["tags"], "tags"), \
            fields["tags"]
        for role, value in (("tokens", tokens), ("tags", tags)):
            if not isinstance(value, list):
                raise _refuse(record, fields[role], role, value, "a list (one entry per word)")
    if len(tokens) != len(tags):
        raise InputError(f"{record.get('_where', '?')}: {len(tokens)} tokens but {len(tags)} tags")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token.strip():
            raise _refuse({"_where": _place(record, i)}, None if field is None else fields["tokens"], "tokens", token,
                          "a word (a non-empty string)")
    return {"tokens": list(tokens), "tags": [_tag(tag, i, record, field, task) for i, tag in enumerate(tags)]}


def example(record: dict, task: TaskConfig) -> dict[str, Any]:
    """The roles of one record the task type needs, e.g. {"text", "label"} for classification;
    InputError naming the record's place, the field and the value for anything that is not what
    the role needs."""
    kind = TASK_TYPES[task.type]
    if kind.target == "tags":
        return _token_example(record, task)
    fields = DEFAULT_FIELDS | task.fields
    out = {"text": _text(record, fields["text"], "text")}
    if "_context" in record:
        out["text_pair"] = record["_context"]
    elif kind.text_pair == "yes" or (kind.text_pair == "optional" and fields["text_pair"] in record):
        out["text_pair"] = _text(record, fields["text_pair"], "text_pair")
    if kind.target == "ranking":  # a (query, relevant document) pair: its gold is the pair itself
        return out
    return out | _GOLD[kind.target](_get(record, fields["label"], "label"), record, task)


# `context` of an exploded text: its whole list, or the elements on either side of it.
_CONTEXTS = {
    "all": lambda texts, i: " ".join(texts),
    "neighbours": lambda texts, i: " ".join(texts[max(i - 1, 0):i] + texts[i + 1:i + 2]),
}


def explode(record: dict, task: TaskConfig) -> list[dict]:
    """One record per position of the task's `explode` fields (parallel lists), each holding that
    position's elements, `_where` "file:line element i" and, with `context`, `_context`; without
    `explode`, [record]. InputError for a field that is not a list, or lists of unequal length."""
    if not task.explode:
        return [record]
    where = record.get("_where", "?")
    lists = {field: _get(record, field, "explode") for field in task.explode}
    for field, value in lists.items():
        if not isinstance(value, list):
            raise _refuse(record, field, "explode", value, "a list (explode reads parallel lists)")
    lengths = {len(value) for value in lists.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{field} {len(value)}" for field, value in lists.items())
        raise InputError(f"{where}: the `explode` lists differ in length ({sizes}); they must be parallel")
    text_field = (DEFAULT_FIELDS | task.fields)["text"]
    texts = [_text({"_where": f"{where} element {i}", text_field: t}, text_field, "text")
             for i, t in enumerate(lists.get(text_field, []))]
    parts = []
    for i in range(lengths.pop() if lengths else 0):
        part = record | {field: value[i] for field, value in lists.items()} | {"_where": f"{where} element {i}"}
        if task.context != "none":
            part["_context"] = _CONTEXTS[task.context](texts, i)
        parts.append(part)
    return parts

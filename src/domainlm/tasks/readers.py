"""Task files to records, and records to examples, by the recipe's declarative mapping.

Readers know formats, not tasks: JSONL, JSON (a list, or an object of id -> record), CSV / TSV
(with a header line or named `columns`), CoNLL-style token-per-line files (2 or 4 columns), and
datasets saved with `datasets.save_to_disk`. Each record carries where it came from (`file:line`)
so that a bad one is reported by its place. `example()` then picks each role (text, label,
tokens, ...) out of a record by `TaskConfig.fields`.
"""

from __future__ import annotations

import csv
import json
from typing import Any

from domainlm.config import SplitConfig, TaskConfig
from domainlm.errors import InputError
from domainlm.io import iter_jsonl, load_dataset_split, open_text, read_ids
from domainlm.tasks.types import TASK_TYPES

DEFAULT_FIELDS = {"text": "text", "text_pair": "text_pair", "label": "label", "tokens": "tokens", "tags": "tags",
                  "choices": "choices", "id": "id"}


def read_conll(path: str, token_column: int = 0, tag_column: int = -1,
               comment_prefix: str | None = None) -> list[dict[str, Any]]:
    """Sentences of a token-per-line file: columns split by tabs (or any whitespace when a line
    has no tab), a blank line between sentences, `-DOCSTART-` lines skipped."""
    records, tokens, tags, first = [], [], [], 0
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("-DOCSTART-") or (comment_prefix and line.startswith(comment_prefix)):
                if tokens:
                    records.append({"tokens": tokens, "tags": tags, "_where": f"{path}:{first}"})
                    tokens, tags = [], []
                continue
            columns = line.split("\t") if "\t" in line else line.split()
            if len(columns) < 2:
                raise InputError(f"{path}:{number}: expected 'token<TAB>tag' (2 or more columns), got {line!r}")
            try:
                token, tag = columns[token_column], columns[tag_column]
            except IndexError:
                raise InputError(f"{path}:{number}: expected a token in column {token_column} and a tag in column "
                                 f"{tag_column}, got {line!r}") from None
            if not tokens:
                first = number
            tokens.append(token)
            tags.append(tag)
    if tokens:
        records.append({"tokens": tokens, "tags": tags, "_where": f"{path}:{first}"})
    return records


def read_table(path: str, delimiter: str, columns: list[str] | None, comment_prefix: str | None) -> list[dict]:
    """CSV / TSV rows as dicts: keyed by the header line, or by `columns` when given."""
    records, numbers = [], []

    def lines(handle):  # blank and comment lines skipped; `numbers` maps what is read to file lines
        for number, line in enumerate(handle, start=1):
            if line.strip() and not (comment_prefix and line.startswith(comment_prefix)):
                numbers.append(number)
                yield line

    with open_text(path) as handle:
        reader = csv.reader(lines(handle), delimiter=delimiter)
        header = columns
        for row in reader:
            number = numbers[reader.line_num - 1]  # where the row ends (a quoted field may span lines)
            if header is None:
                header = row
                continue
            if len(row) != len(header):
                raise InputError(f"{path}:{number}: expected {len(header)} columns ({', '.join(header)}), "
                                 f"got {len(row)}")
            records.append(dict(zip(header, row, strict=True)) | {"_where": f"{path}:{number}"})
    return records


def read_json_records(path: str) -> list[dict]:
    with open_text(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(data, dict):
        items = [({"id": str(key)} | value, f"{path}:{key}") for key, value in data.items() if isinstance(value, dict)]
    elif isinstance(data, list):
        items = [(value, f"{path}:[{i}]") for i, value in enumerate(data) if isinstance(value, dict)]
    else:
        raise InputError(f"{path}: expected a JSON list of objects or an object of id -> object")
    if not items:
        raise InputError(f"{path}: no JSON objects found")
    return [record | {"_where": where} for record, where in items]


def read_hf(spec: SplitConfig) -> list[dict]:
    """The records of a dataset saved with `save_to_disk`, ClassLabel ids turned into their names."""
    data, _ = load_dataset_split(spec.path, spec.split)
    names = {key: feature.names for key, feature in data.features.items() if hasattr(feature, "names")}
    sequence_names = {key: feature.feature.names for key, feature in data.features.items()
                      if hasattr(getattr(feature, "feature", None), "names")}
    records = []
    for i, row in enumerate(data):
        for key, labels in names.items():  # ClassLabel ids -> their names
            row[key] = labels[row[key]]
        for key, labels in sequence_names.items():
            row[key] = [labels[v] for v in row[key]]
        records.append(row | {"_where": f"{spec.path}[{spec.split or ''}][{i}]"})
    return records


def read_split(task: TaskConfig, spec: SplitConfig) -> list[dict]:
    """The records of one split, filtered by `ids` / `exclude_ids`."""
    fields = DEFAULT_FIELDS | task.fields
    if task.format == "conll":
        records = read_conll(spec.path, _column(task.fields.get("tokens", 0)), _column(task.fields.get("tags", -1)),
                             task.comment_prefix)
    elif task.format in ("csv", "tsv"):
        records = read_table(spec.path, "," if task.format == "csv" else "\t", task.columns, task.comment_prefix)
    elif task.format == "json":
        records = read_json_records(spec.path)
    elif task.format == "hf":
        records = read_hf(spec)
    else:
        records = [record | {"_where": f"{spec.path}:{number}"} for number, record in iter_jsonl(spec.path)]
    for key, keep in (("ids", True), ("exclude_ids", False)):
        if getattr(spec, key):
            wanted = read_ids(getattr(spec, key))
            records = [r for r in records if (str(r.get(fields["id"])) in wanted) == keep]
    if not records:
        raise InputError(f"task '{task.name}': no records in {spec.path}" + (" after the id filter" if spec.ids else ""))
    return records


def _column(value) -> int:
    if isinstance(value, int):
        return value
    raise InputError(f"conll fields.tokens / fields.tags must be column numbers, got {value!r}")


def _get(record: dict, field, role: str) -> Any:
    if field not in record:
        raise InputError(f"{record.get('_where', '?')}: missing field {field!r} (the task's `{role}`); "
                         f"record has {sorted(k for k in record if not str(k).startswith('_'))}")
    return record[field]


def _text(value) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _multi_label(label, record: dict, fields: dict, task: TaskConfig) -> dict[str, Any]:
    if isinstance(label, str):
        label = label.split(task.label_separator) if task.label_separator else [label]
    return {"label": sorted({str(v).strip() for v in label if str(v).strip()})}


def _number(label, record: dict, fields: dict, task: TaskConfig) -> dict[str, Any]:
    try:
        return {"label": float(label)}
    except (TypeError, ValueError):
        raise InputError(f"{record.get('_where', '?')}: regression label {label!r} is not a number") from None


def _choice(label, record: dict, fields: dict, task: TaskConfig) -> dict[str, Any]:
    spec = fields["choices"]
    choices = [_text(_get(record, f, "choices")) for f in spec] if isinstance(spec, list) \
        else [_text(c) for c in _get(record, spec, "choices")]
    return {"choices": choices, "label": _choice_index(label, choices, record)}


# Per target (except tags): a record's label value -> the example's gold roles.
_GOLD = {
    "class": lambda label, record, fields, task: {"label": str(label).strip()},
    "classes": _multi_label,
    "number": _number,
    "choice": _choice,
}


def example(record: dict, task: TaskConfig) -> dict[str, Any]:
    """The roles of one record the task type needs, e.g. {"text", "label"} for classification."""
    fields = DEFAULT_FIELDS | task.fields
    kind = TASK_TYPES[task.type]
    if kind.target == "tags":
        if task.format == "conll":  # the reader already took the columns that `fields` names
            tokens, tags = record["tokens"], record["tags"]
        else:
            tokens, tags = _get(record, fields["tokens"], "tokens"), _get(record, fields["tags"], "tags")
        if len(tokens) != len(tags):
            raise InputError(f"{record.get('_where', '?')}: {len(tokens)} tokens but {len(tags)} tags")
        return {"tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags]}
    out = {"text": _text(_get(record, fields["text"], "text"))}
    label = _get(record, fields["label"], "label")
    if kind.text_pair == "yes" or (kind.text_pair == "optional" and fields["text_pair"] in record):
        out["text_pair"] = _text(_get(record, fields["text_pair"], "text_pair"))
    return out | _GOLD[kind.target](label, record, fields, task)


def _choice_index(label, choices: list[str], record: dict) -> str:
    """The right choice as an index string: from an index, a letter (A, B, ...) or the choice text."""
    text = str(label).strip()
    if text.isdigit() and int(text) < len(choices):
        return text
    if len(text) == 1 and text.isalpha() and ord(text.upper()) - ord("A") < len(choices):
        return str(ord(text.upper()) - ord("A"))
    if text in choices:
        return str(choices.index(text))
    raise InputError(f"{record.get('_where', '?')}: answer {label!r} is not an index, a letter or one of the "
                     f"{len(choices)} choices")

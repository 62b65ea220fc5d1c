"""Task files to records: one reader per format, each record carrying where it came from.

Readers know formats, not tasks: JSONL, JSON (a list, or an object of id -> record), CSV / TSV
(with a header line or named `columns`; TSV has no quoting), CoNLL-style token-per-line files
(2 or 4 columns), and datasets saved with `datasets.save_to_disk`. A text file is read whole by
`io.read_text`: a leading byte-order mark is dropped and invalid UTF-8 is replaced and counted.
Each record carries `_where` ("file:line") so that a bad one is reported by its place, and a
file that looks like another format than the configured one (JSONL read as CoNLL) is refused
naming both. `tasks.mapping` then picks each role (text, label, tokens, ...) out of a record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator

from domainlm.config import SplitConfig, TaskConfig
from domainlm.errors import InputError
from domainlm.io import iter_jsonl, load_dataset_split, read_ids, read_text
from domainlm.tasks.mapping import DEFAULT_FIELDS, required_fields
from domainlm.tasks.tagging import tag_problem

FORMAT_NAMES = {"json": "JSON (one document)", "jsonl": "JSONL (one object per line)", "tsv": "TSV (tab-separated)",
                "csv": "CSV (comma-separated)", "conll": "CoNLL (token and tag columns)"}


def _lines(text: str) -> Iterator[tuple[int, str]]:
    return enumerate(text.split("\n"), start=1)


def read_conll(text: str, path: str, token_column: int = 0, tag_column: int = -1,
               comment_prefix: str | None = None) -> list[dict]:
    """Sentences of a token-per-line file's `text`: records {"tokens", "tags", "_where", "_lines"}
    (`_lines`: each token's line number).

    Columns are split by tabs (or any whitespace on a line without a tab) and stripped; a blank
    line or a `-DOCSTART-` line ends a sentence. Every token line has as many columns as the
    first one. A line starting with `comment_prefix` is a comment only where a sentence may start,
    and only if it is not a token line there (`_token_line`); inside a sentence it is a token
    line: tokens `#` and `#2` stay tokens.
    """
    records, sentence, width = [], None, None
    for number, line in _lines(text):
        line = line.rstrip()  # whitespace after the last column is not another column
        if not line.strip() or line.startswith("-DOCSTART-"):
            sentence = None
            continue
        if sentence is None and comment_prefix and line.startswith(comment_prefix) \
                and not _token_line(line, width, tag_column):
            continue
        columns = [column.strip() for column in (line.split("\t") if "\t" in line else line.split())]
        width = width or (len(columns), number)
        _check_columns(columns, width, f"{path}:{number}", line, (token_column, tag_column), comment_prefix)
        if sentence is None:
            sentence = {"tokens": [], "tags": [], "_where": f"{path}:{number}", "_lines": []}
            records.append(sentence)
        sentence["tokens"].append(columns[token_column])
        sentence["tags"].append(columns[tag_column])
        sentence["_lines"].append(number)
    return records


def _token_line(line: str, width: tuple[int, int] | None, tag_column: int) -> bool:
    """Whether a comment-prefixed line at a sentence start is a token line after all: it has a tab,
    or the file's number of token columns with a valid tag in the tag column ("# O", not "# doc 7")."""
    if "\t" in line:
        return True
    columns = line.split()
    return width is not None and len(columns) == width[0] and tag_problem(columns[tag_column]) is None


def _check_columns(columns: list[str], width: tuple[int, int], where: str, line: str, wanted: tuple[int, int],
                   comment_prefix: str | None) -> None:
    """One CoNLL token line: 2 or more columns, as many as the file's first token line, a token."""
    if len(columns) < 2:
        raise InputError(f"{where}: expected 'token<TAB>tag' (2 or more columns), got {line!r}")
    if len(columns) != width[0]:
        hint = " (a comment line belongs before a sentence, after a blank line)" \
            if comment_prefix and line.startswith(comment_prefix) else ""
        raise InputError(f"{where}: {len(columns)} columns, but the first token line (line {width[1]}) has "
                         f"{width[0]}; every token line needs the same columns, got {line!r}{hint}")
    try:
        token = columns[wanted[0]]
        columns[wanted[1]]
    except IndexError:
        raise InputError(f"{where}: expected a token in column {wanted[0]} and a tag in column {wanted[1]}, "
                         f"got {line!r}") from None
    if not token:
        raise InputError(f"{where}: empty token in column {wanted[0]}, got {line!r}")


def _table_lines(text: str, comment_prefix: str | None, quoted: bool, numbers: list[int]) -> Iterator[str]:
    """The lines a csv reader reads: blank and comment lines skipped, but only outside a quoted CSV
    field that spans lines; `numbers` collects each line's number in the file."""
    inside = False
    for number, line in _lines(text):
        if not inside and (not line.strip() or (comment_prefix and line.startswith(comment_prefix))):
            continue
        inside ^= quoted and line.count('"') % 2 == 1  # a doubled "" inside a field keeps the parity
        numbers.append(number)
        yield line + "\n"


def read_table(text: str, path: str, delimiter: str, columns: list[str] | None, comment_prefix: str | None,
               required: list[tuple[str, str]] = ()) -> list[dict]:
    """CSV / TSV rows as dicts keyed by the header line, or by `columns` when given. TSV has no
    quoting (a `"` is text, every line one row); CSV follows the CSV rules (a quoted field may
    span lines). `required`: (role, field) pairs a header line must name: a header without one
    is refused, saying it may be data (a file without a header needs `columns`)."""
    numbers: list[int] = []
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    # strict: text after a closing quote (`"a" b`) or a quote that never closes is an error, not
    # quotes silently dropped or the rest of the file read into one field
    reader = csv.reader(_table_lines(text, comment_prefix, delimiter == ",", numbers), delimiter=delimiter,
                        quoting=quoting, strict=True)
    records, header, done = [], columns, 0  # done: the lines the rows so far took
    try:
        for row in reader:
            number = numbers[reader.line_num - 1]  # where the row ends (a quoted field may span lines)
            done = reader.line_num
            if header is None:
                header = row
                _check_header(header, required, f"{path}:{number}")
                continue
            if len(row) != len(header):
                raise InputError(f"{path}:{number}: expected {len(header)} columns ({', '.join(header)}), "
                                 f"got {len(row)}")
            records.append(dict(zip(header, row, strict=True)) | {"_where": f"{path}:{number}"})
    except csv.Error as err:
        start = numbers[min(done, len(numbers) - 1)] if numbers else 1  # where the unreadable row starts
        unclosed = f": a quoted field opens on line {start} and never closes" \
            if "unexpected end of data" in str(err) else ""
        raise InputError(f"{path}:{start}: not readable as {'CSV' if delimiter == ',' else 'TSV'} "
                         f"({err}{unclosed})") from None
    return records


def _check_header(header: list[str], required: list[tuple[str, str]], where: str) -> None:
    missing = [(role, name) for role, name in required if name not in header]
    if missing:
        role, name = missing[0]
        raise InputError(f"{where}: the header line {header} has no column {name!r} (the task's `{role}`); if "
                         f"this line is data (the file has no header line), name the columns with `columns:`")


def read_json_records(text: str, path: str) -> list[dict]:
    """The objects of a JSON list, or of an object of id -> object (the id becomes field `id`);
    `_where` is the file and the index or id. Anything else in the list or object is refused."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if isinstance(data, dict):
        items = [(value, f"{path}[{key!r}]", {"id": str(key)}) for key, value in data.items()]
    elif isinstance(data, list):
        items = [(value, f"{path}[{i}]", {}) for i, value in enumerate(data)]
    else:
        raise InputError(f"{path}: expected a JSON list of objects or an object of id -> object")
    if not items:
        raise InputError(f"{path}: no JSON objects found")
    for value, where, _ in items:
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a JSON object (one record), got {json.dumps(value)[:60]}")
    return [extra | value | {"_where": where} for value, where, extra in items]


def read_hf(spec: SplitConfig) -> list[dict]:
    """The records of a dataset saved with `save_to_disk`, ClassLabel ids turned into their names.
    An id of -1 (HF's mark of an unlabelled example, as in test splits published without labels)
    is refused naming the row and the field."""
    data, _ = load_dataset_split(spec.path, spec.split)
    names = {key: feature.names for key, feature in data.features.items() if hasattr(feature, "names")}
    sequence_names = {key: feature.feature.names for key, feature in data.features.items()
                      if hasattr(getattr(feature, "feature", None), "names")}
    records = []
    for i, row in enumerate(data):
        where = f"{spec.path}[{spec.split or ''}][{i}]"
        for key, labels in names.items():
            row[key] = _class_label_name(row[key], labels, where, key)
        for key, labels in sequence_names.items():
            row[key] = [_class_label_name(value, labels, where, key) for value in row[key]]
        records.append(row | {"_where": where})
    return records


def _class_label_name(value, names: list[str], where: str, field: str) -> str:
    if value is None or not 0 <= value < len(names):
        why = "-1 marks an unlabelled example: this split has no gold labels" if value == -1 \
            else f"the ClassLabel has {len(names)} names"
        raise InputError(f"{where}: field {field!r} holds class id {value} ({why})")
    return names[value]


def looks_like(text: str, comment_prefix: str | None = None) -> tuple[set[str], int, str]:
    """(the formats a file's `text` could be in, judged by its first line that is not blank or a
    comment; that line's number; the line). An empty set when nothing stands out."""
    head = text[: 1 << 20]  # the first line is found in the first MiB (a longer one is cut: no guess)
    number, first = next(((n, line) for n, line in _lines(head)
                          if line.strip() and not (comment_prefix and line.startswith(comment_prefix))), (0, ""))
    formats = set()
    if first.lstrip().startswith(("{", "[")):
        formats |= {"json"} if _parses(text) else set()
        formats |= {"jsonl"} if first.lstrip().startswith("{") and isinstance(_parses(first), dict) else set()
        return formats, number, first
    formats |= {"tsv", "conll"} if "\t" in first else set()
    formats |= {"csv", "conll"} if "," in first else set()
    return formats, number, first


def _parses(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def check_format(text: str, path: str, task: TaskConfig) -> None:
    """InputError when the file's content shows another format than the task's `format`."""
    formats, number, line = looks_like(text, task.comment_prefix)
    if formats and task.format not in formats:
        guess = next(name for name in FORMAT_NAMES if name in formats)
        raise InputError(f"{path}: this looks like {FORMAT_NAMES[guess]}, not {FORMAT_NAMES[task.format]} "
                         f"(line {number}: {line[:80]!r}); check the task's `format`")


def _column(value) -> int:
    if isinstance(value, int):
        return value
    raise InputError(f"conll fields.tokens / fields.tags must be column numbers, got {value!r}")


# Per text format: (the file's text, its path, the task) -> its records.
_READERS: dict[str, Callable[[str, str, TaskConfig], list[dict]]] = {
    "conll": lambda text, path, task: read_conll(text, path, _column(task.fields.get("tokens", 0)),
                                                 _column(task.fields.get("tags", -1)), task.comment_prefix),
    "csv": lambda text, path, task: read_table(text, path, ",", task.columns, task.comment_prefix,
                                               required_fields(task)),
    "tsv": lambda text, path, task: read_table(text, path, "\t", task.columns, task.comment_prefix,
                                               required_fields(task)),
    "json": lambda text, path, task: read_json_records(text, path),
    "jsonl": lambda text, path, task: [record | {"_where": f"{path}:{number}"}
                                       for number, record in iter_jsonl(path, text.split("\n"))],
}


def read_split(task: TaskConfig, spec: SplitConfig) -> tuple[list[dict], int]:
    """(the records of one split, filtered by `ids` / `exclude_ids`; the number of characters that
    replacing invalid UTF-8 in its file introduced)."""
    fields = DEFAULT_FIELDS | task.fields
    if task.format == "hf":
        records, invalid = read_hf(spec), 0
    else:
        text, invalid = read_text(spec.path)
        check_format(text, spec.path, task)
        records = _READERS[task.format](text, spec.path, task)
    for key, keep in (("ids", True), ("exclude_ids", False)):
        if getattr(spec, key):
            wanted = read_ids(getattr(spec, key))
            records = [r for r in records if (str(r.get(fields["id"])) in wanted) == keep]
    if not records:
        filtered = " after the id filter" if spec.ids or spec.exclude_ids else ""
        raise InputError(f"task '{task.name}': no records in {_split_place(task, spec)}{filtered}")
    return records, invalid


def _split_place(task: TaskConfig, spec: SplitConfig) -> str:
    """Where a split's records come from: `folder (split 'test'), the task's test split`."""
    roles = "/".join(role for role in ("train", "dev", "test") if task.split_config(role) == spec)
    hf_split = f" (split '{spec.split}')" if task.format == "hf" and spec.split else ""
    return f"{spec.path}{hf_split}" + (f", the task's {roles} split" if roles else "")

"""Readers: split each configured source into work units and stream each unit's records.

A record is a document `{"id", "text", "source", "invalid_bytes"}` or, for input that cannot give
one, a skip `{"id", "source", "skip", "detail"}` with `skip` one of `invalid_json`,
`not_an_object`, `missing_text`, `invalid_csv` (a CSV row with another number of fields than the
header, or broken quoting; its detail names the file's lines, as editors count, and both counts).
Nothing raises on bad records; a whole source that cannot be read (missing column, unknown split,
Hub offline) raises `InputError`.

Ids name the place a record came from and do not depend on how a file was split into units:
`name.txt:17` (1-based line, as editors count), `name.json[3]` (item of a top-level list),
`name.parquet:2:40` (row group, row within it), `name.csv:40` / `folder:40` (0-based data row, as
pandas and `datasets` index; a skipped CSV row keeps its number, blank lines have none), `folder/sub/a.txt` (txt-files). `name` is the file's base name, or where two sources' base names are the same,
its path below the folder they share (`pubmed/abstracts.txt:17`; `CorpusConfig.source_labels`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import zstandard

from domainlm.config import SourceConfig
from domainlm.errors import InputError
from domainlm.io import (
    SAVED_DATASET_MARKERS,
    atomic_write_json,
    decode_utf8,
    is_url,
    load_dataset_split,
    open_binary,
    open_url,
)
from domainlm.layout import CorpusPieces

CHUNK = 1 << 24  # bytes read at a time when counting or skipping (bounds memory)
COMPRESSION = 8  # a compressed file under unit_bytes / COMPRESSION is read as one unit, not cut
_MISSING = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Unit:
    """One independently readable piece of one source (picklable: sent to worker processes)."""

    source_index: int  # position of the source in the list given to `plan_units`
    path: str
    start: int = 0  # txt/jsonl: the unit holds the lines that *start* in bytes [start, end)
    end: int | None = None
    row_group: int | None = None  # parquet: the row group to read (None: all of them)
    files: tuple[str, ...] = ()  # txt-files: the unit's files, relative to `path`
    newlines_before: int | None = None  # in bytes [0, start), from planning (None: count when read)
    index: int = 0  # position among its source's units
    label: str = ""  # what ids start with (default: the file's base name; see CorpusConfig.source_labels)
    piece: str | None = None  # a file of the unit's lines (zstd), cut from a compressed or remote `path`
    piece_bytes: int | None = None  # the bytes of text in `piece`

    @property
    def key(self) -> str:
        """Stable name for this unit's completion marker, e.g. `s0-u00003`."""
        return f"s{self.source_index}-u{self.index:05d}"


# ------------------------------------------------------------------------------- files and bytes
def _clean(text: str) -> tuple[str, int]:
    """Text decoded with `surrogateescape` (csv, JSON) or holding lone-surrogate JSON escapes cannot
    be written as UTF-8: turn those into U+FFFD, as `decode_utf8` does, and count them."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        pass
    try:
        return decode_utf8(text.encode("utf-8", errors="surrogateescape"))
    except UnicodeEncodeError:  # a JSON escape such as "\ud800" that was never a byte
        return _SURROGATE.subn("\ufffd", text)


def _count_newlines(handle: IO[bytes], size: int) -> int:
    """Newlines in the next `size` bytes of `handle` (fewer at the end of the file)."""
    count = 0
    while size > 0 and (chunk := handle.read(min(size, CHUNK))):
        count += chunk.count(b"\n")
        size -= len(chunk)
    return count


def _skip_line(handle: IO[bytes]) -> None:
    """Move past the next newline (or to the end of the file), never holding a whole line."""
    while (piece := handle.readline(CHUNK)) and not piece.endswith(b"\n"):
        pass


BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark, written by some Windows tools at the start of a file


def _numbered_lines(unit: Unit) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its line ending) of every line starting in the unit;
    a byte-order mark at the start of the file is not part of the first line."""
    with open_binary(unit.piece or unit.path) as handle:
        number = 1
        if unit.piece:  # the whole piece, numbered after the lines of the pieces before it
            number = unit.newlines_before + 1
        elif unit.start > 0:
            newlines = unit.newlines_before
            if newlines is None:
                newlines = _count_newlines(handle, unit.start)
            # Skip the rest of the line holding byte start-1: only its newline when `start` is
            # already a line start; otherwise a line that began in the unit before this one.
            handle.seek(unit.start - 1)
            _skip_line(handle)
            number = newlines + 1 + (1 if handle.tell() > unit.start else 0)
        position = handle.tell()
        while unit.end is None or position < unit.end:
            raw = handle.readline()
            if not raw:
                break
            position += len(raw)
            if number == 1:
                raw = raw.removeprefix(BOM)
            yield number, raw.removesuffix(b"\n").removesuffix(b"\r")
            number += 1


# ---------------------------------------------------------------------------------------- records
def _document(doc_id: str, value: Any, field: str, name: str) -> dict:
    """A document from one record's text value, or a `missing_text` skip."""
    if isinstance(value, bytes):  # a binary column holding text
        text, invalid = decode_utf8(value)
    elif isinstance(value, str):
        text, invalid = _clean(value)
    else:
        found = "not found" if value is _MISSING else f"found {'null' if value is None else type(value).__name__}"
        return _skip(doc_id, name, "missing_text", f"expected an object with a string field '{field}' ({found})")
    return {"id": doc_id, "text": text, "source": name, "invalid_bytes": invalid}


def _skip(doc_id: str, name: str, reason: str, detail: str) -> dict:
    return {"id": doc_id, "source": name, "skip": reason, "detail": detail}


def _json_record(doc_id: str, line: str, field: str, name: str) -> dict:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as err:  # also too deeply nested, too long an integer
        return _skip(doc_id, name, "invalid_json", f"not valid JSON ({getattr(err, 'msg', err)})")
    if not isinstance(record, dict):
        return _skip(doc_id, name, "not_an_object", f"expected a JSON object, got {type(record).__name__}")
    return _document(doc_id, record.get(field, _MISSING), field, name)


def _bare_name(path: str) -> str:
    """The path in lower case without a compression suffix."""
    return path.lower().removesuffix(".gz").removesuffix(".zst")


def _is_json_list(path: str) -> bool:
    """Whether a file is `.json` holding one top-level list rather than JSON lines."""
    if not _bare_name(path).endswith(".json"):
        return False
    with open_binary(path) as handle:
        return handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _read_json_list(unit: Unit, field: str, label: str, name: str) -> Iterator[dict]:
    # The whole file is parsed at once: keep list files to what fits in memory (use JSON lines).
    with open_binary(unit.path) as handle:
        text = handle.read().decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as err:
        where = f"{label}:{getattr(err, 'lineno', 1)}"
        yield _skip(where, name, "invalid_json", f"not valid JSON ({getattr(err, 'msg', err)})")
        return
    for i, item in enumerate(items):
        if isinstance(item, dict):
            yield _document(f"{label}[{i}]", item.get(field, _MISSING), field, name)
        else:
            yield _skip(f"{label}[{i}]", name, "not_an_object", f"expected a JSON object, got {type(item).__name__}")


def _read_csv(unit: Unit, field: str, label: str, name: str) -> Iterator[dict]:
    """Rows of a CSV file with a header line; a row with another number of fields than the header
    (an unquoted comma in a text, a lost field) or that breaks the quoting rules is an
    `invalid_csv` skip naming its lines and both counts, never a shortened or merged document."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the default 128 KiB is too small for documents
    with io.TextIOWrapper(open_binary(unit.path), encoding="utf-8-sig", errors="surrogateescape",
                          newline="") as handle:
        # strict: a field that opens with a quote must close it before the next comma; otherwise the
        # csv module drops the quotes of `"a" b` and reads the rest of the file after a lone `"`
        # as one field (a merged document that may even have the header's field count)
        reader = csv.reader(handle, strict=True)
        header = next(reader, [])
        if field not in header:
            raise InputError(f"{unit.path}: no column '{field}' (header: {header})")
        column, row, end = header.index(field), 0, reader.line_num
        while True:
            start = end + 1  # the physical line (as editors count) the next row starts on
            try:
                values, problem = next(reader), None
            except StopIteration:
                return
            except csv.Error as err:
                values, problem = None, _csv_problem(err, start)
            end = reader.line_num
            if values == []:  # a blank line is not a row (as in pandas)
                continue
            if problem is None and len(values) != len(header):
                problem = _field_count_problem(len(values), header)
            if problem:
                yield _skip(f"{label}:{row}", name, "invalid_csv", f"{_lines_of(label, start, end)}: {problem}")
            else:
                yield _document(f"{label}:{row}", values[column], field, name)
            row += 1  # a skipped row keeps its number: ids do not shift after a bad row


def _lines_of(label: str, start: int, end: int) -> str:
    """`name.csv:7`, or `name.csv:7-9` for a row whose quoted field spans lines."""
    return f"{label}:{start}" if end <= start else f"{label}:{start}-{end}"


def _field_count_problem(count: int, header: list[str]) -> str:
    names = ", ".join(header)
    hint = ("an unquoted comma in a text? put such a field in double quotes" if count > len(header)
            else "a missing field, or a line break in an unquoted field?")
    return (f"{count} field{'s' if count != 1 else ''}, but the header has {len(header)} "
            f"({names[:100] + '...' if len(names) > 100 else names}); {hint}")


def _csv_problem(err: csv.Error, start: int) -> str:
    if "unexpected end of data" in str(err):  # strict mode, at the end of the file inside quotes
        return (f"not readable as CSV: a quoted field that opens on line {start} never closes (the rest of the "
                "file would be one field)")
    if "expected after" in str(err):  # `"a" b`: text after a field's closing quote
        return f"not readable as CSV ({err}: text after a closing quote; write a quote inside a quoted field as \"\")"
    return f"not readable as CSV ({err})"


def _read_parquet(unit: Unit, field: str, label: str, name: str) -> Iterator[dict]:
    with _parquet(unit.path) as file:
        columns = file.schema_arrow.names
        if field not in columns:
            raise InputError(f"{unit.path}: no column '{field}' (columns: {', '.join(columns)})")
        groups = range(file.num_row_groups) if unit.row_group is None else [unit.row_group]
        for group in groups:
            row = 0
            for batch in file.iter_batches(batch_size=1024, row_groups=[group], columns=[field]):
                for value in batch.column(0).to_pylist():
                    yield _document(f"{label}:{group}:{row}", value, field, name)
                    row += 1


def _parquet(path: str):
    """A parquet file to read row groups from: a local path, or a URL opened for random access."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(open_url(path) if is_url(path) else path)


def _offline() -> bool:
    if any(os.environ.get(key, "").strip().lower() not in ("", "0", "false", "no", "off")
           for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # only the proxy is reachable directly: let `datasets` try
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:  # fail in seconds rather than hang on retries when there is no network
        socket.create_connection((host, 443), timeout=5).close()
        return False
    except OSError:
        return True


def _read_hf(source: SourceConfig, fmt: str, name: str, label: str) -> Iterator[dict]:
    import datasets

    field = source.text_field
    if fmt == "hf-hub":
        if _offline():
            raise InputError(f"hf-hub source '{source.path}': the Hugging Face Hub needs a network (offline "
                             "here); on a connected machine run `datasets.load_dataset(...).save_to_disk(folder)`, "
                             "copy the folder and read it with `format: hf-disk`")
        data = datasets.load_dataset(source.path, split=source.split, streaming=True)
        label = f"{source.path}/{source.split}"
    else:
        data, split = load_dataset_split(source.path, source.split)
        label = f"{label}/{split}" if split else label
    columns = data.column_names
    if columns is not None and field not in columns:
        raise InputError(f"{source.path}: no column '{field}' (columns: {', '.join(columns)})")
    for row, record in enumerate(data.select_columns([field]) if columns else data):
        yield _document(f"{label}:{row}", record.get(field, _MISSING), field, name)


# ------------------------------------------------------------------------------------ public API
def detect_format(path: str) -> str:
    """The reader for a path: hf-disk or txt-files for folders, else by extension (.gz/.zst ignored)."""
    if not is_url(path) and Path(path).is_dir():
        return "hf-disk" if any((Path(path) / m).exists() for m in SAVED_DATASET_MARKERS) else "txt-files"
    name = _bare_name(path)
    for suffix, fmt in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            return fmt
    return "txt"


def source_format(source: SourceConfig) -> str:
    """The source's format, with `auto` resolved from its path."""
    return detect_format(source.path) if source.format == "auto" else source.format


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".txt", ".txt.gz", ".txt.zst")))


def _line_ranges(path: str, unit_bytes: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, newlines before start) of byte ranges of about `unit_bytes`, each moved on to
    begin at a line start (one pass over the file, like `wc -l`)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        start = newlines = 0
        while start < size:
            inside = _count_newlines(handle, unit_bytes - 1)
            _skip_line(handle)  # to the end of the line holding byte start + unit_bytes - 1
            end = handle.tell()
            yield start, end, newlines
            start, newlines = end, newlines + inside + 1


def split_compressed(path: str, unit_bytes: int, folder: Path) -> list[dict]:
    """Cut a `.gz` / `.zst` text or JSON-lines file (or one read from a URL) into zstd-compressed
    pieces of about `unit_bytes` of text each,
    at line ends, in one streaming pass (decompressing runs at hundreds of MB/s, curating at a few
    MB/s per core: the pass is a small share of the stage, and the pieces then curate in
    parallel). Returns per piece {"piece": its path, "piece_bytes": its text's size,
    "newlines_before": lines in the pieces before it}; `folder`'s `pieces.json`, written last,
    makes a rerun reuse them."""
    files = CorpusPieces(folder)
    if files.listing.exists():
        return json.loads(files.listing.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    pieces, newlines, buffer = [], 0, bytearray()
    packer = zstandard.ZstdCompressor(level=1)  # ~3x smaller than the text, at hundreds of MB/s

    def write(data) -> None:
        nonlocal newlines
        piece = files.piece(len(pieces))
        piece.write_bytes(packer.compress(data))
        pieces.append({"piece": str(piece), "piece_bytes": len(data), "newlines_before": newlines})
        newlines += data.count(b"\n")

    with open_binary(path) as handle:
        while chunk := handle.read(CHUNK):
            buffer += chunk
            start = 0  # as `_line_ranges`: a piece ends with the line holding its unit_bytes-th byte
            while len(buffer) - start >= unit_bytes and (end := buffer.find(b"\n", start + unit_bytes - 1)) >= 0:
                write(buffer[start:end + 1])
                start = end + 1
            del buffer[:start]  # (a line longer than a unit keeps the buffer growing until it ends)
    if buffer:  # the last lines (the very last may lack its newline)
        write(buffer)
    atomic_write_json(files.listing, pieces)
    return pieces


def plan_units(sources: list[SourceConfig], unit_bytes: int, pieces_folder: Path | None = None) -> list[Unit]:
    """Split sources into units: line-aligned byte ranges of about `unit_bytes` for uncompressed
    txt/jsonl files (planning reads such a file once to number its lines), and for compressed ones
    too with `pieces_folder` (`split_compressed` cuts them there; without it a compressed file
    is one unit, as it cannot seek), one unit per row group for parquet, groups of files of about
    `unit_bytes` for txt-files, one unit for anything else."""
    units: list[Unit] = []
    for source_index, source in enumerate(sources):
        fmt, path = source_format(source), source.path
        pieces: list[dict] = [{}]
        if fmt in ("txt", "jsonl") and not _is_json_list(path):
            if is_url(path):  # a stream from a store: cut once into local pieces, or read as one unit
                if pieces_folder is not None:
                    pieces = split_compressed(path, unit_bytes, pieces_folder / f"s{source_index}")
            elif _bare_name(path) == path.lower() and os.path.getsize(path) > unit_bytes:
                pieces = [{"start": s, "end": e, "newlines_before": n} for s, e, n in _line_ranges(path, unit_bytes)]
            elif _bare_name(path) != path.lower() and pieces_folder is not None and \
                    os.path.getsize(path) > unit_bytes // COMPRESSION:
                pieces = split_compressed(path, unit_bytes, pieces_folder / f"s{source_index}")
        elif fmt == "parquet":
            with _parquet(path) as file:
                pieces = [{"row_group": g} for g in range(file.num_row_groups)]
        elif fmt == "txt-files":
            files = _text_files(Path(path))
            if not files:
                raise InputError(f"{path}: no .txt files in this folder (format txt-files)")
            pieces, size = [], unit_bytes
            for file in files:
                if size >= unit_bytes:
                    pieces.append({"files": ()})
                    size = 0
                pieces[-1]["files"] += (file.relative_to(path).as_posix(),)
                size += file.stat().st_size
        units += [Unit(source_index, path, index=i, **piece) for i, piece in enumerate(pieces)]
    return units


def read_unit(unit: Unit, source: SourceConfig) -> Iterator[dict]:
    """Stream the records (documents and skips, see the module docstring) of one unit, holding at
    most one document (or one batch of rows) in memory; a `.json` list file is read whole."""
    fmt, field = source_format(source), source.text_field
    name = source.name or (Path(source.path).name if source.path else fmt)
    file_name = unit.label or Path(unit.path).name
    if fmt == "txt":
        for number, raw in _numbered_lines(unit):
            text, invalid = decode_utf8(raw)  # a blank line is an empty document: every line counts
            yield {"id": f"{file_name}:{number}", "text": text, "source": name, "invalid_bytes": invalid}
    elif fmt == "jsonl" and _is_json_list(unit.path):
        yield from _read_json_list(unit, field, file_name, name)
    elif fmt == "jsonl":
        for number, raw in _numbered_lines(unit):
            if raw.strip():  # blank lines hold no record
                yield _json_record(f"{file_name}:{number}", raw.decode("utf-8", errors="surrogateescape"),
                                   field, name)
    elif fmt == "txt-files":
        for relative in unit.files:
            with open_binary(Path(unit.path) / relative) as handle:
                text, invalid = decode_utf8(handle.read().removeprefix(BOM))  # the file is the document
            yield {"id": f"{file_name}/{relative}", "text": text, "source": name, "invalid_bytes": invalid}
    elif fmt == "csv":
        yield from _read_csv(unit, field, file_name, name)
    elif fmt == "parquet":
        yield from _read_parquet(unit, field, file_name, name)
    elif fmt in ("hf-disk", "hf-hub"):
        yield from _read_hf(source, fmt, name, file_name)
    elif fmt == "python-docs":
        from domainlm.demo import corpus_documents

        for doc in corpus_documents():
            yield {"id": doc["id"], "text": doc["text"], "source": name, "invalid_bytes": 0}
    else:
        raise InputError(f"{source.path}: unknown format '{fmt}'")

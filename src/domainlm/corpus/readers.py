"""Readers: each turns one configured source into a stream of `{"id", "text", "source"}` records."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from domainlm.config import SourceConfig


class InputError(ValueError):
    """Malformed input; the message names the file and line."""


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, transparently decompressing `.gz`; invalid UTF-8 bytes become U+FFFD."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def detect_format(path: str) -> str:
    name = path.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    return "txt"


def read_txt(path: str) -> Iterator[tuple[str, str]]:
    """One document per line; the id is `file:line`."""
    name = Path(path).name
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            yield f"{name}:{number}", line.rstrip("\n")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; malformed lines raise InputError naming
    the file and line."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def read_jsonl(path: str, text_field: str) -> Iterator[tuple[str, str]]:
    """One JSON object per line with the text under `text_field`."""
    name = Path(path).name
    for number, record in iter_jsonl(path):
        if not isinstance(record.get(text_field), str):
            raise InputError(f"{path}:{number}: expected an object with a string field '{text_field}'")
        yield str(record.get("id", f"{name}:{number}")), record[text_field]


def read_documents(source: SourceConfig) -> Iterator[dict]:
    """Stream the documents of one source, at most `source.max_docs` of them."""
    fmt = detect_format(source.path) if source.format == "auto" else source.format
    if fmt == "python-docs":
        from domainlm.demo import corpus_documents

        stream = ((d["id"], d["text"]) for d in corpus_documents())
    elif fmt == "jsonl":
        stream = read_jsonl(source.path, source.text_field)
    else:
        stream = read_txt(source.path)
    name = source.name or (Path(source.path).name if source.path else fmt)
    for count, (doc_id, text) in enumerate(stream):
        if source.max_docs is not None and count >= source.max_docs:
            break
        yield {"id": doc_id, "text": text, "source": name}

"""Files: reading text and JSON through compression, writing artifacts atomically, and hashing.

Reading: `.gz` and `.zst` files are decompressed as streams; text is UTF-8, and invalid bytes
become U+FFFD (counted where the caller asks). Writing: every artifact goes through a temporary
file or folder in the same directory and one rename, so a reader (or a killed run) never sees a
half-written file. Hashing: content digests of input files and fingerprints of configs, which
decide whether a stage is up to date.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from domainlm.errors import InputError


# ------------------------------------------------------------------------------------ reading
def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for buffered binary reading, decompressing `.gz` and `.zst` as a stream."""
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True)
        return io.BufferedReader(reader)
    return open(path, "rb")


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, decompressing `.gz`/`.zst`; invalid UTF-8 bytes become U+FFFD."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="replace")


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """UTF-8 text and the number of U+FFFD that replacing invalid bytes introduced."""
    try:
        return raw.decode("utf-8"), 0  # the common case, and a genuine U+FFFD counts 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def read_lines(path: str | Path, limit: int) -> list[str]:
    """The non-blank lines (stripped) among the first `limit` lines of a text file (.gz/.zst too)."""
    with open_text(path) as handle:
        return [line.strip() for _, line in zip(range(limit), handle, strict=False) if line.strip()]


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a malformed line raises InputError naming the
    file and line (the strict reader for task data)."""
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


def read_ids(path: str | Path) -> set[str]:
    """Ids from a JSON list, the keys of a JSON object, or one id per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {line.strip() for line in text.splitlines() if line.strip()}
    if isinstance(data, dict | list):
        return {str(k) for k in data}
    raise InputError(f"{path}: expected a JSON list or object of ids, got {type(data).__name__}")


def load_dataset_split(path: str | Path, split: str | None):
    """A dataset saved with `datasets.save_to_disk`: the dataset itself, or one `split` of a
    DatasetDict. Returns (dataset, the split's name or None); InputError naming the folder for
    anything that is not such a dataset or lacks the split."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"{path}: not a dataset saved with save_to_disk ({err})") from None
    if not isinstance(data, datasets.DatasetDict):
        return data, None
    if split not in data:
        raise InputError(f"{path}: no split '{split}' (splits: {', '.join(data)}); name one as `split`")
    return data[split], split


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[Any]:
    """Every line of a JSON-lines artifact this project wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ writing
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename, so a
    reader (or a killed run) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; artifacts are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@contextmanager
def atomic_directory(final: str | Path):
    """Yield a temporary sibling folder; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class PendingFile:
    """A text file written under a temporary name and renamed into place by `close()` (for
    outputs streamed line by line, too large to build in memory)."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.handle = open(self.tmp, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self.handle.write(text)

    def close(self) -> str:
        self.handle.close()
        os.replace(self.tmp, self.path)
        return self.path.name


# ------------------------------------------------------------------------------------ hashing
def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (streamed). Remembered per (path, size, mtime) within a process:
    freshness checks ask for the same corpus file many times per run."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_signature(path: str | Path) -> str:
    """What identifies an input: a file's sha256; for a folder (a model directory), a hash of every
    file's relative name, size and modification time (cheap enough to check on every run)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """A stable hash of any JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

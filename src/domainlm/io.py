"""Files: reading text and JSON through compression, writing artifacts atomically, and hashing.

Reading: `.gz` and `.zst` files are decompressed as streams; text is UTF-8, and invalid bytes
become U+FFFD (counted where the caller asks). Writing: every artifact goes through a temporary
file or folder in the same directory and one rename, so a reader (or a killed run) never sees a
half-written file. Hashing: content digests of input files and fingerprints of configs, which
decide whether a stage is up to date.
"""

from __future__ import annotations

import codecs
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from domainlm.errors import InputError, StageError

# ------------------------------------------------------------------------------------ reading
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | Path) -> bool:
    """Whether `path` names a file in a store fsspec reaches (`s3://`, `gs://`, `hf://`, `https://`,
    `memory://`, `file://`, ...): any `scheme://` but domainlm's own `pkg://`."""
    return bool(URL.match(str(path))) and not str(path).startswith("pkg://")


def _fsspec(path: str):
    """(fsspec filesystem, path inside it) for a URL; InputError naming the URL when fsspec or the
    store's package (s3fs, gcsfs, aiohttp, ...) is missing."""
    try:
        import fsspec

        return fsspec.core.url_to_fs(path)
    except ImportError as err:
        raise InputError(f"{path}: reading this URL needs {err.name or 'fsspec'} "
                         f"(pip install 'domainlm[remote]'): {err}") from None
    except ValueError as err:  # an unknown protocol
        raise InputError(f"{path}: {err}") from None


def url_exists(path: str) -> bool:
    fs, inner = _fsspec(path)
    return fs.exists(inner)


def open_url(path: str) -> IO[bytes]:
    """A URL's file opened for buffered, seekable binary reading through fsspec (pyarrow reads
    parquet row groups by seeking in it); InputError when it does not exist."""
    fs, inner = _fsspec(path)
    try:
        return fs.open(inner, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None


class _Gunzipped(io.RawIOBase):
    """A gzip stream whose failures name the file: a truncated or corrupt `.gz` raises InputError
    with the path and the cause (not a bare EOFError or zlib.error)."""

    def __init__(self, path: str, file: IO[bytes]):
        self.inner, self.path, self.position = gzip.GzipFile(fileobj=file, mode="rb"), path, 0
        self.file = file

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        try:
            data = self.inner.read(len(buffer))
        except EOFError:
            raise InputError(f"{self.path}: truncated gzip stream (the file ends before its end-of-stream "
                             "marker; an incomplete download or copy?)") from None
        except (OSError, zlib.error) as err:
            raise InputError(f"{self.path}: not a valid gzip file ({err})") from None
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self.inner.close()
        self.file.close()
        super().close()


class _ZstdFrames(io.RawIOBase):
    """Decompresses every frame of a `.zst` file in turn and knows whether the last one ended:
    zstandard's stream reader returns nothing, silently, for a file cut inside a frame."""

    def __init__(self, path: str, file: IO[bytes]):
        import zstandard

        self.path, self.file, self.error = path, file, zstandard.ZstdError
        self.context = zstandard.ZstdDecompressor()
        self.frame, self.pending, self.started = self.context.decompressobj(), b"", False
        self.position = 0  # uncompressed bytes handed out

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def _decompress(self, data: bytes) -> bytes:
        out = b""
        while data:
            if self.frame.eof:  # the previous frame ended: the next one starts here
                self.frame = self.context.decompressobj()
            try:
                out += self.frame.decompress(data)
            except self.error as err:
                raise InputError(f"{self.path}: not a valid zstd file ({err})") from None
            data = self.frame.unused_data if self.frame.eof else b""
        return out

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = self.file.read(1 << 16)
            if not chunk:
                if self.started and not self.frame.eof:
                    raise InputError(f"{self.path}: truncated zstd stream (the file ends inside a frame; an "
                                     "incomplete download or copy?)")
                return 0
            self.started = True
            self.pending = self._decompress(chunk)
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        self.position += size
        return size

    def close(self) -> None:
        self.file.close()
        super().close()


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for buffered binary reading, decompressing `.gz` and `.zst` as a stream (a
    truncated or corrupt one raises InputError naming the file when it is read). A URL is read
    as a stream through fsspec (`is_url`)."""
    path = str(path)
    file = open_url(path) if is_url(path) else open(path, "rb")
    if path.endswith(".gz"):
        return io.BufferedReader(_Gunzipped(path, file), buffer_size=1 << 16)
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(path, file), buffer_size=1 << 16)
    return file


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, decompressing `.gz`/`.zst`; a leading byte-order mark is dropped and
    invalid UTF-8 bytes become U+FFFD (`read_text` also counts them)."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors="replace")


def read_text(path: str | Path) -> tuple[str, int]:
    """(the whole text of a file, .gz/.zst too; the number of characters that replacing invalid
    UTF-8 bytes by U+FFFD introduced). A leading byte-order mark is dropped and line ends become
    "\n", as `open_text` reads them; a UTF-16 file (its byte-order mark) raises InputError."""
    with open_binary(path) as handle:
        raw = handle.read()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{path}: a UTF-16 file (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    text, invalid = decode_utf8(raw.removeprefix(codecs.BOM_UTF8))
    return text.replace("\r\n", "\n").replace("\r", "\n"), invalid


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


def iter_jsonl(path: str | Path, lines: Iterable[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of `path`, or of its `lines` when the caller
    has read them already (`read_text`); a malformed line raises InputError naming the file and
    line (the strict reader for task data). A leading byte-order mark is not part of the data."""
    with open_text(path) if lines is None else nullcontext(lines) as handle:
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
    """Ids from a JSON list (of strings or integers), the keys of a JSON object, or one id per line
    (.gz/.zst too, a byte-order mark dropped). InputError for any other JSON value or list item."""
    text, _ = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {line.strip() for line in text.split("\n") if line.strip()}
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, str | int) or isinstance(item, bool):
            raise InputError(f"{path}: the id list holds {json.dumps(item)}; expected strings or integers")
    if isinstance(data, dict | list):
        return {str(k) for k in data}
    raise InputError(f"{path}: expected a JSON list or object of ids, got {type(data).__name__}")


SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def load_dataset_split(path: str | Path, split: str | None):
    """A dataset saved with `datasets.save_to_disk`: the dataset itself, or one `split` of a
    DatasetDict (only that split is loaded). Returns (dataset, the split's name or None).

    A dataset saved with zero rows is read as an empty dataset with its saved columns. InputError
    naming the folder (and split) for a folder that is not such a dataset, lacks the split, or that
    `datasets` cannot load (a missing or truncated data file, an unreadable state.json).
    """
    folder = Path(path)
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path}: dataset_dict.json is not readable ({err}); save the dataset again") from None
        if split not in splits:
            raise InputError(f"{path}: no split '{split}' (splits: {', '.join(splits)}); name one as `split`")
        return _load_saved_dataset(folder / split, f"{path} (split '{split}')"), split
    if not any((folder / marker).is_file() for marker in SAVED_DATASET_MARKERS):
        found = f"no {', '.join(SAVED_DATASET_MARKERS)}" if folder.is_dir() else "no such folder"
        raise InputError(f"{path}: not a dataset saved with save_to_disk ({found})")
    return _load_saved_dataset(folder, str(path)), None


def _load_saved_dataset(folder: Path, where: str):
    """One saved `datasets.Dataset`; `where` names it in errors."""
    import datasets

    try:
        if _saved_data_files(folder) == []:
            # save_to_disk writes no data file for zero rows (a split filtered to nothing), and
            # load_from_disk then fails (an IndexError in datasets 2-4): build the empty dataset
            features = datasets.DatasetInfo.from_directory(str(folder)).features
            return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        return datasets.Dataset.load_from_disk(str(folder))
    except Exception as err:  # any failure of `datasets` on this folder, whatever its version raises
        raise InputError(f"{where}: `datasets` cannot load this saved dataset ({type(err).__name__}: "
                         f"{str(err)[:200]}); an incomplete copy? save it again with save_to_disk") from None


def _saved_data_files(folder: Path) -> list | None:
    """The data files a saved dataset's state.json lists (None when there is no readable list)."""
    try:
        return json.loads((folder / "state.json").read_text()).get("_data_files")
    except (OSError, ValueError, AttributeError):
        return None


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path) -> list[Any]:
    """Every line of a JSON-lines artifact this project wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Artifacts get the permissions a plain `open` / `mkdir` would give them (runs often live on shared
# filesystems, read by a group); tempfile makes its files and folders private to the owner.
FILE_MODE, FOLDER_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


def _naming(err: OSError, path: Path) -> OSError:
    """`err` with `path` as its file name when it has none (a full disk fails in write/fsync)."""
    return err if err.filename else type(err)(err.errno, err.strerror, str(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename, so a
    reader (or a killed run) never sees a half-written file. An OSError names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(err, path) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_zstd_writer(path: str | Path, level: int = 1) -> IO[str]:
    """A UTF-8 text file written zstd-compressed (level 1: ~3x smaller than text at hundreds of
    MB/s, for scratch copies), readable with `open_text`."""
    import zstandard

    raw = zstandard.ZstdCompressor(level=level).stream_writer(open(path, "wb"))
    return io.TextIOWrapper(raw, encoding="utf-8")


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
    os.chmod(tmp, FOLDER_MODE)
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

    def __init__(self, path: Path, resume_at: int = 0):
        """`resume_at`: go on with the temporary file a killed writer left, cut back to that many
        bytes (a point `written` returned); FileNotFoundError when there is none."""
        self.path, self.tmp = path, self.pending(path)
        if resume_at:
            with open(self.tmp, "r+b") as handle:
                handle.truncate(resume_at)
        self.handle = open(self.tmp, "a" if resume_at else "w", encoding="utf-8")

    @staticmethod
    def pending(path: Path) -> Path:
        """The temporary file `path` is written under until `close`."""
        return path.with_name(f".{path.name}.tmp")

    def written(self) -> int:
        """The bytes written so far, handed to the file system (a killed process loses none of them)."""
        self.handle.flush()
        return self.handle.tell()

    def write(self, text: str) -> None:
        try:
            self.handle.write(text)
        except OSError as err:
            raise _naming(err, self.path) from err

    def close(self) -> str:
        try:
            self.handle.close()
            os.replace(self.tmp, self.path)
        except OSError as err:
            raise _naming(err, self.path) from err
        return self.path.name


# ------------------------------------------------------------------------------------ locking
_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth


@contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive lock on the file `path` (created, holding this process's pid) while the
    block runs, so two runs never work in one folder at once; StageError naming the other
    process's pid if it is taken. Nested use in one process is allowed. The lock is the kernel's
    (flock): it ends with the process, so a killed run leaves nothing to clean up."""
    key = str(Path(path).resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise StageError(f"{Path(path).parent} is in use by pid {pid} (another domainlm run): wait for it to "
                         "finish, or use another run_dir") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


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


def input_signature(path: str | Path, leave_out: tuple[str, ...] = ()) -> str:
    """What identifies an input: a file's sha256; for a folder (a model directory, a folder of
    text files, a saved dataset), a hash of every file's relative name and sha256 (content, not
    modification times: a copy or a `touch` changes nothing), but the files `leave_out` names.
    A URL: a hash of what its store says of it (size, ETag or checksum, modification time), so
    nothing is downloaded to tell whether it changed."""
    if is_url(path):
        fs, inner = _fsspec(str(path))
        return hashlib.sha256(json.dumps(fs.info(inner), sort_keys=True, default=str).encode()).hexdigest()
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).as_posix() not in leave_out):
        digest.update(f"{file.relative_to(path)}:{file_digest(file)};".encode())
    return digest.hexdigest()


def stream_digest(paths: Iterable[str | Path], extra: Any = None) -> str:
    """sha256 of the bytes of `paths` read one after another, where one file ends and the next
    begins not counting (a corpus cut into shards of another size has the same digest), and of
    `extra` as JSON."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """A stable hash of any JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

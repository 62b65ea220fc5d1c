"""Corpus-wide dedup and the split into shards as tasks on workers (the shape datatrove and NeMo
Curator give it), so the process running the stage holds O(units) whatever the corpus's size.

After steps 1-4 each unit's folder holds its survivors and their exact hashes, MinHash signatures
and LSH band keys (`CorpusUnitFiles`); a survivor's position in the corpus is its unit's offset
plus its row. The tasks, in order (each phase's tasks independent of each other):

1. exact     one per hash partition (the hash's first 64 bits modulo the partitions): every
             copy after the first of an identical text;
2. buckets   one per (LSH band, key partition): documents sharing a band key, exact duplicates
             left out, compared with the bucket's first member -> confirmed pairs;
3. clusters  one: the pairs' connected clusters, each keeping its first member (memory grows
             with the pairs, not the documents);
4. split     one per unit: its survivors minus the removals, into a training and a held-out part
             (a stable hash of the text), dedup's drops counted with examples; the unit's
             survivors and hashes are then deleted (its signatures and band keys went before
             the phase, once the removals were decided).

Then `write_shards`, in the calling process: the units' training parts concatenated in order into
shards, each part deleted once its lines are in place, so disk holds about one copy of the corpus.
A task's output appears whole and a finished task is not planned again, so a killed run resumes;
the removals are those of `dedup.near_duplicates` over the whole corpus in one process, bit for bit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from domainlm.config import CorpusConfig
from domainlm.corpus.dedup import bucket_pairs, clusters, lsh_bands
from domainlm.io import (
    PendingFile,
    atomic_write_bytes,
    atomic_write_json,
    open_text,
    open_zstd_writer,
    read_json,
)
from domainlm.layout import CorpusFiles, CorpusUnitFiles

PARTITION_DOCS = 2**22
"""Documents per hash partition: a bucket task holds ~16 bytes per document of its partition
(64 MiB at this size), so a corpus of N documents is cut into ceil(N / PARTITION_DOCS) partitions."""
EXAMPLES_PER_REASON = 3
UnitRef = tuple[str, int, int]  # a unit's folder, its first survivor's corpus position, its survivors


def heldout(text: str, fraction: float) -> bool:
    """Whether a document goes to the held-out set (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return bucket / 2**64 < fraction


def read_rows(path: Path, dtype, width: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of a raw (n, width) array file: all of them, or only `rows` (read one by one, for
    the few documents that share an LSH bucket). No memory map stays open, so a corpus of
    thousands of units needs no more file descriptors than one."""
    if rows is None:
        return np.fromfile(path, dtype=dtype).reshape(-1, width)
    size = np.dtype(dtype).itemsize * width
    return np.stack([np.fromfile(path, dtype=dtype, count=width, offset=int(r) * size) for r in rows])


def positions_in(files: list[Path], start: int, end: int) -> np.ndarray:
    """The corpus positions in [start, end) listed in files of sorted uint64 positions, found by
    binary search in memory maps (only that slice is read)."""
    found = [np.zeros(0, dtype=np.uint64)]
    for path in files:
        if path.stat().st_size:
            values = np.memmap(path, dtype=np.uint64, mode="r")
            low, high = np.searchsorted(values, [start, end])
            found.append(np.array(values[low:high]))
            del values
    return np.sort(np.concatenate(found)).astype(np.int64)


# ---------------------------------------------------------------------------------- the tasks
def exact_duplicates(units: list[UnitRef], partition: int, partitions: int, out: str) -> None:
    """Phase 1: the positions (sorted) of every copy after the first of an identical text whose
    hash falls in `partition`, written to `out`."""
    hashes, positions = [np.zeros((0, 2), dtype=np.uint64)], [np.zeros(0, dtype=np.int64)]
    for folder, start, _ in units:
        rows = read_rows(CorpusUnitFiles(Path(folder)).exact, np.uint64, 2)
        mine = np.flatnonzero(rows[:, 0] % np.uint64(partitions) == partition)
        hashes.append(rows[mine])
        positions.append(mine + start)
    hashes, positions = np.concatenate(hashes), np.concatenate(positions)
    _, first = np.unique(hashes.view(np.dtype((np.void, 16))).ravel(), return_index=True)
    copy = np.ones(len(positions), dtype=bool)
    copy[first] = False
    atomic_write_bytes(out, positions[copy].astype(np.uint64).tobytes())  # in corpus order: sorted


def similar_pairs(units: list[UnitRef], band: int, partition: int, partitions: int, exact: list[str],
                  permutations: int, threshold: float, out: str) -> None:
    """Phase 2: confirmed near-duplicate pairs (first, other) among documents whose key of LSH
    `band` falls in `partition`, exact duplicates (the files `exact`) left out, written to `out`."""
    keys, positions = [np.zeros(0, dtype=np.uint64)], [np.zeros(0, dtype=np.int64)]
    for folder, start, count in units:
        column = np.fromfile(CorpusUnitFiles(Path(folder)).band(band), dtype=np.uint64)
        mine = column % np.uint64(partitions) == partition
        mine[positions_in([Path(p) for p in exact], start, start + count) - start] = False
        rows = np.flatnonzero(mine)
        keys.append(column[rows])
        positions.append(rows + start)
    keys, positions = np.concatenate(keys), np.concatenate(positions)
    starts = np.array([start for _, start, _ in units])

    def signature_of(members: np.ndarray) -> np.ndarray:
        rows = positions[members]
        owners = np.searchsorted(starts, rows, side="right") - 1
        return np.concatenate([read_rows(CorpusUnitFiles(Path(units[u][0])).signatures, np.uint32, permutations,
                                         np.array([r - starts[u]])) for u, r in zip(owners.tolist(), rows.tolist(),
                                                                                    strict=True)])

    pairs = positions[bucket_pairs(keys, signature_of, threshold)]
    atomic_write_bytes(out, pairs.astype(np.uint64).tobytes())


def near_duplicate_clusters(pair_files: list[str], out: str) -> None:
    """Phase 3: every member but the first of each cluster of confirmed pairs (sorted positions)."""
    pairs = np.concatenate([np.zeros((0, 2), dtype=np.int64)] + [
        np.fromfile(path, dtype=np.uint64).reshape(-1, 2).astype(np.int64) for path in pair_files])
    removed = clusters(pairs)[0] if len(pairs) else pairs[:, 0]
    atomic_write_bytes(out, removed.astype(np.uint64).tobytes())


def split_unit(unit: UnitRef, removals: dict[str, list[str]], config: CorpusConfig, bands: int) -> None:
    """Phase 4 for one unit: its survivors less `removals` (reason -> position files) into its
    training and held-out parts (and dedup's drops with `keep_dropped`), split.json last; then its
    survivors and arrays are deleted."""
    folder, start, count = unit
    files = CorpusUnitFiles(Path(folder))
    reason_of = {int(p) - start: reason for reason, paths in removals.items()
                 for p in positions_in([Path(p) for p in paths], start, start + count)}
    stats: dict[str, Any] = {"kept": 0, "heldout": 0, "dropped": {}, "examples": {}}
    with open_text(files.docs) as docs, open_zstd_writer(files.train) as train, \
            open(files.heldout, "w", encoding="utf-8") as held_out, \
            (open(files.dedup_dropped, "w", encoding="utf-8") if config.keep_dropped else nullcontext()) as dropped:
        for row, line in enumerate(docs):
            doc, reason = json.loads(line), reason_of.get(row)
            if reason:
                stats["dropped"][reason] = stats["dropped"].get(reason, 0) + 1
                examples = stats["examples"].setdefault(reason, [])
                if len(examples) < EXAMPLES_PER_REASON:
                    examples.append({"id": doc["id"], "text": doc["text"][:300]})
                if dropped:
                    dropped.write(json.dumps({**doc, "reason": reason}, ensure_ascii=False) + "\n")
                continue
            stats["kept"] += 1
            if heldout(doc["text"], config.heldout_fraction):
                stats["heldout"] += 1
                held_out.write(line)
            else:
                train.write(line)
    atomic_write_json(files.split, stats)
    for path in (files.docs, files.exact, files.signatures, *map(files.band, range(bands))):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- the plan
def deduplicate(config: CorpusConfig, corpus: CorpusFiles, units: list[UnitRef], run) -> None:
    """Phases 1-4 over the finished units, each phase's unfinished tasks through
    `run(work, jobs, desc)` (on workers: see `executors.task_runner`)."""
    dedup, (bands, _) = corpus.dedup, lsh_bands(config.dedup.threshold, config.dedup.permutations)
    dedup.folder.mkdir(parents=True, exist_ok=True)
    total = sum(count for *_, count in units)
    partitions = max(1, -(-total // PARTITION_DOCS))
    exact_files = [dedup.exact(p) for p in range(partitions)] if config.dedup.exact else []
    run(exact_duplicates, [(units, p, partitions, str(path)) for p, path in enumerate(exact_files)
                           if not path.exists()], "dedup: exact")
    removals = {"duplicate": [str(p) for p in exact_files]}
    if config.dedup.near:
        pair_files = {(b, p): dedup.pairs(b, p) for b in range(bands) for p in range(partitions)}
        run(similar_pairs, [(units, b, p, partitions, removals["duplicate"], config.dedup.permutations,
                             config.dedup.threshold, str(path)) for (b, p), path in pair_files.items()
                            if not path.exists()], "dedup: LSH buckets")
        if not dedup.near.exists():
            run(near_duplicate_clusters, [([str(p) for p in pair_files.values()], str(dedup.near))],
                "dedup: clusters")
        removals["near_duplicate"] = [str(dedup.near)]
    for folder, _, _ in units:  # the removals are decided: signatures and band keys are no longer needed
        files = CorpusUnitFiles(Path(folder))
        for path in (files.signatures, *map(files.band, range(bands))):
            path.unlink(missing_ok=True)
    run(split_unit, [(unit, removals, config, bands) for unit in units
                     if not CorpusUnitFiles(Path(unit[0])).split.exists()], "corpus: split")


def write_shards(corpus: CorpusFiles, parts: list[Path], shard_docs: int) -> list[str]:
    """The units' training parts, concatenated in order, as shards of `shard_docs` lines
    (`CorpusFiles.shard`, each written under a temporary name). Each part is deleted once its
    lines are in the shards, so disk holds about one copy; before that, `CorpusFiles.shard_progress`
    records how far the shards got (shards whole, the part and line to go on from, the bytes and
    lines of the shard being written), so a killed run goes on from there. Returns the shard names."""
    progress = corpus.shard_progress
    at = read_json(progress) if progress.exists() else {"shards": 0, "part": 0, "line": 0, "bytes": 0, "lines": 0}
    names = [corpus.shard(i).name for i in range(at["shards"])]
    if names and PendingFile.pending(corpus.shard(len(names) - 1)).exists():  # recorded whole, not yet renamed
        PendingFile.pending(corpus.shard(len(names) - 1)).rename(corpus.shard(len(names) - 1))
    current = PendingFile(corpus.shard(len(names)), resume_at=at["bytes"]) if at["lines"] else None
    count = at["lines"]

    def record(part: int, line: int) -> None:
        written = current.written() if current is not None else 0
        atomic_write_json(progress, {"shards": len(names), "part": part, "line": line, "bytes": written,
                                     "lines": count})

    for index in range(at["part"], len(parts)):
        skip = at["line"] if index == at["part"] else 0
        with open_text(parts[index]) as handle:
            for line_number, line in enumerate(itertools.islice(handle, skip, None), start=skip + 1):
                if current is None:
                    current = PendingFile(corpus.shard(len(names)))
                current.write(line)
                count += 1
                if count == shard_docs:  # recorded whole first, then renamed (a resume renames it too)
                    shard, current, count = current, None, 0
                    shard.written()
                    names.append(shard.path.name)
                    record(index, line_number)
                    shard.close()
        record(index + 1, 0)
        parts[index].unlink()
    if current is not None:
        names.append(current.close())
    return names

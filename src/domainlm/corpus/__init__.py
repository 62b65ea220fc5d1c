"""Corpus stage: raw text in, a clean training corpus out, every document accounted for.

Steps, in order (each document leaves at the first step that drops it, with that step's reason):

1. read      sources are split into work units (files, byte ranges, row groups); malformed records
             (`invalid_json`, `not_an_object`, `missing_text`) are counted, never fatal;
2. normalise Unicode NFC/NFKC, control characters, whitespace; invalid UTF-8 bytes were replaced
             and are counted; C4 line rules remove boilerplate lines; PII is masked (counted);
3. quality   length limits, C4 / Gopher quality and repetition / FineWeb rules, language id (in
             the order `corpus.quality.steps` names);
4. decontaminate  documents sharing a 13-word n-gram with any task's dev/test text;
5. exact dedup    identical normalised text (the first occurrence in corpus order is kept);
6. near dedup     MinHash LSH clusters (one document kept per cluster);
7. split     a stable hash of the text sends a small share to the held-out set.

Steps 1-4 run per work unit on a local process pool (or Ray) and write their results under
`work/<unit>/` with a completion marker, so a killed run redoes only unfinished units. Steps 5-7
need the whole corpus; they run as tasks on the same workers over the units' compact arrays
(hashes, MinHash signatures and band keys: corpus/global_dedup.py), so the process running the
stage holds O(units) whatever the corpus's size, and only the final concatenation into shards
runs here. On a cluster the same functions are what an engine such as Ray or datatrove's Slurm
executor maps over the units (docs/curation.md).

`stats.json`: `read`, `kept`, `dropped` per reason, per step `{in, out, dropped}` with
in == out + dropped everywhere, per source, PII counts, invalid bytes, and a few examples of each
drop reason. With `keep_dropped`, every dropped document is written with its reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from domainlm.config import CorpusConfig, RunConfig, SourceConfig, resolve_path
from domainlm.corpus.dedup import ContaminationIndex, band_keys, lsh_bands, minhash, word_hashes
from domainlm.corpus.global_dedup import EXAMPLES_PER_REASON, deduplicate, write_shards
from domainlm.corpus.normalize import normalize_text
from domainlm.corpus.quality import clean_lines, mask_pii, quality_reason
from domainlm.corpus.readers import Unit, plan_units, read_unit
from domainlm.corpus.selection import BINS, domain_scorer, quantile_threshold, reservoir, train_classifier
from domainlm.errors import InputError
from domainlm.executors import task_runner
from domainlm.io import (
    PendingFile,
    atomic_directory,
    atomic_write_json,
    fingerprint,
    input_signature,
    open_zstd_writer,
    read_json,
    stream_digest,
)
from domainlm.layout import CorpusFiles, CorpusUnitFiles, RunLayout
from domainlm.tasks.load import task_eval_texts

STEPS = ("read", "quality", "domain", "decontaminate", "exact_dedup", "near_dedup")
OPTIONAL_STEPS = ("domain",)  # in the step table only where the run has it (domain selection)
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ per work unit
class _UnitWriter:
    """Streams a unit's survivors to disk: docs.jsonl, and raw uint64 / uint32 arrays of their exact
    hashes, LSH band keys and MinHash signatures (flushed every CHUNK documents, so memory stays
    bounded however large the unit)."""

    CHUNK = 4096

    def __init__(self, files: CorpusUnitFiles, config: CorpusConfig):
        self.config, self.count = config, 0
        self.bands = lsh_bands(config.dedup.threshold, config.dedup.permutations)
        self.docs = open_zstd_writer(files.docs)
        self.dropped = open(files.dropped, "w", encoding="utf-8")
        paths = {"exact": files.exact, "signatures": files.signatures,
                 **{f"band-{b:02d}": files.band(b) for b in range(self.bands[0])}}  # a file per band
        self.arrays = {name: open(path, "wb") for name, path in paths.items()}
        self.exact: list[bytes] = []
        self.signatures: list[np.ndarray] = []
        self.wordless: list[bool] = []

    def add(self, doc: dict, words: np.ndarray) -> None:
        self.docs.write(json.dumps(doc, ensure_ascii=False) + "\n")
        self.exact.append(hashlib.blake2b(doc["text"].encode(), digest_size=16).digest())
        self.signatures.append(minhash(words, self.config.dedup.shingle_words, self.config.dedup.permutations))
        self.wordless.append(not len(words))
        self.count += 1
        if len(self.exact) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.exact:
            signatures = np.stack(self.signatures)
            self.arrays["exact"].write(b"".join(self.exact))
            self.arrays["signatures"].write(signatures.tobytes())
            keys = band_keys(signatures, *self.bands)
            wordless = np.array(self.wordless)
            if wordless.any():  # no words, no shingles: a Jaccard is undefined, so no LSH bucket is shared
                exact = np.frombuffer(b"".join(self.exact), dtype=np.uint64).reshape(-1, 2)[wordless, 0]
                keys[wordless] = exact[:, None] + np.arange(keys.shape[1], dtype=np.uint64)
            for band, column in enumerate(keys.T):
                self.arrays[f"band-{band:02d}"].write(column.tobytes())
            self.exact, self.signatures, self.wordless = [], [], []

    def close(self) -> None:
        self.flush()
        for handle in (self.docs, self.dropped, *self.arrays.values()):
            handle.close()


def process_unit(unit: Unit, source: SourceConfig, config: CorpusConfig, index: ContaminationIndex | None,
                 folder: Path, limit: int | None = None, classifier: str | None = None,
                 threshold: float = 0.5) -> dict[str, Any]:
    """Steps 1-4 for one unit, streamed into `folder` (written atomically, stats.json last):
    docs.jsonl (the survivors), their hashes, band keys and signatures, dropped.jsonl.
    `classifier`: the domain classifier's weights, with `corpus.domain_selection` (documents
    scoring below `threshold` are dropped)."""
    steps = ("read", "quality", "domain", "decontaminate") if classifier else ("read", "quality", "decontaminate")
    stats: dict[str, Any] = {"read": 0, "steps": {s: {} for s in steps}, "pii": {}, "invalid_bytes": 0,
                             "line_removals": 0, "examples": {}}
    score_of = domain_scorer(classifier) if classifier else None
    if classifier:
        stats["domain_scores"] = [0] * BINS  # histogram of every scored document's domain probability
    with atomic_directory(folder) as tmp:
        files = CorpusUnitFiles(tmp)
        writer = _UnitWriter(files, config)

        def drop(step: str, reason: str, doc_id: str, text: str, **extra) -> None:
            counts = stats["steps"][step]
            counts[reason] = counts.get(reason, 0) + 1
            examples = stats["examples"].setdefault(reason, [])
            if len(examples) < EXAMPLES_PER_REASON:
                examples.append({"id": doc_id, "text": text[:300], **extra})
            if config.keep_dropped:
                writer.dropped.write(json.dumps({"id": doc_id, "reason": reason, "text": text, **extra},
                                                ensure_ascii=False) + "\n")

        for record in read_unit(unit, source):
            if limit is not None and stats["read"] >= limit:
                break
            stats["read"] += 1
            if "skip" in record:
                drop("read", record["skip"], record["id"], record.get("detail", ""))
                continue
            stats["invalid_bytes"] += record.get("invalid_bytes", 0)
            text = normalize_text(record["text"], config.normalization)
            if len(text) <= config.quality.max_chars:  # line rules and PII only on what could be kept
                text, removed = clean_lines(text, config.quality)
                stats["line_removals"] += removed
                if config.pii:
                    text, found = mask_pii(text)
                    for kind, count in found.items():
                        stats["pii"][kind] = stats["pii"].get(kind, 0) + count
            reason = "empty" if not text else quality_reason(text, config.quality)
            if reason:
                drop("quality", reason, record["id"], text)
                continue
            if score_of is not None:
                score = score_of(text)
                stats["domain_scores"][min(int(score * BINS), BINS - 1)] += 1
                if score < threshold:
                    drop("domain", "off_domain", record["id"], text, score=round(score, 4))
                    continue
            words = word_hashes(text)
            task = index.match(words) if index is not None else None
            if task:
                drop("decontaminate", f"contaminated:{task}", record["id"], text)
                continue
            writer.add({"id": record["id"], "text": text, "source": record["source"]}, words)
        writer.close()
        stats["survivors"] = writer.count
        atomic_write_json(files.stats, stats)  # last: the completion marker
    if unit.piece:  # the unit's lines cut from a compressed source: no longer needed
        Path(unit.piece).unlink(missing_ok=True)
    return stats


# ---------------------------------------------------------------------------------- the stage
def plan_jobs(config: CorpusConfig, out: Path, eval_texts: dict[str, list[str]] | None = None):
    """The per-unit jobs still to do (arguments of `process_unit`), every unit's folder in corpus
    order, and the decontamination index (None when off). A unit whose folder holds stats.json is
    finished and not planned again."""
    index = None
    if config.decontamination.enabled and eval_texts:
        index = ContaminationIndex(eval_texts, config.decontamination.ngram, config.decontamination.min_words)
    jobs, unit_dirs, corpus = [], [], CorpusFiles(out)
    sources = zip(config.sources, config.source_names(), config.source_labels(), strict=True)
    for source_index, (source, name, label) in enumerate(sources):
        source = source.model_copy(update={"name": name})  # unique: documents and stats are keyed by it
        # A source with max_docs is read as one unit, so "the first max_docs" is well defined.
        units = plan_units([source], config.unit_bytes if source.max_docs is None else 2**62,
                           corpus.pieces / f"s{source_index}")
        for unit in units:
            unit = dataclasses.replace(unit, source_index=source_index, label=label)
            folder = corpus.unit(unit.key)
            unit_dirs.append((folder, source))
            if not CorpusUnitFiles(folder).stats.exists():
                jobs.append((unit, source, config, index, folder, source.max_docs))
    if config.domain_selection.seed is not None and jobs:
        classifier, threshold = domain_classifier(config, corpus, [job[:2] for job in jobs])
        jobs = [(*job, str(classifier), threshold) for job in jobs]
    return jobs, unit_dirs, index


def _texts(units: list[tuple[Unit, SourceConfig]], normalization: str) -> Iterator[str]:
    """The normalised texts of the documents of `units`, in order (skipped records left out)."""
    for unit, source in units:
        for n, record in enumerate(read_unit(unit, source)):
            if source.max_docs is not None and n >= source.max_docs:
                break
            if "skip" not in record:
                yield normalize_text(record["text"], normalization)


def domain_classifier(config: CorpusConfig, corpus: CorpusFiles,
                      pool: list[tuple[Unit, SourceConfig]]) -> tuple[Path, float]:
    """The domain classifier's weights and threshold (trained once, then reused by a resumed run):
    the seed against `negatives`, or against a reservoir sample of the pool's units still to do;
    with `keep_fraction`, the threshold from another sample of them."""
    weights, record = corpus.domain_classifier, corpus.domain_classifier_record
    if not record.exists():
        selection = config.domain_selection
        sources = {"seed": selection.seed, "negatives": selection.negatives}
        read = {key: [(unit, source) for unit in plan_units([source], 2**62)]
                for key, source in sources.items() if source is not None}
        domain = list(_texts(read["seed"], config.normalization))
        # A sample of the corpus: the negatives (unless given), and held out to set a keep_fraction's threshold.
        calibrate = selection.max_negatives // 4 if selection.keep_fraction else 0
        wanted = calibrate + (0 if selection.negatives else selection.max_negatives)
        drawn = reservoir(_texts(pool, config.normalization), wanted) if wanted else []
        random.Random(0).shuffle(drawn)  # a reservoir's slots are not exchangeable: untouched ones keep early texts
        held_out, drawn = drawn[:calibrate], drawn[calibrate:]
        negatives = drawn if not selection.negatives else \
            reservoir(_texts(read["negatives"], config.normalization), selection.max_negatives)
        corpus.work.mkdir(parents=True, exist_ok=True)
        try:
            found = train_classifier(domain, negatives, weights)
        except ValueError as err:
            raise InputError(f"corpus.domain_selection: {err}") from None
        threshold = selection.threshold
        if selection.keep_fraction:
            threshold = quantile_threshold(weights, held_out, selection.keep_fraction)
            found["calibration_texts"] = len(held_out)
        atomic_write_json(record, found | {"negatives_from": "negatives" if selection.negatives else "the corpus",
                                           "threshold": threshold, "keep_fraction": selection.keep_fraction})
        log.info("corpus: domain classifier trained on %d seed and %d negative texts (held-out accuracy %s), "
                 "threshold %.4f", found["seed_texts"], found["negative_texts"], found["held_out_accuracy"], threshold)
    return weights, read_json(record)["threshold"]


PEAK_DISK = 1.4
"""Peak disk of the stage over the bytes of text it reads: measured 1.07-1.30 (docs/benchmarks.md,
"Curation at scale": the zstd pieces of compressed sources, the units' zstd copies with ~0.6 KB per
document of hashes, signatures and band keys, then the training parts, each deleted once in the
shards; 1.3 where every unit is in flight at once)."""


def input_bytes(units: list[Unit]) -> int:
    """Bytes of input the units read: a piece's or byte range's size, else its file's shared
    equally among the units reading that file (parquet row groups; compressed bytes where a file
    was not cut, so an underestimate there)."""
    per_file = Counter(unit.path for unit in units if unit.piece is None and unit.end is None)
    total = 0
    for unit in units:
        if unit.piece is not None:
            total += unit.piece_bytes if unit.piece_bytes is not None else os.path.getsize(unit.piece)
        elif unit.end is not None:
            total += unit.end - unit.start
        elif os.path.isfile(unit.path):
            total += os.path.getsize(unit.path) // per_file[unit.path]
    return total


def curate(config: CorpusConfig, out: Path, eval_texts: dict[str, list[str]] | None = None,
           workers: int | None = None, executor: str = "local") -> dict[str, Any]:
    """Run every step over the configured sources into `out`, resuming finished units. Steps 1-4
    run on a local process pool of `workers` (default: every core) or, with `executor="ray"`, on
    Ray; see docs/curation.md for Slurm."""
    jobs, unit_dirs, index = plan_jobs(config, out, eval_texts)
    if len(jobs) < len(unit_dirs):
        log.info("corpus: %d of %d work units already done, resuming", len(unit_dirs) - len(jobs), len(unit_dirs))
    if jobs:
        text, free = input_bytes([job[0] for job in jobs]), shutil.disk_usage(out.parent if not out.exists() else out).free
        say = log.warning if free < PEAK_DISK * text else log.info
        say("corpus: %.1f MiB of text to curate; at its peak the stage needs about %.1f MiB of disk (%.1f x the "
            "text), %.0f MiB free where it writes", text / 2**20, PEAK_DISK * text / 2**20, PEAK_DISK, free / 2**20)
    with task_runner(executor, workers) as run:
        run(_process_unit, jobs, "corpus units", done=len(unit_dirs) - len(jobs))
        stats = finish(config, out, unit_dirs, index.coverage if index else None, run)
    if CorpusFiles(out).work.exists():  # the outputs are whole: the per-unit copies go
        shutil.rmtree(CorpusFiles(out).work)
    return stats


def _process_unit(*job) -> dict[str, Any]:
    return process_unit(*job)  # looked up when called, so a test can stand in for `read_unit`


def finish(config: CorpusConfig, out: Path, unit_dirs: list[tuple[Path, SourceConfig]],
           decontamination: dict[str, int] | None = None, run=None) -> dict[str, Any]:
    """Steps 5-7 over the finished units: dedup across the corpus and the split, as tasks through
    `run` (`task_runner`; default a local pool), then the shards, held-out set and stats written
    here. `decontamination`: how many dev/test texts it could check (`ContaminationIndex.coverage`)."""
    if run is None:
        with task_runner() as run:
            return finish(config, out, unit_dirs, decontamination, run)
    corpus = CorpusFiles(out)
    unit_stats = [read_json(CorpusUnitFiles(folder).stats) for folder, _ in unit_dirs]
    counts = [unit["survivors"] for unit in unit_stats]
    starts = np.cumsum([0, *counts])[:-1].tolist()
    units = [(str(folder), start, count) for (folder, _), start, count in zip(unit_dirs, starts, counts, strict=True)]
    deduplicate(config, corpus, units, run)
    splits = [read_json(CorpusUnitFiles(folder).split) for folder, _ in unit_dirs]
    stats = merge_unit_stats(unit_stats)
    stats["decontamination"] = decontamination
    if "domain_scores" in stats:  # what the domain classifier was trained on, and how it scored the corpus
        stats["domain_selection"] = read_json(corpus.domain_classifier_record) | {
            "score_histogram": stats.pop("domain_scores")}
    for (_, source), unit, split in zip(unit_dirs, unit_stats, splits, strict=True):
        per_source = stats["sources"].setdefault(source.name, {
            "read": 0, "kept": 0, "weight": source.weight * source.repeat})
        per_source["read"] += unit["read"]
        per_source["kept"] += split["kept"]
        stats["kept"] += split["kept"]
        stats["heldout"] += split["heldout"]
        for reason, count in split["dropped"].items():
            _add(stats["steps"].setdefault("exact_dedup" if reason == "duplicate" else "near_dedup", {}), reason, count)
        _add_examples(stats, split["examples"])
    files = [CorpusUnitFiles(folder) for folder, _ in unit_dirs]
    _concatenate([f.heldout for f in files], corpus.heldout)
    if config.keep_dropped:  # the per-unit drops (read, quality, domain, decontaminate) first, then dedup's
        _concatenate([f.dropped for f in files] + [f.dedup_dropped for f in files], corpus.dropped)
    stats["shards"] = write_shards(corpus, [f.train for f in files], config.shard_docs)
    stats["steps"] = step_table(stats["read"], stats["steps"])
    stats["dropped"] = {r: n for counts in stats["steps"].values() for r, n in counts["dropped"].items()}
    if stats["read"] != stats["kept"] + sum(stats["dropped"].values()):  # the accounting invariant
        raise AssertionError(f"corpus accounting broken: read {stats['read']}, kept {stats['kept']}, "
                             f"dropped {stats['dropped']}")
    atomic_write_json(corpus.stats, stats)
    return stats


def _concatenate(parts: list[Path], out: Path) -> None:
    pending = PendingFile(out)
    for part in parts:
        with open(part, encoding="utf-8") as handle:
            shutil.copyfileobj(handle, pending.handle)
    pending.close()


def merge_unit_stats(unit_stats: list[dict]) -> dict[str, Any]:
    """The corpus-wide counts of steps 1-4 (reads, per-step drops, PII, invalid bytes, examples)."""
    stats: dict[str, Any] = {"read": 0, "kept": 0, "heldout": 0, "dropped": {}, "steps": {}, "sources": {},
                             "pii": {}, "invalid_bytes": 0, "line_removals": 0, "examples": {}}
    for unit in unit_stats:
        stats["read"] += unit["read"]
        stats["invalid_bytes"] += unit["invalid_bytes"]
        stats["line_removals"] += unit["line_removals"]
        for kind, count in unit["pii"].items():
            _add(stats["pii"], kind, count)
        for step, counts in unit["steps"].items():
            for reason, count in counts.items():
                _add(stats["steps"].setdefault(step, {}), reason, count)
        if "domain_scores" in unit:
            stats["domain_scores"] = [a + b for a, b in zip(stats.get("domain_scores", [0] * BINS),
                                                            unit["domain_scores"], strict=True)]
        _add_examples(stats, unit["examples"])
    return stats


def _add_examples(stats: dict[str, Any], examples: dict[str, list]) -> None:
    """A unit's examples per drop reason, after those of the units before it (EXAMPLES_PER_REASON each)."""
    for reason, found in examples.items():
        kept = stats["examples"].setdefault(reason, [])
        kept.extend(found[: EXAMPLES_PER_REASON - len(kept)])


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def step_table(read: int, drops: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per step, in order: documents in, out and dropped per reason (in == out + dropped)."""
    table, current = {}, read
    for step in STEPS:
        if step in OPTIONAL_STEPS and step not in drops:
            continue
        dropped = dict(sorted(drops.get(step, {}).items()))
        table[step] = {"in": current, "out": current - sum(dropped.values()), "dropped": dropped}
        current = table[step]["out"]
    return table


def needs(config: RunConfig) -> tuple[str, ...]:
    return ()  # the first stage: it reads only the configured sources (and the tasks' dev/test text)


def inputs(config: RunConfig) -> list[str]:
    """The source files and domain selection's seed and negatives (the tasks' dev/test text, which
    decontamination reads, is in `settings`)."""
    selection = config.corpus.domain_selection
    sources = [*config.corpus.sources, *(s for s in (selection.seed, selection.negatives) if s is not None)]
    return [s.path for s in sources if s.path and s.format != "hf-hub"]


def output_digest(config: RunConfig) -> str:
    """What later stages read of this stage's output: the kept documents in order (however they are
    cut into shards), the held-out ones, each source's weight. A rerun that gives the same keeps
    its output id, so nothing downstream reruns (another `keep_dropped`, `unit_bytes`, ...)."""
    run_dir = RunLayout(config.directory)
    return stream_digest([*run_dir.corpus_files.shards(), run_dir.corpus_files.heldout], run_dir.corpus_source_weights())


def discarded_work(config: RunConfig) -> str | None:
    """What rerunning the stage from scratch throws away: its finished work units."""
    units = len(RunLayout(config.directory).corpus_files.finished_units())
    return f"Its {units} finished work units are discarded" if units else None


_DIGESTS: dict[str, dict[str, str]] = {}  # (task settings, file contents) -> digests, per process


def eval_text_digests(config: RunConfig) -> dict[str, str]:
    """Per task name, a sha256 of the dev/test texts decontamination looks for: exactly what the
    stage reads of the tasks, so fine-tuning-only settings (tagging, subsampling, the order of the
    tasks) never rerun it. Remembered per task settings and file contents within a process."""
    key = fingerprint([[t.model_dump(mode="json"), [input_signature(resolve_path(p)) for p in t.files()]]
                       for t in config.tasks])
    if key not in _DIGESTS:
        texts = task_eval_texts(config.tasks)
        _DIGESTS[key] = {name: hashlib.sha256("\n".join(sorted(found)).encode()).hexdigest()
                         for name, found in sorted(texts.items())}
    return _DIGESTS[key]


def settings(config: RunConfig) -> dict[str, Any]:
    """What the stage computes from: the corpus section, the Python version (Unicode tables), and
    with decontamination the tasks' dev/test texts."""
    out = {"corpus": config.corpus.fingerprinted(), "python": platform.python_version()}
    if config.corpus.decontamination.enabled:
        out["decontamination_texts"] = eval_text_digests(config)
    return out


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    eval_texts = task_eval_texts(config.tasks) if config.corpus.decontamination.enabled else {}
    stats = curate(config.corpus, out, eval_texts, config.resources.corpus_workers, config.resources.corpus_executor)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats["dropped"].items())) or "none"
    log.info("corpus: read %d, kept %d (%d held out), dropped %s", stats["read"], stats["kept"], stats["heldout"],
             dropped)
    if not stats["shards"]:  # the later stages would train a vocabulary and a model on nothing
        sources = ", ".join(s.path or s.format for s in config.corpus.sources)
        raise InputError(f"corpus: no documents left to train on: read {stats['read']} from {sources}, kept "
                         f"{stats['kept']} ({stats['heldout']} held out), dropped: {dropped} "
                         f"(every count in {CorpusFiles(out).stats})")
    return {k: stats[k] for k in ("read", "kept", "heldout", "dropped")}

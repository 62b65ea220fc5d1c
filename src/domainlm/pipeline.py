"""Run stages in order with a cache: a stage whose config and inputs are unchanged is skipped.

The stage table is `STAGES`; each stage is a module `domainlm.<stage>` with four functions:
`needs(config)` (the stages whose output it reads), `inputs(config)` (the files it reads),
`settings(config)` (the part of the config that decides what it computes) and `run(config, out)`;
and optionally `check(config)` (what can be refused before any stage runs, from the recipe and
the files it names), `discarded_work(config)` (what a restart would throw away, said before the
folder is deleted) and `output_digest(config)` (what later stages read of its output: a rerun that
gives the same keeps its output id, so the stages after it stay up to date). Speed settings live
in the `resources` section, and bookkeeping keys (when to checkpoint, how many to keep, how often
to log: each section's `BOOKKEEPING`) in no stage's settings, so changing them never reruns a
stage: a killed one resumes.

Each stage writes into `runs/<name>/<stage>/` and, last, `manifest.json` (resolved config, input
hashes, the output ids of the stages it read, versions, timings, counts). The manifest is the
completion marker: a stage is up to date when its manifest's fingerprint equals the one computed
now and everything upstream is up to date too. While a stage runs, `in_progress.json` holds the
fingerprint it is working for, so a killed stage resumes from its own partial work (checkpoints,
finished fine-tunes) only when nothing it depends on changed. A stage that reruns says why (the
keys, inputs or upstream outputs that changed, old -> new) in the log and in its manifest.
"""

from __future__ import annotations

import importlib
import json
import logging
import platform
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

from domainlm import __version__
from domainlm.config import RunConfig, resolve_path
from domainlm.distributed import barrier, rank
from domainlm.errors import StageError
from domainlm.io import atomic_write_json, exclusive_lock, fingerprint, input_signature, read_json
from domainlm.layout import RunLayout

STAGES = ("corpus", "tokenizer", "pretrain", "evaluate", "report")
log = logging.getLogger(__name__)


def stage_module(stage: str) -> ModuleType:
    """The module that implements a stage (imported when first needed: pretrain loads torch)."""
    if stage not in STAGES:
        raise StageError(f"unknown stage '{stage}' (expected one of {', '.join(STAGES)})")
    return importlib.import_module(f"domainlm.{stage}")


def stage_fingerprint(config: RunConfig, stage: str) -> tuple[str, dict[str, Any]]:
    """Fingerprint of what a stage would compute now, and the record it was computed from."""
    module, run_dir = stage_module(stage), RunLayout(config.directory)
    upstream = {}
    for name in module.needs(config):
        manifest = run_dir.manifest(name)
        if not manifest.exists():
            raise StageError(f"stage '{stage}' needs '{name}' first: {manifest} does not exist "
                             f"(run `domainlm {name}` or `domainlm run`)")
        # The upstream *output* id, not its config fingerprint: it changes when a rerun changed
        # what later stages read (`output_digest`; a rerun need not give the same bytes:
        # pretraining on a GPU). A stage that reads every artifact (the report: fit reports,
        # counts) takes the id of the upstream's last run instead.
        ran = read_json(manifest)
        upstream[name] = ran.get("run_id", ran["output_id"]) if getattr(module, "READS_EVERY_ARTIFACT", False) \
            else ran["output_id"]
    record = {
        "settings": module.settings(config),
        "inputs": {path: input_signature(resolve_path(path)) for path in module.inputs(config)},
        "upstream": upstream,
        "domainlm": __version__,
    }
    return fingerprint(record), record


RECORD_KEYS = ("settings", "inputs", "upstream", "domainlm")


def _without_skipped(stored: Any, current: Any) -> Any:
    """`stored` (settings an older manifest recorded) without the keys the `current` settings leave
    out as bookkeeping (`config.Fingerprinted.skipped`), at every depth."""
    if isinstance(stored, dict) and isinstance(current, dict):
        skipped = getattr(current, "skipped", {})
        return {k: _without_skipped(v, current.get(k)) for k, v in stored.items() if k not in skipped}
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        return [_without_skipped(s, c) for s, c in zip(stored, current, strict=True)]
    return stored


def _with_skipped(current: Any) -> Any:
    """The `current` settings with their bookkeeping values put back, as fingerprints recorded
    them before those keys were declared bookkeeping."""
    if isinstance(current, dict):
        return {k: _with_skipped(v) for k, v in current.items()} | getattr(current, "skipped", {})
    if isinstance(current, list):
        return [_with_skipped(v) for v in current]
    return current


def _recorded(stored: dict[str, Any], record: dict[str, Any]) -> dict[str, Any] | None:
    """The record a manifest or marker holds, read as `record`'s settings are built now (None
    for a marker that holds only a fingerprint)."""
    if not all(key in stored for key in RECORD_KEYS):
        return None
    return {key: stored[key] for key in RECORD_KEYS} | {"settings": _without_skipped(stored["settings"],
                                                                                     record["settings"])}


def same_work(stored: dict[str, Any], current: str, record: dict[str, Any]) -> bool:
    """Whether a manifest or in-progress marker (`stored`) was written for the work `record`
    describes (fingerprint `current`). One written before some keys were declared bookkeeping
    still counts them: its recorded settings are read without them, or, for a marker holding only
    a fingerprint, the fingerprint is compared with the one the keys' current values gave then."""
    if stored.get("fingerprint") == current:
        return True
    old = _recorded(stored, record)
    if old is not None:
        return fingerprint(old) == current
    return stored.get("fingerprint") == fingerprint(record | {"settings": _with_skipped(record["settings"])})


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts and lists by dotted path (`pretrain.lr`, `tasks.0.name`)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None or not value:
        return {prefix: value}
    out = {}
    for key, item in items:
        out |= _flat(item, f"{prefix}.{key}" if prefix else str(key))
    return out


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def changes(stored: dict[str, Any] | None, record: dict[str, Any]) -> list[str]:
    """What differs between the work a stage folder was made for (its marker or manifest) and
    the work asked for now: `key: old -> new` for settings, changed inputs, upstream outputs."""
    if stored is None:
        return []
    old = _recorded(stored, record)
    if old is None:
        return ["its in-progress marker predates recorded settings (the fingerprint differs)"]
    out = []
    before, after = _flat(old["settings"]), _flat(json.loads(json.dumps(record["settings"], default=str)))
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, "(unset)") != after.get(key, "(unset)"):
            out.append(f"{key}: {_shown(before.get(key, '(unset)'))} -> {_shown(after.get(key, '(unset)'))}")
    for path in sorted(old["inputs"].keys() | record["inputs"].keys()):
        if path not in old["inputs"]:
            out.append(f"new input {path}")
        elif path not in record["inputs"]:
            out.append(f"input {path} no longer read")
        elif old["inputs"][path] != record["inputs"][path]:
            out.append(f"input {path} changed")
    out += [f"the {name} stage has run since" for name in sorted(record["upstream"])
            if old["upstream"].get(name) != record["upstream"][name]]
    if old["domainlm"] != record["domainlm"]:
        out.append(f"domainlm {old['domainlm']} -> {record['domainlm']}")
    return out


def is_fresh(config: RunConfig, stage: str) -> bool:
    """Whether `stage` and everything it depends on are up to date with the recipe."""
    if not all(is_fresh(config, name) for name in stage_module(stage).needs(config)):
        return False
    manifest = RunLayout(config.directory).manifest(stage)
    if not manifest.exists():
        return False
    return same_work(read_json(manifest), *stage_fingerprint(config, stage))


def _versions() -> dict[str, str]:
    versions = {"domainlm": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "numpy", "sklearn"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def run_lock(config: RunConfig):
    """The run folder's lock, held by rank 0 (under torchrun the other ranks follow it)."""
    return exclusive_lock(RunLayout(config.directory).lock_file) if rank() == 0 else nullcontext()


def remove_stage_folder(folder: Path, stage: str) -> None:
    """Delete a stage folder this pipeline wrote (it holds the stage's manifest or in-progress
    marker, or nothing at all); StageError, deleting nothing, for anything else there."""
    if not folder.is_dir():
        raise StageError(f"{folder} is a file where the {stage} stage's folder goes: move it away")
    marker, manifest = folder / "in_progress.json", folder / "manifest.json"
    ours = marker.is_file() or (manifest.is_file() and read_json(manifest).get("stage") == stage)
    if not ours and any(folder.iterdir()):
        raise StageError(f"{folder} holds files domainlm did not write (no manifest.json or in_progress.json "
                         f"of the {stage} stage): move them, or set run_dir elsewhere; nothing was deleted")
    shutil.rmtree(folder)


def check_stages(config: RunConfig, stages: tuple[str, ...]) -> None:
    """Each stage's `check`: what the recipe and the files it names already rule out, refused
    before any of `stages` runs (not after the stages before it have spent their time)."""
    for stage in stages:
        check = getattr(stage_module(stage), "check", None)
        if check is not None:
            check(config)


def run_stage(config: RunConfig, stage: str, force: bool = False, prepare_only: bool = False) -> bool:
    """Run one stage unless it is up to date. Returns True if it ran. `prepare_only`: only the
    stage's `prepare` (pretrain: the token shards), leaving the stage in progress for the run
    that finishes it (under torchrun, so no rank waits for the preparation)."""
    with run_lock(config):
        check_stages(config, (stage,))
        return _run_stage(config, stage, force, prepare_only)


def _run_stage(config: RunConfig, stage: str, force: bool, prepare_only: bool = False) -> bool:
    if stage not in required_stages(config):
        raise StageError(f"this recipe has no {stage} stage: it has {', '.join(required_stages(config))} (a corpus, "
                         "and a domain or random-init model of its own, bring the others)")
    run_dir = RunLayout(config.directory)
    out, manifest_path, marker = run_dir.stage(stage), run_dir.manifest(stage), run_dir.in_progress(stage)
    current, record = stage_fingerprint(config, stage)
    stale = [name for name in stage_module(stage).needs(config) if not is_fresh(config, name)]
    if stale:
        log.warning("%s: upstream %s out of date with the recipe; using their last outputs "
                    "(`domainlm run` refreshes everything)", stage, ", ".join(stale))
    if not force and manifest_path.exists() and same_work(read_json(manifest_path), current, record):
        log.info("%-9s up to date (%s), skipped", stage, out)
        return False

    stored = read_json(marker) if marker.is_file() else read_json(manifest_path) if manifest_path.is_file() else None
    resumable = marker.is_file() and same_work(stored, current, record) and not force
    main_process = rank() == 0  # under torchrun (pretrain only), rank 0 owns the stage folder
    if main_process:
        reasons = stored.get("reran_because", []) if resumable else \
            ["forced (--force)"] if force and stored else changes(stored, record)
        previous = (stored or {}).get("previous_output") if marker.is_file() else _output_of(config, stage, stored)
        if out.exists() and not resumable:
            if stored is not None:
                _say_what_is_discarded(config, stage, reasons)
            remove_stage_folder(out, stage)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"fingerprint": current, **record, "reran_because": reasons,
                                   "previous_output": previous})
        log.info("%-9s running -> %s%s", stage, out, " (resuming)" if resumable else "")
    barrier()
    if prepare_only:
        if not hasattr(stage_module(stage), "prepare"):
            raise StageError(f"the {stage} stage has nothing to prepare on its own")
        stage_module(stage).prepare(config, out)
        log.info("%-9s prepared; the next `domainlm %s` (under torchrun too) goes on from here", stage, stage)
        return True

    started = time.time()
    counts = stage_module(stage).run(config, out) or {}
    seconds = time.time() - started
    barrier()
    if not main_process:
        return True
    digest = getattr(stage_module(stage), "output_digest", lambda _: None)(config)
    progress = read_json(marker)
    previous, run_id = progress.get("previous_output") or {}, fingerprint([current, started])
    unchanged = digest is not None and previous.get("digest") == digest
    if unchanged:
        log.info("%-9s output unchanged: the stages after it stay up to date", stage)
    atomic_write_json(manifest_path, {
        "stage": stage,
        "fingerprint": current,
        "output_id": previous["output_id"] if unchanged else run_id,
        "output_digest": digest,
        "run_id": run_id,
        **record,
        "reran_because": progress.get("reran_because", []),
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "timings": {"started": started, "seconds": round(seconds, 3)},
        "counts": counts,
    })
    marker.unlink(missing_ok=True)
    log.info("%-9s done in %.1fs", stage, seconds)
    return True


def _output_of(config: RunConfig, stage: str, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A finished stage's output id and the digest of what later stages read of it (from its
    manifest, or computed now for one written before manifests held it), so that a rerun giving
    the same output keeps the id; None without a finished output or a way to digest it."""
    digest_of = getattr(stage_module(stage), "output_digest", None)
    if not manifest or "output_id" not in manifest or digest_of is None:
        return None
    try:
        return {"output_id": manifest["output_id"], "digest": manifest.get("output_digest") or digest_of(config)}
    except OSError:  # its files are gone or unreadable: the rerun's output counts as new
        return None


def _say_what_is_discarded(config: RunConfig, stage: str, reasons: list[str]) -> None:
    """Before a stage folder with earlier work is deleted: why it reruns, and what that throws away
    (a stage's `discarded_work`, e.g. the training steps its checkpoints hold)."""
    discarded = getattr(stage_module(stage), "discarded_work", lambda _: None)(config)
    why = "; ".join(reasons[:8]) + (f"; and {len(reasons) - 8} more" if len(reasons) > 8 else "")
    log.warning("%-9s reruns from scratch because %s%s", stage, why or "its record differs",
                f". {discarded}" if discarded else "")


def partial_report(config: RunConfig) -> Path:
    """A report from the fine-tuning runs finished so far, into `partial-report/` (not a stage's
    folder, and without the run lock, so it can be made while evaluate runs or after it was killed)."""
    out = RunLayout(config.directory).partial_report
    out.mkdir(parents=True, exist_ok=True)
    stage_module("report").run(config, out, partial=True)
    return out


def required_stages(config: RunConfig) -> tuple[str, ...]:
    """The stages this run has: the report and, transitively, every stage it needs (an evaluation
    of existing checkpoints has no corpus, tokenizer or pretrain stage)."""
    wanted, todo = set(), ["report"]
    while todo:
        stage = todo.pop()
        if stage not in wanted:
            wanted.add(stage)
            todo += stage_module(stage).needs(config)
    return tuple(stage for stage in STAGES if stage in wanted)


def run_all(config: RunConfig, force: bool = False, stages: tuple[str, ...] | None = None) -> list[str]:
    """Run `stages` (default: every stage this run has) in order; a changed stage makes everything
    downstream stale. Returns the stages that ran."""
    stages = stages or required_stages(config)
    with run_lock(config):
        check_stages(config, stages)
        return [stage for stage in stages if _run_stage(config, stage, force)]

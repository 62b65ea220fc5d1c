"""Run stages in order with a cache: a stage whose config and inputs are unchanged is skipped.

The stage table is `STAGES`; each stage is a module `domainlm.<stage>` with four functions:
`needs(config)` (the stages whose output it reads), `inputs(config)` (the files it reads),
`settings(config)` (the part of the config that decides what it computes) and `run(config, out)`.
Speed settings live in the `resources` section, which no stage's settings include, so changing
them never reruns a stage.

Each stage writes into `runs/<name>/<stage>/` and, last, `manifest.json` (resolved config, input
hashes, the output ids of the stages it read, versions, timings, counts). The manifest is the
completion marker: a stage is up to date when its manifest's fingerprint equals the one computed
now and everything upstream is up to date too. While a stage runs, `in_progress.json` holds the
fingerprint it is working for, so a killed stage resumes from its own partial work (checkpoints,
finished fine-tunes) only when nothing it depends on changed.
"""

from __future__ import annotations

import importlib
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
        # The upstream *output* id, not its config fingerprint: a forced rerun of a stage makes
        # everything after it stale (a rerun need not give the same bytes: pretraining on a GPU).
        upstream[name] = read_json(manifest)["output_id"]
    record = {
        "settings": module.settings(config),
        "inputs": {path: input_signature(resolve_path(path)) for path in module.inputs(config)},
        "upstream": upstream,
        "domainlm": __version__,
    }
    return fingerprint(record), record


def is_fresh(config: RunConfig, stage: str) -> bool:
    """Whether `stage` and everything it depends on are up to date with the recipe."""
    if not all(is_fresh(config, name) for name in stage_module(stage).needs(config)):
        return False
    manifest = RunLayout(config.directory).manifest(stage)
    if not manifest.exists():
        return False
    current, _ = stage_fingerprint(config, stage)
    return read_json(manifest).get("fingerprint") == current


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


def run_stage(config: RunConfig, stage: str, force: bool = False) -> bool:
    """Run one stage unless it is up to date. Returns True if it ran."""
    with run_lock(config):
        return _run_stage(config, stage, force)


def _run_stage(config: RunConfig, stage: str, force: bool) -> bool:
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
    if not force and manifest_path.exists() and read_json(manifest_path).get("fingerprint") == current:
        log.info("%-9s up to date (%s), skipped", stage, out)
        return False

    resumable = marker.exists() and read_json(marker).get("fingerprint") == current and not force
    main_process = rank() == 0  # under torchrun (pretrain only), rank 0 owns the stage folder
    if main_process:
        if out.exists() and not resumable:
            remove_stage_folder(out, stage)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"fingerprint": current})
        log.info("%-9s running -> %s%s", stage, out, " (resuming)" if resumable else "")
    barrier()

    started = time.time()
    counts = stage_module(stage).run(config, out) or {}
    seconds = time.time() - started
    barrier()
    if not main_process:
        return True
    atomic_write_json(manifest_path, {
        "stage": stage,
        "fingerprint": current,
        "output_id": fingerprint([current, started]),
        **record,
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "timings": {"started": started, "seconds": round(seconds, 3)},
        "counts": counts,
    })
    marker.unlink(missing_ok=True)
    log.info("%-9s done in %.1fs", stage, seconds)
    return True


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
    with run_lock(config):
        return [stage for stage in stages or required_stages(config) if run_stage(config, stage, force=force)]

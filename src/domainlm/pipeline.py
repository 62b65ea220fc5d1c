"""Run stages in order with a cache: a stage whose config and inputs are unchanged is skipped.

Each stage writes into `runs/<name>/<stage>/` and, last, `manifest.json` (resolved config, input
hashes, the output ids of the stages it read, versions, timings, counts). The manifest is the
completion marker: a stage is up to date when its manifest's fingerprint equals the one computed
now and everything upstream is up to date too. While a stage
runs, `in_progress.json` holds the fingerprint it is working for, so a killed stage resumes from its
own partial work (checkpoints, finished fine-tunes) only when nothing it depends on changed.
"""

from __future__ import annotations

import importlib
import logging
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from domainlm import __version__
from domainlm.artifacts import atomic_write_json, fingerprint, input_signature, read_json
from domainlm.config import RunConfig, resolve_path

STAGES = ("corpus", "tokenizer", "pretrain", "evaluate", "report")
UPSTREAM = {
    "corpus": (),
    "tokenizer": ("corpus",),
    "pretrain": ("corpus", "tokenizer"),
    "evaluate": ("tokenizer", "pretrain"),
    "report": ("corpus", "tokenizer", "pretrain", "evaluate"),
}
log = logging.getLogger("domainlm")


class StageError(RuntimeError):
    """A stage cannot run (for example, its upstream artifacts are missing)."""


def stage_dir(config: RunConfig, stage: str) -> Path:
    return config.directory / stage


def _input_files(config: RunConfig, stage: str) -> list[str]:
    if stage == "corpus":
        files = [s.path for s in config.corpus.sources if s.path and s.format != "hf-hub"]
        if config.corpus.decontamination.enabled:  # the tasks' dev/test text is what it protects
            files += [path for t in config.tasks for path in t.files(("dev", "test"))]
        return files
    if stage == "evaluate":
        files = [path for t in config.tasks for path in t.files()]
        files += [p for p in [config.evaluate.general_corpus] + [m.unlabeled for m in config.evaluate.models
                                                                   if m.kind == "self-training"] if p and p != "corpus"]
        models = [m.path for m in config.evaluate.models if m.kind == "hf" and m.path]
        return files + [path for path in models if _exists(path)]
    if stage == "pretrain":
        if config.experiment:  # every arm's corpus files and checkpoints
            from domainlm.experiment import arm_config

            arms = [arm_config(config, arm) for arm in config.experiment.arms]
            return list(dict.fromkeys(p for c in arms for p in _input_files(c, "corpus") + _input_files(c, "pretrain")))
        return [p for p in (config.model.init_from, config.pretrain.lexicon) if p]
    return []


def _exists(path: str) -> bool:
    try:
        return resolve_path(path).exists()
    except FileNotFoundError:  # an optional pkg:// model whose package is not installed
        return False


def stage_settings(config: RunConfig, stage: str) -> dict[str, Any]:
    """The part of the config a stage depends on (changing anything else does not rerun it)."""
    dump = config.model_dump(mode="json")
    if stage == "corpus":
        settings = {"corpus": dump["corpus"], "python": platform.python_version()}
        settings["corpus"].pop("workers")  # how fast, not what is computed
        if config.corpus.decontamination.enabled:
            settings["tasks"] = [{k: v for k, v in t.items() if k not in ("max_train_examples", "metric", "max_length")}
                                 for t in dump["tasks"]]
    elif stage == "tokenizer":
        # max_position goes into the saved tokenizer's model_max_length.
        settings = {"tokenizer": dump["tokenizer"], "max_position": config.model.max_position}
    elif stage == "pretrain":
        settings = {"model": dump["model"], "pretrain": dump["pretrain"], "seed": config.seed}
        if config.experiment:  # the arms run from the whole recipe (their own corpus and tokenizer too)
            settings.update(experiment=dump["experiment"], corpus=dump["corpus"], tokenizer=dump["tokenizer"],
                            tasks=dump["tasks"])
        settings["pretrain"].pop("threads")  # how fast, not what is computed
    elif stage == "evaluate":
        settings = {"evaluate": dump["evaluate"], "tasks": dump["tasks"], "python": platform.python_version()}
        settings["evaluate"].pop("threads")
        settings["evaluate"].pop("workers")
    else:
        settings = {"report": dump["report"]}
    return settings


def stage_fingerprint(config: RunConfig, stage: str) -> tuple[str, dict[str, Any]]:
    """Fingerprint of what a stage would compute now, and the record it was computed from."""
    upstream = {}
    for name in UPSTREAM[stage]:
        manifest = stage_dir(config, name) / "manifest.json"
        if not manifest.exists():
            raise StageError(f"stage '{stage}' needs '{name}' first: {manifest} does not exist "
                             f"(run `domainlm {name}` or `domainlm run`)")
        # The upstream *output* id, not its config fingerprint: a forced rerun of a stage whose
        # output is not bit-reproducible (WordPiece training is not) makes everything after it stale.
        upstream[name] = read_json(manifest)["output_id"]
    record = {
        "settings": stage_settings(config, stage),
        "inputs": {path: input_signature(resolve_path(path)) for path in _input_files(config, stage)},
        "upstream": upstream,
        "domainlm": __version__,
    }
    return fingerprint(record), record


def is_fresh(config: RunConfig, stage: str) -> bool:
    """Whether `stage` and everything it depends on are up to date with the recipe."""
    if not all(is_fresh(config, name) for name in UPSTREAM[stage]):
        return False
    manifest = stage_dir(config, stage) / "manifest.json"
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


def run_stage(config: RunConfig, stage: str, force: bool = False) -> bool:
    """Run one stage unless it is up to date. Returns True if it ran."""
    out = stage_dir(config, stage)
    current, record = stage_fingerprint(config, stage)
    stale = [name for name in UPSTREAM[stage] if not is_fresh(config, name)]
    if stale:
        log.warning("%s: upstream %s out of date with the recipe; using their last outputs "
                    "(`domainlm run` refreshes everything)", stage, ", ".join(stale))
    manifest_path = out / "manifest.json"
    if not force and manifest_path.exists() and read_json(manifest_path).get("fingerprint") == current:
        log.info("%-9s up to date (%s), skipped", stage, out)
        return False

    marker = out / "in_progress.json"
    resumable = marker.exists() and read_json(marker).get("fingerprint") == current and not force
    main_process = rank() == 0  # under torchrun (pretrain only), rank 0 owns the stage folder
    if main_process:
        if out.exists() and not resumable:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"fingerprint": current})
        log.info("%-9s running -> %s%s", stage, out, " (resuming)" if resumable else "")
    barrier()

    started = time.time()
    module = importlib.import_module(f"domainlm.{stage}")
    counts = module.run(config, out) or {}
    seconds = time.time() - started
    barrier()
    if not main_process:
        return True

    manifest = {
        "stage": stage,
        "fingerprint": current,
        "output_id": fingerprint([current, started]),
        **record,
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "timings": {"started": started, "seconds": round(seconds, 3)},
        "counts": counts,
    }
    atomic_write_json(manifest_path, manifest)
    marker.unlink(missing_ok=True)
    log.info("%-9s done in %.1fs", stage, seconds)
    return True


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_all(config: RunConfig, force: bool = False) -> list[str]:
    """Run every stage in order (a changed stage makes everything downstream stale).
    Returns the stages that ran."""
    return [stage for stage in STAGES if run_stage(config, stage, force=force)]

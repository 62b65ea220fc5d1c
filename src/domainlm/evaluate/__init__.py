"""Evaluate stage: every model on every task over every seed.

Models: the domain model this run pretrained, the same architecture randomly initialised, any
local Hugging Face directory named in the recipe, and TF-IDF + logistic regression. Each
(model, task, seed) result is saved as soon as it is done (`runs/<model>/<task>/seed-N.json`, with
the test predictions for significance tests), so a killed evaluation resumes where it stopped. A
model that fails (a corrupt or unsupported directory) is recorded in `failures.json` and the others
go on. `results.jsonl` holds one row per (model, task, seed, metric).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from domainlm.artifacts import atomic_write_json, atomic_write_text, read_json
from domainlm.config import ModelEntry, RunConfig, resolve_path
from domainlm.evaluate.baselines import tfidf_predict
from domainlm.evaluate.metrics import summarize, task_metrics
from domainlm.evaluate.tasks import Task, load_task


def model_location(entry: ModelEntry, run_dir: Path) -> tuple[Path, bool]:
    """(directory, use pretrained weights) for a neural model entry."""
    if entry.kind in ("domain", "random-init"):
        return run_dir / "pretrain" / "export", entry.kind == "domain"
    return resolve_path(entry.path), True  # kind "hf"


def evaluate_one(entry: ModelEntry, task: Task, seed: int, config: RunConfig) -> dict[str, Any]:
    if entry.kind == "tfidf":
        _, test_predictions = tfidf_predict(task, seed)
        gold = [target for _, target in task.test]  # a label, or a tag sequence
        return {"metrics": task_metrics(task.type, gold, test_predictions), "predictions": test_predictions}
    from domainlm.evaluate.finetune import finetune

    path, pretrained = model_location(entry, config.directory)
    return finetune(path, pretrained, task, seed, config.evaluate)


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    if config.evaluate.threads:
        torch.set_num_threads(config.evaluate.threads)
    tasks = [load_task(t, seed=config.seed) for t in config.tasks]
    rows, failures, skipped = [], [], []
    models = []
    for entry in config.evaluate.models:
        try:
            if entry.kind == "hf" and not resolve_path(entry.path).exists():
                raise FileNotFoundError(f"model directory not found: {entry.path}")
            models.append(entry)
        except FileNotFoundError as err:
            skipped.append({"model": entry.name, "reason": str(err)})
            print(f"evaluate: skipping {entry.name}: {err}")
    jobs = [(m, t, s) for m in models for t in tasks for s in config.evaluate.seeds]
    broken: dict[str, str] = {}
    for entry, task, seed in tqdm(jobs, desc="evaluate", unit=" runs"):
        target = out / "runs" / entry.name / task.name / f"seed-{seed}.json"
        if entry.name in broken:
            continue
        if target.exists():
            result = read_json(target)
        else:
            try:
                result = evaluate_one(entry, task, seed, config)
            except Exception as err:  # one broken model must not stop the others
                broken[entry.name] = f"{type(err).__name__}: {err}"
                failures.append({"model": entry.name, "task": task.name, "error": broken[entry.name],
                                 "traceback": traceback.format_exc(limit=3)})
                print(f"evaluate: {entry.name} failed on {task.name}: {broken[entry.name]}")
                continue
            result.update(model=entry.name, kind=entry.kind, task=task.name, seed=seed)
            atomic_write_json(target, result)
        for metric, value in result["metrics"].items():
            rows.append({"model": entry.name, "task": task.name, "seed": seed, "metric": metric, "value": value})
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(out / "failures.json", {"failed": failures, "skipped": skipped})
    atomic_write_json(out / "tasks.json", [
        {"name": t.name, "type": t.type, "metric": t.metric, "labels": t.labels,
         "sizes": {"train": len(t.train), "dev": len(t.dev), "test": len(t.test)}} for t in tasks])
    for s in summarize(rows, [{"name": t.name, "metric": t.metric} for t in tasks]):
        print(f"evaluate: {s['task']:<24} {s['model']:<20} {s['metric']} "
              f"{100 * s['mean']:6.2f} ± {100 * s['std']:5.2f} (n={s['n']})")
    return {"rows": len(rows), "failed": len(failures), "skipped": len(skipped)}

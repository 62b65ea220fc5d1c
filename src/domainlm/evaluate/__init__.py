"""Evaluate stage: every model on every task, over a learning-rate grid and every seed.

Models: the domain model this run pretrained, the same architecture randomly initialised, any
local Hugging Face directory named in the recipe, TF-IDF + a linear model, and self-training rows
(a teacher's pseudo-labels on unlabeled in-domain text train a student before the gold labels).
Each (model, task, lr, seed) result is saved when it is done
(`runs/<model>/<task>/lr-<lr>/seed-N.json`, with the test predictions for the bootstrap), so a
killed evaluation resumes where it stopped. Per (model, task) the learning rate with the best mean
dev score is selected (`selection.json`); `results.jsonl` holds its rows (model, task, seed,
metric, value). A model that fails (a corrupt or unsupported directory) is recorded in
`failures.json` with the reason and the others go on. Before any training, each task's distance
from general text is measured (`distance.json`) and its test gold labels saved (`gold/`).
"""

from __future__ import annotations

import json
import random
import re
import statistics
import traceback
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from domainlm.artifacts import atomic_write_json, atomic_write_text, read_json
from domainlm.config import ModelEntry, RunConfig, resolve_path
from domainlm.corpus.readers import open_text
from domainlm.evaluate.baselines import tfidf_predict
from domainlm.evaluate.metrics import summarize, task_metrics
from domainlm.evaluate.tasks import Task, load_task

SELF_TRAINING_TYPES = ("classification", "multi-label", "token-classification")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORDS = re.compile(r"\w+|[^\w\s]")


class Unsupported(ValueError):
    """A model kind that does not apply to a task type (reported, not a failure of the model)."""


def model_location(entry: ModelEntry, run_dir: Path) -> tuple[Path, bool]:
    """(directory, use pretrained weights) for a neural model entry."""
    if entry.kind in ("domain", "random-init"):
        base = run_dir / "arms" / entry.arm if entry.arm else run_dir  # an experiment's arm, or this run
        return base / "pretrain" / "export", entry.kind == "domain"
    return resolve_path(entry.path), True  # kind "hf"


def unlabeled_examples(entry: ModelEntry, task: Task, config: RunConfig, seed: int) -> list[dict]:
    """Unlabeled in-domain inputs in the task's shape: texts, or sentences split into words."""
    if entry.unlabeled == "corpus":
        from domainlm.corpus import iter_corpus_texts

        texts = iter_corpus_texts(config.directory / "corpus")
    else:
        with open_text(entry.unlabeled) as handle:
            texts = [line.strip() for _, line in zip(range(20 * entry.max_unlabeled), handle, strict=False)
                     if line.strip()]
    pool = []
    for text in texts:
        pool += _SENTENCE.split(text) if task.type == "token-classification" else [text]
        if len(pool) >= 20 * entry.max_unlabeled:
            break
    chosen = random.Random(seed).sample(pool, min(entry.max_unlabeled, len(pool)))
    if task.type == "token-classification":
        return [{"tokens": w[:128], "tags": ["O"] * len(w[:128])} for w in (_WORDS.findall(s) for s in chosen) if w]
    return [{"text": t, "label": [] if task.type == "multi-label" else ""} for t in chosen]


def self_train(entry: ModelEntry, teacher: ModelEntry, task: Task, seed: int, lr: float, config: RunConfig) -> dict:
    """Teacher fine-tuned on gold -> pseudo-labels on unlabeled text (kept when confident) ->
    a fresh student trains one epoch on them, then fine-tunes on gold."""
    from domainlm.evaluate.finetune import encode, finetune, predict

    if task.type not in SELF_TRAINING_TYPES:
        raise Unsupported(f"self-training needs single-text tasks ({', '.join(SELF_TRAINING_TYPES)}), "
                          f"not {task.type}")
    path, pretrained = model_location(teacher, config.directory)
    first = finetune(path, pretrained, task, seed, lr, config.evaluate, keep_model=True)
    model, tokenizer = first.pop("model"), first.pop("tokenizer")
    examples = unlabeled_examples(entry, task, config, seed)
    data = encode(tokenizer, task, examples, task.max_length or config.evaluate.max_length)
    device = next(model.parameters()).device
    labels, confidence = predict(model, data, task, examples, config.evaluate.batch_size,
                                 tokenizer.pad_token_id or 0, device)
    key = "tags" if task.type == "token-classification" else "label"
    pseudo = [x | {key: y} for x, y, c in zip(examples, labels, confidence, strict=True) if c >= entry.confidence]
    del model
    result = finetune(path, pretrained, task, seed, lr, config.evaluate, pseudo=pseudo or None)
    result.update(teacher_metrics=first["metrics"], unlabeled=len(examples), pseudo_labeled=len(pseudo))
    return result


def evaluate_one(entry: ModelEntry, task: Task, seed: int, lr: float, config: RunConfig) -> dict[str, Any]:
    if entry.kind == "tfidf":
        dev_predictions, test_predictions = tfidf_predict(task, seed)
        return {"metrics": task_metrics(task.type, task.gold("test"), test_predictions, task.labels),
                "dev_score": task_metrics(task.type, task.gold("dev"), dev_predictions, task.labels)[task.metric],
                "predictions": test_predictions}
    if entry.kind == "self-training":
        teacher = next(m for m in config.evaluate.models if m.name == entry.teacher)
        return self_train(entry, teacher, task, seed, lr, config)
    from domainlm.evaluate.finetune import finetune

    path, pretrained = model_location(entry, config.directory)
    return finetune(path, pretrained, task, seed, lr, config.evaluate)


def task_distances(config: RunConfig, tasks: list[Task]) -> dict[str, Any]:
    """Each task's distance from general text, measured before any training."""
    from domainlm.evaluate.distance import domain_distance
    from domainlm.tokenizer import load_tokenizer

    name = config.evaluate.general_tokenizer or config.tokenizer.reference
    if not name:
        return {"note": "no general tokenizer (evaluate.general_tokenizer or tokenizer.reference)"}
    try:
        tokenizer = load_tokenizer(name)
    except FileNotFoundError as err:
        return {"note": f"general tokenizer unavailable: {err}"}
    general = None
    if config.evaluate.general_corpus:
        with open_text(config.evaluate.general_corpus) as handle:
            general = [line.strip() for _, line in zip(range(20_000), handle, strict=False) if line.strip()]
    return {"general_tokenizer": name, "general_corpus": config.evaluate.general_corpus,
            "tasks": {t.name: domain_distance(t.texts(), tokenizer, general) for t in tasks}}


def _select(runs: dict[float, list[dict]]) -> tuple[float, dict[str, float]]:
    """The learning rate with the best mean dev score, and every rate's mean."""
    means = {lr: statistics.mean(r["dev_score"] for r in results) for lr, results in runs.items() if results}
    return max(means, key=lambda lr: (means[lr], -lr)), means


def run_file(out: Path, model: str, task: str, lr: float, seed: int) -> Path:
    return out / "runs" / model / task / f"lr-{lr:g}" / f"seed-{seed}.json"


def run_job(entry: ModelEntry, task: Task, lr: float, seed: int, config: RunConfig, target: Path) -> tuple:
    """One (model, task, lr, seed) run, saved to `target`; ("done" | "unsupported" | "failed",
    reason, traceback)."""
    if config.evaluate.threads:
        torch.set_num_threads(config.evaluate.threads)
    try:
        result = evaluate_one(entry, task, seed, lr, config)
    except Unsupported as err:
        return "unsupported", str(err), ""
    except Exception as err:  # noqa: BLE001 - one broken model must not stop the others
        return "failed", f"{type(err).__name__}: {err}", traceback.format_exc(limit=3)
    result.update(model=entry.name, kind=entry.kind, task=task.name, seed=seed)
    atomic_write_json(target, result)
    return "done", "", ""


def compute(jobs: list[tuple], config: RunConfig, out: Path) -> dict[tuple, tuple]:
    """Run the jobs whose result file is missing: in this process (a model that fails is not tried
    on further tasks), or on `evaluate.workers` processes at once (small models leave a GPU, or a
    many-core CPU, mostly idle one run at a time). Returns each run's outcome."""
    todo = [(e, t, lr, s, run_file(out, e.name, t.name, lr, s)) for e, t, lr, s in jobs]
    todo = [job for job in todo if not job[-1].exists()]
    outcomes: dict[tuple, tuple] = {}
    if config.evaluate.workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(config.evaluate.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, *job[:4], config, job[4]): job for job in todo}
            for future in tqdm(futures, desc="evaluate", unit=" runs"):
                e, t, lr, s, _ = futures[future]
                outcomes[(e.name, t.name, lr, s)] = future.result()
    else:
        broken: set = set()
        for e, t, lr, s, target in tqdm(todo, desc="evaluate", unit=" runs"):
            if e.name in broken or (e.name, t.name) in broken:
                continue
            outcome = outcomes[(e.name, t.name, lr, s)] = run_job(e, t, lr, s, config, target)
            if outcome[0] != "done":
                broken.add(e.name if outcome[0] == "failed" else (e.name, t.name))
    for (model, task, _, _), (status, reason, _) in outcomes.items():
        if status == "failed":
            print(f"evaluate: {model} failed on {task}: {reason}")
    return outcomes


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    tasks = [load_task(t, seed=config.seed) for t in config.tasks]
    atomic_write_json(out / "tasks.json", [
        {"name": t.name, "type": t.type, "metric": t.metric, "labels": t.labels, "notes": t.notes,
         "sizes": {"train": len(t.train), "dev": len(t.dev), "test": len(t.test)}} for t in tasks])
    for t in tasks:
        atomic_write_json(out / "gold" / f"{t.name}.json", t.gold("test"))
    if not (out / "distance.json").exists():
        atomic_write_json(out / "distance.json", task_distances(config, tasks))
    failures, skipped, models = [], [], []
    for entry in config.evaluate.models:
        if entry.arm and not model_location(entry, config.directory)[0].exists():
            from domainlm.experiment import arm_failure

            failures.append({"model": entry.name, "task": "", "error": arm_failure(config, entry.arm)})
            print(f"evaluate: {entry.name}: {failures[-1]['error']}")
            continue
        try:
            if entry.kind == "hf" and not resolve_path(entry.path).exists():
                raise FileNotFoundError(f"model directory not found: {entry.path}")
            models.append(entry)
        except FileNotFoundError as err:
            skipped.append({"model": entry.name, "reason": str(err)})
            print(f"evaluate: skipping {entry.name}: {err}")
    grid = config.evaluate.learning_rates
    jobs = [(m, t, lr, s) for m in models for t in tasks for lr in ([0.0] if m.kind == "tfidf" else grid)
            for s in config.evaluate.seeds]
    outcomes = compute(jobs, config, out)
    broken: dict = {}  # model name, or (model, task) for a kind that does not apply, -> reason
    done: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for entry, task, lr, seed in jobs:
        target = run_file(out, entry.name, task.name, lr, seed)
        if target.exists():
            done.setdefault((entry.name, task.name), {}).setdefault(lr, []).append(read_json(target))
            continue
        status, reason, trace = outcomes.get((entry.name, task.name, lr, seed), ("not run", "", ""))
        if status == "unsupported" and (entry.name, task.name) not in broken:
            broken[(entry.name, task.name)] = reason
            skipped.append({"model": entry.name, "task": task.name, "reason": reason})
        elif status == "failed" and entry.name not in broken:
            broken[entry.name] = reason
            failures.append({"model": entry.name, "task": task.name, "error": reason, "traceback": trace})
    rows, selection = [], {}
    for (model, task_name), runs in done.items():
        if model in broken:
            continue
        lr, means = _select(runs)
        selection.setdefault(model, {})[task_name] = {"lr": lr, "dev": means[lr], "grid": {f"{k:g}": v for k, v in means.items()},
                                                      "seeds": [r["seed"] for r in runs[lr]]}
        for r in runs[lr]:
            rows += [{"model": model, "task": task_name, "seed": r["seed"], "metric": metric, "value": value}
                     for metric, value in r["metrics"].items()]
    atomic_write_json(out / "selection.json", selection)
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(out / "failures.json", {"failed": failures, "skipped": skipped})
    for s in summarize(rows, [{"name": t.name, "metric": t.metric} for t in tasks]):
        print(f"evaluate: {s['task']:<24} {s['model']:<20} {s['metric']} "
              f"{100 * s['mean']:6.2f} ± {100 * s['std']:5.2f} (n={s['n']})")
    return {"rows": len(rows), "failed": len(failures), "skipped": len(skipped)}


def selected_runs(out: Path, model: str, task: str) -> list[dict]:
    """The saved runs (one per seed) of the learning rate selected for one (model, task)."""
    chosen = read_json(out / "selection.json")[model][task]
    folder = out / "runs" / model / task / f"lr-{chosen['lr']:g}"
    return [read_json(folder / f"seed-{seed}.json") for seed in chosen["seeds"]]


def run_predictions(out: Path, model: str, task: str) -> list[list]:
    """The selected learning rate's test predictions of one (model, task), one list per seed."""
    return [r["predictions"] for r in selected_runs(out, model, task)]

"""Learning curves: each model's test score against the number of labels it was fine-tuned on, and
how many labels one model needs to reach another's score (the "label saving" of few-label studies).

Read from the evaluate stage's saved artifacts only (`learning_curve.json`, the curve's rows of
`results.jsonl`, each point's run files and the test gold labels), through `domainlm.layout`.
"""

from __future__ import annotations

from typing import Any

from domainlm.io import read_json
from domainlm.layout import RunLayout
from domainlm.report.stats import score_interval


def curve_points(run_dir: RunLayout, tasks: list[dict], curve_rows: list[dict], summary: list[dict],
                 samples: int = 1000, seed: int = 0) -> list[dict]:
    """Per task, model and point of the curve (each size, then `size` None: the full training
    split, for the models with full-data results): the headline metric's mean over every run of
    the point (subsample seeds x fine-tuning seeds, each at the rate its sample's dev chose) with a
    bootstrap 95% interval (`stats.score_interval`: test examples and runs resampled), the runs,
    and the training examples (mean over subsample seeds)."""
    curve = read_json(run_dir.learning_curve)
    points = []
    for task in tasks:
        if task["name"] not in curve["tasks"]:
            continue
        gold = read_json(run_dir.gold(task["name"]))
        labels = task["labels"] or None
        models = dict.fromkeys(r["model"] for r in curve_rows if r["task"] == task["name"])
        for model in models:
            rows = [r for r in curve_rows if (r["model"], r["task"], r["metric"]) == (model, task["name"], task["metric"])]
            for size in sorted({r["size"] for r in rows}):
                runs = run_dir.curve_point_runs(model, task["name"], size)
                interval = score_interval(task["type"], gold, [r["predictions"] for r in runs], task["metric"],
                                          labels, samples, seed)
                trained = [r["train_examples"] for r in rows if r["size"] == size]
                points.append({"task": task["name"], "model": model, "size": size,
                               "train_examples": sum(trained) / len(trained)} | interval)
            if any(s["model"] == model and s["task"] == task["name"] for s in summary):
                interval = score_interval(task["type"], gold, run_dir.predictions(model, task["name"]), task["metric"],
                                          labels, samples, seed)
                points.append({"task": task["name"], "model": model, "size": None,
                               "train_examples": curve["tasks"][task["name"]]["train"]} | interval)
    return points


def _score(point: dict) -> str:
    return f"{point['mean']:.2f} [{point['low']:.2f}, {point['high']:.2f}]"


def _labels(size: int | None, unit: str, full_train: int) -> str:
    return f"all {full_train:,}" if size is None else f"{size} {unit}"


def label_saving(task: str, model: str, other: str, points: list[dict], unit: str, full_train: int,
                 include_full: bool = True) -> dict[str, Any] | None:
    """The smallest size at which `model`'s mean score reaches `other`'s score on the full training
    split (with `include_full` and a full-data result, else at `other`'s largest size), as a
    sentence with both scores and their intervals; when no size of `model` gets there, a sentence
    saying so, with `model`'s best. None when either model has no curve on the task.

    `points`: `curve_points` rows; `unit`: what a size counts ("labels per class", "sentences",
    "examples"); `full_train`: the full training split's examples."""
    ours = sorted((p for p in points if (p["task"], p["model"]) == (task, model) and p["size"] is not None),
                  key=lambda p: p["size"])
    theirs = [p for p in points if (p["task"], p["model"]) == (task, other)]
    theirs_curve = sorted((p for p in theirs if p["size"] is not None), key=lambda p: p["size"])
    if not ours or not theirs_curve:
        return None
    full = [p for p in theirs if p["size"] is None] if include_full else []
    target = full[0] if full else theirs_curve[-1]
    reached = next((p for p in ours if p["mean"] >= target["mean"]), None)
    where = _labels(target["size"], unit, full_train)
    if reached:
        sentence = (f"On {task}, {model} reaches with {_labels(reached['size'], unit, full_train)} the score "
                    f"{other} reaches with {where} ({_score(reached)} vs {_score(target)}).")
    else:
        best = max(ours, key=lambda p: p["mean"])
        sentence = (f"On {task}, {model} never reaches the score {other} reaches with {where} ({_score(target)}): "
                    f"its best, with {_labels(best['size'], unit, full_train)}, is {_score(best)}.")
    return {"task": task, "model": model, "other": other, "other_size": target["size"],
            "size": reached["size"] if reached else None, "score": reached or None, "other_score": target,
            "sentence": sentence}


def label_savings(points: list[dict], curve: dict, include_full: bool = True) -> list[dict]:
    """`label_saving` for every task and ordered pair of models with curves on it. `curve`: the
    evaluate stage's `learning_curve.json`."""
    found = []
    for task, about in curve["tasks"].items():
        models = list(dict.fromkeys(p["model"] for p in points if p["task"] == task))
        for model in models:
            for other in models:
                if other != model and (saving := label_saving(task, model, other, points, about["unit"],
                                                              about["train"], include_full)):
                    found.append(saving)
    return found


def short_classes(curve: dict) -> list[str]:
    """Where a sample could not hold its size: per task and size, the classes (or the split) with
    fewer examples, and how many all of them are."""
    notes = []
    for task, about in curve["tasks"].items():
        seen = {}
        for sample in about["samples"]:
            for name, count in sample["short"].items():
                seen.setdefault(sample["size"], {})[name] = count
        for size, classes in sorted(seen.items()):
            listed = ", ".join(f"{name} has {count}" for name, count in classes.items())
            notes.append(f"{task} at {size}: {listed} (all taken)")
    return notes


# ------------------------------------------------------------------------------ active learning
def active_points(run_dir: RunLayout, tasks: list[dict], active_rows: list[dict], samples: int = 1000,
                  seed: int = 0) -> list[dict]:
    """Per task, model, strategy and round of active learning: the labelled examples and the
    headline metric's mean over the AL seeds with a bootstrap 95% interval (`stats.score_interval`:
    test examples and seeds resampled), from the saved runs (`RunLayout.active_runs`)."""
    points = []
    for task in tasks:
        keys = dict.fromkeys((r["model"], r["strategy"]) for r in active_rows if r["task"] == task["name"])
        if not keys:
            continue
        gold = read_json(run_dir.gold(task["name"]))
        for model, strategy in keys:
            runs = run_dir.active_runs(model, task["name"], strategy)
            for number in range(min(len(r["rounds"]) for r in runs)):
                rounds = [r["rounds"][number] for r in runs]
                interval = score_interval(task["type"], gold, [r["predictions"] for r in rounds], task["metric"],
                                          task["labels"] or None, samples, seed)
                points.append({"task": task["name"], "model": model, "strategy": strategy, "round": number,
                               "labels": rounds[0]["labels"]} | interval)
    return points


def active_sentences(points: list[dict]) -> list[str]:
    """Per task and model, each strategy's score at the last round against random's, as a sentence."""
    found = []
    for task, model in dict.fromkeys((p["task"], p["model"]) for p in points):
        mine = [p for p in points if (p["task"], p["model"]) == (task, model)]
        last = {}
        for p in mine:
            if p["round"] >= last.get(p["strategy"], {"round": -1})["round"]:
                last[p["strategy"]] = p
        if "random" not in last:
            continue
        base = last["random"]
        for strategy, p in last.items():
            if strategy != "random":
                found.append(f"On {task}, {model} with {strategy} sampling scores {_score(p)} with {p['labels']} "
                             f"labels; random sampling {_score(base)} with {base['labels']}.")
    return found

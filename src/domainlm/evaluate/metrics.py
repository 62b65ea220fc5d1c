"""Metrics over predictions: plain functions, tested against hand-computed values."""

from __future__ import annotations

import statistics

from seqeval.metrics import f1_score, precision_score, recall_score
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score as sk_f1


def classification_metrics(gold: list[str], predicted: list[str]) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "micro_f1": float(sk_f1(gold, predicted, average="micro")),
        "macro_f1": float(sk_f1(gold, predicted, average="macro", zero_division=0)),
    }


def token_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision / recall / F1 (seqeval, IOB2: an entity counts only if both its
    span and type are exactly right)."""
    return {
        "entity_precision": float(precision_score(gold, predicted, zero_division=0)),
        "entity_recall": float(recall_score(gold, predicted, zero_division=0)),
        "entity_f1": float(f1_score(gold, predicted, zero_division=0)),
    }


def task_metrics(task_type: str, gold: list, predicted: list) -> dict[str, float]:
    if task_type == "token-classification":
        return token_metrics(gold, predicted)
    return classification_metrics(gold, predicted)


def summarize(rows: list[dict], tasks: list[dict]) -> list[dict]:
    """Mean ± std over seeds of each task's headline metric, per model (models in row order).
    `rows` are `{"model", "task", "seed", "metric", "value"}`; `tasks` are `{"name", "metric"}`."""
    out = []
    for task in tasks:
        for model in dict.fromkeys(r["model"] for r in rows):
            values = [r["value"] for r in rows
                      if r["model"] == model and r["task"] == task["name"] and r["metric"] == task["metric"]]
            if values:
                out.append({"task": task["name"], "model": model, "metric": task["metric"], "n": len(values),
                            "mean": statistics.mean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0})
    return out

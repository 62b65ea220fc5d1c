"""Evaluation metrics as sums of per-example statistics.

Every metric here is a function of column sums of an (examples, k) statistics matrix: accuracy of
(n, correct), F1 of per-class (tp, fp, fn), Pearson of (n, Σx, Σy, Σx², Σy², Σxy). A resampled test
set is then only a weighted column sum, so a bootstrap over thousands of resamples is one matrix
product (`stats.paired_bootstrap`) instead of thousands of metric calls.

Column layouts (`C` = number of classes, from `class_labels`):
- targets `class`, `choice` (one label per example; an answer index is just another label) and
  `classes` (multi-label): [n, correct or exact match, tp × C, fp × C, fn × C]
- target `number` (regression): [n, Σx, Σy, Σx², Σy², Σxy, Σ(x - y)²], x gold and y predicted,
  both centred on their full-set means first (Pearson does not change under a shift; the sums stay
  well scaled)
- target `tags` (token classification): [tp, n_predicted, n_gold] counted over entities
- target `ranking` (retrieval; gold: a query's {document id: grade}, predicted: document ids
  ranked best first): [1, nDCG@10, reciprocal rank within 10, recall@100] per query, so a metric
  is its column's mean over queries (trec_eval's definitions: linear gain, log2 discount, the ideal
  ranking from the query's judgements)

Functions take a task type's name and look its target up in `domainlm.tasks.types`.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from domainlm.tasks.tagging import spans
from domainlm.tasks.types import task_type as _type

# --- per-example statistics ---------------------------------------------------------------------

def class_labels(task_type: str, gold: list, predicted: list, labels: list | None = None) -> list[str]:
    """The classes that index the tp/fp/fn columns: `labels` (as strings) followed by any other class
    seen in `gold` or `predicted`, sorted. Empty for regression and token classification.

    Labels are compared as strings, so a multiple-choice answer 2 and "2" are the same class.
    """
    target = _type(task_type).target
    if target in ("number", "tags", "ranking"):
        return []
    known = [str(label) for label in labels or []]
    if target == "classes":
        seen = {str(label) for row in (*gold, *predicted) for label in row}
    else:
        seen = set(map(str, gold)) | set(map(str, predicted))
    return list(dict.fromkeys(known)) + sorted(seen - set(known))


def _indicators(rows: list, index: dict[str, int]) -> np.ndarray:
    """(n, C) 0/1 matrix: row i marks the labels of example i."""
    matrix = np.zeros((len(rows), len(index)))
    for i, row in enumerate(rows):
        matrix[i, [index[str(label)] for label in row]] = 1.0
    return matrix


def _confusion(gold_matrix: np.ndarray, predicted_matrix: np.ndarray, match: np.ndarray) -> np.ndarray:
    """[1, match, tp × C, fp × C, fn × C] per example from (n, C) gold and predicted indicators."""
    tp = gold_matrix * predicted_matrix
    ones = np.ones((len(match), 1))
    return np.concatenate([ones, match[:, None].astype(float), tp, predicted_matrix - tp, gold_matrix - tp], axis=1)


def _single_label_stats(gold: list, predicted: list, classes: list[str]) -> np.ndarray:
    index = {label: j for j, label in enumerate(classes)}
    one_hot = np.eye(len(index))
    gold_matrix = one_hot[np.array([index[label] for label in map(str, gold)], dtype=int)]
    predicted_matrix = one_hot[np.array([index[label] for label in map(str, predicted)], dtype=int)]
    return _confusion(gold_matrix, predicted_matrix, (gold_matrix * predicted_matrix).any(axis=1))


def _multi_label_stats(gold: list, predicted: list, classes: list[str]) -> np.ndarray:
    index = {label: j for j, label in enumerate(classes)}
    gold_matrix, predicted_matrix = _indicators(gold, index), _indicators(predicted, index)
    return _confusion(gold_matrix, predicted_matrix, (gold_matrix == predicted_matrix).all(axis=1))


def _regression_stats(gold: list, predicted: list, classes: list[str]) -> np.ndarray:
    x, y = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
    squared_error = (x - y) ** 2
    if len(x):
        x, y = x - x.mean(), y - y.mean()
    return np.stack([np.ones(len(x)), x, y, x * x, y * y, x * y, squared_error], axis=1)


def _entity_stats(gold: list, predicted: list, classes: list[str]) -> np.ndarray:
    out = np.zeros((len(gold), 3))
    for i, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
        gold_spans, predicted_spans = set(spans(gold_tags)), set(spans(predicted_tags))
        out[i] = len(gold_spans & predicted_spans), len(predicted_spans), len(gold_spans)
    return out


def _dcg(gains: list[float]) -> float:
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def _ranking_stats(gold: list, predicted: list, classes: list[str]) -> np.ndarray:
    out = np.zeros((len(gold), 4))
    for i, (relevant, ranked) in enumerate(zip(gold, predicted, strict=True)):
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"query {i}: the ranking holds a document more than once")
        ideal = _dcg(sorted(relevant.values(), reverse=True)[:10])
        first = next((rank for rank, d in enumerate(ranked[:10]) if relevant.get(d, 0) > 0), None)
        found = sum(relevant.get(d, 0) > 0 for d in ranked[:100])
        out[i] = (1.0, _dcg([relevant.get(d, 0) for d in ranked[:10]]) / ideal if ideal else 0.0,
                  0.0 if first is None else 1 / (first + 1), found / len(relevant) if relevant else 0.0)
    return out


# Per target: gold and predicted values -> the (n, k) statistics of the module docstring.
_STATISTICS = {"class": _single_label_stats, "choice": _single_label_stats, "classes": _multi_label_stats,
               "number": _regression_stats, "tags": _entity_stats, "ranking": _ranking_stats}


def example_stats(task_type: str, gold: list, predicted: list, labels: list | None = None) -> np.ndarray:
    """Per-example statistics, shape (n, k) float64, whose column sums determine every metric of the
    task (layouts in the module docstring).

    `labels`: the task's class list; classes missing from it are added (see `class_labels`), so the
    number of class columns is len(class_labels(task_type, gold, predicted, labels)).
    """
    target = _type(task_type).target
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold values but {len(predicted)} predictions")
    return _STATISTICS[target](gold, predicted, class_labels(task_type, gold, predicted, labels))


# --- metrics from summed statistics -------------------------------------------------------------

def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.0 where the denominator is 0."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _entity_metrics(t: np.ndarray) -> dict[str, np.ndarray]:
    tp, n_predicted, n_gold = t[:, 0], t[:, 1], t[:, 2]
    return {"entity_precision": _ratio(tp, n_predicted), "entity_recall": _ratio(tp, n_gold),
            "entity_f1": _f1(tp, n_predicted - tp, n_gold - tp)}


def _regression_metrics(t: np.ndarray) -> dict[str, np.ndarray]:
    n, sx, sy, sxx, syy, sxy, squared_error = t.T
    variance_x, variance_y = n * sxx - sx * sx, n * syy - sy * sy  # n² × variance
    # a constant side can leave rounding residue rather than an exact 0: treat it as 0
    defined = (variance_x > 1e-12 * n * sxx) & (variance_y > 1e-12 * n * syy)
    pearson = _ratio(n * sxy - sx * sy, np.sqrt(np.where(defined, variance_x * variance_y, 0.0)))
    return {"pearson": np.clip(pearson, -1.0, 1.0), "mse": _ratio(squared_error, n)}


def _class_counts(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(share of matching examples, micro F1, macro F1, number of classes) from [n, match, tp, fp, fn]."""
    classes, remainder = divmod(t.shape[1] - 2, 3)
    if remainder or classes < 0:
        raise ValueError(f"{t.shape[1]} columns is not 2 + 3 × classes")
    n, match = t[:, 0], t[:, 1]
    tp, fp, fn = t[:, 2:2 + classes], t[:, 2 + classes:2 + 2 * classes], t[:, 2 + 2 * classes:]
    present = (tp + fp + fn) > 0
    macro = _ratio((_f1(tp, fp, fn) * present).sum(axis=1), present.sum(axis=1))
    micro = _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
    return _ratio(match, n), micro, macro, classes


def _single_label_metrics(t: np.ndarray) -> dict[str, np.ndarray]:
    accuracy, micro, macro, _ = _class_counts(t)
    return {"accuracy": accuracy, "micro_f1": micro, "macro_f1": macro}


def _multi_label_metrics(t: np.ndarray) -> dict[str, np.ndarray]:
    exact, micro, macro, _ = _class_counts(t)
    return {"micro_f1": micro, "macro_f1": macro, "subset_accuracy": exact}


def _ranking_metrics(t: np.ndarray) -> dict[str, np.ndarray]:
    n = t[:, 0]
    return {"ndcg@10": _ratio(t[:, 1], n), "mrr@10": _ratio(t[:, 2], n), "recall@100": _ratio(t[:, 3], n)}


# Per target: summed statistics (B, k) -> every metric of its task types, each of shape (B,).
_METRICS = {"class": _single_label_metrics, "choice": _single_label_metrics, "classes": _multi_label_metrics,
            "number": _regression_metrics, "tags": _entity_metrics, "ranking": _ranking_metrics}


def metrics_from_stats(
    task_type: str, totals: np.ndarray, labels: list | None = None
) -> dict[str, float | np.ndarray]:
    """Metrics from column sums of `example_stats`: `totals` of shape (k,) gives floats, a batch of
    shape (B, k) (one row per resample) gives arrays of shape (B,).

    The column count fixes the number of classes, so `labels` is not needed; when given, it must be
    the list `class_labels` returned for these statistics, and is only checked against the columns.
    Macro F1 averages over the classes present (tp + fp + fn > 0) in these totals, as sklearn's
    `f1_score(average="macro")` does over the labels seen in gold or predicted.
    """
    target = _type(task_type).target
    totals = np.asarray(totals, dtype=float)
    t = np.atleast_2d(totals)  # (B, k)
    if labels is not None and target not in ("number", "tags", "ranking"):
        classes = _class_counts(t)[3]
        if len(labels) != classes:
            raise ValueError(f"{len(labels)} labels but the statistics hold {classes} classes; "
                             "pass the list from class_labels()")
    out = _METRICS[target](t)
    if totals.ndim == 1:
        return {name: float(value[0]) for name, value in out.items()}
    return out


def task_metrics(task_type: str, gold: list, predicted: list, labels: list | None = None) -> dict[str, float]:
    """All metrics of a task type on one set of predictions (zero-division cases give 0.0)."""
    return metrics_from_stats(task_type, example_stats(task_type, gold, predicted, labels).sum(axis=0))


def select_runs(done: dict[tuple[str, str], dict[float, list[dict]]]) -> tuple[list[dict], dict]:
    """Per (model, task): of its saved fine-tuning runs (learning rate -> one run per seed), the
    learning rate with the best mean dev score (ties: the smaller rate). Returns (result rows
    `{"model", "task", "seed", "metric", "value"}` of that rate's runs, the selection per model and
    task: `{"lr", "dev", "grid", "seeds"}`)."""
    rows, selection = [], {}
    for (model, task_name), runs in done.items():
        means = {lr: statistics.mean(r["dev_score"] for r in results) for lr, results in runs.items() if results}
        lr = max(means, key=lambda rate: (means[rate], -rate))
        selection.setdefault(model, {})[task_name] = {"lr": lr, "dev": means[lr], "grid": {f"{k:g}": v for k, v in means.items()},
                                                      "seeds": [r["seed"] for r in runs[lr]]}
        rows += [{"model": model, "task": task_name, "seed": r["seed"], "metric": metric, "value": value}
                 for r in runs[lr] for metric, value in r["metrics"].items()]
    return rows, selection


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

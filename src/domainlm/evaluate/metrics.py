"""Evaluation metrics as sums of per-example statistics.

Every metric here is a function of column sums of an (examples, k) statistics matrix: accuracy of
(n, correct), F1 of per-class (tp, fp, fn), Pearson of (n, Σx, Σy, Σx², Σy², Σxy). A resampled test
set is then only a weighted column sum, so a bootstrap over thousands of resamples is one matrix
product (`stats.paired_bootstrap`) instead of thousands of metric calls.

Column layouts (`C` = number of classes, from `class_labels`):
- single-label types and multi-label: [n, correct or exact match, tp × C, fp × C, fn × C]
- regression: [n, Σx, Σy, Σx², Σy², Σxy, Σ(x - y)²], x gold and y predicted, both centred on
  their full-set means first (Pearson does not change under a shift; the sums stay well scaled)
- token-classification: [tp, n_predicted, n_gold] counted over entities
"""

from __future__ import annotations

import statistics

import numpy as np

TASK_TYPES = (
    "classification", "multi-label", "pair-classification", "regression", "token-classification",
    "relation", "multiple-choice", "yes-no-qa",
)
HEADLINE: dict[str, str] = {
    "classification": "micro_f1",
    "multi-label": "micro_f1",
    "pair-classification": "micro_f1",
    "regression": "pearson",
    "token-classification": "entity_f1",
    "relation": "micro_f1",
    "multiple-choice": "accuracy",
    "yes-no-qa": "accuracy",
}
# One label per example; a multiple-choice answer index is just another label.
SINGLE_LABEL = ("classification", "pair-classification", "relation", "multiple-choice", "yes-no-qa")
SCHEMES = ("io", "bio", "bioes")

_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}  # BILOU's L/U are E/S


# --- entity spans -------------------------------------------------------------------------------

def _parse_tag(tag: str) -> tuple[str, str]:
    """(prefix in O/B/I/E/S, type). A bare type with no prefix ("Disease") is read as IO's "I-Disease"."""
    if tag == "O":
        return "O", ""
    head, dash, rest = tag.partition("-")
    if head in _PREFIXES:
        return _PREFIXES[head], rest if dash else ""
    return "I", tag


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Entities as (start, end exclusive, type) from tags in IO, BIO (IOB2 or IOB1) or BIOES/BILOU.

    Decoding is lenient, as in conlleval: a token continues the open entity only if it is I- or E-
    of the same type; anything else closes it, and any non-O token that does not continue one opens
    a new entity. An entity also closes after an E- or S- token. So "I-X I-X" (IO) is one entity,
    "B-X B-X" two, and an I- after O starts an entity.
    """
    found = []
    start, open_type = None, ""
    for i, tag in enumerate(tags):
        prefix, entity_type = _parse_tag(tag)
        if not (start is not None and prefix in ("I", "E") and entity_type == open_type):
            if start is not None:
                found.append((start, i, open_type))
            start, open_type = (None, "") if prefix == "O" else (i, entity_type)
        if prefix in ("E", "S") and start is not None:
            found.append((start, i + 1, open_type))
            start = None
    if start is not None:
        found.append((start, len(tags), open_type))
    return found


def to_scheme(tags: list[str], scheme: str) -> list[str]:
    """Re-encode a tag sequence in any scheme as "io", "bio" (IOB2) or "bioes".

    IO cannot mark where one entity ends and an adjacent one of the same type starts, so encoding
    such a pair as IO merges it into one entity when decoded again.
    """
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    out = ["O"] * len(tags)
    for start, end, entity_type in spans(tags):
        suffix = f"-{entity_type}" if entity_type else ""
        out[start:end] = [f"I{suffix}"] * (end - start)
        if scheme == "io":
            continue
        if scheme == "bioes" and end - start == 1:
            out[start] = f"S{suffix}"
            continue
        out[start] = f"B{suffix}"
        if scheme == "bioes":
            out[end - 1] = f"E{suffix}"
    return out


# --- per-example statistics ---------------------------------------------------------------------

def _check_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")


def class_labels(task_type: str, gold: list, predicted: list, labels: list | None = None) -> list[str]:
    """The classes that index the tp/fp/fn columns: `labels` (as strings) followed by any other class
    seen in `gold` or `predicted`, sorted. Empty for regression and token classification.

    Labels are compared as strings, so a multiple-choice answer 2 and "2" are the same class.
    """
    _check_type(task_type)
    if task_type in ("regression", "token-classification"):
        return []
    known = [str(label) for label in labels or []]
    if task_type == "multi-label":
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


def example_stats(task_type: str, gold: list, predicted: list, labels: list | None = None) -> np.ndarray:
    """Per-example statistics, shape (n, k) float64, whose column sums determine every metric of the
    task (layouts in the module docstring).

    `labels`: the task's class list; classes missing from it are added (see `class_labels`), so the
    number of class columns is len(class_labels(task_type, gold, predicted, labels)).
    """
    _check_type(task_type)
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold values but {len(predicted)} predictions")
    n = len(gold)
    if task_type == "token-classification":
        out = np.zeros((n, 3))
        for i, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
            gold_spans, predicted_spans = set(spans(gold_tags)), set(spans(predicted_tags))
            out[i] = len(gold_spans & predicted_spans), len(predicted_spans), len(gold_spans)
        return out
    if task_type == "regression":
        x, y = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
        squared_error = (x - y) ** 2
        if n:
            x, y = x - x.mean(), y - y.mean()
        return np.stack([np.ones(n), x, y, x * x, y * y, x * y, squared_error], axis=1)

    index = {label: j for j, label in enumerate(class_labels(task_type, gold, predicted, labels))}
    if task_type == "multi-label":
        gold_matrix, predicted_matrix = _indicators(gold, index), _indicators(predicted, index)
        match = (gold_matrix == predicted_matrix).all(axis=1)
    else:
        one_hot = np.eye(len(index))
        gold_matrix = one_hot[np.array([index[label] for label in map(str, gold)], dtype=int)]
        predicted_matrix = one_hot[np.array([index[label] for label in map(str, predicted)], dtype=int)]
        match = (gold_matrix * predicted_matrix).any(axis=1)
    tp = gold_matrix * predicted_matrix  # (n, C)
    return np.concatenate(
        [np.ones((n, 1)), match[:, None].astype(float), tp, predicted_matrix - tp, gold_matrix - tp], axis=1
    )


# --- metrics from summed statistics -------------------------------------------------------------

def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.0 where the denominator is 0."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return _ratio(2 * tp, 2 * tp + fp + fn)


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
    _check_type(task_type)
    totals = np.asarray(totals, dtype=float)
    single = totals.ndim == 1
    t = np.atleast_2d(totals)  # (B, k)
    if task_type == "token-classification":
        tp, n_predicted, n_gold = t[:, 0], t[:, 1], t[:, 2]
        precision, recall = _ratio(tp, n_predicted), _ratio(tp, n_gold)
        f1 = _f1(tp, n_predicted - tp, n_gold - tp)
        out = {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}
    elif task_type == "regression":
        n, sx, sy, sxx, syy, sxy, squared_error = t.T
        variance_x, variance_y = n * sxx - sx * sx, n * syy - sy * sy  # n² × variance
        # a constant side can leave rounding residue rather than an exact 0: treat it as 0
        defined = (variance_x > 1e-12 * n * sxx) & (variance_y > 1e-12 * n * syy)
        pearson = _ratio(n * sxy - sx * sy, np.sqrt(np.where(defined, variance_x * variance_y, 0.0)))
        out = {"pearson": np.clip(pearson, -1.0, 1.0), "mse": _ratio(squared_error, n)}
    else:
        classes, remainder = divmod(t.shape[1] - 2, 3)
        if remainder or classes < 0:
            raise ValueError(f"{t.shape[1]} columns is not 2 + 3 × classes for task type {task_type!r}")
        if labels is not None and len(labels) != classes:
            raise ValueError(f"{len(labels)} labels but the statistics hold {classes} classes; "
                             "pass the list from class_labels()")
        n, match = t[:, 0], t[:, 1]
        tp, fp, fn = t[:, 2:2 + classes], t[:, 2 + classes:2 + 2 * classes], t[:, 2 + 2 * classes:]
        present = (tp + fp + fn) > 0
        macro = _ratio((_f1(tp, fp, fn) * present).sum(axis=1), present.sum(axis=1))
        micro = _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
        if task_type == "multi-label":
            out = {"micro_f1": micro, "macro_f1": macro, "subset_accuracy": _ratio(match, n)}
        else:
            out = {"accuracy": _ratio(match, n), "micro_f1": micro, "macro_f1": macro}
    if single:
        return {name: float(value[0]) for name, value in out.items()}
    return out


def task_metrics(task_type: str, gold: list, predicted: list, labels: list | None = None) -> dict[str, float]:
    """All metrics of a task type on one set of predictions (zero-division cases give 0.0)."""
    return metrics_from_stats(task_type, example_stats(task_type, gold, predicted, labels).sum(axis=0))


def classification_metrics(gold: list[str], predicted: list[str]) -> dict[str, float]:
    return task_metrics("classification", gold, predicted)


def token_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision / recall / F1: an entity counts only if its span and type are exactly right."""
    return task_metrics("token-classification", gold, predicted)


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

"""Statistics over evaluation results: paired bootstrap between two models, a BLURB-style suite score,
and rank correlation."""

from __future__ import annotations

import math

import numpy as np

from domainlm.tasks.metrics import example_stats, metrics_from_stats

_BOOTSTRAP_CELLS = 2**22  # resample weights (samples × examples) held at a time: 32 MiB of float64


def _resample_counts(rng: np.random.Generator, samples: int, n: int) -> np.ndarray:
    """(samples, n) counts: how often each example is drawn in each resample of n with replacement."""
    drawn = rng.integers(0, n, size=(samples, n), dtype=np.int64 if samples * n >= 2**31 else np.int32)
    drawn += (np.arange(samples, dtype=drawn.dtype) * n)[:, None]  # resample i counts into bins i*n .. i*n + n-1
    return np.bincount(drawn.ravel(), minlength=samples * n).reshape(samples, n).astype(float)


def paired_bootstrap(
    task_type: str,
    gold: list,
    predictions_a: list[list],
    predictions_b: list[list],
    metric: str,
    labels: list | None = None,
    samples: int = 1000,
    seed: int = 0,
) -> dict:
    """Paired bootstrap of the difference in `metric` between model a and model b on one test set.

    `predictions_a` / `predictions_b` hold one prediction list per fine-tuning seed (same examples,
    same order as `gold`); the two models may have different numbers of seeds. A model's statistic
    on a test set is the mean over its seeds of the metric there. Both models are scored on the same
    `samples` resamples of the test examples, so the spread reflects which examples were drawn; and
    each resample also draws each model's seeds with replacement (a model with one seed keeps it),
    so the spread covers the seeds' variance too: another fine-tuning run could land elsewhere.

    Returns {"difference": mean(a) - mean(b) on the full test set, "low" / "high": the 2.5th / 97.5th
    percentiles of the resampled differences, "p_value": two-sided (2 × the smaller share of
    resampled differences on either side of 0, at most 1), "samples", "seeds": [seeds of a, of b]},
    in the metric's own unit (0-1 for F1, not points).
    """
    n = len(gold)
    if n == 0 or not predictions_a or not predictions_b:
        raise ValueError("paired_bootstrap needs test examples and at least one seed per model")
    for name, runs in (("a", predictions_a), ("b", predictions_b)):
        for predictions in runs:
            if len(predictions) != n:
                raise ValueError(f"model {name}: {len(predictions)} predictions for {n} test examples")

    # every seed of both models side by side, (n, Σk): one matrix product scores them all on a resample
    seed_stats = [example_stats(task_type, gold, p, labels) for p in (*predictions_a, *predictions_b)]
    ends = np.cumsum([stats.shape[1] for stats in seed_stats])
    all_stats = np.concatenate(seed_stats, axis=1)
    known = metrics_from_stats(task_type, seed_stats[0].sum(axis=0))
    if metric not in known:
        raise ValueError(f"no metric {metric!r} for task type {task_type!r}; expected one of {', '.join(known)}")

    k = len(predictions_a)

    def difference(weights: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """(S, n) example weights -> (S,) seed-mean metric of a minus that of b (over seeds drawn
        with replacement per resample when `rng` is given, else over every seed)."""
        totals = np.split(weights @ all_stats, ends[:-1], axis=1)  # per seed, (S, k)
        scores = np.stack([metrics_from_stats(task_type, seed_totals)[metric] for seed_totals in totals])  # (seeds, S)
        means = []
        for block in (scores[:k], scores[k:]):
            if rng is None:
                means.append(block.mean(axis=0))
            else:
                drawn = rng.integers(0, len(block), size=block.shape)  # (seeds, S): a resample of the seeds
                means.append(np.take_along_axis(block, drawn, axis=0).mean(axis=0))
        return means[0] - means[1]

    observed = float(difference(np.ones((1, n)))[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    differences = np.concatenate([
        difference(_resample_counts(rng, min(chunk, samples - start), n), rng) for start in range(0, samples, chunk)
    ])
    p_value = min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0)))
    return {
        "difference": observed,
        "low": float(np.percentile(differences, 2.5)),
        "high": float(np.percentile(differences, 97.5)),
        "p_value": float(p_value),
        "samples": samples,
        "seeds": [k, len(predictions_b)],
    }


def score_interval(
    task_type: str,
    gold: list,
    predictions: list[list],
    metric: str,
    labels: list | None = None,
    samples: int = 1000,
    seed: int = 0,
) -> dict:
    """One model's score on a test set with a bootstrap 95% interval, the way `paired_bootstrap`
    scores each side: the score is the mean over `predictions` (one list per run: seeds, or
    subsample seeds x seeds) of `metric`, and each of `samples` resamples draws the test examples
    and the runs with replacement, so the interval covers both which examples were drawn and how
    much another run could differ.

    Returns {"mean": the score on the full test set, "low" / "high": the 2.5th / 97.5th percentiles
    of the resampled scores, "runs", "samples"}, in the metric's own unit."""
    n = len(gold)
    if n == 0 or not predictions:
        raise ValueError("score_interval needs test examples and at least one run")
    if any(len(p) != n for p in predictions):
        raise ValueError(f"every run needs {n} predictions, one per test example")
    run_stats = [example_stats(task_type, gold, p, labels) for p in predictions]
    ends = np.cumsum([stats.shape[1] for stats in run_stats])
    all_stats = np.concatenate(run_stats, axis=1)

    def scores(weights: np.ndarray) -> np.ndarray:
        """(S, n) example weights -> (runs, S) metric of each run."""
        totals = np.split(weights @ all_stats, ends[:-1], axis=1)
        return np.stack([metrics_from_stats(task_type, run_totals)[metric] for run_totals in totals])

    observed = float(scores(np.ones((1, n))).mean())
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    resampled = []
    for start in range(0, samples, chunk):
        block = scores(_resample_counts(rng, min(chunk, samples - start), n))  # (runs, S)
        drawn = rng.integers(0, len(block), size=block.shape)  # a resample of the runs
        resampled.append(np.take_along_axis(block, drawn, axis=0).mean(axis=0))
    resampled = np.concatenate(resampled)
    return {"mean": observed, "low": float(np.percentile(resampled, 2.5)),
            "high": float(np.percentile(resampled, 97.5)), "runs": len(predictions), "samples": samples}


def suite_score(scores: dict[str, float], types: dict[str, str]) -> float:
    """BLURB-style suite score: the mean over task types of the mean score of that type's tasks, so a
    type with many tasks (say, five NER sets) weighs as much as a type with one.

    `scores` maps task name to its headline score, `types` task name to task type. Tasks without a
    score (absent, None or nan) are skipped; nan when no task has one.
    """
    unknown = sorted(set(scores) - set(types))
    if unknown:
        raise ValueError(f"no task type for scored task(s): {', '.join(unknown)}")
    by_type: dict[str, list[float]] = {}
    for task, task_type in types.items():
        score = scores.get(task)
        if score is not None and not math.isnan(score):
            by_type.setdefault(task_type, []).append(float(score))
    if not by_type:
        return float("nan")
    return float(np.mean([np.mean(values) for values in by_type.values()]))


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho between paired values (pairs with a None or nan on either side are dropped);
    None with fewer than 3 pairs or when one side is constant (rho undefined)."""
    from scipy.stats import spearmanr  # scipy is slow to import; only this function needs it

    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values but {len(y)} y values")
    pairs = [(a, b) for a, b in zip(x, y, strict=True)
             if a is not None and b is not None and not math.isnan(a) and not math.isnan(b)]
    if len(pairs) < 3:
        return None
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        return None
    return float(spearmanr(xs, ys).statistic)

"""The numbers behind the verdict, from the evaluate stage's saved artifacts: paired bootstrap
intervals against the reference model, BLURB-style suite scores, and how the measured gain of
domain pretraining lines up with each task's distance from general text."""

from __future__ import annotations

from typing import Any

from domainlm.io import read_json
from domainlm.layout import RunLayout
from domainlm.report.stats import paired_bootstrap, rank_correlation, suite_score

DISTANCES = ("fertility", "split_share", "unknown_share", "js_divergence")


def _means(summary: list[dict]) -> dict[tuple[str, str], float]:
    return {(s["model"], s["task"]): s["mean"] for s in summary}


def bootstrap_rows(run_dir: RunLayout, tasks: list[dict], summary: list[dict], reference: str,
                   samples: int = 1000, seed: int = 0) -> list[dict]:
    """Every model against `reference` on every task both have: the difference of the headline
    metric (mean over seeds) with its paired bootstrap 95% interval and p-value."""
    means, rows = _means(summary), []
    for task in tasks:
        if (reference, task["name"]) not in means:
            continue
        gold = read_json(run_dir.gold(task["name"]))
        theirs = run_dir.predictions(reference, task["name"])
        for model in dict.fromkeys(s["model"] for s in summary):
            if model == reference or (model, task["name"]) not in means:
                continue
            ours = run_dir.predictions(model, task["name"])
            result = paired_bootstrap(task["type"], gold, ours, theirs, task["metric"], labels=task["labels"] or None,
                                      samples=samples, seed=seed)
            rows.append({"task": task["name"], "model": model, "reference": reference, "metric": task["metric"]}
                        | result)
    return rows


def suite_scores(summary: list[dict], tasks: list[dict]) -> dict[str, float]:
    """Per model: the mean within each task type, then across types (tasks it lacks are skipped)."""
    types = {t["name"]: t["type"] for t in tasks}
    scores = {}
    for model in dict.fromkeys(s["model"] for s in summary):
        scores[model] = suite_score({s["task"]: s["mean"] for s in summary if s["model"] == model}, types)
    return scores


def distance_vs_gain(distance: dict, summary: list[dict], tasks: list[dict], model: str, reference: str) -> dict:
    """Each task's distance measures next to the gain of `model` over `reference` (points), and the
    rank correlation of each measure with the gain across tasks."""
    means, per_task = _means(summary), distance.get("tasks", {})
    rows = []
    for task in tasks:
        name = task["name"]
        gain = None
        if (model, name) in means and (reference, name) in means:
            gain = 100 * (means[(model, name)] - means[(reference, name)])
        rows.append({"task": name, "gain": gain} | {k: per_task.get(name, {}).get(k) for k in DISTANCES})
    paired = [r for r in rows if r["gain"] is not None]
    correlation = {k: rank_correlation([r[k] for r in paired], [r["gain"] for r in paired]) for k in DISTANCES}
    return {"rows": rows, "rank_correlation": correlation, "tasks_with_gain": len(paired)}


def verdict(summary: list[dict], tasks: list[dict], model: str, reference: str, intervals: list[dict],
            suites: dict[str, float], distance: dict, cost: dict[str, Any]) -> str:
    """One paragraph: is `model` better than `reference`, where, by how much, how sure, at what cost,
    and what the tasks' distance from general text said."""
    mine = [r for r in intervals if r["model"] == model and r["reference"] == reference]
    if not mine:
        return (f"No task has test predictions for both '{model}' and the reference '{reference}', so there is "
                f"no comparison to state (see the failures section).")
    wins = sum(r["difference"] > 0 for r in mine)
    average = 100 * sum(r["difference"] for r in mine) / len(mine)
    sure = [r for r in mine if r["low"] > 0 or r["high"] < 0]
    per_task = "; ".join(f"{r['task']} {100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
                         for r in mine)
    text = (f"**{model}** is better than **{reference}** on **{wins} of {len(mine)}** tasks, by "
            f"**{average:+.1f} points** on average (per task, headline metric with its paired-bootstrap 95% "
            f"interval: {per_task}); the interval excludes zero on {len(sure)} of {len(mine)} tasks")
    if sure:
        text += f" ({', '.join(r['task'] + (' better' if r['low'] > 0 else ' worse') for r in sure)})"
    text += "."
    if model in suites and reference in suites:
        text += (f" Suite score (mean within task type, then across types): {100 * suites[model]:.1f} vs "
                 f"{100 * suites[reference]:.1f}.")
    if cost.get("seconds") is not None:
        text += (f" Pretraining cost: {cost['seconds'] / 3600:.2f} {cost['device'].upper()}-hours "
                 f"({cost['seconds']:.0f} s, {cost.get('tokens', 0):,} tokens).")
    correlation = distance.get("rank_correlation", {})
    measured = {k: v for k, v in correlation.items() if v is not None}
    if measured:
        said = ", ".join(f"{k} ρ = {v:+.2f}" for k, v in measured.items())
        text += (f" Domain distance vs gain across {distance['tasks_with_gain']} tasks (Spearman): {said}"
                 + (" — too few tasks for these to be more than a hint." if distance["tasks_with_gain"] < 6 else "."))
    return text

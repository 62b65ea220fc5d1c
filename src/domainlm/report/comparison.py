"""The numbers behind the verdict, from the evaluate stage's saved artifacts: paired bootstrap
intervals against the reference model, BLURB-style suite scores, and how the measured gain of
domain pretraining lines up with each task's distance from general text."""

from __future__ import annotations

import json

import numpy as np

from domainlm.io import read_json
from domainlm.layout import RunLayout
from domainlm.report.stats import paired_bootstrap, rank_correlation, suite_score
from domainlm.tasks.types import TASK_TYPES

DISTANCES = ("fertility", "split_share", "unknown_share", "js_divergence")


def _means(summary: list[dict]) -> dict[tuple[str, str], float]:
    return {(s["model"], s["task"]): s["mean"] for s in summary}


def bootstrap_rows(run_dir: RunLayout, tasks: list[dict], summary: list[dict], references: list[str],
                   samples: int = 1000, seed: int = 0) -> list[dict]:
    """Every model against each of `references` on every task both have: the difference of the
    headline metric (mean over seeds) with its paired bootstrap 95% interval (test examples and
    seeds resampled) and p-value."""
    means, rows = _means(summary), []
    for reference in references:
        for task in tasks:
            if (reference, task["name"]) not in means:
                continue
            gold = read_json(run_dir.gold(task["name"]))
            theirs = run_dir.predictions(reference, task["name"])
            for model in dict.fromkeys(s["model"] for s in summary):
                if model == reference or (model, task["name"]) not in means:
                    continue
                ours = run_dir.predictions(model, task["name"])
                result = paired_bootstrap(task["type"], gold, ours, theirs, task["metric"],
                                          labels=task["labels"] or None, samples=samples, seed=seed)
                rows.append({"task": task["name"], "model": model, "reference": reference,
                             "metric": task["metric"]} | result)
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


# A task is far from general text when the general vocabulary cuts this share of its words or more
# (general English under BERT's vocabulary: about 10%; PubMed abstracts: 20-25%).
FAR_SPLIT_SHARE = 0.15
# A model this many points below TF-IDF on a task is named as failing there, not compared.
FAR_BELOW_TFIDF = 0.25


def outcome(row: dict) -> str:
    """`better` / `worse` when the 95% interval excludes zero, else `no measurable difference`."""
    return "better" if row["low"] > 0 else "worse" if row["high"] < 0 else "no measurable difference"


def _constant(target: str, runs: list[list]) -> str | None:
    """What a model predicts when every seed predicts one thing for every example, else None."""
    if target == "tags":
        return "no entity at all" if all(t == "O" for run in runs for tags in run for t in tags) else None
    kinds = [{json.dumps(value, sort_keys=True) for value in run} for run in runs]
    if all(len(kind) == 1 for kind in kinds) and target == "ranking":
        return "the same ranking for every query"
    if all(len(kind) == 1 for kind in kinds):
        values = sorted({next(iter(kind)) for kind in kinds})
        return "only " + " / ".join(values)
    return None


def degenerate_models(run_dir: RunLayout, tasks: list[dict], summary: list[dict],
                      tfidf_model: str | None) -> dict[str, dict[str, str]]:
    """Per task, the models that did not learn it, and why: the same prediction for every test
    example in every seed (a majority class, no entity), or far below the TF-IDF row named
    `tfidf_model` (`FAR_BELOW_TFIDF`; None: the recipe has none)."""
    means = _means(summary)
    tfidf = {s["task"]: s["mean"] for s in summary if s["model"] == tfidf_model}
    found: dict[str, dict[str, str]] = {}
    for task in tasks:
        for model in dict.fromkeys(s["model"] for s in summary if s["task"] == task["name"]):
            constant = _constant(TASK_TYPES[task["type"]].target, run_dir.predictions(model, task["name"]))
            gap = tfidf.get(task["name"], -1.0) - means[(model, task["name"])]
            if constant:
                found.setdefault(task["name"], {})[model] = f"predicts {constant}"
            elif model != tfidf_model and gap >= FAR_BELOW_TFIDF:
                found.setdefault(task["name"], {})[model] = f"{100 * gap:.0f} points below TF-IDF"
    return found


def _against(model: str, reference: str, intervals: list[dict], degenerate: dict[str, dict[str, str]]) -> str:
    """One sentence: `model` against `reference`, task by task, sorted into better / worse / no
    measurable difference / not comparable (either side did not learn the task)."""
    rows = [r for r in intervals if r["model"] == model and r["reference"] == reference]
    if not rows:
        return f"no task has test predictions for both {model} and {reference}"
    groups: dict[str, list[str]] = {}
    for r in rows:
        failed = {m: why for m, why in degenerate.get(r["task"], {}).items() if m in (model, reference)}
        if failed:
            groups.setdefault("not comparable", []).append(
                f"{r['task']}: " + ", ".join(f"{m} {why}" for m, why in failed.items()))
            continue
        groups.setdefault(outcome(r), []).append(
            f"{r['task']} {100 * r['difference']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]")
    counted = [r for r in rows if not degenerate.get(r["task"], {}).keys() & {model, reference}]
    parts = [f"{key} on {len(items)} of {len(rows)} ({'; '.join(items)})"
             for key in ("better", "worse", "no measurable difference", "not comparable")
             if (items := groups.get(key))]
    mean = f"; mean {100 * sum(r['difference'] for r in counted) / len(counted):+.1f} points" if counted else ""
    return f"against **{reference}**: " + ", ".join(parts) + mean


def no_results(tasks: int) -> str:
    """The verdict of a run without a single test result, given its number of `tasks`."""
    if not tasks:
        return "No tasks were evaluated (the recipe has no `tasks`), so there are no results and no verdict."
    where = f"any of the {tasks} tasks" if tasks > 1 else "its task"
    return f"No model has test results on {where}: no fine-tuning run finished, so there is no verdict."


def verdict(candidates: list[str], references: list[str], intervals: list[dict], degenerate: dict,
            costs: dict[str, dict], distance: dict, seeds: dict[str, int], suites: dict[str, float]) -> str:
    """The report's first paragraph: per candidate (this run's domain model, or each experiment
    arm), against each reference (the general model, TF-IDF), how many tasks it won, lost or left
    undecided (an interval that includes zero is "no measurable difference", never "better"), the
    mean gain, what its pretraining cost; then which tasks sit far from general text, and whether
    the seeds' variance was measured. `distance`: `distance_vs_gain`'s, one row per task; `seeds`:
    per model with test results, its number of seeds. With no task, or no model with a test result,
    one line says so instead: a verdict would rest on nothing."""
    if not seeds:
        return no_results(len(distance.get("rows", [])))
    sentences = []
    if not candidates:  # e.g. every pretrained model failed, while the references did not
        sentences.append(f"No pretrained model to judge has test results; only {', '.join(references)} "
                         f"{'has' if len(references) == 1 else 'have'}.")
    for model in candidates:
        said = "; ".join(_against(model, reference, intervals, degenerate) for reference in references
                         if reference != model) or "is compared with nothing: no reference model has test results"
        cost = costs.get(model)
        if cost and cost.get("seconds") is not None:
            said += (f". Pretraining: {cost['seconds'] / 3600:.2f} {cost['device'].upper()}-hours "
                     f"({cost['seconds']:.0f} s, {cost.get('tokens', 0):,} real tokens)")
        if references and model in suites and references[0] in suites:
            said += (f". Suite score (mean within task type, then across types) {100 * suites[model]:.1f} vs "
                     f"{100 * suites[references[0]]:.1f}")
        sentences.append(f"**{model}** {said}.")
    runs = {cost.get("arm") or model: cost for model, cost in costs.items()}  # models of one arm share its run
    if len(runs) > 1:
        total = sum(c["seconds"] for c in runs.values() if c.get("seconds") is not None)
        sentences.append(f"All {len(runs)} pretraining runs together: {total / 3600:.2f} hours ({total:.0f} s).")
    far = [f"{r['task']} ({100 * r['split_share']:.0f}% of its words split)" for r in distance.get("rows", [])
           if r.get("split_share") is not None and r["split_share"] >= FAR_SPLIT_SHARE]
    if distance.get("rows") and any(r.get("split_share") is not None for r in distance["rows"]):
        sentences.append("Far from general text by the distance score: " + (", ".join(far) if far else
                         f"no task (none has {100 * FAR_SPLIT_SHARE:.0f}% of its words split)") + ".")
    correlation = {k: v for k, v in distance.get("rank_correlation", {}).items() if v is not None}
    if correlation and distance.get("tasks_with_gain", 0) >= 3:
        sentences.append(f"Distance vs gain across {distance['tasks_with_gain']} tasks (Spearman): "
                         + ", ".join(f"{k} ρ = {v:+.2f}" for k, v in correlation.items())
                         + (" — too few tasks to be more than a hint." if distance["tasks_with_gain"] < 6 else "."))
    single = sorted(m for m, n in seeds.items() if n == 1)
    if single:
        sentences.append(f"One fine-tuning seed for {', '.join(single)}: no seed variance was measured, so "
                         "those intervals reflect only which test examples were drawn.")
    return " ".join(sentences)


# The pretraining loss counts as still falling when its mean over the last tenth of training is
# this much (relative) below its mean over the tenth before: more steps would likely lower it.
STILL_FALLING = 0.02


def picks(run_dir: RunLayout, tasks: list[dict], summary: list[dict], samples: int = 1000,
          seed: int = 0) -> list[dict]:
    """Per task: the best model (highest mean over seeds) and the one to use — the model with the
    fewest parameters among those not measurably worse than the best (a paired bootstrap 95%
    interval of the difference that reaches zero); TF-IDF / BM25 count as no parameters."""
    found = []
    for task in tasks:
        scores = {s["model"]: s["mean"] for s in summary if s["task"] == task["name"]}
        if not scores:
            continue
        best = max(scores, key=scores.get)
        gold, theirs = read_json(run_dir.gold(task["name"])), run_dir.predictions(best, task["name"])
        level = [best]
        for model in scores:
            if model != best:
                interval = paired_bootstrap(task["type"], gold, run_dir.predictions(model, task["name"]), theirs,
                                            task["metric"], labels=task["labels"] or None, samples=samples, seed=seed)
                if interval["high"] >= 0:
                    level.append(model)
        size = {m: run_dir.selected_runs(m, task["name"])[0].get("parameters", 0) or 0 for m in level}
        use = min(level, key=lambda m: (size[m], -scores[m]))
        found.append({"task": task["name"], "metric": task["metric"], "best": best, "best_score": scores[best],
                      "use": use, "use_score": scores[use], "parameters": size[use], "level": level})
    return found


def still_falling(history: dict | None) -> float | None:
    """The relative fall of the pretraining loss from the second-last to the last tenth of its
    logged values (positive: still falling), or None with fewer than 20 of them."""
    losses = (history or {}).get("loss") or []
    if len(losses) < 20:
        return None
    tenth = len(losses) // 10
    before, last = np.mean(losses[-2 * tenth:-tenth]), np.mean(losses[-tenth:])
    return float((before - last) / before)


def decision(chosen: list[dict], candidates: list[str], references: list[str], intervals: list[dict],
             costs: dict[str, dict], falling: float | None, degenerate: dict[str, dict[str, str]] | None = None) -> str:
    """The two or three sentences a practitioner came for, above the verdict: which model to use
    for each task, whether domain pretraining paid here and at what cost, and what to try next.
    A task where the candidate or the reference did not learn (`degenerate_models`) is not a win:
    the verdict calls it not comparable."""
    if not chosen:
        return ""
    uses = {c["use"] for c in chosen}
    if len(uses) == 1:
        use = chosen[0]["use"]
        cheaper = [c for c in chosen if c["use"] != c["best"]]
        said = f"Use **{use}** for {'the task' if len(chosen) == 1 else f'all {len(chosen)} tasks'}"
        said += (f" (the best on {len(chosen) - len(cheaper)}, and on the others not measurably worse than the best "
                 "with fewer parameters)" if cheaper else " (the best on each)") + "."
    else:
        said = "Use " + "; ".join(
            f"**{c['use']}** for {c['task']} ({100 * c['use_score']:.1f}"
            + (f", not measurably below {c['best']}'s {100 * c['best_score']:.1f} with fewer parameters)"
               if c["use"] != c["best"] else ", the best)") for c in chosen) + "."
    won = [c["task"] for c in chosen if c["use"] in candidates or c["best"] in candidates]
    failed = degenerate or {}
    beaten = {r["task"] for r in intervals if r["model"] in candidates and r["reference"] in references
              and r["low"] > 0 and not {r["model"], r["reference"]} & set(failed.get(r["task"], {}))}
    spent = sum({(cost.get("arm") or m): cost["seconds"] for m, cost in costs.items()
                 if cost.get("seconds") is not None}.values())
    cost = f" ({spent / 3600:.2f} hours of pretraining)" if spent else ""
    paid = bool(won and beaten)
    if paid:
        said += (f" Domain pretraining paid here{cost}: a model pretrained here is the one to use, or the best, on "
                 f"{', '.join(won)}, measurably above {', '.join(references)} on {', '.join(sorted(beaten))}.")
    elif beaten:
        said += (f" Domain pretraining did not pay here{cost}: a model pretrained here is measurably above "
                 f"{', '.join(references)} on {', '.join(sorted(beaten))}, but not the one to use on any task.")
    elif candidates:
        said += (f" Domain pretraining did not pay here{cost}: no model pretrained here is measurably better than "
                 f"{', '.join(references) or 'the other models'} on any task.")
    if falling is not None and falling > STILL_FALLING:
        said += (f" Next: a larger pretraining budget — the loss was still falling at the end ({100 * falling:.1f}% "
                 "lower over the last tenth of training than the tenth before).")
    elif candidates and not paid:
        said += " Next: use the general model, or try where domain models gain most — fewer labels, or tasks far from general text."
    return said

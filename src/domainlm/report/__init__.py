"""Report stage: one Markdown + HTML report, plots and `results.json`, rebuilt from saved artifacts.

Nothing here reads the memory of a live run: every number comes from the stage folders through
`domainlm.layout` (`corpus/stats.json`, `tokenizer/fit.json`, `pretrain/` or `experiment/`
`history.json` and `summary.json`, `evaluate/results.jsonl`, `tasks.json`, `failures.json`, and each
stage's `manifest.json`). It imports no torch: a report of a finished run builds in seconds.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from pathlib import Path
from typing import Any

from domainlm.config import LEXICAL, RunConfig
from domainlm.errors import StageError
from domainlm.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from domainlm.layout import ReportFiles, RunLayout
from domainlm.report.comparison import (
    bootstrap_rows,
    decision,
    degenerate_models,
    distance_vs_gain,
    picks,
    still_falling,
    suite_scores,
    verdict,
)
from domainlm.report.curves import active_points, active_sentences, curve_points, label_savings, short_classes
from domainlm.report.plots import (
    plot_active_learning,
    plot_distance,
    plot_learning_curves,
    plot_loss,
    plot_results,
    plot_tokenizer_fit,
)
from domainlm.report.sections import arm_differences, build_sections
from domainlm.tasks.metrics import select_runs, summarize
from domainlm.vocabulary import read_tokenizer, vocabulary_fit

log = logging.getLogger(__name__)


# The report shows fit reports, counts and timings besides what later stages read: it reruns
# whenever a stage before it ran, even one whose output for the other stages stayed the same.
READS_EVERY_ARTIFACT = True


def needs(config: RunConfig) -> tuple[str, ...]:
    """Every stage this run has before it: corpus and tokenizer when it has a corpus, pretrain when
    it pretrains a model of its own (an experiment's arms stand in for that), evaluate always."""
    stages = ("corpus", "tokenizer") if config.corpus is not None else ()
    return stages + (("pretrain",) if config.pretrains and not config.experiment else ()) + ("evaluate",)


def inputs(config: RunConfig) -> list[str]:
    """An experiment's record of its arms (written by the experiment, not by a stage), and the
    forecast `domainlm plan` wrote, when there is one (its report checks it against the run)."""
    run_dir = RunLayout(config.directory)
    found = [run_dir.plan_json] if run_dir.plan_json.exists() else []
    if config.experiment:
        found += [run_dir.arms, run_dir.experiment_summary, run_dir.experiment_history]
    return [str(p) for p in found]


def settings(config: RunConfig) -> dict[str, Any]:
    """The report section, and the evaluate keys only the report reads: the bootstrap's resamples,
    and with a learning curve whether it ends at the full training split (left out while there is
    no curve, so the runs made before curves keep their fingerprints)."""
    found = {"report": config.report.fingerprinted(), "bootstrap_samples": config.evaluate.bootstrap_samples}
    if config.evaluate.learning_curve:
        found["learning_curve_include_full"] = config.evaluate.learning_curve.include_full
    return found


def load_artifacts(config: RunConfig, partial: bool = False) -> dict[str, Any]:
    """Everything the report shows, read from the run folder. `partial`: from the fine-tuning runs
    finished so far (evaluate need not have finished), with the runs still missing."""
    run_dir = RunLayout(config.directory)
    pretrain = (run_dir.experiment_summary, run_dir.experiment_history) if config.experiment \
        else (run_dir.pretrain_summary, run_dir.pretrain_history) if config.pretrains else None
    timings = {stage: run_dir.stage_seconds(stage) for stage in needs(config) if run_dir.manifest(stage).exists()}
    if config.experiment:  # the arms' stages, all together
        timings["pretrain"] = sum(arm.get("wall_seconds", 0) for arm in read_json(run_dir.arms))
        timings = {s: timings[s] for s in ("corpus", "tokenizer", "pretrain", "evaluate") if s in timings}
    has_corpus = config.corpus is not None
    arms = {}
    for arm in config.experiment.arms if config.experiment else []:
        place = run_dir.arm(arm.name)
        if place.corpus_stats.exists() and place.tokenizer_fit.exists():
            arms[arm.name] = {"corpus": read_json(place.corpus_stats), "vocabulary": arm_vocabulary_fit(place)}
    if partial and not run_dir.task_summaries.exists():
        raise StageError(f"no partial report: evaluate has not started in {run_dir.root} (no {run_dir.task_summaries.name})")
    tasks = read_json(run_dir.task_summaries)
    finished = finished_runs(config, run_dir, tasks) if partial else None
    return {
        "arms": arms,
        "rows": finished["rows"] if partial else run_dir.result_rows(),
        "tasks": tasks,
        "failures": finished["failures"] if partial else read_json(run_dir.failures),
        "selection": finished["selection"] if partial else read_json(run_dir.selection),
        "missing": finished["missing"] if partial else [],
        "expected_runs": finished["expected"] if partial else None,
        "distance": read_json(run_dir.distance) if run_dir.distance.exists()
        else {"note": "evaluate has not measured it yet"},
        "corpus": read_json(run_dir.corpus_stats) if has_corpus else None,
        "tokenizer": read_json(run_dir.tokenizer_fit) if has_corpus else None,
        "pretrain": read_json(pretrain[0]) if pretrain else None,
        "history": read_json(pretrain[1]) if pretrain else None,
        "plan": read_json(run_dir.plan_json) if run_dir.plan_json.exists() else None,
        "timings": timings,
        # a partial report leaves the curve out: evaluate writes it when every run has finished
        "curve": read_json(run_dir.learning_curve) if not partial and config.evaluate.learning_curve
        and run_dir.learning_curve.exists() else None,
        "curve_rows": run_dir.curve_rows() if not partial and config.evaluate.learning_curve else [],
        "active_rows": run_dir.active_rows() if not partial and config.evaluate.active_learning else [],
    }


def arm_vocabulary_fit(place: RunLayout) -> dict[str, Any]:
    """The fit of the vocabulary an arm's model uses on its corpus's held-out documents: its domain
    vocabulary's (tokenizer/fit.json), or, for an arm continued from a checkpoint (which pretrains
    with the checkpoint's vocabulary, extended or not, and leaves its domain vocabulary unused), that
    vocabulary measured here ("checkpoint": True)."""
    if not place.pretrain_tokenizer.exists():
        return read_json(place.tokenizer_fit)["domain"]
    heldout = list(place.corpus_texts("heldout"))
    return {**vocabulary_fit(read_tokenizer(place.pretrain_tokenizer), heldout), "checkpoint": True}


def finished_runs(config: RunConfig, run_dir: RunLayout, tasks: list[dict]) -> dict[str, Any]:
    """From the fine-tuning runs saved so far: result rows and the learning rate chosen among them,
    models whose arm failed, and per (model, task) how many of its runs are still missing."""
    models = {m.name: m for m in config.evaluate.models}
    grid, seeds = config.evaluate.learning_rates, config.evaluate.seeds
    done: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for model, task, lr, seed, result in run_dir.finished_runs():
        entry = models.get(model)
        if entry and lr in entry.rates(grid) and seed in seeds:
            done.setdefault((model, task), {}).setdefault(lr, []).append(result)
    failed, missing, total = [], [], 0
    for entry in models.values():
        if entry.arm and not run_dir.arm(entry.arm).export.exists():
            failed.append({"model": entry.name, "task": "", "error": run_dir.arm_failure(entry.arm)})
            continue
        expected = len(seeds) * len(entry.rates(grid))
        total += expected * len(tasks)
        for task in tasks:
            have = sum(map(len, done.get((entry.name, task["name"]), {}).values()))
            if have < expected:
                missing.append({"model": entry.name, "task": task["name"], "finished": have, "expected": expected})
    rows, selection = select_runs(done)
    return {"rows": rows, "selection": selection, "failures": {"failed": failed, "skipped": []}, "missing": missing,
            "expected": total}


def partial_note(missing: list[dict], expected: int) -> str:
    """The sentence that opens a partial report: how many runs are missing, and where."""
    left = sum(m["expected"] - m["finished"] for m in missing)
    where = ", ".join(f"{m['model']} on {m['task']} ({m['finished']} of {m['expected']})" for m in missing[:6])
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    return (f"Partial report: {expected - left} of {expected} fine-tuning runs have finished; not yet: {where}{more}. "
            f"Every number below is "
            f"from the runs that have, and will change when the rest finish (`domainlm run` resumes them).")


# ------------------------------------------------------------------------------------------ write
def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(title: str, verdict_text: str, sections, images: dict[str, Path], opening: str = "") -> tuple[str, str]:
    """report.md and report.html: the title, `opening` (the decision, when there is one), the
    verdict, then each section's text and table."""
    md = [f"# {title}", ""] + ([opening, ""] if opening else []) + ["## Verdict", "", verdict_text, ""]
    body = [f"<h1>{html.escape(title)}</h1>"] + ([f"<p class='decision'>{_inline_html(opening)}</p>"] if opening else []) \
        + ["<h2>Verdict</h2>", f"<p>{_inline_html(verdict_text)}</p>"]
    for heading, text, header, rows in sections:
        md += [f"## {heading}", ""] + ([text, ""] if text else []) + ([markdown_table(header, rows), ""] if header else [])
        body += [f"<h2>{html.escape(heading)}</h2>"]
        if text:
            body.append(f"<p>{_inline_html(text, images)}</p>")
        if header:
            body.append(html_table(header, rows))
    # A wide table scrolls inside its own box and long words wrap, so the page never scrolls sideways.
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#1a202c;"
             "overflow-wrap:anywhere}table{border-collapse:collapse;margin:.5em 0 1.5em;display:block;max-width:100%;"
             "overflow-x:auto}td,th{border:1px solid #cbd5e0;padding:.3em .7em;text-align:left}th{background:#edf2f7}"
             "img{max-width:100%;display:block;margin:.5em 0}.decision{font-size:1.1em;border-left:4px solid #3182ce;"
             "padding-left:.8em}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return "\n".join(md), page


def _inline_html(text: str, images: dict[str, Path] | None = None) -> str:
    """Escape text; turn **bold** and ![alt](file.png) into HTML (images embedded as data URIs)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)

    def image(match: re.Match) -> str:
        path = (images or {}).get(match.group(2))
        if path is None or not path.exists():
            return ""
        data = base64.b64encode(path.read_bytes()).decode()
        return f"<img alt='{match.group(1)}' src='data:image/png;base64,{data}'>"

    return re.sub(r"!\[(.*?)\]\((.+?)\)", image, out)


def candidates_and_references(config: RunConfig, summary: list[dict]) -> tuple[list[str], list[str]]:
    """(the pretrained models the verdict is about: each experiment arm's, else `domain_model`;
    what they are measured against: `reference_model`, then every TF-IDF row), among the models with
    results."""
    present = list(dict.fromkeys(s["model"] for s in summary))
    arms = [m.name for m in config.evaluate.models if m.kind == "domain" and m.arm]
    tfidf = [m.name for m in config.evaluate.models if m.kind in LEXICAL]
    references = [m for m in dict.fromkeys([config.report.reference_model, *tfidf]) if m in present]
    candidates = [m for m in (arms or [config.report.domain_model]) if m in present]
    if not candidates:  # e.g. an evaluation of existing checkpoints: every model that is not a reference
        candidates = [m for m in present if m not in references]
    return candidates, references


def compare(config: RunConfig, art: dict[str, Any], summary: list[dict]) -> dict[str, Any]:
    """The numbers behind the verdict: intervals against the references, models that did not
    learn a task, suite scores, distance vs gain, and how many test inputs each (model, task) had cut."""
    run_dir = RunLayout(config.directory, chosen=art["selection"])
    model, reference = config.report.domain_model, config.report.reference_model
    candidates, references = candidates_and_references(config, summary)
    return {
        "candidates": candidates, "references": references,
        "intervals": bootstrap_rows(run_dir, art["tasks"], summary, references, config.evaluate.bootstrap_samples,
                                    config.seed),
        "degenerate": degenerate_models(run_dir, art["tasks"], summary,
                                        next((m.name for m in config.evaluate.models if m.kind == "tfidf"), None)),
        "seeds": {s["model"]: s["n"] for s in summary},
        "suite": suite_scores(summary, art["tasks"]),
        "distance": distance_vs_gain(art["distance"], summary, art["tasks"], model, reference),
        "truncated": {(m, t): run_dir.selected_runs(m, t)[0].get("truncated", {}).get("test", "")
                      for m, tasks in art["selection"].items() for t in tasks},
        "casing": tokenizer_casing_warnings(run_dir, art["selection"]),
        "curves": learning_curves(config, run_dir, art, summary),
        "active": active_learning(config, run_dir, art),
    }


def active_learning(config: RunConfig, run_dir: RunLayout, art: dict[str, Any]) -> dict | None:
    """Active learning's points (per task, model, strategy and round) with their intervals and the
    strategies-against-random sentences; None without active-learning rows."""
    if not art.get("active_rows"):
        return None
    points = active_points(run_dir, art["tasks"], art["active_rows"], config.evaluate.bootstrap_samples, config.seed)
    return {"points": points, "sentences": active_sentences(points)}


def learning_curves(config: RunConfig, run_dir: RunLayout, art: dict[str, Any], summary: list[dict]) -> dict | None:
    """The learning curve's points with their intervals, the label-saving sentences and the classes
    a sample was short of; None without a curve."""
    curve = art["curve"]
    if not curve or not art["curve_rows"]:
        return None
    include_full = config.evaluate.learning_curve.include_full
    points = curve_points(run_dir, art["tasks"], art["curve_rows"], summary if include_full else [],
                          config.evaluate.bootstrap_samples, config.seed)
    return {"points": points, "label_saving": label_savings(points, curve, include_full),
            "units": {task: about["unit"] for task, about in curve["tasks"].items()},
            "short": short_classes(curve), "selection": curve["selection"]}


def tokenizer_casing_warnings(run_dir: RunLayout, selection: dict) -> dict[str, str]:
    """Per model, what its tokenizer's casing does wrong (lower-casing a cased vocabulary, or the
    reverse), as each fine-tuning run recorded it; models without a mismatch are left out."""
    found = {}
    for model, tasks in selection.items():
        for task in tasks:
            casing = run_dir.selected_runs(model, task)[0].get("tokenizer_casing") or {}
            if casing.get("mismatch"):
                found[model] = casing["mismatch"]
    return found


def pretraining_costs(config: RunConfig, pre: dict[str, Any], candidates: list[str]) -> dict[str, dict]:
    """Seconds, device and real tokens of each candidate's pretraining: its arm's in an experiment,
    else this run's."""
    if pre is None:  # nothing pretrained here
        return {}
    if "arms" not in pre:
        return {name: {"seconds": pre["train_seconds"], "device": pre["device"], "tokens": pre["real_tokens_seen"]}
                for name in candidates if name == config.report.domain_model}
    arms = {r["arm"]: r for r in pre["arms"] if r["status"] == "done"}
    entries = {m.name: m.arm for m in config.evaluate.models if m.arm}
    return {name: {"seconds": arms[arm]["train_seconds"], "device": arms[arm]["device"],
                   "tokens": arms[arm]["real_tokens"], "arm": arm}
            for name in candidates if (arm := entries.get(name)) in arms}


def run(config: RunConfig, out: Path, partial: bool = False) -> dict[str, Any]:
    """Write report.md, report.html, results.json and the plots into `out` (`ReportFiles`).
    `partial`: from the fine-tuning runs finished so far, saying which are missing (`domainlm
    report --partial`)."""
    art = load_artifacts(config, partial)
    summary = summarize(art["rows"], art["tasks"])
    model, reference = config.report.domain_model, config.report.reference_model
    numbers = compare(config, art, summary)
    costs = pretraining_costs(config, art["pretrain"], numbers["candidates"])
    files = ReportFiles(out)
    plot_results(summary, art["tasks"], files.plot("results"), highlight=model)
    plot_distance(numbers["distance"]["rows"], files.plot("distance"), model, reference)
    if art["history"]:
        plot_loss(art["history"], files.plot("loss"))
    if art["tokenizer"]:
        plot_tokenizer_fit(art["tokenizer"], files.plot("tokenizer_fit"))
    if curves := numbers["curves"]:
        plot_learning_curves(curves["points"], art["tasks"], curves["units"], files.plot("learning_curves"), model)
    if active := numbers["active"]:
        plot_active_learning(active["points"], art["tasks"], files.plot("active_learning"))
    images = {path.name: path for path in map(files.plot, files.PLOTS)}  # as report.md links them
    text = verdict(numbers["candidates"], numbers["references"], numbers["intervals"], numbers["degenerate"],
                   costs, numbers["distance"], numbers["seeds"], numbers["suite"])
    if art["pretrain"] and "arms" in art["pretrain"] and (differences := arm_differences(art["pretrain"]["arms"])):
        text += " " + differences
    if art["missing"]:
        text = partial_note(art["missing"], art["expected_runs"]) + " " + text
    chosen = picks(RunLayout(config.directory, chosen=art["selection"]), art["tasks"], summary,
                   config.evaluate.bootstrap_samples, config.seed)
    opening = decision(chosen, numbers["candidates"], numbers["references"], numbers["intervals"], costs,
                       still_falling(art["history"]), numbers["degenerate"])
    title = config.report.title or f"domainlm report: {config.name}"
    markdown, page = render(title, text, build_sections(config, art, summary, numbers), images, opening)
    atomic_write_text(files.markdown, markdown + "\n")
    atomic_write_bytes(files.html, page.encode())
    curve_results = {"learning_curves": {
        "rows": art["curve_rows"], "points": curves["points"], "label_saving": curves["label_saving"],
        "short": curves["short"], "selection": curves["selection"]}} if curves else {}
    if active:
        curve_results["active_learning"] = {"rows": art["active_rows"], "points": active["points"],
                                            "sentences": active["sentences"]}
    atomic_write_json(files.results, {
        "rows": art["rows"], "summary": summary, "decision": opening, "picks": chosen, "verdict": text,
        "config": config.model_dump(mode="json"),
        "selection": art["selection"], "intervals": numbers["intervals"], "suite": numbers["suite"],
        "distance": art["distance"] | {"versus_gain": numbers["distance"]}, "pretraining_cost": costs,
        "degenerate": numbers["degenerate"],
        "timings": art["timings"], "corpus": art["corpus"], "tokenizer": art["tokenizer"],
        "pretrain": art["pretrain"], "failures": art["failures"], "missing": art["missing"],
    } | curve_results)
    log.info("report: %s", files.html)
    return {"models": len({s['model'] for s in summary}), "tasks": len(art["tasks"])}

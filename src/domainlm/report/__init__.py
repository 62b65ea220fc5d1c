"""Report stage: one Markdown + HTML report, plots and `results.json`, rebuilt from saved artifacts.

Nothing here reads the memory of a live run: every number comes from the stage folders
(`corpus/stats.json`, `tokenizer/fit.json`, `pretrain/history.json` and `summary.json`,
`evaluate/results.jsonl`, `tasks.json`, `failures.json`, and each stage's `manifest.json`).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from domainlm.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from domainlm.config import RunConfig
from domainlm.evaluate import selected_runs
from domainlm.evaluate.metrics import summarize
from domainlm.pipeline import STAGES as PIPELINE_STAGES
from domainlm.report.comparison import bootstrap_rows, distance_vs_gain, suite_scores, verdict

STAGES = PIPELINE_STAGES[:-1]  # every stage before this one


def load_artifacts(run_dir: Path) -> dict[str, Any]:
    evaluate = run_dir / "evaluate"
    rows = [json.loads(line) for line in (evaluate / "results.jsonl").read_text().splitlines() if line.strip()]
    return {
        "rows": rows,
        "tasks": read_json(evaluate / "tasks.json"),
        "failures": read_json(evaluate / "failures.json"),
        "selection": read_json(evaluate / "selection.json"),
        "distance": read_json(evaluate / "distance.json"),
        "corpus": read_json(run_dir / "corpus" / "stats.json"),
        "tokenizer": read_json(run_dir / "tokenizer" / "fit.json"),
        "pretrain": read_json(run_dir / "pretrain" / "summary.json"),
        "history": read_json(run_dir / "pretrain" / "history.json"),
        "timings": {s: read_json(run_dir / s / "manifest.json")["timings"]["seconds"] for s in STAGES},
    }


# ------------------------------------------------------------------------------------------ plots
def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    import io

    plt = pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_results(summary: list[dict], tasks: list[dict], path: Path, highlight: str = "domain") -> None:
    """One panel per task: each model's test score, mean over seeds with a ± std error bar."""
    plt = pyplot()
    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks, strict=False):
        entries = [s for s in summary if s["task"] == task["name"]]
        names = [s["model"] for s in entries]
        ax.bar(names, [100 * s["mean"] for s in entries], yerr=[100 * s["std"] for s in entries], capsize=4,
               color=["#2b6cb0" if n == highlight else "#a0aec0" for n in names])
        ax.set_title(task["name"])
        ax.set_ylabel(f"{task['metric']} (test, %)")
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


def plot_distance(rows: list[dict], path: Path, model: str, reference: str) -> None:
    """Gain of `model` over `reference` against each distance measure, one point per task."""
    plt = pyplot()
    measures = [k for k in ("fertility", "js_divergence") if any(r[k] is not None for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(measures)), figsize=(4.5 * max(1, len(measures)), 3.4), squeeze=False)
    for ax, key in zip(axes[0], measures, strict=False):
        points = [r for r in rows if r[key] is not None and r["gain"] is not None]
        ax.scatter([r[key] for r in points], [r["gain"] for r in points], color="#2b6cb0")
        for r in points:
            ax.annotate(r["task"], (r[key], r["gain"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="#a0aec0", linewidth=0.8)
        ax.set_xlabel({"fertility": "general-vocabulary fertility", "js_divergence": "unigram JS divergence"}[key])
        ax.set_ylabel(f"{model} - {reference} (points)")
    save_figure(fig, path)


def _smooth(losses: list[float]) -> tuple[list[float], int]:
    window = max(1, len(losses) // 50)
    return [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))], window


def plot_loss(history: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if "arms" in history:  # an experiment: one smoothed curve per arm
        for arm, losses in history["arms"].items():
            ax.plot(range(1, len(losses) + 1), _smooth(losses)[0], label=arm)
    else:
        losses = history["loss"]
        smooth, window = _smooth(losses)
        ax.plot(range(1, len(losses) + 1), losses, color="#cbd5e0", linewidth=0.8, label="per step")
        ax.plot(range(1, len(losses) + 1), smooth, color="#2b6cb0", label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    ax.set_title("Pretraining loss")
    ax.legend()
    save_figure(fig, path)


def plot_tokenizer_fit(fit: dict, path: Path) -> None:
    plt = pyplot()
    names = ["domain"] + (["reference"] if fit.get("reference") else [])
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, key, label in ((axes[0], "fertility", "sub-words per word"), (axes[1], "split_share", "share of words split")):
        ax.bar(names, [fit[n][key] for n in names], color=["#2b6cb0", "#a0aec0"][: len(names)])
        ax.set_title(label)
    fig.suptitle("Vocabulary fit on held-out domain text")
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------ write
def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _points(value: float | None, signed: bool = False) -> str:
    return "" if value is None else (f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}")


def build_sections(config: RunConfig, art: dict, summary: list[dict], numbers: dict) -> list[tuple[str, str, list, list]]:
    """(title, text, table header, table rows) for each report section."""
    selection = art["selection"]
    results = [[s["task"], s["model"], s["metric"], f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}", s["n"],
                f"{selection.get(s['model'], {}).get(s['task'], {}).get('lr', ''):g}"
                if selection.get(s["model"], {}).get(s["task"], {}).get("lr") else "-",
                numbers["truncated"].get((s["model"], s["task"]), "")]
               for s in summary]
    reference = config.report.reference_model
    interval_rows = [[r["task"], r["model"], _points(r["difference"], True),
                      f"[{_points(r['low'], True)}, {_points(r['high'], True)}]", f"{r['p_value']:.3f}"]
                     for r in numbers["intervals"]]
    suite_rows = [[model, _points(score)] for model, score in numbers["suite"].items()]
    distance = numbers["distance"]
    distance_rows = [[r["task"], "" if r["fertility"] is None else f"{r['fertility']:.3f}",
                      "" if r["split_share"] is None else f"{100 * r['split_share']:.1f}%",
                      "" if r["js_divergence"] is None else f"{r['js_divergence']:.3f}",
                      "" if r["gain"] is None else f"{r['gain']:+.1f}"] for r in distance["rows"]]
    distance_rows.append(["rank correlation with the gain (Spearman)"] + [
        "" if v is None else f"{v:+.2f}" for v in distance["rank_correlation"].values()] + [""])
    corpus = art["corpus"]
    corpus_rows = [[step, counts["in"], counts["out"], ", ".join(f"{r} {n}" for r, n in counts["dropped"].items())]
                   for step, counts in corpus.get("steps", {}).items()]
    corpus_rows += [["kept", corpus["read"], corpus["kept"], f"{corpus['heldout']} held out for tokenizer fit"]]
    pii = ", ".join(f"{kind} {n}" for kind, n in corpus.get("pii", {}).items() if n) or "none"
    corpus_text = (f"Every document read is either kept or dropped with a reason; each step's input = output + "
                   f"dropped. PII masked: {pii}; invalid UTF-8 characters replaced: {corpus.get('invalid_bytes', 0)}; "
                   f"boilerplate lines removed: {corpus.get('line_removals', 0)}.")
    example_rows = [[reason, e["id"], e["text"][:160].replace("\n", " ")]
                    for reason, examples in sorted(corpus.get("examples", {}).items()) for e in examples]
    fit = art["tokenizer"]
    fit_rows = [[name, fit[name]["vocab_size"], f"{fit[name]['fertility']:.3f}", f"{100 * fit[name]['split_share']:.1f}%",
                 ", ".join(fit[name]["most_split"][:8])] for name in ("domain", "reference") if fit.get(name)]
    pre = art["pretrain"]
    if "arms" in pre:  # an experiment: one row per arm
        pre_header = ["arm", "status", "steps", "row positions", "real tokens", "parameters", "final loss",
                      "train s", "wall s (all its stages)", "tokens / s"]
        pre_rows = [[r["arm"], r["status"] if r["status"] == "done" else f"failed: {r['reason'][:200]}"]
                    + ([r["steps"], f"{r['positions']:,}", f"{r['real_tokens']:,}", f"{r['parameters']:,}",
                        f"{r['final_loss']:.3f}", f"{r['train_seconds']:.0f}", f"{r['wall_seconds']:.0f}",
                        f"{r['real_tokens_per_s']:.0f}"] if r["status"] == "done" else [""] * 8)
                    for r in pre["arms"]]
        pre_text = (f"Every arm pretrained for the same steps of the same shape: {pre['budget_tokens']:,} row "
                    f"positions split equally. ![loss](loss.png)")
    else:
        pre_header, pre_text = ["", ""], "![loss](loss.png)"
        pre_rows = [["steps", pre["steps"]], ["parameters", f"{pre['parameters']:,}"],
                    ["real tokens seen", f"{pre['real_tokens_seen']:,}"], ["final loss", f"{pre['final_loss']:.3f}"],
                    ["real tokens / s", f"{pre['real_tokens_per_s']:.0f}"], ["device", pre["device"]],
                    ["export max abs logit diff vs transformers", f"{pre['export_max_abs_logit_diff']:.1e}"]]
    task_rows = [[t["name"], t["type"], t["metric"], len(t["labels"]), t["sizes"]["train"], t["sizes"]["dev"],
                  t["sizes"]["test"], "; ".join(t.get("notes", []))] for t in art["tasks"]]
    failures = art["failures"]
    failure_rows = [[f["model"], f.get("task", ""), f.get("error", f.get("reason", ""))]
                    for f in failures["failed"] + failures["skipped"]]
    timing_rows = [[stage, f"{seconds:.1f}"] for stage, seconds in art["timings"].items()]
    grid = config.evaluate.learning_rates
    model, general = config.report.domain_model, art["distance"].get("general_tokenizer", "the general vocabulary")
    sections = [
        ("Results", f"Test-set headline metric, mean ± std over seeds {config.evaluate.seeds}. For each model and "
                    f"task the learning rate with the best mean dev score among {grid} was kept, and each run "
                    f"tested its best dev epoch (at most {config.evaluate.epochs}, early stopping after "
                    f"{config.evaluate.patience} without improvement). ![results](results.png)",
         ["task", "model", "metric", "test (%)", "seeds", "lr", "test inputs cut (truncated / windowed)"],
         results),
        (f"Against {reference}", f"Difference in points of the headline metric (mean over each model's seeds) and "
                                 f"its paired-bootstrap 95% interval over test examples "
                                 f"({config.evaluate.bootstrap_samples} resamples); p is two-sided.",
         ["task", "model", "difference", "95% interval", "p"], interval_rows),
        ("Suite score", "BLURB-style: the headline metrics averaged within each task type, then across types.",
         ["model", "suite score"], suite_rows),
        ("Domain distance", f"Measured before any training: how many pieces {general} cuts each word of the task "
                            f"text into (fertility), the share of words it splits, and the Jensen-Shannon divergence "
                            f"of the task's word distribution from general text; next to the measured gain of "
                            f"{model} over {reference}. ![distance](distance.png)",
         ["task", "fertility", "words split", "JS divergence", f"gain of {model} (points)"], distance_rows),
        ("Tasks", "", ["task", "type", "metric", "labels", "train", "dev", "test", "notes"], task_rows),
        ("Corpus", corpus_text, ["step", "in", "out", "dropped"], corpus_rows),
        ("What the corpus steps removed (examples)", "", ["reason", "document", "text"], example_rows),
        ("Tokenizer fit", "On the held-out corpus documents; lower fertility means fewer pieces per word. "
                          "![tokenizer fit](tokenizer_fit.png)",
         ["vocabulary", "size", "fertility", "words split", "most often split"], fit_rows),
        ("Pretraining", pre_text, pre_header, pre_rows),
        ("Stage timings", "Seconds each stage took when it last ran.", ["stage", "seconds"], timing_rows),
    ]
    if failure_rows:
        sections.append(("Models that failed or were skipped", "", ["model", "task", "reason"], failure_rows))
    return sections


def render(title: str, verdict_text: str, sections, images: dict[str, Path]) -> tuple[str, str]:
    md = [f"# {title}", "", "## Verdict", "", verdict_text, ""]
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Verdict</h2>", f"<p>{_inline_html(verdict_text)}</p>"]
    for heading, text, header, rows in sections:
        md += [f"## {heading}", ""] + ([text, ""] if text else []) + [markdown_table(header, rows), ""]
        body += [f"<h2>{html.escape(heading)}</h2>"]
        if text:
            body.append(f"<p>{_inline_html(text, images)}</p>")
        body.append(html_table(header, rows))
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#1a202c}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #cbd5e0;padding:.3em .7em;"
             "text-align:left}th{background:#edf2f7}img{max-width:100%;display:block;margin:.5em 0}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return "\n".join(md), page


def _inline_html(text: str, images: dict[str, Path] | None = None) -> str:
    """Escape text; turn **bold** and ![alt](file.png) into HTML (images embedded as data URIs)."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)

    def image(match: re.Match) -> str:
        path = (images or {}).get(match.group(2))
        if path is None or not path.exists():
            return ""
        data = base64.b64encode(path.read_bytes()).decode()
        return f"<img alt='{match.group(1)}' src='data:image/png;base64,{data}'>"

    return re.sub(r"!\[(.*?)\]\((.+?)\)", image, out)


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    art = load_artifacts(config.directory)
    summary = summarize(art["rows"], art["tasks"])
    model, reference = config.report.domain_model, config.report.reference_model
    numbers = {
        "intervals": bootstrap_rows(config.directory / "evaluate", art["tasks"], summary, reference,
                                    config.evaluate.bootstrap_samples, config.seed),
        "suite": suite_scores(summary, art["tasks"]),
        "distance": distance_vs_gain(art["distance"], summary, art["tasks"], model, reference),
        "truncated": {(m, t): runs[0].get("truncated", {}).get("test", "")
                      for m, tasks in art["selection"].items() for t in tasks
                      for runs in [selected_runs(config.directory / "evaluate", m, t)]},
    }
    pre = art["pretrain"]
    cost = {"seconds": pre["train_seconds"], "device": pre["device"], "tokens": pre["real_tokens_seen"]}
    entry = next((m for m in config.evaluate.models if m.name == model), None)
    arm = next((r for r in pre.get("arms", []) if entry and r["arm"] == entry.arm and r["status"] == "done"), None)
    if arm:  # in an experiment, the cost of the compared model's own arm
        cost = {"seconds": arm["train_seconds"], "device": arm["device"], "tokens": arm["real_tokens"]}
    images = {name: out / name for name in ("results.png", "distance.png", "loss.png", "tokenizer_fit.png")}
    plot_results(summary, art["tasks"], images["results.png"], highlight=model)
    plot_distance(numbers["distance"]["rows"], images["distance.png"], model, reference)
    plot_loss(art["history"], images["loss.png"])
    plot_tokenizer_fit(art["tokenizer"], images["tokenizer_fit.png"])
    text = verdict(summary, art["tasks"], model, reference, numbers["intervals"], numbers["suite"],
                   numbers["distance"], cost)
    title = config.report.title or f"domainlm report: {config.name}"
    markdown, page = render(title, text, build_sections(config, art, summary, numbers), images)
    atomic_write_text(out / "report.md", markdown + "\n")
    atomic_write_bytes(out / "report.html", page.encode())
    atomic_write_json(out / "results.json", {
        "rows": art["rows"], "summary": summary, "verdict": text, "config": config.model_dump(mode="json"),
        "selection": art["selection"], "intervals": numbers["intervals"], "suite": numbers["suite"],
        "distance": art["distance"] | {"versus_gain": numbers["distance"]}, "pretraining_cost": cost,
        "timings": art["timings"], "corpus": art["corpus"], "tokenizer": art["tokenizer"],
        "pretrain": art["pretrain"], "failures": art["failures"],
    })
    print(f"report: {out / 'report.html'}")
    return {"models": len({s['model'] for s in summary}), "tasks": len(art["tasks"])}

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
from domainlm.evaluate.metrics import summarize
from domainlm.pipeline import STAGES as PIPELINE_STAGES

STAGES = PIPELINE_STAGES[:-1]  # every stage before this one


def load_artifacts(run_dir: Path) -> dict[str, Any]:
    evaluate = run_dir / "evaluate"
    rows = [json.loads(line) for line in (evaluate / "results.jsonl").read_text().splitlines() if line.strip()]
    return {
        "rows": rows,
        "tasks": read_json(evaluate / "tasks.json"),
        "failures": read_json(evaluate / "failures.json"),
        "corpus": read_json(run_dir / "corpus" / "stats.json"),
        "tokenizer": read_json(run_dir / "tokenizer" / "fit.json"),
        "pretrain": read_json(run_dir / "pretrain" / "summary.json"),
        "history": read_json(run_dir / "pretrain" / "history.json"),
        "timings": {s: read_json(run_dir / s / "manifest.json")["timings"]["seconds"] for s in STAGES},
    }


def gains_over(summary: list[dict], tasks: list[dict], model: str, other: str) -> list[tuple[str, float]]:
    """(task, points by which `model` beats `other`) for the tasks where both have results."""
    gains = []
    for task in tasks:
        by_model = {s["model"]: s for s in summary if s["task"] == task["name"]}
        if model in by_model and other in by_model:
            gains.append((task["name"], 100 * (by_model[model]["mean"] - by_model[other]["mean"])))
    return gains


def verdict(summary: list[dict], tasks: list[dict], reference: str, compute_seconds: float, device: str) -> str:
    """One paragraph: did the domain model beat the reference (and every other model), where,
    by how much, at what pretraining cost."""
    gains = gains_over(summary, tasks, "domain", reference)
    if not gains:
        return f"No task has results for both the domain model and the reference model '{reference}'."
    wins = sum(g > 0 for _, g in gains)
    average = sum(g for _, g in gains) / len(gains)
    per_task = "; ".join(f"{name} {gain:+.1f}" for name, gain in gains)
    text = (f"The domain-pretrained model is ahead of **{reference}** on **{wins} of {len(gains)}** tasks, "
            f"by **{average:+.1f} points** on average ({per_task}; headline metric, mean over seeds), "
            f"at a pretraining cost of {compute_seconds / 3600:.3f} {device.upper()}-hours ({compute_seconds:.0f} s).")
    for other in dict.fromkeys(s["model"] for s in summary):
        if other in ("domain", reference):
            continue
        others = gains_over(summary, tasks, "domain", other)
        if others:
            mean = sum(g for _, g in others) / len(others)
            text += (f" Against {other} it is ahead on {sum(g > 0 for _, g in others)} of {len(others)} "
                     f"({mean:+.1f} points on average).")
    return text + " Differences smaller than the seeds' standard deviations are not evidence either way."


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


def plot_results(summary: list[dict], tasks: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        entries = [s for s in summary if s["task"] == task["name"]]
        names = [s["model"] for s in entries]
        ax.bar(names, [100 * s["mean"] for s in entries], yerr=[100 * s["std"] for s in entries], capsize=4,
               color=["#2b6cb0" if n == "domain" else "#a0aec0" for n in names])
        ax.set_title(task["name"])
        ax.set_ylabel(f"{task['metric']} (test, %)")
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


def plot_loss(history: dict, path: Path) -> None:
    plt = pyplot()
    losses = history["loss"]
    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.2))
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


def build_sections(config: RunConfig, art: dict, summary: list[dict]) -> list[tuple[str, str, list, list]]:
    """(title, text, table header, table rows) for each report section."""
    results = [[s["task"], s["model"], s["metric"], f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}", s["n"]]
               for s in summary]
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
    pre_rows = [["steps", pre["steps"]], ["parameters", f"{pre['parameters']:,}"],
                ["real tokens seen", f"{pre['real_tokens_seen']:,}"], ["final loss", f"{pre['final_loss']:.3f}"],
                ["real tokens / s", f"{pre['real_tokens_per_s']:.0f}"], ["device", pre["device"]],
                ["export max abs logit diff vs transformers", f"{pre['export_max_abs_logit_diff']:.1e}"]]
    task_rows = [[t["name"], t["type"], t["metric"], len(t["labels"]), t["sizes"]["train"], t["sizes"]["dev"],
                  t["sizes"]["test"]] for t in art["tasks"]]
    failures = art["failures"]
    failure_rows = [[f["model"], f.get("task", ""), f.get("error", f.get("reason", ""))]
                    for f in failures["failed"] + failures["skipped"]]
    timing_rows = [[stage, f"{seconds:.1f}"] for stage, seconds in art["timings"].items()]
    sections = [
        ("Results", f"Test-set headline metric, mean ± std over seeds {config.evaluate.seeds}; the dev split "
                    "chose the epoch. ![results](results.png)",
         ["task", "model", "metric", "test (%)", "seeds"], results),
        ("Tasks", "", ["task", "type", "metric", "labels", "train", "dev", "test"], task_rows),
        ("Corpus", corpus_text, ["step", "in", "out", "dropped"], corpus_rows),
        ("What the corpus steps removed (examples)", "", ["reason", "document", "text"], example_rows),
        ("Tokenizer fit", "On the held-out corpus documents; lower fertility means fewer pieces per word. "
                          "![tokenizer fit](tokenizer_fit.png)",
         ["vocabulary", "size", "fertility", "words split", "most often split"], fit_rows),
        ("Pretraining", "![loss](loss.png)", ["", ""], pre_rows),
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
    images = {name: out / name for name in ("results.png", "loss.png", "tokenizer_fit.png")}
    plot_results(summary, art["tasks"], images["results.png"])
    plot_loss(art["history"], images["loss.png"])
    plot_tokenizer_fit(art["tokenizer"], images["tokenizer_fit.png"])
    text = verdict(summary, art["tasks"], config.report.reference_model, art["pretrain"]["train_seconds"],
                   art["pretrain"]["device"])
    title = config.report.title or f"domainlm report: {config.name}"
    markdown, page = render(title, text, build_sections(config, art, summary), images)
    atomic_write_text(out / "report.md", markdown + "\n")
    atomic_write_bytes(out / "report.html", page.encode())
    atomic_write_json(out / "results.json", {
        "rows": art["rows"], "summary": summary, "verdict": text, "config": config.model_dump(mode="json"),
        "timings": art["timings"], "corpus": art["corpus"], "tokenizer": art["tokenizer"],
        "pretrain": art["pretrain"], "failures": art["failures"],
    })
    print(f"report: {out / 'report.html'}")
    return {"models": len({s['model'] for s in summary}), "tasks": len(art["tasks"])}

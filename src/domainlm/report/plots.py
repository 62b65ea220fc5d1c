"""The report's figures, drawn with matplotlib on its file-only backend and saved as PNG (atomically)."""

from __future__ import annotations

import io
from pathlib import Path

from domainlm.io import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def task_panels(rows: list[dict], tasks: list[dict], most: int, width: float, height: float):
    """One panel of width x height inches per task that has rows, at most `most` to a row (cells
    left over hidden): None when no task has any, else (the figure, [(panel, task, its rows)])."""
    tasks = [t for t in tasks if any(r["task"] == t["name"] for r in rows)]
    if not tasks:
        return None
    columns = min(most, len(tasks))
    lines = -(-len(tasks) // columns)
    fig, axes = pyplot().subplots(lines, columns, figsize=(width * columns, height * lines), squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    return fig, [(ax, t, [r for r in rows if r["task"] == t["name"]]) for ax, t in zip(axes.flat, tasks, strict=False)]


def plot_results(summary: list[dict], tasks: list[dict], path: Path, highlight: str = "domain") -> bool:
    """One panel per task with results: each model's test score, mean over seeds with a ± std error
    bar. Whether it drew anything: with no result at all (no tasks, every run failed) it writes
    no file, and the report has no results section to show one in."""
    drawn = task_panels(summary, tasks, 4, 4.2, 3.4)
    if drawn is None:
        return False
    fig, panels = drawn
    for ax, task, entries in panels:
        names = [s["model"] for s in entries]
        ax.bar(names, [100 * s["mean"] for s in entries], yerr=[100 * s["std"] for s in entries], capsize=4,
               color=["#2b6cb0" if n == highlight else "#a0aec0" for n in names])
        ax.set_title(task["name"])
        ax.set_ylabel(f"{task['metric']} (test, %)")
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)
    return True


def plot_distance(rows: list[dict], path: Path, model: str, reference: str) -> bool:
    """Gain of `model` over `reference` against each distance measure, one point per task with a
    gain. Whether it drew anything (no file without a task that has both a gain and a measure)."""
    rows = [r for r in rows if r["gain"] is not None]
    measures = [k for k in ("fertility", "js_divergence") if any(r[k] is not None for r in rows)]
    if not measures:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(measures), figsize=(4.5 * len(measures), 3.4), squeeze=False)
    for ax, key in zip(axes[0], measures, strict=True):
        points = [r for r in rows if r[key] is not None]
        ax.scatter([r[key] for r in points], [r["gain"] for r in points], color="#2b6cb0")
        for r in points:
            ax.annotate(r["task"], (r[key], r["gain"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="#a0aec0", linewidth=0.8)
        ax.set_xlabel({"fertility": "general-vocabulary fertility", "js_divergence": "unigram JS divergence"}[key])
        ax.set_ylabel(f"{model} - {reference} (points)")
    save_figure(fig, path)
    return True


def _smooth(losses: list[float]) -> tuple[list[float], int]:
    window = max(1, len(losses) // 50)
    return [sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))], window


def plot_loss(history: dict, path: Path) -> bool:
    """The pretraining loss per step (an experiment: one smoothed curve per arm that finished).
    Whether it drew anything (no file when no arm finished)."""
    curves = {arm: losses for arm, losses in history.get("arms", {}).items() if losses}
    if "arms" not in history and history.get("loss"):
        curves = {"": history["loss"]}
    if not curves:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if "arms" in history:
        for arm, losses in curves.items():
            ax.plot(range(1, len(losses) + 1), _smooth(losses)[0], label=arm)
    else:
        losses = curves[""]
        smooth, window = _smooth(losses)
        ax.plot(range(1, len(losses) + 1), losses, color="#cbd5e0", linewidth=0.8, label="per step")
        ax.plot(range(1, len(losses) + 1), smooth, color="#2b6cb0", label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("MLM loss")
    ax.set_title("Pretraining loss")
    ax.legend()
    save_figure(fig, path)
    return True


def plot_tokenizer_fit(fit: dict, path: Path) -> None:
    plt = pyplot()
    names = ["domain"] + (["reference"] if fit.get("reference") else [])
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, key, label in ((axes[0], "fertility", "sub-words per word"), (axes[1], "split_share", "share of words split")):
        ax.bar(names, [fit[n][key] for n in names], color=["#2b6cb0", "#a0aec0"][: len(names)])
        ax.set_title(label)
    fig.suptitle("Vocabulary fit on held-out domain text")
    save_figure(fig, path)


def plot_learning_curves(points: list[dict], tasks: list[dict], units: dict[str, str], path: Path,
                         highlight: str = "domain") -> bool:
    """One panel per task with a curve: each model's test score (mean over subsample seeds and
    seeds, %) against its size on a log2 axis, with the 95% interval as a band; the full training
    split, where shown, is the last point ("all"), one doubling right of the largest size.
    `units`: per task what a size counts. Whether it drew anything."""
    drawn = task_panels(points, tasks, 3, 4.6, 3.6)
    if drawn is None:
        return False
    fig, panels = drawn
    palette = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {model: palette[i % len(palette)] for i, model in enumerate(dict.fromkeys(p["model"] for p in points))}
    for ax, task, found in panels:  # a model keeps its colour in every panel, whichever models a task has
        largest = max(p["size"] for p in found if p["size"] is not None)
        ticks = sorted({p["size"] for p in found if p["size"] is not None})
        for model in dict.fromkeys(p["model"] for p in found):
            line = sorted((p for p in found if p["model"] == model), key=lambda p: p["size"] or 2 * largest)
            xs = [p["size"] or 2 * largest for p in line]
            width = 2.2 if model == highlight else 1.4
            drawn = ax.plot(xs, [100 * p["mean"] for p in line], marker="o", markersize=3, linewidth=width,
                            label=model, color=colors[model])
            ax.fill_between(xs, [100 * p["low"] for p in line], [100 * p["high"] for p in line],
                            color=drawn[0].get_color(), alpha=0.15, linewidth=0)
        if any(p["size"] is None for p in found):
            ticks.append(2 * largest)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) if t <= largest else "all" for t in ticks])
        ax.set_title(task["name"])
        ax.set_xlabel(units.get(task["name"], "labels"))
        ax.set_ylabel(f"{task['metric']} (test, %)")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return True


def plot_active_learning(points: list[dict], tasks: list[dict], path: Path) -> bool:
    """One panel per task with active-learning runs: the test score (mean over AL seeds, %) against
    the labelled examples, one line per (model, strategy) with its 95% interval as a band (random
    dashed). Whether it drew anything."""
    drawn = task_panels(points, tasks, 3, 4.6, 3.6)
    if drawn is None:
        return False
    fig, panels = drawn
    for ax, task, found in panels:
        for model, strategy in dict.fromkeys((p["model"], p["strategy"]) for p in found):
            line = sorted((p for p in found if (p["model"], p["strategy"]) == (model, strategy)),
                          key=lambda p: p["round"])
            xs = [p["labels"] for p in line]
            drawn = ax.plot(xs, [100 * p["mean"] for p in line], marker="o", markersize=3,
                            linestyle="--" if strategy == "random" else "-", label=f"{model} · {strategy}")
            ax.fill_between(xs, [100 * p["low"] for p in line], [100 * p["high"] for p in line],
                            color=drawn[0].get_color(), alpha=0.12, linewidth=0)
        ax.set_title(task["name"])
        ax.set_xlabel("labelled training examples")
        ax.set_ylabel(f"{task['metric']} (test, %)")
        ax.legend(fontsize=7)
    save_figure(fig, path)
    return True

"""The report's sections, each (title, text, table header, table rows), built from the saved
artifacts (`load_artifacts`) and the numbers computed from them (`report.comparison`)."""

from __future__ import annotations

from typing import Any

from domainlm.config import RunConfig
from domainlm.layout import ReportFiles
from domainlm.report.comparison import outcome

Section = tuple[str, str, list[str], list[list[Any]]]


def _points(value: float | None, signed: bool = False) -> str:
    return "" if value is None else (f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}")


def results_section(config: RunConfig, art: dict, summary: list[dict], numbers: dict) -> Section:
    selection = art["selection"]

    def lr(s: dict) -> str:
        chosen = selection.get(s["model"], {}).get(s["task"], {}).get("lr")
        return f"{chosen:g}" if chosen else "-"

    def score(s: dict) -> str:  # one seed has no spread to show: say so rather than "± 0.00"
        return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" if s["n"] > 1 else f"{100 * s['mean']:.2f} (1 seed)"

    degenerate = numbers.get("degenerate", {})
    rows = [[s["task"], s["model"], s["metric"], score(s), s["n"], lr(s), numbers["truncated"].get((s["model"], s["task"]), ""),
             degenerate.get(s["task"], {}).get(s["model"], "")] for s in summary]
    e = config.evaluate
    text = (f"Test-set headline metric, mean ± std over seeds {e.seeds}. For each model and task the learning rate "
            f"with the best mean dev score among {e.learning_rates} was kept, and each run tested its best dev epoch "
            f"(at most {e.epochs}, early stopping after {e.patience} without improvement). {_figure('results')}")
    scored = {s["task"] for s in summary}
    if without := [t["name"] for t in art.get("tasks", []) if t["name"] not in scored]:
        text += f" No model has test results on {', '.join(without)}: no fine-tuning run of it finished."
    for model, mismatch in numbers.get("casing", {}).items():
        text += f" **Warning, {model}**: {mismatch}."
    return ("Results", text, ["task", "model", "metric", "test (%)", "seeds", "lr",
                              "test inputs cut (truncated / windowed)", "did not learn the task"], rows)


SAVINGS_IN_FULL = 6
"""Label-saving sentences per task shown in full; past that (4+ models make 12+ ordered pairs) the
report shows those where a model reaches the other's score and counts the rest (results.json has all)."""


def _savings_text(savings: list[dict]) -> str:
    """The label-saving sentences, task by task: all of them for a task with few, else the pairs
    where one model reaches the other's score, and how many pairs never do."""
    text = ""
    for task in dict.fromkeys(s["task"] for s in savings):
        found = [s for s in savings if s["task"] == task]
        shown = found if len(found) <= SAVINGS_IN_FULL else [s for s in found if s["size"] is not None]
        text += " " + " ".join(s["sentence"] for s in shown)
        if left := len(found) - len(shown):
            text += f" On {task}, in {left} more ordered pairs the first model never reaches the second's score " \
                    "(each, with its best, under `learning_curves.label_saving` in the JSON of all numbers)."
    return text


def learning_curves_section(config: RunConfig, curves: dict) -> Section:
    """Each model's score at each size (and on the full training split), and how many labels each
    model needs to reach another's score, one sentence per task and pair of models."""
    curve, e = config.evaluate.learning_curve, config.evaluate
    rows = [[p["task"], p["model"], "all" if p["size"] is None else p["size"], f"{p['train_examples']:.0f}",
             _points(p["mean"]), f"[{_points(p['low'])}, {_points(p['high'])}]", p["runs"]] for p in curves["points"]]
    target = ("its full-data score (or, without one, its score at the largest size)" if curve.include_full
              else "its score at the largest size")
    text = (f"Every model fine-tuned on nested samples of each task's training split: sizes {curve.sizes} (labels "
            f"per class for tasks with classes, sentences for token tasks, examples for regression), each drawn with "
            f"subsample seeds {curve.seeds} and fine-tuned with seeds {e.seeds}; dev drawn from the dev split the "
            f"same way, never larger than the training sample, chooses each sample's learning rate among "
            f"{e.learning_rates}. Scores are the headline metric on the full test set, mean over a point's runs "
            f"with a bootstrap 95% interval (test examples and runs resampled). A model reaches another's score "
            f"when its mean is at least {target}. {_figure('learning_curves')}")
    text += _savings_text(curves["label_saving"])
    if curves["short"]:
        text += " Samples short of their size: " + "; ".join(curves["short"]) + "."
    return ("Learning curves", text, ["task", "model", "size", "train examples", "test (%)", "95% interval", "runs"],
            rows)


def intervals_section(config: RunConfig, numbers: dict, reference: str) -> Section:
    """Every model against `reference`: the difference, its interval, what that interval says."""
    degenerate = numbers.get("degenerate", {})

    def reading(r: dict) -> str:
        failed = [f"{m} {why}" for m, why in degenerate.get(r["task"], {}).items() if m in (r["model"], reference)]
        return "not comparable: " + "; ".join(failed) if failed else outcome(r)

    rows = [[r["task"], r["model"], _points(r["difference"], True),
             f"[{_points(r['low'], True)}, {_points(r['high'], True)}]", f"{r['p_value']:.3f}", reading(r)]
            for r in numbers["intervals"] if r["reference"] == reference]
    text = (f"Difference in points of the headline metric (mean over each model's seeds) and its paired-bootstrap "
            f"95% interval ({config.evaluate.bootstrap_samples} resamples of the test examples and of each "
            f"model's seeds, so a model's seed-to-seed spread widens it); p is two-sided.")
    return (f"Against {reference}", text, ["task", "model", "difference", "95% interval", "p", "reading"], rows)


def suite_section(numbers: dict) -> Section:
    return ("Suite score", "BLURB-style: the headline metrics averaged within each task type, then across types.",
            ["model", "suite score"], [[model, _points(score)] for model, score in numbers["suite"].items()])


def distance_section(config: RunConfig, art: dict, numbers: dict) -> Section:
    """Each task's distance from general text next to the gain; what was not measured is said in
    one line instead of an empty table, plot or correlation."""
    if "tasks" not in art["distance"]:
        return ("Domain distance", f"Not measured: {art['distance'].get('note', 'no general vocabulary')}.", [], [])
    distance = numbers["distance"]
    rows = [[r["task"], "" if r["fertility"] is None else f"{r['fertility']:.3f}", _share(r["split_share"]),
             _share(r["unknown_share"]), "" if r["js_divergence"] is None else f"{r['js_divergence']:.3f}",
             "" if r["gain"] is None else f"{r['gain']:+.1f}"] for r in distance["rows"]]
    model, reference = config.report.domain_model, config.report.reference_model
    general = art["distance"].get("general_tokenizer", "the general vocabulary")
    text = (f"Measured before any training: how many pieces {general} cuts each word of the task text into "
            f"(fertility), the share of words it splits or cannot spell at all (unknown), and the Jensen-Shannon "
            f"divergence of the task's word distribution from general text; next to the measured gain of {model} "
            f"over {reference}." + (" " + _figure("distance") if distance["tasks_with_gain"] else ""))
    if not art["distance"].get("general_corpus"):
        text += " JS divergence not measured: no `evaluate.general_corpus`."
    if distance["tasks_with_gain"] >= 3:
        rows.append(["rank correlation with the gain (Spearman)"] + [
            "" if v is None else f"{v:+.2f}" for v in distance["rank_correlation"].values()] + [""])
    else:
        text += (f" No rank correlation with the gain: it needs 3 tasks with a gain, this run has "
                 f"{distance['tasks_with_gain']}.")
    return ("Domain distance", text, ["task", "fertility", "words split", "unknown words", "JS divergence",
                                      f"gain of {model} (points)"], rows)


def tasks_section(art: dict) -> Section:
    """One row per task with its notes (held-out splits, subsampling, dev/test labels never seen in
    training, replaced invalid UTF-8), led by a warning when some task has such labels."""
    rows = [[t["name"], t["type"], t["metric"], len(t["labels"]), t["sizes"]["train"], t["sizes"]["dev"],
             t["sizes"]["test"], "; ".join(t.get("notes", []))] for t in art["tasks"]]
    unseen = [f"{t['name']} {split}: " + ", ".join(f"{label} ({n})" for label, n in found.items())
              for t in art["tasks"] for split, found in t.get("unseen_labels", {}).items()]
    text = ("**Labels never seen in training** (the examples that carry them can never be predicted right; "
            "counts of examples): " + "; ".join(unseen) + ".") if unseen else ""
    return ("Tasks", text, ["task", "type", "metric", "labels", "train", "dev", "test", "notes"], rows)


def corpus_sections(corpus: dict) -> list[Section]:
    """The per-step accounting, and a few examples of what each step removed."""
    rows = [[step, counts["in"], counts["out"], ", ".join(f"{r} {n}" for r, n in counts["dropped"].items())]
            for step, counts in corpus.get("steps", {}).items()]
    rows += [["kept", corpus["read"], corpus["kept"], f"{corpus['heldout']} held out for tokenizer fit"]]
    pii = ", ".join(f"{kind} {n}" for kind, n in corpus.get("pii", {}).items() if n) or "none"
    text = (f"Every document read is either kept or dropped with a reason; each step's input = output + "
            f"dropped. PII masked: {pii}; invalid UTF-8 characters replaced: {corpus.get('invalid_bytes', 0)}; "
            f"boilerplate lines removed: {corpus.get('line_removals', 0)}.")
    if coverage := corpus.get("decontamination"):
        text += (f" Decontamination looked for {coverage['texts']} distinct dev/test texts, as a corpus holds them: "
                 f"by their {coverage['ngram']}-word n-grams, {coverage['whole']} shorter ones whole; "
                 f"{coverage['too_short']} under {coverage['min_words']} words could not be checked.")
    examples = [[reason, e["id"], e["text"][:160].replace("\n", " ")]
                for reason, found in sorted(corpus.get("examples", {}).items()) for e in found]
    return [("Corpus", text, ["step", "in", "out", "dropped"], rows),
            ("What the corpus steps removed (examples)", "", ["reason", "document", "text"], examples)]


def _share(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def tokenizer_section(fit: dict) -> Section:
    rows = [[name, fit[name]["vocab_size"], f"{fit[name]['fertility']:.3f}", _share(fit[name]["split_share"]),
             _share(fit[name].get("unknown_share")), ", ".join(fit[name]["most_split"][:8]),
             ", ".join(fit[name].get("most_unknown", [])[:8])] for name in ("domain", "reference") if fit.get(name)]
    return ("Tokenizer fit", "On the held-out corpus documents; lower fertility means fewer pieces per known word. "
                             "An unknown word (one the vocabulary cannot spell) counts as not fitting: it is in "
                             "'words split' and 'unknown words', not in the fertility. "
                             + _figure("tokenizer_fit"),
            ["vocabulary", "size", "fertility", "words split", "unknown words", "most often split",
             "most often unknown"], rows)


def pretraining_section(pre: dict) -> Section:
    """One run's numbers, or an experiment's row per arm."""
    if "arms" not in pre:
        rows = [["steps", pre["steps"]], ["parameters", f"{pre['parameters']:,}"],
                ["real tokens seen", f"{pre['real_tokens_seen']:,}"], ["final loss", f"{pre['final_loss']:.3f}"],
                ["real tokens / s", f"{pre['real_tokens_per_s']:.0f}"], ["device", pre["device"]],
                ["export max abs logit diff vs transformers", f"{pre['export_max_abs_logit_diff']:.1e}"]]
        return ("Pretraining", _figure("loss"), ["", ""], rows)
    header = ["arm", "status", "steps", "row positions", "real tokens", "parameters", "non-embedding", "vocabulary",
              "final loss", "train s", "wall s (all its stages)", "tokens / s"]
    rows = [[r["arm"], r["status"] if r["status"] == "done" else f"failed: {r['reason'][:200]}"]
            + ([r["steps"], f"{r['positions']:,}", f"{r['real_tokens']:,}", f"{r['parameters']:,}",
                f"{r.get('non_embedding_parameters') or 0:,}", f"{r.get('vocab_size') or 0:,}", f"{r['final_loss']:.3f}",
                f"{r['train_seconds']:.0f}", f"{r['wall_seconds']:.0f}", f"{r['real_tokens_per_s']:.0f}"]
               if r["status"] == "done" else [""] * 10)
            for r in pre["arms"]]
    text = (f"Every arm pretrained for the same steps of the same shape: {pre['budget_tokens']:,} row "
            f"positions split equally. {arm_differences(pre['arms'])} {_figure('loss')}")
    if not any(r["status"] == "done" for r in pre["arms"]):  # no loss curve, nothing equal to speak of
        text = "No arm finished its pretraining (each one's reason is in the table)."
    return ("Pretraining", text, header, rows)


def arm_differences(arms: list[dict]) -> str:
    """What makes the arms other than equal compute: a different non-embedding size (then they are
    not equal compute), a different vocabulary size (a different embedding table)."""
    done = [r for r in arms if r["status"] == "done"]
    said = []
    for key, what in (("non_embedding_parameters", "**Not equal compute**: non-embedding parameters differ"),
                      ("vocab_size", "Vocabulary sizes differ")):
        values = {r["arm"]: r.get(key) for r in done if r.get(key)}
        if len(set(values.values())) > 1:
            said.append(f"{what} ({', '.join(f'{arm} {value:,}' for arm, value in values.items())}).")
    return " ".join(said)


def arms_section(arms: dict[str, dict]) -> Section:
    """Each experiment arm's own corpus and vocabulary (an arm may read another corpus)."""
    rows = []
    for arm, found in arms.items():
        corpus, fit = found["corpus"], found["vocabulary"]
        vocabulary = f"{fit['vocab_size']} (checkpoint's)" if fit.get("checkpoint") else fit["vocab_size"]
        rows.append([arm, ", ".join(corpus.get("sources", {})), corpus["read"], corpus["kept"], vocabulary,
                     f"{fit['fertility']:.3f}", _share(fit["split_share"]), _share(fit.get("unknown_share"))])
    return ("Arms: corpus and vocabulary", "Each arm's curated corpus and the fit of the vocabulary its model "
            "uses on that corpus's held-out documents (an arm continued from a checkpoint uses the checkpoint's, "
            "extended or not).", ["arm", "sources", "read", "kept", "vocabulary", "fertility", "words split",
                                  "unknown words"], rows)


def active_learning_section(config: RunConfig, active: dict) -> Section:
    """Each (model, strategy)'s score after every round of active learning, and each strategy's
    last-round score against random sampling's."""
    al = config.evaluate.active_learning
    rows = [[p["task"], p["model"], p["strategy"], p["round"], p["labels"], _points(p["mean"]),
             f"[{_points(p['low'])}, {_points(p['high'])}]", p["runs"]] for p in active["points"]]
    text = (f"Pool-based active learning: {al.start} training examples drawn at random, then {al.rounds} rounds "
            f"that each fine-tune the model on the labelled examples (at the learning rate chosen on the full "
            f"data), score the rest of the training split and label the {al.batch} it ranks first: highest "
            f"predictive entropy (entropy), smallest gap between the two likeliest classes (margin; token tasks: "
            f"the sentence's mean over its words) or at random (random), with AL seeds {al.seeds}. Scores are the "
            f"headline metric on the full test set, mean over the seeds with a bootstrap 95% interval (test "
            f"examples and seeds resampled). {_figure('active_learning')}")
    if active["sentences"]:
        text += " " + " ".join(active["sentences"])
    return ("Active learning", text, ["task", "model", "strategy", "round", "labels", "test (%)", "95% interval",
                                      "seeds"], rows)


def forecast_section(plan: dict, pre: dict, timings: dict[str, float]) -> Section | None:
    """`domainlm plan`'s forecast beside what the run measured, with the error: per pretraining
    arm its parameters, FLOPs, row positions, training seconds on this machine and final held-out
    MLM loss (with `--pilots`); per stage its seconds (None when nothing forecast has finished)."""
    actual = {r["arm"]: r for r in pre["arms"] if r["status"] == "done"} if "arms" in pre else {"domain": pre}
    rows = []

    def add(row: str, what: str, guess, measured, digits: str = ",.4g") -> None:
        if guess is not None and measured:
            rows.append([row, what, f"{guess:{digits}}", f"{measured:{digits}}",
                         f"{100 * (guess - measured) / measured:+.1f}%"])

    for arm, forecast in plan["arms"].items():
        found = actual.get(arm)
        if found is None:
            continue
        add(arm, "parameters", forecast["memory"]["parameters"], found.get("parameters"), ",.0f")
        add(arm, "training FLOPs", forecast["flops"], found.get("flops"))
        add(arm, "row positions", forecast["positions"], found.get("positions"), ",.0f")
        add(arm, "training seconds (this machine)", (forecast.get("this_machine") or {}).get("pretrain_seconds"),
            found.get("train_seconds"), ",.1f")
        add(arm, "final held-out MLM loss (pilot)", (forecast.get("loss_forecast") or {}).get("forecast"),
            found.get("heldout_mlm_loss"), ".3f")
        if found.get("peak_memory_bytes") and found.get("micro_batch_rows"):  # a GPU run: its micro-batch's bytes
            memory = forecast["memory"]
            guess = memory["state_bytes"] + memory["activation_bytes_per_sequence"] * found["micro_batch_rows"]
            add(arm, f"peak GPU memory, GiB ({found['micro_batch_rows']} rows per micro-batch)", guess / 2**30,
                found["peak_memory_bytes"] / 2**30, ".2f")
    stages = {**plan.get("stages", {}), "evaluate": plan["evaluation"].get("this_machine", {})}
    for stage, forecast in stages.items():
        if stage in timings and "measured" not in forecast.get("basis", ""):
            add(f"{stage} stage", "seconds (this machine)", forecast.get("seconds"), timings[stage], ",.1f")
    if not rows:
        return None
    return ("Forecast and actual", "What `domainlm plan` forecast before the run against what the "
            "run measured. Seconds are forecast from timed steps and samples on the machine that made the plan; "
            "they compare only when the run used the same machine, alone. The loss is forecast from a pilot run "
            "(`domainlm plan --pilots`). Memory is compared when the run trained on one GPU (its peak allocated "
            "bytes after the first step, at the micro-batch it used); a CPU run does not measure it.", ["arm / stage", "what", "forecast", "actual", "error"], rows)


def build_sections(config: RunConfig, art: dict, summary: list[dict], numbers: dict) -> list[Section]:
    """Every section in report order. Only what has something to show: results and suite scores
    when some model has a test result, a reference's intervals when another model has results
    beside it, the tasks and their distance when there are tasks, the failures section when
    something failed."""
    timings = [[stage, f"{seconds:.1f}"] for stage, seconds in art["timings"].items()]
    failures = [[f["model"], f.get("task", ""), f.get("error", f.get("reason", ""))]
                for f in art["failures"]["failed"] + art["failures"]["skipped"]]
    sections = [
        *([results_section(config, art, summary, numbers)] if summary else []),
        *(intervals_section(config, numbers, reference) for reference in numbers["references"]
          if any(r["reference"] == reference for r in numbers["intervals"])),
        *([learning_curves_section(config, numbers["curves"])] if numbers.get("curves") else []),
        *([active_learning_section(config, numbers["active"])] if numbers.get("active") else []),
        *([suite_section(numbers)] if numbers["suite"] else []),
        *([distance_section(config, art, numbers), tasks_section(art)] if art["tasks"] else []),
        *(corpus_sections(art["corpus"]) if art["corpus"] else []),
        *([tokenizer_section(art["tokenizer"])] if art["tokenizer"] else []),
        *([arms_section(art["arms"])] if art.get("arms") else []),
        *([pretraining_section(art["pretrain"])] if art["pretrain"] else []),
        *([found] if art.get("plan") and (found := forecast_section(art["plan"], art["pretrain"] or {"arms": []},
                                                                      art["timings"])) else []),
        ("Stage timings", "Seconds each stage took when it last ran.", ["stage", "seconds"], timings),
    ]
    if failures:
        sections.append(("Models that failed or were skipped", "", ["model", "task", "reason"], failures))
    return sections


def _figure(name: str) -> str:
    """A Markdown image of one of the report's figures (`ReportFiles.PLOTS`); the HTML embeds it."""
    return f"![{name.replace('_', ' ')}]({ReportFiles.plot_name(name)})"

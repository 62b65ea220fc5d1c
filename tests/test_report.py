"""The verdict's numbers from hand-made evaluation results."""

import pytest

from domainlm.report.comparison import distance_vs_gain, suite_scores, verdict

TASKS = [{"name": "ner1", "type": "token-classification"}, {"name": "ner2", "type": "token-classification"},
         {"name": "cls", "type": "classification"}]


def _summary(values: dict[str, list[float]]) -> list[dict]:
    return [{"task": t["name"], "model": model, "metric": "m", "n": 3, "mean": v, "std": 0.01}
            for model, per_task in values.items() for t, v in zip(TASKS, per_task, strict=True)]


def test_suite_score_averages_within_type_then_across():
    scores = suite_scores(_summary({"domain": [0.8, 0.6, 0.9], "general": [0.7, 0.7, 0.8]}), TASKS)
    assert scores["domain"] == pytest.approx(((0.8 + 0.6) / 2 + 0.9) / 2)
    assert scores["general"] == pytest.approx(((0.7 + 0.7) / 2 + 0.8) / 2)


def test_distance_rows_and_rank_correlation():
    summary = _summary({"domain": [0.8, 0.6, 0.95], "general": [0.7, 0.7, 0.8]})  # gains +10, -10, +15
    distance = {"tasks": {"ner1": {"fertility": 1.6, "split_share": 0.3, "js_divergence": 0.5},
                          "ner2": {"fertility": 1.1, "split_share": 0.1, "js_divergence": 0.2},
                          "cls": {"fertility": 1.5, "split_share": 0.2, "js_divergence": 0.4}}}
    result = distance_vs_gain(distance, summary, TASKS, "domain", "general")
    assert [round(r["gain"], 6) for r in result["rows"]] == [10.0, -10.0, 15.0]
    # fertility ranks (ner1, ner2, cls) = 3, 1, 2; gain ranks = 2, 1, 3: rho = 1 - 6 * 2 / (3 * 8)
    assert result["rank_correlation"]["fertility"] == pytest.approx(0.5)
    assert result["tasks_with_gain"] == 3


def _row(task, model, difference, low, high, reference="general"):
    return {"task": task, "model": model, "reference": reference, "difference": difference, "low": low, "high": high}


def _verdict(intervals, degenerate=None, seeds=None, costs=None, candidates=("domain",), references=("general",)):
    summary = _summary({"domain": [0.8, 0.6, 0.9], "general": [0.7, 0.7, 0.8]})
    return verdict(list(candidates), list(references), intervals, degenerate or {},
                   costs if costs is not None else {"domain": {"seconds": 7200, "device": "cpu", "tokens": 1000}},
                   {"rank_correlation": {"fertility": 0.5}, "tasks_with_gain": 3,
                    "rows": [{"task": "ner1", "split_share": 0.22}, {"task": "cls", "split_share": 0.05}]},
                   seeds or {"domain": 3, "general": 3}, suite_scores(summary, TASKS))


def test_a_clear_win_is_stated_with_its_intervals_and_cost():
    text = _verdict([_row("ner1", "domain", 0.1, 0.02, 0.18), _row("ner2", "domain", 0.05, 0.01, 0.09),
                     _row("cls", "domain", 0.1, 0.04, 0.2)])
    assert text.startswith("**domain** against **general**: better on 3 of 3 (ner1 +10.0 [+2.0, +18.0]; ")
    assert "mean +8.3 points" in text and "2.00 CPU-hours (7200 s, 1,000 real tokens)" in text
    assert "Suite score (mean within task type, then across types) 80.0 vs 75.0" in text
    assert "Far from general text by the distance score: ner1 (22% of its words split)." in text
    assert "fertility ρ = +0.50 — too few tasks" in text and "seed variance" not in text


def test_a_clear_loss_is_stated_as_worse():
    text = _verdict([_row("ner1", "domain", -0.1, -0.18, -0.02), _row("cls", "domain", -0.2, -0.3, -0.1)])
    assert "worse on 2 of 2 (ner1 -10.0 [-18.0, -2.0]; cls -20.0 [-30.0, -10.0])" in text and "better" not in text


def test_an_interval_that_includes_zero_is_no_measurable_difference_never_better():
    text = _verdict([_row("ner1", "domain", 0.03, -0.01, 0.07), _row("cls", "domain", 0.01, -0.02, 0.04)])
    assert "no measurable difference on 2 of 2 (ner1 +3.0 [-1.0, +7.0]; cls +1.0 [-2.0, +4.0])" in text
    assert "better" not in text and "worse" not in text


def test_models_that_learned_nothing_are_named_not_compared_and_one_seed_is_said():
    degenerate = {"ner1": {"domain": "predicts no entity at all", "general": "predicts no entity at all"}}
    text = _verdict([_row("ner1", "domain", 0.0, 0.0, 0.0), _row("cls", "domain", 0.1, 0.05, 0.15)], degenerate,
                    seeds={"domain": 1, "general": 1})
    assert "not comparable on 1 of 2 (ner1: domain predicts no entity at all, general predicts no entity" in text
    assert "+0.0 [+0.0, +0.0]" not in text and "better on 1 of 2 (cls" in text
    assert "One fine-tuning seed for domain, general: no seed variance was measured" in text


def test_every_arms_cost_and_the_total_are_reported():
    costs = {"a": {"seconds": 60, "device": "cuda", "tokens": 10}, "b": {"seconds": 120, "device": "cuda", "tokens": 20}}
    text = _verdict([_row("cls", "a", 0.1, 0.05, 0.15), _row("cls", "b", -0.1, -0.15, -0.05)], costs=costs,
                    candidates=("a", "b"))
    assert "**a** against **general**: better on 1 of 1" in text and "**b** against **general**: worse on 1 of 1" in text
    assert "0.02 CUDA-hours (60 s, 10 real tokens)" in text and "All 2 pretraining runs together: 0.05 hours (180 s)" in text


def test_two_models_of_one_arm_count_its_pretraining_once():
    """A zero-shot and a fine-tuned row of the same pretrained arm share one pretraining run."""
    arm = {"seconds": 162, "device": "cpu", "tokens": 10, "arm": "continued"}
    costs = {"continued": arm, "continued-zero-shot": arm, "other": {**arm, "arm": "other", "seconds": 38}}
    rows = [_row("cls", name, 0.1, 0.05, 0.15) for name in costs]
    text = _verdict(rows, costs=costs, candidates=tuple(costs))
    assert "All 2 pretraining runs together: 0.06 hours (200 s)" in text
    text = _verdict(rows[:2], costs=dict(list(costs.items())[:2]), candidates=("continued", "continued-zero-shot"))
    assert "pretraining runs together" not in text  # one run: its cost is in each model's sentence already


def test_tokenizer_casing_mismatches_and_unknown_words_are_shown(tmp_path):
    import json

    from domainlm.config import config_from_dict
    from domainlm.layout import RunLayout
    from domainlm.report import tokenizer_casing_warnings
    from domainlm.report.sections import results_section, tokenizer_section

    run_dir = RunLayout(tmp_path)
    mismatch = "the tokenizer lower-cases text, but 812 vocabulary entries (21% of those with letters) are upper-case"
    for model, casing in (("cased-bert", {"mismatch": mismatch}), ("ours", {"mismatch": None}), ("tfidf", None)):
        run_dir.run_file(model, "cls", 1e-4, 0).parent.mkdir(parents=True)
        run_dir.run_file(model, "cls", 1e-4, 0).write_text(json.dumps({"tokenizer_casing": casing}))
    selection = {m: {"cls": {"lr": 1e-4, "seeds": [0]}} for m in ("cased-bert", "ours", "tfidf")}
    run_dir.selection.write_text(json.dumps(selection))
    warnings = tokenizer_casing_warnings(run_dir, selection)
    assert warnings == {"cased-bert": mismatch}
    config = config_from_dict({"name": "x", "corpus": {"sources": [{"format": "python-docs"}]}})
    _, text, _, _ = results_section(config, {"selection": selection}, [], {"truncated": {}, "casing": warnings})
    assert f"**Warning, cased-bert**: {mismatch}." in text

    fit = {"domain": {"vocab_size": 100, "fertility": 1.2, "split_share": 0.25, "unknown_share": 0.05,
                      "most_split": ["kinase"], "most_unknown": ["µg"]}}
    _, _, header, rows = tokenizer_section(fit)
    assert dict(zip(header, rows[0], strict=True))["unknown words"] == "5.0%"
    assert dict(zip(header, rows[0], strict=True))["most often unknown"] == "µg"


def test_constant_predictions_and_a_far_gap_to_tfidf_are_named(tmp_path):
    import json

    from domainlm.layout import RunLayout
    from domainlm.report.comparison import degenerate_models

    run_dir = RunLayout(tmp_path)
    runs = {("ner", "domain"): [[["O", "O"], ["O"]]] * 2, ("ner", "lexical"): [[["B-X", "O"], ["O"]]],
            ("cls", "domain"): [["pos", "pos", "pos"]], ("cls", "weak"): [["pos", "neg", "neg"]],
            ("cls", "lexical"): [["pos", "neg", "pos"]]}
    selection = {}
    for (task, model), predictions in runs.items():
        selection.setdefault(model, {})[task] = {"lr": 0.1, "seeds": list(range(len(predictions)))}
        for seed, prediction in enumerate(predictions):
            run_dir.run_file(model, task, 0.1, seed).parent.mkdir(parents=True, exist_ok=True)
            run_dir.run_file(model, task, 0.1, seed).write_text(json.dumps({"predictions": prediction}))
    run_dir.selection.write_text(json.dumps(selection))
    summary = [{"task": t, "model": m, "mean": mean, "n": 1} for (t, m), mean in
               {("ner", "domain"): 0.0, ("ner", "lexical"): 0.5, ("cls", "domain"): 0.5, ("cls", "weak"): 0.3,
                ("cls", "lexical"): 0.9}.items()]
    found = degenerate_models(run_dir, [{"name": "ner", "type": "token-classification"},
                                        {"name": "cls", "type": "classification"}], summary, "lexical")
    assert found == {"ner": {"domain": "predicts no entity at all"},
                     "cls": {"domain": 'predicts only "pos"', "weak": "60 points below TF-IDF"}}
    # measured against the recipe's TF-IDF row whatever its name; without one, nothing is "below" it
    assert degenerate_models(run_dir, [{"name": "cls", "type": "classification"}], summary, None) == \
        {"cls": {"domain": 'predicts only "pos"'}}


def test_arms_of_unequal_size_or_vocabulary_are_said():
    from domainlm.report.sections import arm_differences

    arms = [{"arm": "a", "status": "done", "non_embedding_parameters": 1000, "vocab_size": 16000},
            {"arm": "b", "status": "done", "non_embedding_parameters": 1000, "vocab_size": 12304},
            {"arm": "c", "status": "failed"}]
    assert arm_differences(arms) == "Vocabulary sizes differ (a 16,000, b 12,304)."
    arms[1]["non_embedding_parameters"] = 900
    assert arm_differences(arms).startswith("**Not equal compute**: non-embedding parameters differ (a 1,000, b 900).")


def test_a_model_with_no_reference_results_yet_is_compared_with_nothing():
    text = _verdict([], references=())  # a partial report: the references have not finished any run
    assert text.startswith("**domain** is compared with nothing: no reference model has test results. Pretraining:")


def test_a_continued_arm_is_shown_with_the_vocabulary_its_model_uses(tmp_path):
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    from domainlm.layout import RunLayout
    from domainlm.report import arm_vocabulary_fit
    from domainlm.report.sections import arms_section

    def word_level(words, folder):  # a vocabulary that knows `words` whole and nothing else
        tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, "[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        folder.mkdir(parents=True)
        tokenizer.save(str(folder / "tokenizer.json"))

    arms = {}
    for arm, continued in (("scratch", False), ("continued", True)):
        place = RunLayout(tmp_path / arm)
        (place.root / "corpus").mkdir(parents=True)
        (place.root / "corpus" / "heldout.jsonl").write_text(json.dumps({"id": "1", "text": "kinase binds", "source": "s"}))
        (place.root / "corpus" / "stats.json").write_text(json.dumps({"read": 1, "kept": 1, "sources": {"s": {}}}))
        word_level(["kinase", "binds"], place.tokenizer)  # the domain vocabulary: both words whole
        domain_fit = {"vocab_size": 3, "fertility": 1.0, "split_share": 0.0, "unknown_share": 0.0}
        (place.tokenizer_fit).write_text(json.dumps({"domain": domain_fit}))
        if continued:  # pretrained with the checkpoint's vocabulary, which cannot spell "kinase"
            word_level(["binds"], place.pretrain_tokenizer)
        arms[arm] = {"corpus": json.loads((place.root / "corpus" / "stats.json").read_text()),
                     "vocabulary": arm_vocabulary_fit(place)}
    _, _, header, rows = arms_section(arms)
    shown = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert (shown["scratch"]["vocabulary"], shown["scratch"]["unknown words"]) == (3, "0.0%")
    assert (shown["continued"]["vocabulary"], shown["continued"]["unknown words"]) == ("2 (checkpoint's)", "50.0%")


# ------------------------------------------- a report with no results, or fewer than expected (issue 20)
def _run_folder(tmp_path, tasks: list[dict], runs: dict | None = None, failed: list[dict] | None = None) -> dict:
    """A finished run's folder, written by hand: corpus, tokenizer and pretraining artifacts, and an
    evaluate stage over `tasks` whose only finished runs are `runs` ({(model, task): predictions},
    one seed each, scored 0.5). Returns the recipe (a dict, for `config_from_dict`)."""
    import json

    from domainlm.layout import RunLayout

    run_dir = RunLayout(tmp_path / "run")
    files = {
        run_dir.corpus_stats: {"read": 3, "kept": 2, "heldout": 0, "dropped": {"too_short": 1}, "pii": {},
                               "steps": {"read": {"in": 3, "out": 3, "dropped": {}},
                                         "quality": {"in": 3, "out": 2, "dropped": {"too_short": 1}}},
                               "examples": {"too_short": [{"id": "d3", "text": "short"}]}},
        run_dir.tokenizer_fit: {"domain": {"vocab_size": 100, "fertility": 1.2, "split_share": 0.25,
                                           "unknown_share": 0.0, "most_split": ["kinase"]}},
        run_dir.pretrain_summary: {"steps": 4, "parameters": 1000, "real_tokens_seen": 512, "final_loss": 6.2,
                                   "real_tokens_per_s": 100.0, "device": "cpu", "export_max_abs_logit_diff": 1e-7,
                                   "train_seconds": 5.0},
        run_dir.pretrain_history: {"loss": [7.0, 6.8, 6.5, 6.2]},
        run_dir.task_summaries: [{"name": t["name"], "type": "classification", "metric": "micro_f1",
                                  "labels": ["neg", "pos"], "sizes": {"train": 4, "dev": 2, "test": 2}} for t in tasks],
        run_dir.failures: {"failed": failed or [], "skipped": []},
        run_dir.distance: {"note": "no general tokenizer (evaluate.general_tokenizer or tokenizer.reference)"},
    }
    selection, rows = {}, []
    for (model, task), predictions in (runs or {}).items():
        files[run_dir.run_file(model, task, 1e-4, 0)] = {"predictions": predictions, "dev_score": 0.5,
                                                         "metrics": {"micro_f1": 0.5}}
        selection.setdefault(model, {})[task] = {"lr": 1e-4, "seeds": [0], "dev": 0.5}
        rows.append({"model": model, "task": task, "seed": 0, "metric": "micro_f1", "value": 0.5})
        files[run_dir.gold(task)] = ["pos", "neg"]
    files[run_dir.selection] = selection
    for stage in ("corpus", "tokenizer", "pretrain", "evaluate"):
        files[run_dir.manifest(stage)] = {"timings": {"seconds": 1.0}}
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    run_dir.results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for t in tasks:
        (tmp_path / f"{t['name']}.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n')
    return {"name": "x", "run_dir": str(run_dir.root), "corpus": {"sources": [{"format": "python-docs"}]},
            "evaluate": {"seeds": [0], "lr": 1e-4},
            "tasks": [{"name": t["name"], "type": "classification", "format": "jsonl",
                       **{split: str(tmp_path / f"{t['name']}.jsonl") for split in ("train", "dev", "test")}}
                      for t in tasks]}


def _report(recipe: dict, partial: bool = False) -> tuple[str, str, dict, list[str]]:
    """(report.md, report.html, results.json, the files written) of `recipe`'s run folder."""
    import json
    import re
    from pathlib import Path

    from domainlm.config import config_from_dict
    from domainlm.report import run

    out = Path(recipe["run_dir"]) / "report"
    out.mkdir()
    run(config_from_dict(recipe), out, partial=partial)
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert re.findall(r"^## (.+)$", markdown, re.M) == re.findall(r"<h2>(.+?)</h2>", page)  # the same sections
    return markdown, page, json.loads((out / "results.json").read_text()), sorted(p.name for p in out.iterdir())


def _headings(markdown: str) -> list[str]:
    return [line[3:] for line in markdown.splitlines() if line.startswith("## ")]


def test_a_run_without_tasks_reports_its_corpus_vocabulary_and_pretraining(tmp_path):  # case 24
    markdown, page, results, files = _report(_run_folder(tmp_path, tasks=[]))
    assert _headings(markdown) == ["Verdict", "Corpus", "What the corpus steps removed (examples)", "Tokenizer fit",
                                   "Pretraining", "Stage timings"]
    line = "No tasks were evaluated (the recipe has no `tasks`), so there are no results and no verdict."
    assert markdown.split("## Verdict\n\n")[1].split("\n")[0] == line and f"<h2>Verdict</h2><p>{line}</p>" in page
    assert results["verdict"] == line and results["rows"] == results["summary"] == []
    assert files == ["loss.png", "report.html", "report.md", "results.json", "tokenizer_fit.png"]  # no empty plots


def test_every_model_failing_on_every_task_gives_one_line_not_a_verdict(tmp_path):
    failed = [{"model": m, "task": "cls", "error": f"ModelError: {m} cannot be loaded"} for m in ("domain", "tfidf")]
    markdown, _, results, files = _report(_run_folder(tmp_path, tasks=[{"name": "cls"}], failed=failed))
    assert _headings(markdown) == ["Verdict", "Domain distance", "Tasks", "Corpus",
                                   "What the corpus steps removed (examples)", "Tokenizer fit", "Pretraining",
                                   "Stage timings", "Models that failed or were skipped"]
    assert results["verdict"] == "No model has test results on its task: no fine-tuning run finished, so there is " \
                                 "no verdict."
    assert "ModelError: tfidf cannot be loaded" in markdown and "results.png" not in files


def test_a_task_without_finished_runs_is_named_and_the_others_reported(tmp_path):
    recipe = _run_folder(tmp_path, tasks=[{"name": "cls"}, {"name": "empty"}],
                         runs={("domain", "cls"): ["pos", "neg"], ("random-init", "cls"): ["neg", "pos"]})
    markdown, _, results, files = _report(recipe)
    assert _headings(markdown)[:4] == ["Verdict", "Results", "Against random-init", "Suite score"]
    assert "No model has test results on empty: no fine-tuning run of it finished." in markdown
    assert results["verdict"].startswith("**domain** against **random-init**: better on 1 of 1 (cls +100.0 [+100.0, ")
    assert [(s["task"], s["model"]) for s in results["summary"]] == [("cls", "domain"), ("cls", "random-init")]
    assert "results.png" in files


def test_a_partial_report_with_no_finished_run_says_so(tmp_path):
    markdown, _, results, _ = _report(_run_folder(tmp_path, tasks=[{"name": "cls"}, {"name": "ner"}]), partial=True)
    assert results["verdict"].startswith("Partial report: 0 of 6 fine-tuning runs have finished; not yet: domain on "
                                         "cls (0 of 1), domain on ner (0 of 1), random-init on cls (0 of 1), ")
    assert results["verdict"].endswith("No model has test results on any of the 2 tasks: no fine-tuning run "
                                       "finished, so there is no verdict.")
    assert "## Results" not in markdown and "## Suite score" not in markdown and results["missing"][0] == {
        "model": "domain", "task": "cls", "finished": 0, "expected": 1}


def test_only_references_with_results_is_said_not_judged():
    text = _verdict([], candidates=(), references=("general",))
    assert text.startswith("No pretrained model to judge has test results; only general has.")


def test_plots_and_the_pretraining_of_an_experiment_whose_arms_all_failed_cope_with_nothing(tmp_path):
    from domainlm.report.plots import plot_distance, plot_loss, plot_results
    from domainlm.report.sections import pretraining_section

    assert plot_results([], [], tmp_path / "r.png") is False
    assert plot_results([], [{"name": "cls", "metric": "micro_f1"}], tmp_path / "r.png") is False
    assert plot_distance([], tmp_path / "d.png", "domain", "general") is False
    assert plot_distance([{"task": "cls", "gain": None, "fertility": 1.3, "js_divergence": None}],
                         tmp_path / "d.png", "domain", "general") is False
    assert plot_loss({"arms": {}}, tmp_path / "l.png") is False and plot_loss({"loss": []}, tmp_path / "l.png") is False
    assert list(tmp_path.iterdir()) == []
    arms = [{"arm": a, "status": "failed", "reason": "OSError: disk full"} for a in ("a", "b")]
    title, text, _, rows = pretraining_section({"arms": arms, "budget_tokens": 1000, "steps": 0, "device": "none"})
    assert text == "No arm finished its pretraining (each one's reason is in the table)."
    assert [row[:2] for row in rows] == [["a", "failed: OSError: disk full"], ["b", "failed: OSError: disk full"]]
    assert plot_loss({"arms": {"a": [7.0, 6.0], "b": []}}, tmp_path / "l.png") is True


def test_a_reference_alone_with_results_gets_no_empty_comparison(tmp_path):
    failed = [{"model": "domain", "task": "cls", "error": "ModelError: domain cannot be loaded"}]
    markdown, _, results, _ = _report(_run_folder(tmp_path, tasks=[{"name": "cls"}], failed=failed,
                                                  runs={("random-init", "cls"): ["pos", "pos"]}))
    assert _headings(markdown)[:4] == ["Verdict", "Results", "Suite score", "Domain distance"]  # no "Against ..."
    assert results["intervals"] == [] and results["verdict"].startswith(
        "No pretrained model to judge has test results; only random-init has. One fine-tuning seed for random-init")

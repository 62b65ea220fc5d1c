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


def test_verdict_states_wins_average_intervals_suite_and_cost():
    summary = _summary({"domain": [0.8, 0.6, 0.9], "general": [0.7, 0.7, 0.8]})
    intervals = [{"task": "ner1", "model": "domain", "reference": "general", "difference": 0.1, "low": 0.02, "high": 0.18},
                 {"task": "ner2", "model": "domain", "reference": "general", "difference": -0.1, "low": -0.2, "high": 0.01},
                 {"task": "cls", "model": "domain", "reference": "general", "difference": 0.1, "low": -0.01, "high": 0.2}]
    text = verdict(summary, TASKS, "domain", "general", intervals, suite_scores(summary, TASKS),
                   {"rank_correlation": {"fertility": 0.5}, "tasks_with_gain": 3},
                   {"seconds": 7200, "device": "cpu", "tokens": 1000})
    assert "on **2 of 3** tasks" in text and "**+3.3 points**" in text
    assert "excludes zero on 1 of 3 tasks (ner1 better)" in text
    assert "ner2 -10.0 [-20.0, +1.0]" in text
    assert "Suite score (mean within task type, then across types): 80.0 vs 75.0" in text
    assert "2.00 CPU-hours" in text and "fertility ρ = +0.50" in text and "too few tasks" in text
    assert "no comparison" in verdict(summary, TASKS, "domain", "missing", intervals, {}, {}, {})


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

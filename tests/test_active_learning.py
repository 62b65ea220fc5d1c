"""Pool-based active learning (evaluate/active.py): the uncertainty scores by hand, the seeded
random draw, a run of 2 rounds on tiny data, the config's errors, and the stage and report end to end."""

import math
import random

import numpy as np
import pytest

from domainlm.config import config_from_dict
from domainlm.errors import ConfigError
from domainlm.evaluate.active import active_learning_run, entropy_scores, margin_scores, query, uncertainty
from domainlm.tasks.load import load_task
from test_evaluate import tiny_model, write_task_files  # noqa: F401 - a fixture


def test_entropy_and_margin_pick_the_examples_worked_out_by_hand():
    rows = [[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.98, 0.01, 0.01], [0.7, 0.3, 0.0]]
    entropy = entropy_scores(np.array(rows))
    assert entropy[0] == pytest.approx(math.log(2))
    assert entropy[1] == pytest.approx(-(0.4 * math.log(0.4) + 2 * 0.3 * math.log(0.3)))  # 1.0889
    margin = margin_scores(np.array(rows))
    np.testing.assert_allclose(margin, [1.0, 0.9, 0.03, 0.6])
    rng = random.Random(0)
    assert query(uncertainty(rows, "entropy", rng), 2) == [1, 0]  # the flattest distribution first
    assert query(uncertainty(rows, "margin", rng), 2) == [0, 1]  # the tie first
    assert query(uncertainty(rows, "entropy", rng), 10) == [1, 0, 3, 2]  # everything, most uncertain first


def test_a_sentence_scores_the_mean_of_its_words():
    sentences = [[[1.0, 0.0], [0.5, 0.5]], [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]], []]
    scores = uncertainty(sentences, "margin", random.Random(0), per_word=True)
    assert scores == pytest.approx([0.5, 0.2, 0.0])
    assert uncertainty(sentences, "entropy", random.Random(0), per_word=True)[0] == pytest.approx(math.log(2) / 2)


def test_random_scores_are_seeded():
    pool = [[0.5, 0.5]] * 20
    first = uncertainty(pool, "random", random.Random(3))
    assert first == uncertainty(pool, "random", random.Random(3))
    assert first != uncertainty(pool, "random", random.Random(4))
    assert query(first, 5) == sorted(range(20), key=lambda k: -first[k])[:5]


def recipe(tmp_path, model, tasks, **active) -> dict:
    entries = write_task_files(tmp_path)
    return {"name": "al", "run_dir": str(tmp_path / "run"), "tasks": [entries[t] for t in tasks],
            "evaluate": {"seeds": [0], "epochs": 1, "batch_size": 8, "max_length": 24, "lr": 1e-3,
                         "models": [{"name": "tiny", "kind": "hf", "path": str(model)}, {"name": "tfidf", "kind": "tfidf"}],
                         "active_learning": {"start": 4, "batch": 3, "rounds": 2, "seeds": [0]} | active}}


@pytest.mark.parametrize("kind", ["classification", "token-classification"])
@pytest.mark.parametrize("strategy", ["entropy", "margin", "random"])
def test_two_rounds_label_start_plus_a_batch_each_and_never_an_example_twice(tiny_model, tmp_path, kind, strategy):  # noqa: F811
    config = config_from_dict(recipe(tmp_path, tiny_model, [kind]))
    task = load_task(config.tasks[0])
    run = active_learning_run(config.evaluate.models[0], task, strategy, 0, 1e-3, config)
    assert [r["labels"] for r in run["rounds"]] == [4, 7, 10]
    assert [len(r["queried"]) for r in run["rounds"]] == [3, 3, 0]
    labelled = run["labelled"]
    assert len(labelled) == len(set(labelled)) == 10 and all(0 <= i < len(task.train) for i in labelled)
    assert labelled[4:] == run["rounds"][0]["queried"] + run["rounds"][1]["queried"]
    assert all(len(r["predictions"]) == len(task.test) for r in run["rounds"])
    again = active_learning_run(config.evaluate.models[0], task, strategy, 0, 1e-3, config)
    assert again["labelled"] == labelled  # seeded: the same queries


def test_the_pool_running_out_ends_the_run(tiny_model, tmp_path):  # noqa: F811
    config = config_from_dict(recipe(tmp_path, tiny_model, ["classification"], start=30, batch=8, rounds=3))
    task = load_task(config.tasks[0])  # 32 training examples
    run = active_learning_run(config.evaluate.models[0], task, "margin", 0, 1e-3, config)
    assert [r["labels"] for r in run["rounds"]] == [30, 32]
    assert sorted(run["labelled"]) == list(range(32))


@pytest.mark.parametrize(("change", "message"), [
    ({"strategies": ["uncertainty"]}, "active_learning.strategies"),
    ({"start": 0}, "active_learning.start"),
    ({"seeds": [0, 0]}, "active_learning.seeds"),
    ({"models": ["tfidf"]}, "active_learning.models: 'tfidf' is a tfidf model"),
])
def test_config_errors_name_the_key(tiny_model, tmp_path, change, message):  # noqa: F811
    with pytest.raises(ConfigError, match=message):
        config_from_dict(recipe(tmp_path, tiny_model, ["classification"], **change))


@pytest.mark.slow
def test_the_stage_saves_round_rows_and_the_report_draws_them(tiny_model, tmp_path):  # noqa: F811
    from domainlm.evaluate import run as evaluate
    from domainlm.io import read_json
    from domainlm.layout import RunLayout
    from domainlm.report import run as report

    config = config_from_dict(recipe(tmp_path, tiny_model, ["classification", "multi-label"],
                                     strategies=["entropy", "random"], seeds=[0, 1]))
    evaluate(config, config.directory / "evaluate")
    layout = RunLayout(config.directory)
    rows = layout.active_rows()
    assert {(r["model"], r["task"], r["strategy"], r["seed"]) for r in rows} == {
        ("tiny", "classification", s, seed) for s in ("entropy", "random") for seed in (0, 1)}
    assert sorted({(r["round"], r["labels"]) for r in rows}) == [(0, 4), (1, 7), (2, 10)]
    assert not any("round" in r for r in layout.result_rows())
    skipped = read_json(layout.failures)["skipped"]
    assert any(s["task"] == "multi-label" and "active learning" in s["reason"] for s in skipped)
    report(config, config.directory / "report")
    results = read_json(config.directory / "report" / "results.json")
    points = results["active_learning"]["points"]
    assert len(points) == 2 * 3 and all(p["runs"] == 2 for p in points)
    assert (config.directory / "report" / "active_learning.png").stat().st_size > 0
    markdown = (config.directory / "report" / "report.md").read_text()
    assert "## Active learning" in markdown and "random sampling" in markdown

"""Learning curves (issue 22, few labels): nested subsamples, the curve's runs and rows, the report's
plot, section and label-saving sentences."""

import json
from collections import Counter

import pytest

from domainlm.config import TaskConfig, config_from_dict
from domainlm.layout import RunLayout
from domainlm.report.curves import label_saving
from domainlm.tasks.load import Task, load_task
from domainlm.tasks.subsample import NO_LABEL, curve_samples, nested_samples, subsampled
from test_evaluate import write_task_files

SIZES = [1, 2, 4, 8]


def _classes(task: Task, indices: list[int]) -> Counter:
    """How many of the examples at `indices` carry each class (the right answer's position for multiple choice)."""
    found = Counter()
    for i in indices:
        label = task.train[i]["label"]
        found.update([str(x) for x in label] or [NO_LABEL] if isinstance(label, list) else [str(label)])
    return found


@pytest.mark.parametrize("kind", ["classification", "multi-label", "pair-classification", "relation",
                                  "multiple-choice", "yes-no-qa", "token-classification", "regression"])
def test_samples_are_nested_hold_every_class_and_dev_is_no_larger(kind, tmp_path):
    task = load_task(TaskConfig(**write_task_files(tmp_path)[kind]))
    by_seed = {}
    for seed in (0, 1):
        samples = curve_samples(task, SIZES, seed)
        by_seed[seed] = samples
        assert [s.size for s in samples] == SIZES
        for small, large in zip(samples, samples[1:], strict=False):  # the k-sample inside the 2k-sample
            assert set(small.train) < set(large.train) or set(small.train) == set(large.train) == set(range(32))
            assert set(small.dev) <= set(large.dev)
        for sample in samples:
            assert 1 <= len(sample.dev) <= len(sample.train)
            assert len(set(sample.train)) == len(sample.train)
            if task.target in ("tags", "number"):  # sentences / examples in all
                assert len(sample.train) == sample.size
                continue
            counts, everything = _classes(task, sample.train), _classes(task, range(len(task.train)))
            assert set(counts) == set(everything)  # every class present
            for name, available in everything.items():
                assert counts[name] >= min(sample.size, available)
                if task.target != "classes":  # one class per example: exactly k, or all there are
                    assert counts[name] == min(sample.size, available)
            assert sample.short == {name: n for name, n in counts.items() if n < sample.size}
    assert [s.train for s in by_seed[0]] != [s.train for s in by_seed[1]]  # another seed, another sample
    assert curve_samples(task, SIZES, 0) == by_seed[0]  # seeded


def test_a_class_with_fewer_examples_than_k_gives_all_it_has_and_says_so():
    train = [{"text": f"a{i}", "label": "common"} for i in range(10)] + [{"text": "r", "label": "rare"}] * 2
    dev = [{"text": f"d{i}", "label": "common"} for i in range(9)] + [{"text": "dr", "label": "rare"}] * 9
    task = Task("t", "classification", train, dev, train[:2], ["common", "rare"])
    two, four = curve_samples(task, [2, 4], seed=3)
    assert Counter(train[i]["label"] for i in four.train) == {"common": 4, "rare": 2}
    assert (two.short, four.short) == ({}, {"rare": 2})
    assert (len(two.dev), len(four.dev)) == (4, 6) and four.dev_cut == 2  # 8 dev drawn, cut to the train's 6
    assert set(two.dev) <= set(four.dev)
    small = subsampled(task, four)
    assert (len(small.train), len(small.dev), small.test, small.labels) == (6, 6, task.test, task.labels)
    assert "learning curve: 4 labels per class (subsample seed 3): train 6, dev 6" in small.notes


def test_token_task_sentences_are_a_seeded_prefix():
    sentences = [{"tokens": [f"w{i}"], "tags": ["O"]} for i in range(20)]
    order = nested_samples(sentences, "tags", [3, 6, 12, 40], seed=5)
    assert [len(s) for s in order] == [3, 6, 12, 20]
    assert all(order[i] == order[i + 1][: len(order[i])] for i in range(3))  # each a prefix of the next


# ------------------------------------------------------------------------------- label saving
def _point(model, size, mean, low=None, high=None, task="chem"):
    return {"task": task, "model": model, "size": size, "mean": mean, "low": mean - 0.03 if low is None else low,
            "high": mean + 0.03 if high is None else high}


POINTS = [_point("domain", 8, 0.40), _point("domain", 16, 0.52), _point("domain", 32, 0.61, 0.58, 0.64),
          _point("domain", 64, 0.66), _point("domain", None, 0.70),
          _point("general", 8, 0.35), _point("general", 16, 0.45), _point("general", 32, 0.50),
          _point("general", 64, 0.55, 0.50, 0.60), _point("general", None, 0.60, 0.58, 0.62)]


def test_label_saving_names_the_smallest_size_that_reaches_the_others_full_score():
    found = label_saving("chem", "domain", "general", POINTS, "labels per class", 4169)
    assert found["size"] == 32 and found["other_size"] is None
    assert found["sentence"] == ("On chem, domain reaches with 32 labels per class the score general reaches with "
                                 "all 4,169 (0.61 [0.58, 0.64] vs 0.60 [0.58, 0.62]).")


def test_a_model_that_never_reaches_the_others_score_is_said_plainly():
    found = label_saving("chem", "general", "domain", POINTS, "labels per class", 4169)
    assert found["size"] is None
    assert found["sentence"] == ("On chem, general never reaches the score domain reaches with all 4,169 "
                                 "(0.70 [0.67, 0.73]): its best, with 64 labels per class, is 0.55 [0.50, 0.60].")


def test_without_the_full_split_the_target_is_the_others_largest_size():
    found = label_saving("chem", "domain", "general", POINTS, "sentences", 4169, include_full=False)
    assert (found["size"], found["other_size"]) == (32, 64)  # 0.61 >= general's 0.55 at 64; 0.52 at 16 is not
    assert "reaches with 32 sentences the score general reaches with 64 sentences" in found["sentence"]
    assert label_saving("chem", "domain", "nobody", POINTS, "sentences", 10) is None


# ------------------------------------------------------------------------- evaluate and report
def _recipe(tmp_path, learning_curve=None) -> dict:
    entries = write_task_files(tmp_path)
    evaluate = {"seeds": [0, 1], "models": [{"name": "tfidf", "kind": "tfidf"}, {"name": "tfidf-b", "kind": "tfidf"}]}
    if learning_curve:
        evaluate["learning_curve"] = learning_curve
    return {"name": "curve", "run_dir": str(tmp_path / ("curve" if learning_curve else "plain")),
            "tasks": [entries["classification"], entries["token-classification"]], "evaluate": evaluate}


@pytest.mark.slow  # the evaluate and report stages end to end
def test_curve_rows_are_written_read_back_and_reported_beside_unchanged_full_results(tmp_path):
    from domainlm.pipeline import run_all

    plain = config_from_dict(_recipe(tmp_path))
    config = config_from_dict(_recipe(tmp_path, {"sizes": [4, 2], "seeds": [0, 1]}))
    assert run_all(plain) == run_all(config) == ["evaluate", "report"]
    layout, plain_layout = RunLayout(config.directory), RunLayout(plain.directory)
    assert layout.result_rows() == plain_layout.result_rows()  # the full-data results as without a curve
    assert not plain_layout.curve_rows() and not plain_layout.learning_curve.exists()

    rows = layout.curve_rows()
    curve = json.loads(layout.learning_curve.read_text())
    samples = {(t, s["size"], s["subsample_seed"]): s for t, about in curve["tasks"].items() for s in about["samples"]}
    assert {(r["model"], r["task"], r["size"], r["subsample_seed"], r["seed"]) for r in rows} == {
        (m, t, k, s, seed) for m in ("tfidf", "tfidf-b") for t in ("classification", "token-classification")
        for k in (2, 4) for s in (0, 1) for seed in (0, 1)}
    for r in rows:
        assert r["train_examples"] == samples[(r["task"], r["size"], r["subsample_seed"])]["train"]
    assert {s["train"] for (t, k, _), s in samples.items() if t == "token-classification"} == {2, 4}  # sentences
    assert curve["tasks"]["classification"]["unit"] == "labels per class"
    point = layout.curve_point_runs("tfidf", "classification", 4)
    assert len(point) == 4 and all(r["size"] == 4 and len(r["predictions"]) == 12 for r in point)
    run = json.loads(layout.curve_run_file("tfidf", "classification", 2, 1, 0.0, 0).read_text())
    assert run["dev_examples"] <= run["train_examples"] == samples[("classification", 2, 1)]["train"]

    files = layout.report_files
    assert files.plot("learning_curves").stat().st_size > 0 and not plain_layout.report_files.plot(
        "learning_curves").exists()
    markdown = files.markdown.read_text()
    assert "## Learning curves" in markdown and "(learning_curves.png)" in markdown
    assert "## Learning curves" not in plain_layout.report_files.markdown.read_text()
    assert "data:image/png;base64" in files.html.read_text().split("<h2>Learning curves</h2>")[1].split("<h2>")[0]
    results = json.loads(files.results.read_text())
    assert "learning_curves" not in json.loads(plain_layout.report_files.results.read_text())
    points = results["learning_curves"]["points"]
    assert {(p["task"], p["model"], p["size"]) for p in points} == {
        (t, m, k) for t in ("classification", "token-classification") for m in ("tfidf", "tfidf-b")
        for k in (2, 4, None)}
    for p in points:
        assert p["low"] <= p["mean"] <= p["high"] and p["runs"] == (2 if p["size"] is None else 4)
    full = {(s["task"], s["model"]): s["mean"] for s in results["summary"]}
    assert all(p["mean"] == pytest.approx(full[(p["task"], p["model"])]) for p in points if p["size"] is None)
    savings = results["learning_curves"]["label_saving"]
    assert len(savings) == 4 and all(s["sentence"] in markdown for s in savings)  # 2 tasks x 2 ordered pairs


def test_min_steps_gives_small_samples_more_epochs_and_patience_and_leaves_the_rest_alone(tmp_path):
    from domainlm.evaluate import Job, with_min_steps

    recipe = _recipe(tmp_path, {"sizes": [2, 8], "seeds": [0], "min_steps": 20})
    recipe["evaluate"] |= {"epochs": 3, "patience": 2, "batch_size": 4}
    config = config_from_dict(recipe)
    task = load_task(config.tasks[0])
    entry = config.evaluate.models[0]
    small, large = curve_samples(task, [2, 8], 0)  # 4 and 16 examples: 1 and 4 steps per epoch
    assert (len(small.train), len(large.train)) == (4, 16)
    job = lambda sample: Job(entry, subsampled(task, sample), 1e-4, 0, (sample.size, sample.seed))  # noqa: E731
    tuned = with_min_steps(config, job(small)).evaluate
    assert (tuned.epochs, tuned.patience) == (20, 14)  # 20 steps of one; patience 2 x 20 / 3, rounded up
    tuned = with_min_steps(config, job(large)).evaluate
    assert (tuned.epochs, tuned.patience) == (5, 4)  # ceil(20 / 4) epochs
    assert with_min_steps(config, Job(entry, task, 1e-4, 0)) is config  # full-data runs keep evaluate.epochs
    recipe["evaluate"]["learning_curve"]["min_steps"] = 3
    assert with_min_steps(config_from_dict(recipe), job(large)).evaluate.epochs == 3  # already enough steps
    assert config.evaluate.epochs == 3  # the run's own config is untouched


def test_a_run_that_fails_on_a_tiny_sample_leaves_out_that_point_not_the_model(tmp_path, monkeypatch):
    import domainlm.evaluate as evaluate
    from domainlm.io import read_json

    real = evaluate.evaluate_one

    def fails_below_five_examples(entry, task, *args, **kwargs):
        if len(task.train) < 5:
            raise ValueError("too few examples")
        return real(entry, task, *args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_one", fails_below_five_examples)
    recipe = _recipe(tmp_path, {"sizes": [2, 8], "seeds": [0]})
    recipe["tasks"] = recipe["tasks"][:1]  # classification: 2 per class = 4 examples, 8 per class = 16
    config = config_from_dict(recipe)
    evaluate.run(config, config.directory / "evaluate")
    layout = RunLayout(config.directory)
    assert {(r["model"], r["seed"]) for r in layout.result_rows()} == {(m, s) for m in ("tfidf", "tfidf-b") for s in (0, 1)}
    assert {(r["model"], r["size"]) for r in layout.curve_rows()} == {("tfidf", 8), ("tfidf-b", 8)}
    failed = read_json(layout.failures)["failed"]
    assert [(f["model"], f["error"]) for f in failed] == [
        (m, "learning curve: 1 sample left out, a run failed (first: size 2, subsample seed 0: ValueError: too few "
            "examples)") for m in ("tfidf", "tfidf-b")]


def test_a_model_keeps_its_colour_in_every_panel_of_the_curve_plot(tmp_path, monkeypatch):
    import domainlm.report.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    point = {"low": 0.1, "mean": 0.2, "high": 0.3}
    points = [{"task": "a", "model": m, "size": 8} | point for m in ("first", "second", "third")]
    points += [{"task": "b", "model": m, "size": 8} | point for m in ("first", "third")]  # no "second" here
    assert plots.plot_learning_curves(points, [{"name": "a", "metric": "m"}, {"name": "b", "metric": "m"}],
                                      {}, tmp_path / "curves.png")
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in figures[0].axes[:2]]
    assert colours[0]["third"] == colours[1]["third"] and colours[0]["first"] == colours[1]["first"]
    assert len(set(colours[0].values())) == 3


def test_with_many_models_the_report_shows_the_savings_and_counts_the_pairs_that_never_reach():
    from domainlm.report.sections import SAVINGS_IN_FULL, _savings_text

    few = [{"task": "t", "size": None, "sentence": f"never {i}."} for i in range(SAVINGS_IN_FULL)]
    assert _savings_text(few) == " " + " ".join(s["sentence"] for s in few)  # every sentence while few
    many = few + [{"task": "t", "size": 8, "sentence": "reaches."}, {"task": "u", "size": None, "sentence": "no."}]
    text = _savings_text(many)
    assert "reaches." in text and "never 0." not in text and "no." in text
    assert f"On t, in {SAVINGS_IN_FULL} more ordered pairs the first model never reaches" in text

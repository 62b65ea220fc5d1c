"""SetFit (evaluate/setfit.py): the contrastive pairs, the head, a run on a separable toy task with
a tiny local encoder, the task types it refuses, and the evaluate stage with a setfit row."""

import json
import random
from collections import Counter

import numpy as np
import pytest

from domainlm.config import EvaluateConfig, TaskConfig, config_from_dict
from domainlm.errors import UnsupportedTask
from domainlm.evaluate.setfit import contrastive_pairs, fit_head, pooling_mode, setfit_run
from domainlm.tasks.load import load_task
from test_evaluate import tiny_model  # noqa: F401 - a fixture

FIRST, SECOND = "protein kinase binds receptor cell gene".split(), "tumor patient therapy dose enzyme inhibitor".split()


def toy_task(folder, train: int = 8, test: int = 20):
    """Two classes told apart by their words alone (train/dev per class: `train`; test: `test` in all)."""
    rng = random.Random(3)
    paths = {}
    for split, n in (("train", 2 * train), ("dev", 2 * train), ("test", test)):
        paths[split] = str(folder / f"toy-{split}.jsonl")
        with open(paths[split], "w") as handle:
            for i in range(n):
                label, words = ("bio", FIRST) if i % 2 == 0 else ("clinic", SECOND)
                handle.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(6)), "label": label}) + "\n")
    return load_task(TaskConfig(name="toy", type="classification", format="jsonl", **paths))


def test_every_example_gets_one_positive_and_one_negative_pair_per_iteration():
    labels = ["a", "a", "a", "b", "b", "c", "c"]
    pairs = contrastive_pairs(labels, iterations=3, seed=0)
    assert len(pairs) == 2 * 3 * len(labels) == 42
    positives = [(i, j) for i, j, t in pairs if t == 1.0]
    negatives = [(i, j) for i, j, t in pairs if t == 0.0]
    assert len(positives) == len(negatives) == 21  # balanced
    assert all(labels[i] == labels[j] and i != j for i, j in positives)
    assert all(labels[i] != labels[j] for i, j in negatives)
    assert Counter(i for i, _ in positives) == Counter(i for i, _ in negatives) == Counter(dict.fromkeys(range(7), 3))
    assert contrastive_pairs(labels, 3, seed=0) == pairs and contrastive_pairs(labels, 3, seed=1) != pairs


def test_an_example_alone_in_its_class_gets_no_positive_pair():
    pairs = contrastive_pairs(["a", "a", "b"], iterations=2, seed=0)
    assert len(pairs) == 2 * (2 + 2 + 1)
    assert [t for i, _, t in pairs if i == 2] == [0.0, 0.0]


def test_one_class_gives_positives_only_and_a_head_that_predicts_it():
    pairs = contrastive_pairs(["a", "a"], iterations=2, seed=0)
    assert pairs == [(0, 1, 1.0), (1, 0, 1.0), (0, 1, 1.0), (1, 0, 1.0)]
    head = fit_head(np.zeros((2, 4)), ["a", "a"], ["b", "a"], seed=0)
    assert head(np.zeros((3, 4))).tolist() == [[0.0, 1.0]] * 3


def test_the_head_maps_scikit_learns_class_order_to_the_tasks():
    features = np.array([[1.0, 0.0], [1.1, 0.0], [0.0, 1.0], [0.0, 1.2]])
    head = fit_head(features, ["z", "z", "a", "a"], ["z", "a", "unseen"], seed=0)
    probabilities = head(np.array([[2.0, 0.0], [0.0, 2.0]]))
    assert probabilities.argmax(1).tolist() == [0, 1]  # z, a in the task's order
    assert probabilities[:, 2].tolist() == [0.0, 0.0]  # a class no training example has
    np.testing.assert_allclose(probabilities.sum(1), 1.0)


def test_pooling_follows_a_sentence_transformers_directory(tmp_path):
    assert pooling_mode(tmp_path) == "mean"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                    "pooling_mode_mean_tokens": False}))
    assert pooling_mode(tmp_path) == "cls"


def test_setfit_learns_a_separable_toy_task_and_predicts_every_test_example(tiny_model, tmp_path):  # noqa: F811
    task = toy_task(tmp_path)
    config = EvaluateConfig(batch_size=16, max_length=16, lr=1e-3)
    result = setfit_run("sf", tiny_model, task, seed=0, lr=1e-3, config=config, pair_iterations=4)
    assert len(result["predictions"]) == len(result["probabilities"]) == len(task.test) == 20
    assert result["pairs"] == 2 * 4 * 16
    np.testing.assert_allclose(np.sum(result["probabilities"], 1), 1.0, atol=1e-5)
    assert result["metrics"]["accuracy"] >= 0.9  # chance: 0.5
    assert result["dev_score"] >= 0.9
    again = setfit_run("sf", tiny_model, task, seed=0, lr=1e-3, config=config, pair_iterations=4)
    assert again["predictions"] == result["predictions"] and again["pair_loss"] == result["pair_loss"]


def test_setfit_runs_on_pairs_and_refuses_tasks_without_one_class(tiny_model, tmp_path):  # noqa: F811
    from test_evaluate import write_task_files

    entries = write_task_files(tmp_path)
    config = EvaluateConfig(batch_size=16, max_length=24, lr=1e-3)
    pair = load_task(TaskConfig(**entries["pair-classification"]))
    result = setfit_run("sf", tiny_model, pair, seed=0, lr=1e-3, config=config, pair_iterations=1)
    assert len(result["predictions"]) == len(pair.test) and set(result["predictions"]) <= set(pair.labels)
    for kind in ("token-classification", "multi-label", "regression", "multiple-choice"):
        with pytest.raises(UnsupportedTask, match=f"setfit model 'sf' cannot run task '{kind}' of type {kind}.*"
                                                  "classification, pair-classification, relation, yes-no-qa"):
            setfit_run("sf", tiny_model, load_task(TaskConfig(**entries[kind])), 0, 1e-3, config)


def test_a_setfit_model_needs_a_path_that_exists(tmp_path):
    from domainlm.errors import ConfigError

    base = {"name": "t", "run_dir": str(tmp_path / "run"), "tasks": [], "evaluate": {"models": []}}
    with pytest.raises(ConfigError, match="model 'sf' \\(kind setfit\\) needs a `path`"):
        config_from_dict(base | {"evaluate": {"models": [{"name": "sf", "kind": "setfit"}]}})
    with pytest.raises(ConfigError, match="model 'sf' directory not found"):
        config_from_dict(base | {"evaluate": {"models": [{"name": "sf", "kind": "setfit", "path": str(tmp_path / "x")}]}})


@pytest.mark.slow
def test_the_evaluate_stage_gives_a_setfit_row_and_skips_token_tasks(tiny_model, tmp_path):  # noqa: F811
    from domainlm.evaluate import run
    from domainlm.io import read_json, read_jsonl

    task = toy_task(tmp_path)
    ner = tmp_path / "ner.tsv"
    ner.write_text("protein\tB-X\nbinds\tO\n\n")
    config = config_from_dict({
        "name": "t", "run_dir": str(tmp_path / "run"),
        "tasks": [{"name": "toy", "type": "classification", "format": "jsonl",
                   **{s: str(tmp_path / f"toy-{s}.jsonl") for s in ("train", "dev", "test")}},
                  {"name": "ner", "type": "token-classification", "format": "conll", "train": str(ner),
                   "dev": str(ner), "test": str(ner)}],
        "evaluate": {"seeds": [0, 1], "batch_size": 16, "max_length": 16, "lr": 1e-3,
                     "models": [{"name": "sf", "kind": "setfit", "path": str(tiny_model), "pair_iterations": 2},
                                {"name": "tfidf", "kind": "tfidf"}]}})
    run(config, config.directory / "evaluate")
    rows = [r for r in read_jsonl(config.directory / "evaluate" / "results.jsonl") if r["model"] == "sf"]
    assert {(r["task"], r["seed"]) for r in rows} == {("toy", 0), ("toy", 1)}
    assert all(r["value"] >= 0.9 for r in rows if r["metric"] == "accuracy")
    skipped = read_json(config.directory / "evaluate" / "failures.json")["skipped"]
    assert [(s["model"], s["task"]) for s in skipped] == [("sf", "ner")]
    assert len(task.test) == 20

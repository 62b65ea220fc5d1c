"""The real-domain recipe at a reduced size; skipped when ../shared/data is absent."""

import json

import pytest

from conftest import REPO, SHARED_DATA
from domainlm.config import load_config
from domainlm.pipeline import run_all

pytestmark = [pytest.mark.shared_data, pytest.mark.slow,
              pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data")]


def test_biomed_small_runs_end_to_end_on_real_formats(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "recipes" / "biomed-small.yaml", [
        f"run_dir={tmp_path / 'run'}", "corpus.sources.0.max_docs=3000", "tokenizer.vocab_size=2000",
        "pretrain.max_steps=8", "pretrain.checkpoint_every=4", "evaluate.seeds=[0]", "evaluate.epochs=1",
        "tasks.0.max_train_examples=150", "tasks.0.max_eval_examples=100",
        "tasks.1.max_train_examples=150", "tasks.1.max_eval_examples=100",
    ])
    run_all(config)
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    rows = results["rows"]
    for task, metric in (("ncbi-disease", "entity_f1"), ("chemprot", "micro_f1")):
        assert {r["model"] for r in rows if r["task"] == task and r["metric"] == metric} == {
            "domain", "random-init", "tfidf"}
    stats = results["corpus"]
    assert stats["read"] == 3000 == stats["kept"] + sum(stats["dropped"].values())
    tasks = json.loads((tmp_path / "run" / "evaluate" / "tasks.json").read_text())
    assert len(next(t for t in tasks if t["name"] == "chemprot")["labels"]) == 13
    assert next(t for t in tasks if t["name"] == "ncbi-disease")["labels"] == ["B-Disease", "I-Disease", "O"]


def test_biomed_eval_reads_all_four_tasks_and_reports(tmp_path, monkeypatch):
    """The evaluation recipe's mapping on the four real task formats (CoNLL, JSONL with entity
    markers, TSV with comment lines, one JSON object with id lists), at a tiny size."""
    monkeypatch.chdir(REPO)
    sizes = [f"tasks.{i}.max_train_examples=60" for i in range(4)] + \
            [f"tasks.{i}.max_eval_examples=40" for i in range(4)]
    config = load_config(REPO / "recipes" / "biomed-eval.yaml", [
        f"run_dir={tmp_path / 'run'}", "corpus.sources.0.max_docs=2000", "tokenizer.vocab_size=2000",
        "pretrain.max_steps=6", "pretrain.checkpoint_every=3", "evaluate.seeds=[0]", "evaluate.epochs=1",
        "evaluate.max_length=48", "tasks.3.max_length=64", *sizes,
    ])
    run_all(config)
    results = json.loads((tmp_path / "run" / "report" / "results.json").read_text())
    metrics = {(r["model"], r["task"], r["metric"]) for r in results["rows"]}
    for task, metric in (("ncbi-disease", "entity_f1"), ("chemprot", "micro_f1"), ("piboso", "micro_f1"),
                         ("pubmedqa", "accuracy")):
        assert {m for m, t, k in metrics if t == task and k == metric} == {"minilm", "domain", "tfidf"}
    # every model against the reference model (minilm) and against TF-IDF
    assert {(r["task"], r["model"], r["reference"]) for r in results["intervals"]} == {
        (t, m, reference) for t in ("ncbi-disease", "chemprot", "piboso", "pubmedqa")
        for reference in ("minilm", "tfidf") for m in {"domain", "minilm", "tfidf"} - {reference}}
    distance = results["distance"]["tasks"]
    assert set(distance) == {"ncbi-disease", "chemprot", "piboso", "pubmedqa"}
    assert all(d["fertility"] > 1 and 0 < d["js_divergence"] < 1 for d in distance.values())
    tasks = {t["name"]: t for t in json.loads((tmp_path / "run" / "evaluate" / "tasks.json").read_text())}
    assert tasks["pubmedqa"]["labels"] == ["maybe", "no", "yes"] and tasks["piboso"]["labels"][0] == "background"
    assert "minilm" in results["verdict"] and "Suite score" in results["verdict"]

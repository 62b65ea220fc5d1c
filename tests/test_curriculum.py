"""Data-order curricula (`pretrain.curriculum`): difficulty scores, pacing, determinism, exact resume."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from domainlm.config import PretrainConfig, config_from_dict
from domainlm.errors import ConfigError
from domainlm.pretrain import export_model, inputs
from domainlm.pretrain.architectures import new_model
from domainlm.pretrain.bert import BertConfig
from domainlm.pretrain.data import TokenShards, epoch_order
from domainlm.pretrain.difficulty import document_difficulty, loss_scores, rarity_scores
from domainlm.pretrain.plan import DataPlan, competence, curriculum_steps
from domainlm.tokenizer import save_for_transformers
from test_engine import _run_worker, _spec

SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 32}


def _config(**overrides) -> PretrainConfig:
    base = {"max_steps": 20, "batch_size": 4, "seq_len": 32, "lr": 1e-3}
    return PretrainConfig(**{**base, **overrides})


def _documents(shards: TokenShards, packing, rows) -> np.ndarray:
    """The documents the segments of `rows` come from."""
    segments = np.concatenate([np.arange(packing.row_ptr[r], packing.row_ptr[r + 1]) for r in rows])
    return np.searchsorted(shards.offsets, packing.seg_start[segments], side="right") - 1


def _rows(plan: DataPlan, step: int) -> list[list[int]]:
    return [rows.tolist() for _, rows in plan.rows(step)]


# ------------------------------------------------------------------------------- determinism
def test_same_seed_same_rows_other_seed_other_rows(shards):
    config = _config(curriculum="easy-first", mixture={"domain": 1.0, "general": 1.0})
    first, second, other = DataPlan(shards, config, seed=0), DataPlan(shards, config, seed=0), DataPlan(shards, config, seed=1)
    assert all(_rows(first, s) == _rows(second, s) for s in range(config.max_steps))
    assert any(_rows(first, s) != _rows(other, s) for s in range(config.max_steps))
    fresh = DataPlan(shards, config, seed=0)  # a resumed run asks for a late step first
    assert _rows(fresh, 13) == _rows(first, 13)


def test_no_curriculum_reads_the_epoch_permutations_as_before(shards):
    plan = DataPlan(shards, _config(max_steps=60), seed=3)
    assert plan.difficulty is None and plan.curriculum_steps == 0
    packing = shards.pack(32)  # corpus order, as before curricula existed
    assert np.array_equal(plan.packing(0).row_ptr, packing.row_ptr)
    assert np.array_equal(plan.packing(0).seg_start, packing.seg_start)
    n = len(packing)
    order = np.concatenate([epoch_order(n, 3, epoch, 0) for epoch in range(60 * 4 // n + 1)])
    read = np.concatenate([rows for step in range(60) for _, rows in plan.rows(step)])
    assert np.array_equal(read, order[: len(read)])
    # The difficulty settings change nothing while curriculum is none.
    rarity = DataPlan(shards, _config(max_steps=60, difficulty="rarity"), seed=3)
    assert all(_rows(rarity, s) == _rows(plan, s) for s in range(60))


# ------------------------------------------------------------------------------- pacing
@pytest.mark.parametrize("curriculum", ["easy-first", "hard-first"])
def test_the_first_steps_read_only_the_easiest_or_hardest_documents(shards, curriculum):
    config = _config(curriculum=curriculum, curriculum_start=0.25, curriculum_fraction=0.5)
    plan = DataPlan(shards, config, seed=0)
    lengths = np.diff(shards.offsets)
    packing = plan.packing(0)
    n = len(packing)
    for step in (0, 1):
        readable = math.ceil(plan.competence[step] * n - 1e-9)  # step 0: curriculum_start of the rows
        kept = np.arange(readable) if curriculum == "easy-first" else np.arange(n - readable, n)
        others = np.setdiff1d(_documents(shards, packing, np.setdiff1d(np.arange(n), kept)),
                              _documents(shards, packing, kept))
        (read_packing, rows), = plan.rows(step)
        assert set(rows.tolist()) <= set(kept.tolist())
        read = lengths[_documents(shards, read_packing, rows)]
        if curriculum == "easy-first":
            assert read.max() <= lengths[others].min()
        else:
            assert read.min() >= lengths[others].max()
    # The readable share grows (square root pacing) and every row is readable after the curriculum.
    share = competence(config)
    assert share[0] == pytest.approx(0.25) and (np.diff(share) >= 0).all()
    assert (share[curriculum_steps(config) :] == 1).all() and (share[: curriculum_steps(config)] < 1).all()
    late = {r for step in range(curriculum_steps(config), config.max_steps) for r in _rows(plan, step)[0]}
    start = math.ceil(0.25 * n)
    assert max(late) >= n - start and min(late) < start  # both ends of the ranking


def test_cyclical_share_shrinks_again_after_each_peak(shards):
    config = _config(max_steps=40, curriculum="cyclical", curriculum_start=0.2, curriculum_fraction=0.5,
                     curriculum_cycles=2)
    share = competence(config)
    assert curriculum_steps(config) == 20
    assert share[0] == pytest.approx(0.2) and share[5] == pytest.approx(1.0)  # first peak, a quarter in
    assert share[10] == pytest.approx(0.2) and share[15] == pytest.approx(1.0)  # back down, up again
    assert (share[20:] == 1).all()
    plan = DataPlan(shards, config, seed=0)
    n = len(plan.packing(0))
    assert max(_rows(plan, 10)[0]) < math.ceil(0.2 * n)  # the trough reads the easy end only


def test_each_stream_gets_the_curriculum_within_itself(shards):
    config = _config(curriculum="easy-first", curriculum_start=0.3, mixture={"domain": 1.0, "general": 1.0},
                     short_seq_len=16, short_seq_fraction=0.2, batch_size_start=2, batch_warmup_fraction=0.3)
    plan = DataPlan(shards, config, seed=0)
    lengths = np.diff(shards.offsets)
    for step in (0, 3, 5):
        for packing, rows in plan.rows(step):
            docs = _documents(shards, packing, rows)
            source = shards.sources[docs[0]]
            assert (shards.sources[docs] == source).all()
            readable = math.ceil(plan.competence[step] * len(packing) - 1e-9)
            assert rows.max() < readable
            # The stream's documents only in rows past the readable ones are at least as long.
            rest = np.setdiff1d(_documents(shards, packing, np.arange(readable, len(packing))),
                                _documents(shards, packing, np.arange(readable)))
            assert len(rest) and lengths[docs].max() <= lengths[rest].min()
            assert packing.seq_len == plan.seq_len(step)


# ------------------------------------------------------------------------------- scores
def test_rarity_ranks_rare_tokens_above_common_ones():
    common, rare = [7, 8, 7, 8, 7], [40, 41]
    docs = [np.array(common)] * 5 + [np.array(rare), np.array([7, 40])]
    tokens = np.concatenate(docs).astype(np.uint16)
    shards = TokenShards(tokens, np.cumsum([0] + [len(d) for d in docs]), np.zeros(len(docs), np.int16), ["a"],
                         {"cls": 2, "sep": 3, "pad": 0})
    scores = rarity_scores(shards)
    total = len(tokens)
    assert scores[0] == pytest.approx(-(3 * np.log(16 / total) + 2 * np.log(10 / total)) / 5)
    assert scores[5] > scores[6] > scores[0]


def test_rarity_scores_are_cached_with_the_shards(shards, monkeypatch):
    config = _config(curriculum="easy-first", difficulty="rarity")
    scores = document_difficulty(shards, config)
    assert (shards.folder / "difficulty-rarity.npy").exists() and scores.shape == (shards.num_docs,)

    def recompute(*_):
        raise AssertionError("scores recomputed")

    monkeypatch.setattr("domainlm.pretrain.difficulty.rarity_scores", recompute)
    assert np.array_equal(document_difficulty(shards, config), scores)


@pytest.fixture(scope="module")
def scorer(tokenizer, tmp_path_factory) -> Path:
    """A tiny untrained masked LM of the shards' vocabulary, exported as a transformers directory."""
    folder = tmp_path_factory.mktemp("scorer")
    torch.manual_seed(0)
    model = new_model(BertConfig(vocab_size=tokenizer.get_vocab_size(), dropout=0.0, **SMALL))
    save_for_transformers(tokenizer, folder / "tokenizer")
    export_model(model, folder / "tokenizer", folder / "model")
    return folder / "model"


def test_loss_scores_are_computed_once_and_cached(tokenizer, shards, scorer, monkeypatch):
    vocab_size = tokenizer.get_vocab_size()
    config = _config(curriculum="easy-first", difficulty="loss", difficulty_model=str(scorer))
    rng_before = torch.get_rng_state()
    scores = document_difficulty(shards, config, vocab_size=vocab_size)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG (dropout's) is left alone
    assert scores.shape == (shards.num_docs,) and np.isfinite(scores).all() and (scores > 0).all()
    assert np.allclose(scores, np.log(vocab_size), rtol=0.5)  # an untrained model: about uniform over the vocabulary
    assert len(list(shards.folder.glob("difficulty-loss-*.npy"))) == 1

    def recompute(*_):
        raise AssertionError("scores recomputed")

    monkeypatch.setattr("domainlm.pretrain.difficulty.loss_scores", recompute)
    assert np.array_equal(document_difficulty(shards, config, vocab_size=vocab_size), scores)
    plan = DataPlan(shards, config, seed=0)  # the plan reads the cache too
    assert np.array_equal(plan.difficulty, scores)


def test_loss_scorer_with_another_vocabulary_fails_in_one_line(tokenizer, shards, scorer):
    with pytest.raises(ConfigError, match=f"vocabulary of {tokenizer.get_vocab_size()} tokens, not") as error:
        loss_scores(shards, scorer, 32, vocab_size=300)
    assert "\n" not in str(error.value)


def test_curriculum_keys_are_validated(scorer):
    with pytest.raises(ValidationError, match="difficulty_model"):
        PretrainConfig(difficulty="loss")
    with pytest.raises(ValidationError, match="difficulty: loss"):
        PretrainConfig(difficulty="rarity", difficulty_model=str(scorer))
    with pytest.raises(ValidationError, match="file not found"):
        PretrainConfig(difficulty="loss", difficulty_model="/no/such/model")
    for bad in ({"curriculum_start": 0}, {"curriculum_fraction": 1.5}, {"curriculum_cycles": 0},
                {"curriculum": "random"}):
        with pytest.raises(ValidationError):
            PretrainConfig(**bad)


# ------------------------------------------------------------------------------- kill and resume
@pytest.mark.slow
def test_sigkill_during_a_curriculum_then_resume_is_bit_exact(tokenizer, shards, tmp_path):
    shards_dir = tmp_path / "shards"  # a copy: the runs cache their rarity scores in it
    shutil.copytree(shards.folder, shards_dir, ignore=shutil.ignore_patterns("difficulty-*"))
    settings = {"curriculum": "cyclical", "difficulty": "rarity", "curriculum_fraction": 0.75,
                "mixture": {"domain": 1.0, "general": 1.0}}
    straight = _spec(tokenizer, shards_dir, tmp_path / "straight", **settings)
    assert _run_worker(straight, tmp_path / "straight").returncode == 0
    kill_at = 7  # between the checkpoints of steps 6 and 9, inside the curriculum (steps 0-8)
    killed = _spec(tokenizer, shards_dir, tmp_path / "killed", **settings)
    result = _run_worker({**killed, "kill_at": kill_at}, tmp_path / "killed")
    assert result.returncode == -9, result.stderr[-2000:]
    resumed = _run_worker(killed, tmp_path / "killed")
    assert resumed.returncode == 0 and "resumed from step-00000006" in resumed.stderr, resumed.stderr[-2000:]
    losses = json.loads((tmp_path / "killed" / "out.json").read_text())["losses"]
    expected = json.loads((tmp_path / "straight" / "out.json").read_text())["losses"]
    assert losses == expected  # bit for bit, dropout on, fp32 CPU


def test_the_scorer_is_an_input_of_the_pretrain_stage(tiny_recipe, scorer):
    tiny_recipe["pretrain"] |= {"curriculum": "easy-first", "difficulty": "loss", "difficulty_model": str(scorer)}
    assert str(scorer) in inputs(config_from_dict(tiny_recipe))

"""The static-shape step (CPU proxies for the GPU work): fixed-capacity masked positions, no host wait
inside a step, the whole forward + loss + backward compiled as one graph without recompiles, the
same losses as the eager reference, exact resume."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from conftest import synthetic_texts
from domainlm.config import PretrainConfig
from domainlm.errors import ConfigError, TrainingDiverged
from domainlm.pretrain.attention import document_attention
from domainlm.pretrain.bert import Bert, BertConfig
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.encoder import MaskedTargets, masked_capacity
from domainlm.pretrain.trainer import Trainer
from test_golden import GOLDEN

MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 32,
         "dropout": 0.1}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(GOLDEN / "tokenizer.json"))


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    docs = ((t, "domain" if i % 3 else "general") for i, t in enumerate(synthetic_texts(200, seed=4)))
    return write_token_shards(tokenizer, docs, tmp_path_factory.mktemp("static") / "shards")


def trainer(tokenizer, shards, folder, **settings) -> Trainer:
    base = {"max_steps": 20, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "checkpoint_every": 100, "log_every": 5}
    config = PretrainConfig(**{**base, **settings})
    return Trainer(BertConfig(vocab_size=tokenizer.get_vocab_size(), **MODEL), config, shards, tokenizer, folder)


OBJECTIVES = [{"masking": "whole-word"}, {"masking": "token", "mask_rate": 0.3}, {"masking": "span"},
              {"objective": "electra"}, {"micro_batch_size": 2}]


@pytest.mark.parametrize("settings", OBJECTIVES, ids=lambda s: "-".join(map(str, s.values())))
def test_static_steps_give_the_eager_losses(tokenizer, shards, tmp_path, settings):
    eager = trainer(tokenizer, shards, tmp_path / "eager", **settings)
    eager.train()
    static = trainer(tokenizer, shards, tmp_path / "static", static_shapes=True, **settings)
    static.train()
    assert static.masked_overflow == 0
    np.testing.assert_allclose(static.losses, eager.losses, rtol=1e-5)
    for key, values in eager.record.parts.items():
        np.testing.assert_allclose(static.record.parts[key], values, rtol=1e-5)
    assert static.record.learning_rates == eager.record.learning_rates and static.record.real_tokens == eager.record.real_tokens


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_the_whole_step_compiles_as_one_graph_and_never_recompiles(tokenizer, shards, tmp_path, monkeypatch,
                                                                    objective):
    import torch._dynamo

    monkeypatch.setenv("DOMAINLM_COMPILE_BACKEND", "aot_eager")  # dynamo + AOTAutograd, no C++ code generation
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = trainer(tokenizer, shards, tmp_path / "compiled", static_shapes=True, compile=True, max_steps=24,
                       objective=objective)
    compiled.train()  # 24 steps of other documents, other masks: one graph, fullgraph (no breaks)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"] and not counters["recompiles"]
    eager = trainer(tokenizer, shards, tmp_path / "eager", max_steps=24, objective=objective)
    eager.train()
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)


def test_a_static_run_resumes_exactly(tokenizer, shards, tmp_path, monkeypatch):
    straight = trainer(tokenizer, shards, tmp_path / "straight", static_shapes=True, max_steps=9, checkpoint_every=3)
    straight.train()
    broken = trainer(tokenizer, shards, tmp_path / "broken", static_shapes=True, max_steps=9, checkpoint_every=3)
    original = broken.train_step

    def crash_at_7(step, batch=None):
        if step == 7:
            raise KeyboardInterrupt
        return original(step, batch)

    monkeypatch.setattr(broken, "train_step", crash_at_7)
    with pytest.raises(KeyboardInterrupt):
        broken.train()
    resumed = trainer(tokenizer, shards, tmp_path / "broken", static_shapes=True, max_steps=9, checkpoint_every=3)
    assert resumed.resume_if_possible() and resumed.step == 6
    resumed.train()
    assert resumed.losses == straight.losses  # bit for bit


def test_masked_positions_fill_a_fixed_buffer_and_overflow_is_left_out():
    labels = torch.tensor([-100, 7, -100, 8, 9, -100, 10, 11])
    noise = torch.arange(8) / 8
    padded = MaskedTargets.of(labels, {"noise": noise}, capacity=8)
    assert padded.index.tolist() == [1, 3, 4, 6, 7, 0, 0, 0] and padded.labels.tolist() == [7, 8, 9, 10, 11] + [-100] * 3
    assert padded.draws["noise"].tolist() == [0.125, 0.375, 0.5, 0.75, 0.875, 0, 0, 0] and padded.overflow == 0
    cut = MaskedTargets.of(labels, capacity=3)
    assert cut.index.tolist() == [1, 3, 4] and cut.labels.tolist() == [7, 8, 9] and cut.overflow == 2
    assert masked_capacity(32 * 128, 0.15) == 832  # 614 expected + 8 sigma (185), rounded up to 64
    assert masked_capacity(8, 0.5) == 8  # never more slots than positions

    model = Bert(BertConfig(vocab_size=20, **MODEL)).eval()
    ids, positions = torch.randint(5, 20, (1, 8)), torch.arange(8)[None]
    attn = document_attention(torch.zeros(1, 8, dtype=torch.long))
    with torch.no_grad():
        exact = model.mlm_loss(ids, positions, attn, labels[None], reduction="sum")
        torch.testing.assert_close(model.mlm_loss(ids, positions, attn, None, "sum", padded), exact)


def test_overflowing_masked_positions_are_counted_and_the_run_goes_on(tokenizer, shards, tmp_path, monkeypatch):
    monkeypatch.setattr("domainlm.pretrain.trainer.masked_capacity", lambda positions, rate: 4)
    run = trainer(tokenizer, shards, tmp_path, static_shapes=True, max_steps=3)
    run.train()
    assert run.masked_overflow > 0 and np.isfinite(run.losses).all()


def test_static_nan_steps_are_found_on_the_device_and_stop_the_run(tokenizer, shards, tmp_path, monkeypatch):
    run = trainer(tokenizer, shards, tmp_path, static_shapes=True, max_steps=10, log_every=5, checkpoint_every=100)
    original, calls = run.model.mlm_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs) * (float("nan") if calls["n"] in (2, 6, 7, 8) else 1.0)

    monkeypatch.setattr(run.model, "mlm_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="3 steps in a row .*last at step 7"):
        run.train()
    assert run.record.skipped_steps == [1, 5, 6, 7] and run.step == 10  # read at the log boundary, after step 10
    assert all(torch.isfinite(p).all() for p in run.model.parameters())  # the device skipped the updates


def test_static_shapes_refuse_what_would_change_a_steps_shape(tokenizer, shards, tmp_path):
    with pytest.raises(ValueError, match="batch_size_start"):
        PretrainConfig(static_shapes=True, batch_size_start=2)
    with pytest.raises(ValueError, match="divide batch_size"):
        PretrainConfig(static_shapes=True, batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="static_shapes needs attention sdpa"):  # at load, whatever the device
        PretrainConfig(static_shapes=True, attention="varlen")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        trainer(tokenizer, shards, tmp_path, attention="varlen")


def test_an_automatic_micro_batch_is_the_largest_divisor_that_fits(tokenizer, shards, tmp_path):
    from domainlm.pretrain.engine import choose_micro_batch

    tried = []

    def fits(rows):
        tried.append(rows)
        return rows <= 5

    assert choose_micro_batch(24, fits) == 4 and tried == [24, 12, 8, 6, 4]  # divisors only: equal shapes
    assert choose_micro_batch(7, lambda rows: False) == 1
    run = trainer(tokenizer, shards, tmp_path, micro_batch_size="auto", max_steps=2)
    run.train()  # on a CPU: the whole batch, no trying
    assert run.micro.auto == 4

"""Training curves as TensorBoard event files (the optional `tensorboard` extra), and nothing without it."""

import sys

import pytest
import torch
from tokenizers import Tokenizer

from conftest import synthetic_texts
from domainlm.config import PretrainConfig
from domainlm.pretrain.bert import BertConfig
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.trainer import Trainer
from domainlm.progress import Curves
from test_golden import GOLDEN, MODEL


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_pretraining_writes_loss_lr_tokens_per_second_and_gradient_norm(tmp_path):
    pytest.importorskip("tensorboard")
    tokenizer = Tokenizer.from_file(str(GOLDEN / "tokenizer.json"))
    shards = write_token_shards(tokenizer, ((t, "domain") for t in synthetic_texts(60, seed=1)), tmp_path / "shards")
    curves = Curves(tmp_path / "tensorboard")
    config = PretrainConfig(max_steps=4, batch_size=4, seq_len=32, log_every=2, checkpoint_every=100)
    trainer = Trainer(BertConfig(vocab_size=tokenizer.get_vocab_size(), **MODEL), config, shards, tokenizer,
                      tmp_path / "checkpoints", curves=curves)
    trainer.train()
    curves.close()
    found = scalars(tmp_path / "tensorboard")
    assert set(found) == {"pretrain/loss", "pretrain/lr", "pretrain/real_tokens_per_s", "pretrain/grad_norm"}
    assert [step for step, _ in found["pretrain/loss"]] == [2, 4]
    assert found["pretrain/loss"][1][1] == pytest.approx(sum(trainer.losses[2:]) / 2, rel=1e-6)
    assert found["pretrain/lr"][0][1] == pytest.approx(trainer.record.learning_rates[1], rel=1e-6)
    assert all(value > 0 for _, value in found["pretrain/grad_norm"])


def test_without_tensorboard_curves_record_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    curves = Curves(tmp_path / "tensorboard")
    curves.add(1, loss=torch.tensor(1.0).item())
    curves.close()
    assert curves.writer is None and not (tmp_path / "tensorboard").exists()

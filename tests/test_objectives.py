"""A new pretraining objective is its own module and one row of `objectives.OBJECTIVES`: this file
is such a module, a toy token-shuffle detection (Yamaguchi et al. 2021, "Frustratingly Simple
Pretraining Alternatives to Masked Language Modeling": the masked words' tokens are put back in a
shuffled order and a per-token head says which ones moved). The trainer runs it, checkpoints and
resumes it exactly, and exports it as a stock transformers model, with nothing else changed."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synthetic_texts
from domainlm.config import PretrainConfig
from domainlm.pretrain import export_model
from domainlm.pretrain.attention import Attention
from domainlm.pretrain.bert import Bert, BertConfig, to_hf_state_dict
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.encoder import GROUPS, Encoder, MaskedTargets
from domainlm.pretrain.objectives import OBJECTIVES, LossModule, Objective
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import save_for_transformers
from test_architecture import protocol_problems


class ShuffleDetector(Encoder):
    """A BERT encoder and a one-logit-per-token head."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.encoder = Bert(c, mlm_head=False)
        self.head = nn.Linear(c.hidden_size, 1)

    def layers(self):
        return self.encoder.layers()

    def parameter_groups(self):
        groups = {group: [f"encoder.{n}" for n in names] for group, names in self.encoder.parameter_groups().items()}
        groups["head"] += ["head.weight", "head.bias"]
        assert set(groups) == set(GROUPS)
        return groups

    def flops_per_position(self, seq_len, density=1.0):
        return self.encoder.flops_per_position(seq_len, density) + 2 * self.head.weight.numel()

    def flops_per_masked(self):
        return 0

    def logits(self, ids, positions, attn: Attention) -> torch.Tensor:
        return self.head(self.encoder(ids, positions, attn))  # (B, T, 1), or (N, 1) unpadded


class ShuffleLoss(LossModule):
    def forward(self, input_ids, position_ids, attn: Attention, real, targets: MaskedTargets):
        """The masked positions get their original tokens back in the order of their draws; the
        summed binary cross-entropy of "this token moved" over the real tokens."""
        flat = attn.select(input_ids).reshape(-1)
        valid = targets.labels != -100
        order = torch.argsort(torch.where(valid, targets.draws["order"], 2.0))  # valid slots first, shuffled
        slots = torch.nonzero(valid).flatten()
        positions = targets.index[slots]
        original = flat.scatter(0, positions, targets.labels[slots])
        shuffled = flat.scatter(0, positions, targets.labels[order[: len(slots)]])
        moved = (shuffled != original).float()
        scores = self.model.logits(shuffled.view_as(attn.select(input_ids)), position_ids, attn).reshape(-1)
        per_token = F.binary_cross_entropy_with_logits(scores.float(), moved, reduction="none")
        return {"shuffled": (per_token * attn.select(real).reshape(-1).float()).sum()}


def order_draws(labels: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"order": torch.rand(labels.shape, generator=generator)}


def export(model: ShuffleDetector, config: BertConfig | None = None):
    from transformers import BertForTokenClassification

    hf_config = (config or model.config).to_hf()
    hf_config.num_labels = 1
    hf = BertForTokenClassification(hf_config)
    weights = {k: v for k, v in to_hf_state_dict(model.encoder).items() if k.startswith("bert.")}
    weights |= {"classifier.weight": model.head.weight.detach(), "classifier.bias": model.head.bias.detach()}
    hf.load_state_dict(weights, strict=False)
    return hf


SHUFFLE = Objective(
    counts={"shuffled": "real"}, weights=lambda c: {"shuffled": 1.0},
    build=lambda layout, c: ShuffleDetector(layout), loss_module=lambda model, c, teacher: ShuffleLoss(model),
    draws=order_draws, export=export, loader="AutoModelForTokenClassification",
    outputs=lambda model, ids, positions, attn: model.logits(ids, positions, attn))


@pytest.fixture
def shuffle_objective(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "shuffle", SHUFFLE)  # the one table row


def test_a_toy_objective_trains_resumes_exactly_and_exports(shuffle_objective, tokenizer, tmp_path):
    data = write_token_shards(tokenizer, ((t, "s") for t in synthetic_texts(60)), tmp_path / "shards")
    config = PretrainConfig(max_steps=6, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=3, log_every=1)
    config = config.model_copy(update={"objective": "shuffle"})  # a recipe would also list it in `objective`
    layout = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=2,
                        intermediate_size=64, max_position=32, dropout=0.1)
    whole = Trainer(layout, config, data, tokenizer, tmp_path / "whole", seed=0)
    assert not protocol_problems(whole.model)
    whole.train()
    assert set(whole.record.parts) == set() and len(whole.losses) == 6 and all(0 < x < 5 for x in whole.losses)
    shutil.copytree(tmp_path / "whole", tmp_path / "halted")
    shutil.rmtree(tmp_path / "halted" / "step-00000006")  # as if killed after step 3's checkpoint
    resumed = Trainer(layout, config, data, tokenizer, tmp_path / "halted", seed=0)
    assert resumed.resume_if_possible() and resumed.step == 3
    resumed.train()
    assert resumed.losses == whole.losses  # draws, weights and optimizer restored bit for bit
    save_for_transformers(tokenizer, tmp_path / "tok")
    assert export_model(whole.model, tmp_path / "tok", tmp_path / "export", objective="shuffle") <= 1e-4

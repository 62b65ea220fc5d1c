"""SPDF (sparse pretraining, dense fine-tuning) and pretraining distillation: masks that hold, a
distillation loss that vanishes when student = teacher, FLOP counts, exact resume."""

import pytest
import torch

from conftest import synthetic_texts
from domainlm.config import PretrainConfig, TokenizerConfig, config_from_dict
from domainlm.errors import ConfigError
from domainlm.pretrain import check, export_model, load_teacher
from domainlm.pretrain.attention import segment_attention_mask
from domainlm.pretrain.bert import Bert, BertConfig
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.distill import Distiller, hidden_distillation, logit_distillation
from domainlm.pretrain.encoder import MaskedTargets
from domainlm.pretrain.flops import forward_flops, pretraining_flops
from domainlm.pretrain.modernbert import ModernBert, ModernBertConfig
from domainlm.pretrain.sparsity import density, magnitude_masks, sparse_linears
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import save_for_transformers, train_wordpiece


@pytest.fixture(scope="module")
def data(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "shards"
    return write_token_shards(tokenizer, ((t, "s") for t in synthetic_texts(80)), folder)


def _model_config(tokenizer, hidden=32, layers=2):
    return BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden, num_layers=layers,
                         num_heads=2, intermediate_size=2 * hidden, max_position=32, dropout=0.0)


def _trainer(tokenizer, data, folder, steps=6, teacher=None, hidden=32, **pretrain):
    config = PretrainConfig(max_steps=steps, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=2, log_every=1,
                            **pretrain)
    return Trainer(_model_config(tokenizer, hidden), config, data, tokenizer, folder, seed=0, teacher=teacher)


def _batch(vocab, rows=2, length=16):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (rows, length), generator=generator)
    segments = torch.zeros(rows, length, dtype=torch.long)
    segments[:, length // 2 :] = 1  # two documents per row
    positions = torch.arange(length).repeat(rows, 1) % (length // 2)
    labels = torch.where(torch.rand(rows, length, generator=generator) < 0.3, ids, -100)
    return ids, positions, segment_attention_mask(segments), torch.ones(rows, length, dtype=torch.bool), \
        MaskedTargets.of(labels.reshape(-1))


# ------------------------------------------------------------------------------------- SPDF
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_magnitude_masks_keep_the_largest_weights_of_each_transformer_layer(sparsity):
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    masks = magnitude_masks(model, sparsity)
    linears = sparse_linears(model)
    assert set(masks) == {f"blocks.{i}.{n}" for i in range(2) for n in ("qkv", "attn_out", "mlp_in", "mlp_out")}
    for name, mask in masks.items():
        weight = linears[name].weight.detach().abs()
        assert int(mask.sum()) == round((1 - sparsity) * weight.numel())
        assert weight[mask].min() >= weight[~mask].max()  # by magnitude
    assert "head_dense" not in " ".join(masks) and magnitude_masks(model, 0.0) == {}


def test_spdf_masks_hold_through_training_and_resume_and_are_gone_in_the_export(tokenizer, data, tmp_path):
    from transformers import AutoModelForMaskedLM

    trainer = _trainer(tokenizer, data, tmp_path / "a", sparsity=0.75)
    start = {name: mask.clone() for name, mask in trainer.sparse_masks.items()}
    trainer.train()
    linears = sparse_linears(trainer.model)
    for name, mask in start.items():
        assert torch.equal(linears[name].weight != 0, mask)  # the same entries, zero after every step
    assert density(trainer.model) == pytest.approx(0.25, abs=1e-3)
    assert trainer.losses[-1] < trainer.losses[0]
    # A killed run resumes with the same masks and the same losses.
    interrupted = _trainer(tokenizer, data, tmp_path / "b", sparsity=0.75)
    interrupted.config.max_steps = 4
    interrupted.train()
    resumed = _trainer(tokenizer, data, tmp_path / "b", sparsity=0.75)
    assert resumed.resume_if_possible() and resumed.step == 4
    resumed.train()
    assert resumed.losses == trainer.losses
    # The export is a plain dense model: its weights alone, and fine-tuning moves the zeros.
    save_for_transformers(tokenizer, tmp_path / "tok")
    export_model(trainer.model, tmp_path / "tok", tmp_path / "export")
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "export")
    assert not [k for k in hf.state_dict() if "mask" in k]
    weight = hf.bert.encoder.layer[0].intermediate.dense.weight
    assert (weight == 0).float().mean() == pytest.approx(0.75, abs=1e-3)
    optimizer = torch.optim.SGD(hf.parameters(), lr=0.1)
    ids = torch.randint(5, tokenizer.get_vocab_size(), (2, 12))
    hf(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert (weight == 0).float().mean() < 0.01


def test_flops_count_sparse_layers_at_their_density(tokenizer):
    torch.manual_seed(0)
    model = Bert(_model_config(tokenizer))
    dense = pretraining_flops(model, 32, positions=1000, masked=150)
    sparse = pretraining_flops(model, 32, positions=1000, masked=150, sparsity=0.5)
    assert dense["flops"] == dense["flops_dense_equivalent"] == sparse["flops_dense_equivalent"]
    block = sum(linear.weight.numel() for linear in sparse_linears(model).values())
    assert dense["flops"] - sparse["flops"] == pytest.approx(3 * 2 * 0.5 * block * 1000)
    teacher = Bert(_model_config(tokenizer, hidden=64))
    with_teacher = pretraining_flops(model, 32, 1000, 150, teacher=teacher)
    assert with_teacher["flops"] - dense["flops"] == pytest.approx(forward_flops(teacher, 32, 1000, 150))


# ------------------------------------------------------------------------------ distillation
@pytest.mark.parametrize("layout", ["bert", "modernbert"])
def test_distillation_loss_is_zero_when_student_is_teacher(layout):
    torch.manual_seed(0)
    if layout == "bert":
        teacher = Bert(BertConfig(vocab_size=60, hidden_size=32, num_layers=2, num_heads=2,
                                        intermediate_size=64, dropout=0.0))
    else:
        teacher = ModernBert(ModernBertConfig(vocab_size=60, hidden_size=32, num_layers=3, num_heads=2,
                                              intermediate_size=48, local_window=8, dropout=0.0))
    student = type(teacher)(teacher.config)
    student.load_state_dict(teacher.state_dict())
    distiller = Distiller(teacher, 32, logit_weight=1.0, hidden_weight=1.0, temperature=2.0)
    assert distiller.projection is None
    losses = distiller.losses(student.eval(), *_batch(60))
    assert losses["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["hidden"].item() == pytest.approx(0.0, abs=1e-8)
    assert losses["mlm"].item() > 1  # MLM is still learned beside them
    for p in student.parameters():  # a different student: both losses are positive
        p.data += 0.05 * torch.randn_like(p)
    losses = distiller.losses(student, *_batch(60))
    assert losses["kd"].item() > 1e-4 and losses["hidden"].item() > 1e-6


def test_distillation_losses_leave_out_padding_slots():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    labels = torch.tensor([3, 4, -100, -100])
    assert logit_distillation(student, teacher, labels) == pytest.approx(
        logit_distillation(student[:2], teacher[:2], labels[:2]).item())
    real = torch.tensor([True, False, True, True])
    assert hidden_distillation(student, teacher, real) == pytest.approx(
        hidden_distillation(student[real], teacher[real], torch.ones(3, dtype=torch.bool)).item())


def test_a_small_student_learns_from_a_wider_teacher_and_resumes_exactly(tokenizer, data, tmp_path):
    torch.manual_seed(1)
    teacher = Bert(_model_config(tokenizer, hidden=64, layers=2))
    straight = _trainer(tokenizer, data, tmp_path / "a", teacher=teacher, distill_temperature=2.0)
    assert straight.trainable["projection"].weight.shape == (64, 32)  # student width -> teacher width
    straight.train()
    assert set(straight.record.parts) == {"mlm", "kd", "hidden"}
    assert straight.record.parts["hidden"][-1] < straight.record.parts["hidden"][0]
    assert all(not p.requires_grad for p in teacher.parameters())
    interrupted = _trainer(tokenizer, data, tmp_path / "b", teacher=teacher, distill_temperature=2.0)
    interrupted.config.max_steps = 4
    interrupted.train()
    resumed = _trainer(tokenizer, data, tmp_path / "b", teacher=teacher, distill_temperature=2.0)
    assert resumed.resume_if_possible()
    resumed.train()
    assert resumed.losses == straight.losses  # the projection came back from the checkpoint too


def test_teacher_with_another_vocabulary_is_refused(tokenizer, tmp_path):
    other = train_wordpiece(synthetic_texts(300, seed=5), TokenizerConfig(vocab_size=130, min_frequency=1))
    save_for_transformers(other, tmp_path / "tok")
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=other.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=2,
                                  intermediate_size=64, max_position=64))
    export_model(model, tmp_path / "tok", tmp_path / "teacher")
    config = config_from_dict({"name": "t", "run_dir": str(tmp_path / "run"), "corpus": {"sources": [
        {"path": str(tmp_path / "tok" / "tokenizer.json")}]}, "pretrain": {"teacher": str(tmp_path / "teacher"),
                                                                      "seq_len": 32}})
    with pytest.raises(ConfigError, match="another vocabulary"):
        load_teacher(config, tokenizer)
    assert load_teacher(config, other) is not None

    # Continuing a checkpoint of another vocabulary: known before any stage runs, so refused then.
    save_for_transformers(tokenizer, tmp_path / "ours")
    export_model(Bert(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=1,
                                       num_heads=2, intermediate_size=64, max_position=64)),
                 tmp_path / "ours", tmp_path / "start")
    continued = config.model_copy(update={"model": config.model.model_copy(update={"init_from": str(tmp_path / "start")})})
    with pytest.raises(ConfigError, match=r"pretrain.teacher .* has another vocabulary than the model's"):
        check(continued)
    check(config)  # from scratch: the domain vocabulary is not there yet; load_teacher checks it


def test_teacher_keys_are_checked():
    with pytest.raises(ValueError, match="electra"):
        PretrainConfig(teacher="x", objective="electra")
    with pytest.raises(ValueError, match="nothing"):
        PretrainConfig(teacher="x", distill_logits=0, distill_hidden=0)


def test_arms_may_name_an_earlier_arms_export_and_take_shares(tmp_path):
    (tmp_path / "corpus.txt").write_text("a few words of text here\n")
    base = {"name": "x", "run_dir": str(tmp_path / "run"), "corpus": {"sources": [{"path": str(tmp_path / "corpus.txt")}]},
            "pretrain": {"batch_size": 4, "seq_len": 32}}
    with pytest.raises(ConfigError, match="earlier arm"):
        config_from_dict(base | {"experiment": {"budget_tokens": 5120, "arms": [
            {"name": "student", "pretrain": {"teacher": "arm:big"}}, {"name": "big"}]}})
    config = config_from_dict(base | {"experiment": {"budget_tokens": 4 * 32 * 40, "arms": [
        {"name": "big", "seed": 3}, {"name": "small", "share": 0.5}, {"name": "student", "share": 0.5,
                                                          "pretrain": {"teacher": "arm:big"}}]}})
    arms = {arm.name: arm for arm in config.experiment.arms}
    assert config.arm_config(arms["big"]).pretrain.max_steps == 20  # a share of 1 in 2: half of 40 steps
    assert config.arm_config(arms["big"]).seed == 3
    assert config.arm_config(arms["small"]).pretrain.max_steps == 10
    assert config.arm_config(arms["small"]).seed == 0
    student = config.arm_config(arms["student"])
    assert student.pretrain.teacher == str(tmp_path / "run" / "arms" / "big" / "pretrain" / "export")


def test_runs_without_the_new_keys_keep_their_pretrain_fingerprint(tiny_recipe):
    from domainlm.pretrain import settings

    before = {  # the pretrain section's keys before distillation, SPDF and curricula (bookkeeping aside)
        "attention", "batch_size", "batch_size_start", "batch_warmup_fraction", "compile",
        "compile_mode", "decay_fraction", "distributed", "dropout", "generator_fraction", "grad_clip",
        "lexicon", "lexicon_rate", "lr", "mask_rate", "masking",
        "max_steps", "micro_batch_size", "mixture", "objective", "rtd_weight", "schedule",
        "seq_len", "short_seq_fraction", "short_seq_len", "span_mean", "static_shapes", "tf32", "upsample_factor",
        "upsample_fraction", "upsample_source", "warmup_fraction", "weight_decay"}
    assert set(settings(config_from_dict(tiny_recipe))["pretrain"]) == before
    tiny_recipe["pretrain"] |= {"sparsity": 0.5, "curriculum": "cyclical"}
    assert set(settings(config_from_dict(tiny_recipe))["pretrain"]) == before | {"sparsity", "curriculum"}

"""The pretraining engine: data plan, ELECTRA, lexicon masking, exports, kill-and-resume, DDP."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_texts
from domainlm.config import PretrainConfig
from domainlm.pretrain import export_model
from domainlm.pretrain.bert import BertConfig
from domainlm.pretrain.data import (
    lexicon_sequences,
    lexicon_word_starts,
    mask_tokens,
    word_start_table,
)
from domainlm.pretrain.plan import DataPlan
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import save_for_transformers

WORKER = Path(__file__).with_name("pretrain_worker.py")
SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 32}


def _config(**overrides) -> PretrainConfig:
    base = {"max_steps": 4, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1}
    return PretrainConfig(**{**base, **overrides})


def _trainer(tokenizer, shards, folder, dropout=0.0, **overrides):
    model_config = BertConfig(vocab_size=tokenizer.get_vocab_size(), dropout=dropout, **SMALL)
    return Trainer(model_config, _config(**overrides), shards, tokenizer, folder, seed=0)


# ------------------------------------------------------------------------------------ data plan
def test_mixture_weights_and_end_of_training_upsampling(shards):
    config = _config(max_steps=400, batch_size=20, mixture={"domain": 1.0, "general": 1.0},
                     upsample_source="domain", upsample_factor=3.0, upsample_fraction=0.25)
    plan = DataPlan(shards, config, seed=0)
    domain = shards.source_index("domain")
    share = plan.counts[:, domain] / plan.counts.sum(1)
    assert (plan.counts.sum(1) == 20).all()
    assert share[:300].mean() == pytest.approx(0.5, abs=0.03)  # weights, not corpus sizes (a quarter)
    assert share[300:].mean() == pytest.approx(0.75, abs=0.03)  # 3x up-sampled over the last 25%
    # Every row a step reads comes from the source the plan assigned it to.
    for step in (0, 350):
        for packing, rows in plan.rows(step):
            segs = np.concatenate([np.arange(packing.row_ptr[r], packing.row_ptr[r + 1]) for r in rows])
            docs = np.searchsorted(shards.offsets, packing.seg_start[segs], side="right") - 1
            assert len(set(shards.sources[docs].tolist())) == 1


def test_corpus_source_weights_set_the_default_mixture(shards):
    domain = shards.source_index("domain")
    tokens = np.array([np.diff(shards.offsets)[shards.sources == k].sum() for k in range(2)], dtype=float)
    plan = DataPlan(shards, _config(max_steps=400, batch_size=20), seed=0, source_weights={"domain": 3.0})
    expected = 3 * tokens[domain] / (3 * tokens[domain] + tokens[1 - domain])
    assert (plan.counts[:, domain] / plan.counts.sum(1)).mean() == pytest.approx(expected, abs=0.03)
    natural = DataPlan(shards, _config(max_steps=10, batch_size=20), seed=0, source_weights={"domain": 1.0})
    assert natural.sources == [None]  # all weights 1: one stream over the whole corpus, no per-source sampling


def test_batch_warmup_and_sequence_curriculum(shards):
    config = _config(max_steps=100, batch_size=16, batch_size_start=4, batch_warmup_fraction=0.5,
                     short_seq_len=16, short_seq_fraction=0.2)
    plan = DataPlan(shards, config, seed=0)
    assert [plan.seq_len(s) for s in (0, 19, 20, 99)] == [16, 16, 32, 32]
    rows = plan.rows_per_step
    assert rows[0] == 8 and rows[20] < rows[40] < rows[50] == rows[99] == 16  # 4 rows x 32/16 at step 0
    assert all(len(r) == n for (_, r), n in zip((plan.rows(s)[0] for s in range(30, 40)), rows[30:40], strict=True))
    again = DataPlan(shards, config, seed=0)  # a pure function of (config, corpus, seed, step)
    for step in (0, 33, 99):
        assert [r.tolist() for _, r in plan.rows(step)] == [r.tolist() for _, r in again.rows(step)]


def test_every_row_is_read_once_per_epoch(shards):
    plan = DataPlan(shards, _config(max_steps=100, batch_size=3), seed=0)
    n = len(plan.packing(0))
    seen = np.concatenate([plan.rows(s)[0][1] for s in range(100)])[: n * 2]
    assert sorted(seen[:n].tolist()) == list(range(n)) and sorted(seen[n:].tolist()) == list(range(n))


# --------------------------------------------------------------------------------------- masking
def test_lexicon_words_are_masked_preferentially(tokenizer):
    texts = synthetic_texts(200, seed=9)
    words = [w for t in texts for w in t.split()]
    lexicon = sorted(set(words))[:8]  # a handful of the corpus's words
    sequences = lexicon_sequences(tokenizer, lexicon)
    word_start = word_start_table(tokenizer)
    ids = [tokenizer.encode(t).ids for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    maskable = ~torch.isin(batch, torch.tensor([0, 2, 3]))
    preferred = lexicon_word_starts(batch, word_start, sequences)
    assert preferred.any()
    # Exact match: a hit decodes to a lexicon word.
    b, t = map(int, torch.nonzero(preferred)[0])
    piece_count = next(len(s) for s in sequences if batch[b, t : t + len(s)].tolist() == list(s))
    assert tokenizer.decode(batch[b, t : t + piece_count].tolist()).replace(" ", "") in lexicon
    _, labels = mask_tokens(batch, maskable, word_start, 0.15, 4, 150, torch.Generator().manual_seed(0),
                            preferred=preferred, preferred_rate=0.6)
    chosen = labels != -100
    starts = word_start[batch] & maskable
    lex_rate = (chosen & preferred).sum() / (preferred & starts).sum()
    overall = (chosen & starts).sum() / starts.sum()
    assert lex_rate > 0.45 and 0.12 < overall < 0.18  # preferred words far above 15%, the total kept


# ------------------------------------------------------------------------ objectives and export
@pytest.mark.parametrize("objective,masking,lexicon", [
    ("mlm", "whole-word", False), ("mlm", "token", False), ("mlm", "span", False), ("mlm", "whole-word", True),
    ("electra", "whole-word", False), ("electra", "span", True),
])
def test_objectives_and_masking_modes_train_and_export(tokenizer, shards, tmp_path, objective, masking, lexicon):
    from transformers import AutoModel

    extra = {}
    if lexicon:
        (tmp_path / "lexicon.txt").write_text("\n".join(sorted(set(synthetic_texts(5)[0].split()))[:5]))
        extra["lexicon"] = str(tmp_path / "lexicon.txt")
    trainer = _trainer(tokenizer, shards, tmp_path / "ckpt", objective=objective, masking=masking, **extra)
    trainer.train()
    assert len(trainer.losses) == 4 and np.isfinite(trainer.losses).all()
    if objective == "electra":
        assert set(trainer.record.parts) == {"mlm", "rtd"}
        assert trainer.model.generator.tok_embed is trainer.model.discriminator.tok_embed  # shared embeddings
        assert trainer.model.generator.config.hidden_size < trainer.model.config.hidden_size
    save_for_transformers(tokenizer, tmp_path / "tok")
    assert export_model(trainer.model, tmp_path / "tok", tmp_path / "export", objective=objective) <= 1e-4  # stock, same outputs
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_type"] == ("electra" if objective == "electra" else "bert")
    AutoModel.from_pretrained(tmp_path / "export")  # the encoder alone, as fine-tuning loads it


def test_electra_learns_to_detect_replacements(tokenizer, shards, tmp_path):
    trainer = _trainer(tokenizer, shards, tmp_path, objective="electra", max_steps=30, lr=3e-3, mask_rate=0.3)
    trainer.train()
    rtd = trainer.record.parts["rtd"]
    assert np.mean(rtd[-5:]) < np.mean(rtd[:5])


def test_prefetching_the_next_batch_changes_nothing_and_resumes_exactly(tokenizer, shards, tmp_path, monkeypatch):
    plain = _trainer(tokenizer, shards, tmp_path / "plain", dropout=0.1, max_steps=6)
    plain.train()
    ahead = _trainer(tokenizer, shards, tmp_path / "ahead", dropout=0.1, max_steps=6)
    ahead.batches.prefetch = True  # what a GPU run does: batches 4 and 5 are drawn before step 5 fails
    original = ahead.train_step

    def crash_at_5(step, batch=None):
        if step == 5:
            raise KeyboardInterrupt
        return original(step, batch)

    monkeypatch.setattr(ahead, "train_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        ahead.train()
    resumed = _trainer(tokenizer, shards, tmp_path / "ahead", dropout=0.1, max_steps=6)
    resumed.batches.prefetch = True
    assert resumed.resume_if_possible() and resumed.step == 4
    resumed.train()
    assert resumed.losses == plain.losses


# ------------------------------------------------------------------------------- kill and resume
def _spec(tokenizer, shards_dir, folder: Path, **pretrain) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    return {"tokenizer": str(folder / "tokenizer.json"), "shards": str(shards_dir), "checkpoints": str(folder / "ckpt"),
            "out": str(folder / "out.json"), "model": {**SMALL, "dropout": 0.1},
            "pretrain": {"max_steps": 12, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "checkpoint_every": 3,
                         "log_every": 1, **pretrain}}


def _run_worker(spec: dict, folder: Path, *args: str) -> subprocess.CompletedProcess:
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return subprocess.run([sys.executable, str(WORKER), str(path), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["eager", "static-compiled"])
def test_sigkill_at_a_seeded_step_then_resume_is_bit_exact(tokenizer, shards, tmp_path, monkeypatch, step):
    shards_dir = Path(shards.tokens.filename).parent
    settings = {"static_shapes": True, "compile": True} if step == "static-compiled" else {}
    monkeypatch.setenv("DOMAINLM_COMPILE_BACKEND", "aot_eager")  # the workers compile without C++ code generation
    straight = _spec(tokenizer, shards_dir, tmp_path / "straight", **settings)
    assert _run_worker(straight, tmp_path / "straight").returncode == 0
    kill_at = random.Random(11).randint(4, 11)  # after at least one checkpoint, between two (seeded: reproducible)
    assert kill_at % 3, kill_at  # not on a checkpoint step: the resume must replay steps
    killed = _spec(tokenizer, shards_dir, tmp_path / "killed", **settings)
    result = _run_worker({**killed, "kill_at": kill_at}, tmp_path / "killed")
    assert result.returncode == -9, f"killed at step {kill_at}: {result.stderr[-2000:]}"
    assert not (tmp_path / "killed" / "out.json").exists()
    resumed = _run_worker(killed, tmp_path / "killed")
    assert resumed.returncode == 0 and "resumed from step-" in resumed.stderr, resumed.stderr[-2000:]
    losses = json.loads((tmp_path / "killed" / "out.json").read_text())["losses"]
    expected = json.loads((tmp_path / "straight" / "out.json").read_text())["losses"]
    assert losses == expected, f"killed at step {kill_at}"  # bit for bit, dropout on, fp32 CPU


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tokenizer, shards, tmp_path, distributed):
    shards_dir = Path(shards.tokens.filename).parent
    spec = _spec(tokenizer, shards_dir, tmp_path / "one", max_steps=5, batch_size=6)
    spec["model"]["dropout"] = 0.0
    assert _run_worker(spec, tmp_path / "one").returncode == 0
    spec["pretrain"]["distributed"] = distributed
    two = {**spec, "checkpoints": str(tmp_path / "two" / "ckpt"), "out": str(tmp_path / "two" / "out.json"),
           "rendezvous": str(tmp_path / "rendezvous")}
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "spec.json").write_text(json.dumps(two))
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "two" / "spec.json"), str(rank), "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    one = json.loads((tmp_path / "one" / "out.json").read_text())["losses"]
    two_losses = json.loads((tmp_path / "two" / "out.json").read_text())["losses"]
    np.testing.assert_allclose(two_losses, one, rtol=1e-5)
    assert one[-1] != one[0]  # the weights moved, so later steps test the synced update
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt").glob("step-*")) == ["step-00000003", "step-00000005"]


# ------------------------------------------------------------------------------ attention backends
def _packed_example():
    from domainlm.pretrain.bert import Bert

    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=50, **SMALL)).eval()
    segments = torch.tensor([[0] * 5 + [1] * 7 + [-2, -3, -4, -5], [0] * 16])
    positions = torch.tensor([list(range(5)) + list(range(7)) + [0] * 4, list(range(16))])
    ids = torch.randint(5, 50, (2, 16))
    labels = torch.where(torch.rand(2, 16) < 0.3, ids, -100).masked_fill(segments < 0, -100)
    return model, ids, positions, segments, labels


def test_unpadded_varlen_layout_equals_the_masked_layout(monkeypatch):
    """The varlen path (padding removed, documents as cu_seqlens ranges) gives the sdpa path's
    hidden states and loss. The flash kernel needs a GPU, so a per-document reference stands in."""
    import torch.nn.attention.varlen as varlen

    from domainlm.pretrain.attention import document_attention

    def reference(q, k, v, cu_q, cu_k, max_q, max_k):
        out = torch.empty_like(q)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            out[a:b] = torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1)).transpose(0, 1)
        return out

    monkeypatch.setattr(varlen, "varlen_attn", reference)
    model, ids, positions, segments, labels = _packed_example()
    masked = document_attention(segments, positions, "sdpa")
    unpadded = document_attention(segments, positions, "varlen")
    assert unpadded.cu_seqlens.tolist() == [0, 5, 12, 28] and unpadded.max_len == 16
    with torch.no_grad():
        torch.testing.assert_close(model(ids, positions, unpadded), model(ids, positions, masked)[segments >= 0])
        torch.testing.assert_close(model.mlm_loss(ids, positions, unpadded, labels),
                                   model.mlm_loss(ids, positions, masked, labels))
        from domainlm.pretrain.electra import Electra
        from domainlm.pretrain.encoder import masked_targets

        electra = Electra(model.config, 0.5).eval()
        real = segments >= 0
        noise = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
        losses = [electra.losses(ids, positions, attn, real, masked_targets(labels, real if attn is unpadded else None,
                                                                            {"noise": noise}))
                  for attn in (unpadded, masked)]
        for key in ("mlm", "rtd"):
            torch.testing.assert_close(losses[0][key], losses[1][key])


@pytest.mark.slow
def test_flex_block_mask_equals_the_boolean_mask():
    from domainlm.pretrain.attention import document_attention

    model, ids, positions, segments, _ = _packed_example()
    with torch.no_grad():  # FlexAttention has no CPU backward; its forward is compiled here
        flex = model(ids, positions, document_attention(segments, positions, "flex"))
        sdpa = model(ids, positions, document_attention(segments, positions, "sdpa"))
    torch.testing.assert_close(flex[segments >= 0], sdpa[segments >= 0])


def test_every_token_of_a_word_level_vocabulary_starts_a_word():
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "kinase": 1, "t12": 2}, unk_token="[UNK]"))
    assert word_start_table(tokenizer).tolist() == [True, True, True]  # not one word spanning a row

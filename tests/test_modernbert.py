"""The ModernBERT layout: attention that stays in its document and window, the export to and import
from stock `transformers.ModernBertForMaskedLM`, continued pretraining, and the inputs refused."""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import synthetic_texts
from domainlm.config import PretrainConfig, TokenizerConfig, config_from_dict
from domainlm.errors import ConfigError, ModelError
from domainlm.pretrain import check, check_positions, export_model, settings
from domainlm.pretrain.architectures import load_checkpoint, to_hf_masked_lm
from domainlm.pretrain.attention import document_attention, document_mask_mod
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.modernbert import ModernBert, ModernBertConfig, modernbert_config
from domainlm.pretrain.trainer import Trainer
from domainlm.tokenizer import save_for_transformers, train_tokenizer

SMALL = {"hidden_size": 32, "num_layers": 4, "num_heads": 4, "intermediate_size": 48, "max_position": 64,
         "local_window": 8, "global_every": 3}  # layers 0 and 3 global, 1 and 2 local (+-4 tokens)


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    return write_token_shards(tokenizer, ((t, "corpus") for t in synthetic_texts(60, seed=1)),
                              tmp_path_factory.mktemp("modernbert") / "shards")


def tiny_stock(vocab_size: int = 100, pad: int = 0, dropout: float = 0.0, bare: bool = False):
    """A random stock ModernBertForMaskedLM (ModernBertModel if `bare`) of SMALL's shape, moved away from its init."""
    from transformers import ModernBertConfig as HFConfig
    from transformers import ModernBertForMaskedLM, ModernBertModel

    config = HFConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, max_position_embeddings=64, local_attention=8,
                      global_attn_every_n_layers=3, global_rope_theta=1000.0, local_rope_theta=100.0,
                      pad_token_id=pad, bos_token_id=None, eos_token_id=None, cls_token_id=None, sep_token_id=None,
                      attention_dropout=dropout, embedding_dropout=dropout, mlp_dropout=dropout)
    torch.manual_seed(0)
    model = (ModernBertModel if bare else ModernBertForMaskedLM)(config)
    for p in model.parameters():
        p.data += 0.05 * torch.randn_like(p)
    return model.eval()


def padded_batch(pad_id: int, vocab_size: int, length: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, length) random ids, the second row right-padded after 11 tokens; and the real-token mask."""
    ids = torch.randint(5, vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    real = torch.arange(length)[None, :] < torch.tensor([[length], [11]])
    return torch.where(real, ids, pad_id), real


def packed_row(vocab_size: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row: a document of 9 tokens, one of 11, then 4 padding positions (each its own segment).
    Returns ids, positions and segments, each (1, 24)."""
    segments = torch.tensor([[0] * 9 + [1] * 11 + [-2, -3, -4, -5]])
    positions = torch.tensor([list(range(9)) + list(range(11)) + [0] * 4])
    ids = torch.randint(5, vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    return ids, positions, segments


def visible(segments: torch.Tensor, half_window: int | None) -> torch.Tensor:
    """(T, T): may query i see key j? Same document and, for a local layer, |i - j| <= half_window."""
    s = segments[0].tolist()
    return torch.tensor([[s[i] == s[j] and (half_window is None or abs(i - j) <= half_window)
                          for j in range(len(s))] for i in range(len(s))])


@torch.no_grad()
def ours(model, ids, positions, segments) -> torch.Tensor:
    return model.eval().mlm_logits(model(ids, positions, document_attention(segments, positions, "sdpa")))


def unpadded(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and segments of right-padded rows (each padding position its own segment)."""
    T = real.shape[1]
    return torch.arange(T).expand_as(real), torch.where(real, 0, -1 - torch.arange(T).expand_as(real))


# ------------------------------------------------------------------------------------- attention
def test_the_mask_is_the_document_on_global_layers_and_the_document_window_on_local_ones():
    _, positions, segments = packed_row()
    attn = document_attention(segments, positions, "sdpa")
    assert torch.equal(attn.mask[0, 0], visible(segments, None))
    assert torch.equal(attn.within(3).mask[0, 0], visible(segments, 3))
    # FlexAttention's mask function (GPU), on every (query, key) pair of the row.
    q, k = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    for half_window in (None, 3):
        assert torch.equal(document_mask_mod(segments, half_window)(torch.zeros_like(q), None, q, k),
                           visible(segments, half_window))
    model = ModernBert(ModernBertConfig(vocab_size=50, **SMALL))
    assert [block.is_global for block in model.blocks] == [True, False, False, True]


@pytest.mark.parametrize("layer", [0, 1], ids=["global", "local"])
def test_a_layer_output_changes_with_exactly_the_inputs_it_may_see(layer):
    torch.manual_seed(0)
    model = ModernBert(ModernBertConfig(vocab_size=50, **SMALL)).eval()
    block, half_window = model.blocks[layer], None if layer == 0 else SMALL["local_window"] // 2
    _, positions, segments = packed_row()
    attn = document_attention(segments, positions, "sdpa")
    attn = attn if half_window is None else attn.within(half_window)
    cos, sin = model.rotary(positions, "global" if half_window is None else "local")
    x = torch.randn(1, 24, SMALL["hidden_size"])
    with torch.no_grad():
        before = block(x, attn, cos, sin)
        changed = torch.zeros(24, 24, dtype=torch.bool)  # [i, j]: output i moved when input j did
        for j in range(24):
            nudged = x.clone()
            nudged[0, j] += torch.randn(SMALL["hidden_size"])  # not a constant: LayerNorm would remove it
            changed[:, j] = (block(nudged, attn, cos, sin) != before)[0].any(-1)
    assert torch.equal(changed, visible(segments, half_window))


def test_a_packed_document_never_sees_the_other_one():
    torch.manual_seed(0)
    model = ModernBert(ModernBertConfig(vocab_size=50, **SMALL))
    ids, positions, segments = packed_row()
    other = ids.clone()
    other[segments == 1] = torch.randint(5, 50, (11,), generator=torch.Generator().manual_seed(3))
    before, after = ours(model, ids, positions, segments), ours(model, other, positions, segments)
    assert torch.equal(before[segments == 0], after[segments == 0])  # bit for bit
    assert not torch.equal(before[segments == 1], after[segments == 1])


def test_unpadded_varlen_layout_with_a_window_equals_the_masked_layout(monkeypatch):
    """The flash varlen kernel needs a GPU: a per-document reference that honours its
    window_size (inclusive, (left, right)) stands in, so the window handed to it is checked."""
    import torch.nn.attention.varlen as varlen

    windows = []

    def reference(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, -1)):
        windows.append(window_size)
        out = torch.empty_like(q)
        for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            i = torch.arange(b - a)
            near = None if window_size == (-1, -1) else (i[None, :] - i[:, None] <= window_size[1]) & (
                i[:, None] - i[None, :] <= window_size[0])
            out[a:b] = torch.nn.functional.scaled_dot_product_attention(
                q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), attn_mask=near).transpose(0, 1)
        return out

    monkeypatch.setattr(varlen, "varlen_attn", reference)
    torch.manual_seed(0)
    model = ModernBert(ModernBertConfig(vocab_size=50, **SMALL)).eval()
    ids, positions, segments = packed_row()
    labels = torch.where(torch.rand(1, 24, generator=torch.Generator().manual_seed(4)) < 0.4, ids, -100)
    labels = labels.masked_fill(segments < 0, -100)
    masked, unpadded_attn = (document_attention(segments, positions, kind) for kind in ("sdpa", "varlen"))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, positions, unpadded_attn), model(ids, positions, masked)[segments >= 0])
        torch.testing.assert_close(model.mlm_loss(ids, positions, unpadded_attn, labels),
                                   model.mlm_loss(ids, positions, masked, labels))
    assert windows[:4] == [(-1, -1), (4, 4), (4, 4), (-1, -1)]  # global, local, local, global


# ---------------------------------------------------------------------------------------- export
def test_a_trained_modernbert_exports_as_stock_modernbert_with_the_same_logits(tokenizer, shards, tmp_path):
    from transformers import AutoModelForMaskedLM

    V = tokenizer.get_vocab_size()
    config = PretrainConfig(max_steps=2, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=2, log_every=1)
    trainer = Trainer(ModernBertConfig(vocab_size=V, dropout=0.1, **SMALL), config, shards, tokenizer, tmp_path / "ckpt")
    trainer.train()
    model = trainer.model
    assert model.head_bias.abs().sum() > 0  # trained: the weights moved off their initialisation
    save_for_transformers(tokenizer, tmp_path / "tokenizer")
    assert export_model(model, tmp_path / "tokenizer", tmp_path / "export") <= 1e-4  # on rows of 24: 3 windows
    hf, loading = AutoModelForMaskedLM.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert type(hf).__name__ == "ModernBertForMaskedLM"
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    assert (saved["local_attention"], saved["attention_dropout"], saved["pad_token_id"]) == (8, 0.1, 0)
    hf.eval()

    ids, real = padded_batch(pad_id=0, vocab_size=V)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=real.long()).logits
    assert (ours(model, ids, *unpadded(real)) - theirs)[real].abs().max() <= 1e-4

    ids, positions, segments = packed_row(V)
    packed = ours(model, ids, positions, segments)
    for document in (0, 1):  # each document of the packed row against transformers on it alone
        with torch.no_grad():
            alone = hf(input_ids=ids[segments == document][None]).logits[0]
        assert (packed[segments == document] - alone).abs().max() <= 1e-4


def modernbert_trainer(tokenizer, shards, folder, **settings) -> Trainer:
    base = {"max_steps": 6, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "checkpoint_every": 100, "log_every": 3}
    return Trainer(ModernBertConfig(vocab_size=tokenizer.get_vocab_size(), dropout=0.1, **SMALL),
                   PretrainConfig(**base | settings), shards, tokenizer, folder)


def test_the_static_shape_step_gives_the_eager_losses(tokenizer, shards, tmp_path):
    eager = modernbert_trainer(tokenizer, shards, tmp_path / "eager")
    eager.train()
    static = modernbert_trainer(tokenizer, shards, tmp_path / "static", static_shapes=True)
    static.train()
    assert static.masked_overflow == 0
    torch.testing.assert_close(static.losses, eager.losses, rtol=1e-5, atol=0)


@pytest.mark.slow
def test_the_whole_step_compiles_as_one_graph(tokenizer, shards, tmp_path, monkeypatch):
    import torch._dynamo

    monkeypatch.setenv("DOMAINLM_COMPILE_BACKEND", "aot_eager")  # dynamo + AOTAutograd, no C++ code generation
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = modernbert_trainer(tokenizer, shards, tmp_path / "compiled", static_shapes=True, compile=True)
    compiled.train()  # rotary tables, the window band and the masks all inside the one graph
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"] and not counters["recompiles"]
    eager = modernbert_trainer(tokenizer, shards, tmp_path / "eager")
    eager.train()
    torch.testing.assert_close(compiled.losses, eager.losses, rtol=1e-4, atol=0)


def test_presets_have_the_published_shapes():
    from transformers import ModernBertConfig as HFConfig
    from transformers import ModernBertForMaskedLM

    from domainlm.config import ModelConfig

    def parameters(model):
        return sum(p.numel() for p in model.parameters())

    for preset, published in (("base", HFConfig()), ("large", HFConfig(  # answerdotai/ModernBERT-large
            hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16))):
        with torch.device("meta"):
            mine = ModernBert(ModernBertConfig(vocab_size=published.vocab_size,
                                               **ModelConfig(architecture="modernbert", preset=preset).resolved()))
            theirs = ModernBertForMaskedLM(published)
        assert parameters(mine) == parameters(theirs)


# ---------------------------------------------------------------------------------------- import
def test_a_stock_checkpoint_loads_with_its_logits_and_exports_with_its_names(tmp_path):
    stock = tiny_stock()
    stock.save_pretrained(tmp_path / "stock")
    model, info = load_checkpoint(tmp_path / "stock")
    assert info["architecture"] == "modernbert" and info["head_loaded"] == ["dense", "norm", "bias"]
    assert (model.config.global_every, model.config.local_window) == (3, 8)
    assert (model.config.global_rope_theta, model.config.local_rope_theta) == (1000.0, 100.0)
    ids, real = padded_batch(pad_id=0, vocab_size=100)
    with torch.no_grad():
        theirs = stock(input_ids=ids, attention_mask=real.long()).logits
    assert (ours(model, ids, *unpadded(real)) - theirs)[real].abs().max() <= 1e-5
    ids, positions, segments = packed_row(100)
    with torch.no_grad():
        alone = stock(input_ids=ids[segments == 1][None]).logits[0]
    assert (ours(model, ids, positions, segments)[segments == 1] - alone).abs().max() <= 1e-5

    to_hf_masked_lm(model).save_pretrained(tmp_path / "again")
    source, again = (load_file(tmp_path / name / "model.safetensors") for name in ("stock", "again"))
    assert source.keys() == again.keys() and all(torch.equal(source[k], again[k]) for k in source)

    # A config.json in the older format (before layer_types and rope_parameters) reads the same.
    hf = json.loads((tmp_path / "stock" / "config.json").read_text())
    del hf["layer_types"], hf["rope_parameters"]
    hf |= {"global_attn_every_n_layers": 3, "global_rope_theta": 1000.0, "local_rope_theta": 100.0}
    assert modernbert_config(tmp_path, hf, None) == model.config


def test_a_bare_modernbert_model_gets_a_new_head(tmp_path):
    from transformers import AutoModel

    tiny_stock(bare=True).save_pretrained(tmp_path)
    model, info = load_checkpoint(tmp_path)
    assert info["head_created"] == ["dense", "norm", "bias"]
    ids, real = padded_batch(pad_id=0, vocab_size=100)
    positions, segments = unpadded(real)
    with torch.no_grad():
        theirs = AutoModel.from_pretrained(tmp_path).eval()(input_ids=ids, attention_mask=real.long()).last_hidden_state
        hidden = model.eval()(ids, positions, document_attention(segments, positions, "sdpa"))
    assert (hidden - theirs)[real].abs().max() <= 1e-5


@pytest.fixture
def modernbert_checkpoint(tmp_path) -> Path:
    """A saved tiny random ModernBertForMaskedLM with a byte-level BPE tokenizer (as ModernBERT's)."""
    tokenizer = train_tokenizer(synthetic_texts(200), TokenizerConfig(model="bpe", vocab_size=300, min_frequency=1))
    folder = tmp_path / "modernbert-checkpoint"
    tiny_stock(vocab_size=tokenizer.get_vocab_size(), pad=tokenizer.token_to_id("<pad>")).save_pretrained(folder)
    save_for_transformers(tokenizer, folder)
    return folder


def test_continued_pretraining_of_a_modernbert_checkpoint_exports_it_back(tiny_recipe, modernbert_checkpoint):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from domainlm.pipeline import run_stage
    from domainlm.vocabulary import read_tokenizer

    tiny_recipe["model"] = {"init_from": str(modernbert_checkpoint)}
    tiny_recipe["pretrain"] |= {"max_steps": 2, "batch_size": 4, "checkpoint_every": 2}
    config = config_from_dict(tiny_recipe)
    for stage in ("corpus", "tokenizer", "pretrain"):
        run_stage(config, stage)
    export = config.directory / "pretrain" / "export"
    summary = json.loads((config.directory / "pretrain" / "summary.json").read_text())
    assert summary["init"]["architecture"] == "modernbert" and summary["export_max_abs_logit_diff"] <= 1e-4
    assert json.loads((export / "config.json").read_text())["model_type"] == "modernbert"
    source, exported = (load_file(folder / "model.safetensors") for folder in (modernbert_checkpoint, export))
    assert source.keys() == exported.keys()
    assert not torch.equal(source["head.dense.weight"], exported["head.dense.weight"])  # it trained
    assert type(AutoModelForMaskedLM.from_pretrained(export)).__name__ == "ModernBertForMaskedLM"
    text = "The protein kinase binds the receptor."
    assert AutoTokenizer.from_pretrained(export)(text)["input_ids"] == read_tokenizer(modernbert_checkpoint).encode(
        text).ids


@pytest.mark.slow
def test_sigkill_then_resume_of_a_continued_modernbert_is_bit_exact(tokenizer, shards, tmp_path):
    from test_engine import _run_worker, _spec

    checkpoint = tmp_path / "checkpoint"
    tiny_stock(vocab_size=tokenizer.get_vocab_size(), pad=tokenizer.token_to_id("[PAD]"), dropout=0.1
               ).save_pretrained(checkpoint)
    shards_dir = Path(shards.tokens.filename).parent
    straight = _spec(tokenizer, shards_dir, tmp_path / "straight") | {"init_from": str(checkpoint)}
    assert _run_worker(straight, tmp_path / "straight").returncode == 0
    kill_at = random.Random(11).randint(4, 11)  # checkpoints every 3 steps: the resume replays steps
    killed = _spec(tokenizer, shards_dir, tmp_path / "killed") | {"init_from": str(checkpoint)}
    result = _run_worker({**killed, "kill_at": kill_at}, tmp_path / "killed")
    assert result.returncode == -9, f"killed at step {kill_at}: {result.stderr[-2000:]}"
    resumed = _run_worker(killed, tmp_path / "killed")
    assert resumed.returncode == 0 and "resumed from step-" in resumed.stderr, resumed.stderr[-2000:]
    losses = json.loads((tmp_path / "killed" / "out.json").read_text())["losses"]
    assert losses == json.loads((tmp_path / "straight" / "out.json").read_text())["losses"]  # dropout 0.1, fp32 CPU


# ----------------------------------------------------------------------------------- bad input
def test_checkpoints_our_layouts_cannot_hold_are_refused_naming_why(tmp_path):
    from transformers import ModernBertConfig as HFConfig

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match=r"model_type 'gpt2' is not supported; supported: bert, electra, "
                                         r"modernbert, roberta"):
        load_checkpoint(tmp_path / "gpt2")

    (tmp_path / "odd").mkdir()  # a config is read before any weights
    odd = HFConfig(num_hidden_layers=4, hidden_activation="silu", attention_bias=True,
                   layer_types=["full_attention", "sliding_attention", "full_attention", "full_attention"])
    (tmp_path / "odd" / "config.json").write_text(odd.to_json_string())
    with pytest.raises(ModelError, match=r"hidden_activation 'silu' \(ours: 'gelu'\); attention_bias True .*"
                                         r"layer_types \['full_attention', 'sliding_attention'"):
        load_checkpoint(tmp_path / "odd")


def test_seq_len_beyond_the_rotary_range_is_refused(tiny_recipe, modernbert_checkpoint):
    tiny_recipe["model"] = {"init_from": str(modernbert_checkpoint)}
    tiny_recipe["pretrain"]["seq_len"] = 128
    config = config_from_dict(tiny_recipe)  # the checkpoint's range is known once it loads
    with pytest.raises(ConfigError, match=r"pretrain.seq_len 128 exceeds the 64 positions the checkpoint .* "
                                          r"\(max_position_embeddings 64, .*\): set pretrain.seq_len <= 64"):
        check_positions(load_checkpoint(modernbert_checkpoint)[0].config, config)
    tiny_recipe["model"] = {"architecture": "modernbert", "max_position": 64}  # from scratch: at load time
    with pytest.raises(ConfigError, match=r"pretrain.seq_len 128 exceeds model.max_position 64"):
        config_from_dict(tiny_recipe)


@pytest.mark.parametrize("window", [0, 7, -2])
def test_a_window_that_is_not_a_positive_even_number_is_refused(tiny_recipe, window):
    tiny_recipe["model"] |= {"architecture": "modernbert", "local_window": window}
    with pytest.raises(ConfigError, match=rf"key 'model.local_window': must be a positive even number.*\(got {window}\)"):
        config_from_dict(tiny_recipe)


def test_a_window_covering_whole_rows_is_legal_and_said(tiny_recipe, caplog):
    from domainlm.pretrain import check_window

    config = config_from_dict(tiny_recipe | {"model": {"architecture": "modernbert", "local_window": 128}})
    with caplog.at_level("WARNING", logger="domainlm"):
        check_window(ModernBertConfig(vocab_size=10, local_window=126), config)  # +-63 of a 64-token row
    assert "model.local_window 126 covers every pair of tokens in a 64-token row" in caplog.text
    caplog.clear()
    check_window(ModernBertConfig(vocab_size=10, local_window=124), config)
    assert not caplog.text


def test_layout_keys_must_fit_the_architecture(tiny_recipe):
    with pytest.raises(ConfigError, match=r"model.local_window 64 applies to model.architecture modernbert, but "
                                          r"model.architecture is 'bert'"):
        config_from_dict(tiny_recipe | {"model": {"local_window": 64}})
    with pytest.raises(ConfigError, match=r"model.preset 'large' has no bert size; bert presets: micro, .*base"):
        config_from_dict(tiny_recipe | {"model": {"preset": "large"}})
    with pytest.raises(ConfigError, match=r"pretrain.objective electra trains the bert layout"):
        config_from_dict(tiny_recipe | {"model": {"architecture": "modernbert"},
                                        "pretrain": tiny_recipe["pretrain"] | {"objective": "electra"}})


def test_extending_a_modernbert_vocabulary_fails_before_any_weights_load(tiny_recipe, modernbert_checkpoint,
                                                                         monkeypatch):
    import domainlm.pretrain.hf_checkpoint as hf_checkpoint

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(hf_checkpoint, "load_file", never)  # every safetensors read goes through it
    tiny_recipe["model"] = {"init_from": str(modernbert_checkpoint), "extend_vocab": 10}
    config = config_from_dict(tiny_recipe)  # a WordPiece domain tokenizer: the config alone cannot tell
    with pytest.raises(ConfigError, match=r"model.extend_vocab 10: vocabulary extension adds WordPiece entries, "
                                          r"but the checkpoint .* has a BPE tokenizer: set model.extend_vocab: 0"):
        check(config)


def test_a_modernbert_architecture_needs_a_modernbert_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "bert")
    tiny_recipe["model"] = {"architecture": "modernbert", "init_from": str(tmp_path / "bert")}
    with pytest.raises(ConfigError, match=r"model.architecture is 'modernbert', but model.init_from .* is a 'bert' "
                                          r"checkpoint"):
        check(config_from_dict(tiny_recipe))


def test_bert_fingerprints_leave_out_the_modernbert_keys(tiny_recipe):
    bert = settings(config_from_dict(tiny_recipe))["model"]
    assert set(bert) == {"preset", "num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position",
                         "dropout", "init_from", "extend_vocab"}  # the section as it was before the modernbert layout
    modern = settings(config_from_dict(tiny_recipe | {"model": {"architecture": "modernbert", "max_position": 64}}))
    assert modern["model"]["architecture"] == "modernbert" and "local_window" in modern["model"]


@pytest.mark.slow
def test_the_tiny_recipe_runs_end_to_end_in_the_modernbert_layout(tiny_recipe):
    from domainlm.pipeline import run_all

    tiny_recipe["tokenizer"] |= {"model": "bpe", "vocab_size": 300}
    tiny_recipe["model"] |= {"architecture": "modernbert", "local_window": 16, "dropout": 0.0}
    tiny_recipe["evaluate"]["seeds"] = [0]
    config = config_from_dict(tiny_recipe)
    run_all(config)
    rows = json.loads((config.directory / "report" / "results.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"domain", "random-init", "tfidf"}
    assert {r["task"] for r in rows if r["model"] == "domain"} == {"cls", "ner"}
    exported = json.loads((config.directory / "pretrain" / "export" / "config.json").read_text())
    assert (exported["model_type"], exported["num_hidden_layers"], exported["local_attention"]) == ("modernbert", 3, 16)

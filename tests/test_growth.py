"""Model growth (bert2BERT): function-preserving widening in both layouts, which layers depth
growth copies, what aki changes, the sizes refused, and a grown model through the pretrain stage."""

import json

import pytest
import torch

from conftest import synthetic_texts
from domainlm.config import TokenizerConfig, config_from_dict
from domainlm.errors import ConfigError
from domainlm.pretrain import check, export_model, inputs, settings
from domainlm.pretrain.architectures import ARCHITECTURES, new_model
from domainlm.pretrain.attention import document_attention
from domainlm.pretrain.growth import grow, grown_config, layer_sources
from domainlm.tokenizer import save_for_transformers, train_wordpiece

LAYOUT_KEYS = {"bert": {}, "modernbert": {"local_window": 8, "global_every": 2}}  # layer 1 local (+-4 tokens)
WIDER = {"num_layers": 2, "hidden_size": 128, "num_heads": 4, "intermediate_size": 200}


def small_model(architecture: str, num_layers: int = 2, vocab_size: int = 50):
    """A random model (hidden 64, 2 heads, MLP 128) whose LayerNorms and biases are moved away
    from their init, so that copying them wrongly shows."""
    config = ARCHITECTURES[architecture].config(vocab_size=vocab_size, hidden_size=64, num_layers=num_layers,
                                                num_heads=2, intermediate_size=128, max_position=64, dropout=0.0,
                                                **LAYOUT_KEYS[architecture])
    torch.manual_seed(0)
    model = new_model(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p += 0.3 * torch.randn_like(p)
    return model.eval()


@torch.no_grad()
def packed_logits(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and MLM logits of one packed row: documents of 9 and 11 tokens, 4 padding
    positions, attention inside each document."""
    segments = torch.tensor([[0] * 9 + [1] * 11 + [-2, -3, -4, -5]])
    positions = torch.tensor([list(range(9)) + list(range(11)) + [0] * 4])
    ids = torch.randint(5, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    hidden = model.eval()(ids, positions, document_attention(segments, positions, "sdpa"))
    return hidden, model.mlm_logits(hidden)


@pytest.mark.parametrize("architecture", ["bert", "modernbert"])
def test_fpi_widening_gives_the_small_models_logits(architecture):
    small = small_model(architecture)
    grown = grow(small, grown_config(small.config, WIDER))
    assert (grown.config.hidden_size, grown.config.num_heads, grown.config.intermediate_size) == (128, 4, 200)
    hidden, logits = packed_logits(small)
    grown_hidden, grown_logits = packed_logits(grown)
    assert (grown_logits - logits).abs().max() <= 1e-4 and logits.abs().max() > 0.1
    # The residual stream is the small one's, each unit twice (unit j copies j mod 64).
    assert (grown_hidden - torch.cat([hidden, hidden], dim=-1)).abs().max() <= 1e-5


@pytest.mark.parametrize(("depth", "copied"), [("stack", [0, 1, 0, 1, 0]), ("interleave", [0, 0, 0, 1, 1])])
def test_depth_growth_copies_the_source_layers(depth, copied):
    assert layer_sources(2, 5, depth) == copied
    assert layer_sources(3, 6, depth) == ([0, 1, 2, 0, 1, 2] if depth == "stack" else [0, 0, 1, 1, 2, 2])
    small = small_model("bert")
    grown = grow(small, grown_config(small.config, {**WIDER, "num_layers": 5, "hidden_size": 64, "num_heads": 2,
                                                    "intermediate_size": 128}), depth=depth)
    for target, source in enumerate(copied):
        mine, theirs = grown.blocks[target].state_dict(), small.blocks[source].state_dict()
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs)
    assert torch.equal(grown.tok_embed.weight, small.tok_embed.weight)


def test_a_modernbert_layer_0_copied_higher_gets_a_fresh_attention_norm():
    small = small_model("modernbert")
    grown = grow(small, grown_config(small.config, {**WIDER, "num_layers": 3}))  # stack: layers 0, 1, 0
    assert isinstance(grown.blocks[0].attn_norm, torch.nn.Identity)
    assert torch.equal(grown.blocks[2].attn_norm.weight, torch.ones(128))
    assert torch.equal(grown.blocks[2].qkv.weight, grown.blocks[0].qkv.weight)
    assert [b.is_global for b in grown.blocks] == [True, False, True]  # the layout's pattern, not the source's


@pytest.mark.parametrize("architecture", ["bert", "modernbert"])
def test_aki_differs_from_fpi_in_the_new_units_only(architecture):
    small = small_model(architecture)
    target = grown_config(small.config, WIDER)
    fpi, aki = (grow(small, target, init=init).state_dict() for init in ("fpi", "aki"))
    differ = sorted(name for name in fpi if not torch.equal(fpi[name], aki[name]))
    assert differ and all(name.startswith("blocks.0.") for name in differ)  # the top layer uses its own
    old_width = torch.arange(128) < 64
    for name in ("mlp_out.weight", "mlp_norm.weight"):  # rows: the residual stream
        assert torch.equal(aki[f"blocks.0.{name}"][old_width], fpi[f"blocks.0.{name}"][old_width])
        assert torch.equal(aki[f"blocks.0.{name}"][~old_width], fpi[f"blocks.1.{name}"][~old_width])
        assert not torch.equal(aki[f"blocks.0.{name}"][~old_width], fpi[f"blocks.0.{name}"][~old_width])
    old_heads = torch.cat([old_width] * 3)  # q, k, v: heads 0-1 of 4 in each
    assert torch.equal(aki["blocks.0.qkv.weight"][old_heads], fpi["blocks.0.qkv.weight"][old_heads])
    assert torch.equal(aki["blocks.0.qkv.weight"][~old_heads], fpi["blocks.1.qkv.weight"][~old_heads])
    old_inner = torch.arange(200) < 128
    if architecture == "modernbert":  # the GeGLU's values and gates grow alike
        old_inner = torch.cat([old_inner, old_inner])
    assert torch.equal(aki["blocks.0.mlp_in.weight"][old_inner], fpi["blocks.0.mlp_in.weight"][old_inner])
    assert torch.equal(aki["blocks.0.mlp_in.weight"][~old_inner], fpi["blocks.1.mlp_in.weight"][~old_inner])


@pytest.mark.parametrize(("sizes", "message"), [
    ({"hidden_size": 96, "num_heads": 3}, r"model.hidden_size 96 is not a multiple of 64, the hidden size of "
                                          r"model.grow_from"),
    ({"num_heads": 2}, r"model.num_heads 2 with model.hidden_size 128 changes the head size of model.grow_from "
                       r"\(32\): set model.num_heads: 4"),
    ({"num_layers": 1}, r"model.num_layers 1 is smaller than model.grow_from's 2"),
    ({"intermediate_size": 100}, r"model.intermediate_size 100 is smaller than model.grow_from's 128"),
])
def test_sizes_growth_cannot_reach_are_config_errors(sizes, message):
    with pytest.raises(ConfigError, match=message):
        grown_config(small_model("bert").config, {**WIDER, **sizes})


# ------------------------------------------------------------------------------ through the stage
@pytest.fixture
def small_export(tmp_path):
    """A tiny domainlm export (BertForMaskedLM + WordPiece tokenizer): hidden 32, 2 heads, 1 layer."""
    tokenizer = train_wordpiece(synthetic_texts(200), TokenizerConfig(vocab_size=150, min_frequency=1))
    config = ARCHITECTURES["bert"].config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=1,
                                          num_heads=2, intermediate_size=64, max_position=64,
                                          pad_token_id=tokenizer.token_to_id("[PAD]"))
    torch.manual_seed(0)
    save_for_transformers(tokenizer, tmp_path / "tokenizer")
    export_model(new_model(config), tmp_path / "tokenizer", tmp_path / "small")
    return tmp_path / "small"


def test_recipe_keys_refused_together_and_fingerprinted(tiny_recipe, small_export):
    grown = tiny_recipe | {"model": {"grow_from": str(small_export)}}
    for extra, message in ((dict(init_from=str(small_export)), r"model.init_from and model.grow_from are both set"),
                           (dict(extend_vocab=10), r"model.extend_vocab 10 extends an init_from checkpoint's")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict(grown | {"model": grown["model"] | extra})
    with pytest.raises(ConfigError, match=r"model.grow_from continues masked-language-model pretraining"):
        config_from_dict(grown | {"pretrain": tiny_recipe["pretrain"] | {"objective": "electra"}})
    config = config_from_dict(grown)
    assert str(small_export) in inputs(config) and str(small_export) in config.input_paths()
    assert settings(config)["model"]["grow_init"] == "fpi"
    assert "grow_init" not in settings(config_from_dict(tiny_recipe))["model"]  # older runs keep their fingerprint
    with pytest.raises(ConfigError, match=r"model.architecture is 'modernbert', but model.grow_from .* is a 'bert'"):
        check(config_from_dict(grown | {"model": grown["model"] | {"architecture": "modernbert"}}))


def test_an_electra_checkpoint_is_not_grown(tiny_recipe, tmp_path):
    from transformers import ElectraConfig, ElectraForPreTraining

    ElectraForPreTraining(ElectraConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
                          ).save_pretrained(tmp_path / "electra")
    config = config_from_dict(tiny_recipe | {"model": {"grow_from": str(tmp_path / "electra")}})
    with pytest.raises(ConfigError, match=r"is an ELECTRA checkpoint: growth starts from a BERT"):
        check(config)


def test_a_grown_model_pretrains_and_exports_with_its_sizes(tiny_recipe, small_export):
    from transformers import AutoModelForMaskedLM

    from domainlm.pipeline import run_stage
    from domainlm.vocabulary import read_tokenizer

    tiny_recipe["model"] = {"grow_from": str(small_export), "num_layers": 2, "hidden_size": 64, "num_heads": 4,
                            "intermediate_size": 96, "grow_init": "aki"}
    tiny_recipe["pretrain"] |= {"max_steps": 2, "batch_size": 4, "checkpoint_every": 2}
    config = config_from_dict(tiny_recipe)
    for stage in ("corpus", "tokenizer", "pretrain"):
        run_stage(config, stage)
    summary = json.loads((config.directory / "pretrain" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["export_max_abs_logit_diff"] <= 1e-4
    assert summary["init"]["growth"] == {
        "method": "bert2BERT", "depth": "stack", "init": "aki",
        "source_sizes": {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
        "target_sizes": {"num_layers": 2, "hidden_size": 64, "num_heads": 4, "intermediate_size": 96}}
    export = config.directory / "pretrain" / "export"
    hf = AutoModelForMaskedLM.from_pretrained(export).config
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size) == (2, 64, 4, 96)
    assert read_tokenizer(export).get_vocab() == read_tokenizer(small_export).get_vocab()  # the source's vocabulary

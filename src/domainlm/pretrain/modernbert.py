"""The ModernBERT layout (Warner et al. 2024, "Smarter, Better, Faster, Longer: A Modern
Bidirectional Encoder for Fast, Memory Efficient, and Long Context Finetuning and Inference",
arXiv:2412.13663), written for packed training like `bert.Bert`.

Token embeddings and a LayerNorm (no position table); pre-LayerNorm layers with no biases, whose
attention rotates queries and keys by position (RoPE, Su et al. 2021) with one base on global
layers and another on local ones; every `global_every`-th layer from layer 0 attends globally, the
others within a sliding window of `local_window` tokens (a token sees local_window / 2 on each
side); a GeGLU feed-forward (Shazeer 2020); a final LayerNorm; an MLM head (dense, GELU, LayerNorm)
decoding with the token embeddings plus a bias. Layer 0 has no attention norm: the embedding norm
comes right before it. Attention stays inside each packed document on every layer, the window
inside the document as well (`Attention.within`).

It differs from `transformers.ModernBertForMaskedLM` only in layout, never in arithmetic: the
export (`to_hf_state_dict`) renames the weights one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from domainlm.errors import ModelError
from domainlm.pretrain.attention import Attention, attend
from domainlm.pretrain.encoder import MaskedLM
from domainlm.pretrain.hf_checkpoint import read_checkpoint_config, read_safetensors


@dataclass
class ModernBertConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 384
    """Width of the GeGLU: the input projection gives twice this (values and gates)."""
    max_position: int = 512
    """The longest row the rotary positions are trained for (max_position_embeddings)."""
    dropout: float = 0.0
    """Embedding, attention (probabilities and output) and GeGLU dropout: ModernBERT uses 0."""
    pad_token_id: int = 0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    local_window: int = 128
    """Tokens a local layer's query sees: those at most local_window // 2 positions away."""
    global_every: int = 3
    """Layers 0, n, 2n, ... attend globally, the others locally."""
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    token_ids: dict[str, int | None] = field(default_factory=dict)
    """bos / eos / cls / sep ids for config.json (a continued checkpoint's own, kept on export)."""

    @property
    def attention_window(self) -> int | None:
        """Tokens a local attention layer sees (`local_window`)."""
        return self.local_window

    def is_global(self, layer: int) -> bool:
        return layer % self.global_every == 0

    def usable_positions(self) -> tuple[int, str]:
        """The longest row this model can take, and where that limit comes from."""
        why = f"max_position_embeddings {self.max_position}, the range its rotary positions were trained for"
        return self.max_position, why

    def to_hf(self):
        """The equivalent `transformers.ModernBertConfig`. The attention pattern and the two rotary
        bases are given by the keys every transformers version reads (global_attn_every_n_layers,
        global_rope_theta, local_rope_theta); newer versions store them as layer_types and
        rope_parameters."""
        from transformers import ModernBertConfig as HFConfig

        return HFConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads, hidden_activation="gelu",
            max_position_embeddings=self.max_position, initializer_range=self.initializer_range,
            norm_eps=self.norm_eps, norm_bias=False, pad_token_id=self.pad_token_id,
            **{f"{role}_token_id": self.token_ids.get(role) for role in ("bos", "eos", "cls", "sep")},
            attention_bias=False, attention_dropout=self.dropout, embedding_dropout=self.dropout,
            mlp_bias=False, mlp_dropout=self.dropout, decoder_bias=True, classifier_bias=False,
            classifier_activation="gelu", local_attention=self.local_window,
            global_attn_every_n_layers=self.global_every, global_rope_theta=self.global_rope_theta,
            local_rope_theta=self.local_rope_theta, tie_word_embeddings=True,
            architectures=["ModernBertForMaskedLM"],
        )


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x (..., T, nh, hs) with cos, sin (..., T, 1, hs): dimension i is paired with i + hs/2
    (the GPT-NeoX layout transformers uses), in fp32 whatever x's dtype."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


class Block(nn.Module):
    """One pre-LN layer: x = x + attn(norm(x)); x = x + geglu(norm(x)). Layer 0 has no attention norm."""

    def __init__(self, c: ModernBertConfig, layer: int):
        super().__init__()
        H, I = c.hidden_size, c.intermediate_size  # noqa: E741 - the paper's names
        self.num_heads, self.is_global = c.num_heads, c.is_global(layer)
        self.attn_norm = nn.LayerNorm(H, eps=c.norm_eps, bias=False) if layer else nn.Identity()
        self.qkv = nn.Linear(H, 3 * H, bias=False)
        self.attn_out = nn.Linear(H, H, bias=False)
        self.mlp_norm = nn.LayerNorm(H, eps=c.norm_eps, bias=False)
        self.mlp_in = nn.Linear(H, 2 * I, bias=False)  # values, then gates
        self.mlp_out = nn.Linear(I, H, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        self.attn_dropout = c.dropout

    def forward(self, x: torch.Tensor, attn: Attention, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (B, T, H), or (N, H) when padding was removed (varlen)
        qkv = self.qkv(self.attn_norm(x)).view(*shape[:-1], 3, self.num_heads, shape[-1] // self.num_heads)
        q, k, v = qkv.unbind(-3)  # (B, T, nh, hs) or (N, nh, hs)
        y = attend(rotate(q, cos, sin), rotate(k, cos, sin), v, attn, self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.attn_out(y.reshape(shape)))
        values, gates = self.mlp_in(self.mlp_norm(x)).chunk(2, dim=-1)  # (..., I) each
        return x + self.mlp_out(self.dropout(F.gelu(values) * gates))


class ModernBert(MaskedLM):
    """The encoder and its MLM head; weights named as `bert.Bert`'s where they play the same part
    (tok_embed, blocks.{i}.qkv, head_bias, ...), so code that reads those (vocabulary extension,
    parameter counts) works on both."""

    def __init__(self, c: ModernBertConfig):
        super().__init__()
        self.config = c
        H = c.hidden_size
        self.tok_embed = nn.Embedding(c.vocab_size, H, padding_idx=c.pad_token_id)
        self.embed_norm = nn.LayerNorm(H, eps=c.norm_eps, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, layer) for layer in range(c.num_layers))
        self.final_norm = nn.LayerNorm(H, eps=c.norm_eps, bias=False)
        # MLM head: dense + GELU + LN, then a decoder tied to the token embeddings (with a bias).
        self.head_dense = nn.Linear(H, H, bias=False)
        self.head_norm = nn.LayerNorm(H, eps=c.norm_eps, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(c.vocab_size))
        hs = H // c.num_heads
        for kind, theta in (("global", c.global_rope_theta), ("local", c.local_rope_theta)):
            inverse = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.float) / hs))  # (hs/2,)
            self.register_buffer(f"{kind}_inv_freq", inverse, persistent=False)  # a function of the config
        self._init_weights()

    def _init_weights(self) -> None:
        # ModernBERT's initialisation (its released code, as transformers): truncated normal at
        # +-2 std, std 0.02, and 0.02 / sqrt(2 x layers) on the projections that write into the
        # residual stream and on the head's dense layer; LayerNorm weights 1.
        c = self.config
        out_std = c.initializer_range / math.sqrt(2 * c.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                std = out_std if name.endswith(("attn_out", "mlp_out", "head_dense")) else c.initializer_range
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        with torch.no_grad():
            self.tok_embed.weight[c.pad_token_id].zero_()

    def rotary(self, position_ids: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (..., T, 1, hs) of positions (..., T) with the `kind` ("global" / "local") base."""
        angles = position_ids[..., None].float() * getattr(self, f"{kind}_inv_freq").float()  # (..., T, hs/2)
        angles = torch.cat((angles, angles), dim=-1).unsqueeze(-2)
        return angles.cos(), angles.sin()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention) -> torch.Tensor:
        """input_ids, position_ids: (B, T), positions restarting at 0 in each packed document; attn:
        from `document_attention`. Returns the final-normed hidden states (B, T, H), or (N, H) for
        the real tokens only with varlen attention."""
        input_ids, position_ids = attn.select(input_ids), attn.select(position_ids)
        x = self.dropout(self.embed_norm(self.tok_embed(input_ids)))
        c = self.config
        kinds = {"global": attn}
        if not all(block.is_global for block in self.blocks):
            kinds["local"] = attn.within(c.local_window // 2)
        inputs = {kind: (attention, *self.rotary(position_ids, kind)) for kind, attention in kinds.items()}
        for block in self.blocks:  # each layer gets its kind's attention and rotary cos, sin
            x = block(x, *inputs["global" if block.is_global else "local"])
        return self.final_norm(x)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states of any shape (..., H)."""
        h = self.head_norm(F.gelu(self.head_dense(hidden)))
        return F.linear(h, self.tok_embed.weight, self.head_bias)


# ------------------------------------------------------------------- transformers export / import
# Names in transformers' ModernBertForMaskedLM for each of ours (per layer, `{i}` is the index).
_HF_NAMES = {
    "tok_embed.weight": "model.embeddings.tok_embeddings.weight",
    "embed_norm.weight": "model.embeddings.norm.weight",
    "final_norm.weight": "model.final_norm.weight",
    "head_dense.weight": "head.dense.weight",
    "head_norm.weight": "head.norm.weight",
    "head_bias": "decoder.bias",
}
_HF_LAYER_NAMES = {"attn_norm": "attn_norm", "qkv": "attn.Wqkv", "attn_out": "attn.Wo", "mlp_norm": "mlp_norm",
                   "mlp_in": "mlp.Wi", "mlp_out": "mlp.Wo"}
_HEAD = ("head_dense.", "head_norm.", "head_bias")


def _hf_name(ours: str) -> str:
    if ours in _HF_NAMES:
        return _HF_NAMES[ours]
    _, index, module, kind = ours.split(".")  # blocks.{i}.{module}.weight
    return f"model.layers.{index}.{_HF_LAYER_NAMES[module]}.{kind}"


def to_hf_state_dict(model: ModernBert) -> dict[str, torch.Tensor]:
    """Our weights under `ModernBertForMaskedLM`'s names (the decoder is the token embeddings)."""
    out = {_hf_name(name): tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    out["decoder.weight"] = out["model.embeddings.tok_embeddings.weight"]
    return out


def to_hf_masked_lm(model: ModernBert, config: ModernBertConfig | None = None):
    """The stock `transformers.ModernBertForMaskedLM` holding our weights. `config` (default: the
    model's) is what its config says, e.g. dropout."""
    from transformers import AutoModelForMaskedLM

    hf = AutoModelForMaskedLM.from_config((config or model.config).to_hf())
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    return hf


def _layer_pattern(hf: dict) -> list[bool]:
    """Which layers attend globally, from either config format (layer_types, or the older
    global_attn_every_n_layers)."""
    if hf.get("layer_types"):
        return [kind == "full_attention" for kind in hf["layer_types"]]
    every = hf.get("global_attn_every_n_layers", 3)
    return [layer % every == 0 for layer in range(hf["num_hidden_layers"])]


def _rope_thetas(hf: dict) -> tuple[float, float, list[str]]:
    """(global, local) rotary bases from either config format (rope_parameters, or the older
    global_rope_theta / local_rope_theta), and the rotary settings ours cannot reproduce."""
    parameters = hf.get("rope_parameters") or {}
    problems = [f"rope_parameters.{kind}.rope_type {p.get('rope_type')!r} (ours is 'default')"
                for kind, p in parameters.items() if isinstance(p, dict) and p.get("rope_type", "default") != "default"]
    if hf.get("rope_scaling"):
        problems.append(f"rope_scaling {hf['rope_scaling']} (ours has none)")
    global_theta = (parameters.get("full_attention") or {}).get("rope_theta", hf.get("global_rope_theta", 160_000.0))
    local_theta = (parameters.get("sliding_attention") or {}).get("rope_theta", hf.get("local_rope_theta", 10_000.0))
    return float(global_theta), float(local_theta if local_theta is not None else global_theta), problems


def modernbert_config(path: Path, hf: dict, dropout: float | None) -> ModernBertConfig:
    """Our config of a transformers ModernBERT config.json, or ModelError naming what ours cannot
    reproduce. The three dropouts (embedding, attention, MLP) become one, their largest."""
    problems = []
    for key, expected in (("hidden_activation", "gelu"), ("classifier_activation", "gelu"),
                          ("attention_bias", False), ("mlp_bias", False), ("norm_bias", False),
                          ("classifier_bias", False), ("decoder_bias", True), ("tie_word_embeddings", True)):
        if hf.get(key, expected) != expected:
            problems.append(f"{key} {hf[key]!r} (ours: {expected!r})")
    pattern = _layer_pattern(hf)
    every = next((n for n in range(1, len(pattern) + 1)
                  if pattern == [layer % n == 0 for layer in range(len(pattern))]), None)
    if every is None:
        problems.append(f"layer_types {hf.get('layer_types')} (ours: global on layers 0, n, 2n, ... and local between)")
    local_window = hf.get("local_attention", 128)
    if not isinstance(local_window, int) or local_window < 2:
        problems.append(f"local_attention {local_window!r} (ours: a window of at least 2 tokens)")
    global_theta, local_theta, rope_problems = _rope_thetas(hf)
    problems += rope_problems
    if problems:
        raise ModelError(f"{path}: cannot load into our ModernBERT: {'; '.join(problems)}")
    if dropout is None:
        dropout = max(hf.get(k, 0.0) for k in ("embedding_dropout", "attention_dropout", "mlp_dropout"))
    return ModernBertConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position=hf["max_position_embeddings"], dropout=dropout, pad_token_id=hf.get("pad_token_id") or 0,
        norm_eps=hf.get("norm_eps", 1e-5), initializer_range=hf.get("initializer_range", 0.02),
        local_window=local_window, global_every=every, global_rope_theta=global_theta, local_rope_theta=local_theta,
        token_ids={role: hf.get(f"{role}_token_id") for role in ("bos", "eos", "cls", "sep")},
    )


def load_hf_modernbert(path: Path, dropout: float | None = None) -> tuple[ModernBert, dict]:
    """Our `ModernBert` with the weights of a local ModernBERT checkpoint directory (safetensors
    only). dropout: overrides the checkpoint's. A missing MLM head (a `ModernBertModel` directory)
    is created with ModernBERT's initialisation from the global torch RNG. Returns (model, info)
    as `bert.load_hf_bert` does."""
    path = Path(path)
    hf = read_checkpoint_config(path)
    config = modernbert_config(path, hf, dropout)
    theirs = {}
    for name, tensor in read_safetensors(path).items():  # a bare ModernBertModel has no "model." prefix
        bare = name.startswith(("embeddings.", "layers.", "final_norm."))
        theirs["model." + name if bare else name] = tensor
    decoder = theirs.pop("decoder.weight", None)
    embeddings = theirs.get(_HF_NAMES["tok_embed.weight"])
    if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
        raise ModelError(f"{path}: the MLM decoder is not tied to the token embeddings; our ModernBERT always ties them")

    model = ModernBert(config)  # freshly initialised: what the checkpoint lacks keeps ModernBERT's init
    names = {_hf_name(ours): ours for ours in model.state_dict()}
    ours = {names[name]: tensor for name, tensor in theirs.items() if name in names}
    missing, unexpected = model.load_state_dict(ours, strict=False)
    created = [part for part, prefix in zip(("dense", "norm", "bias"), _HEAD, strict=True)
               if any(k.startswith(prefix) for k in missing)]
    missing_encoder = [k for k in missing if not k.startswith(_HEAD)]
    if missing_encoder or unexpected:
        raise ModelError(f"{path}: weights do not fit {config}: missing {missing_encoder}, unexpected {unexpected}")
    info = {"model_type": hf["model_type"], "architectures": hf.get("architectures", []), "head_created": created,
            "head_loaded": [p for p in ("dense", "norm", "bias") if p not in created],
            "ignored": sorted(name for name in theirs if name not in names)}
    return model, info

"""The BERT layout (post-LayerNorm, GELU, learned absolute positions), written for speed, and its
round trip with `transformers` (BERT, RoBERTa and ELECTRA checkpoints in, BertForMaskedLM or
RobertaForMaskedLM out).

It differs from `transformers.BertForMaskedLM` only in layout, never in arithmetic, so training
can use packed sequences with document-aware attention and a masked-only prediction head, and the
export (`to_hf_state_dict`) is a renaming plus a split of the fused QKV projection. Loading reads
`model.safetensors` only (never pickles, never remote code): BERT, ELECTRA and RoBERTa checkpoints
share the layer layout, so it is a renaming to BertForMaskedLM's names followed by the inverse of
`to_hf_state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from domainlm.errors import ModelError
from domainlm.pretrain.attention import Attention, attend
from domainlm.pretrain.encoder import MaskedLM
from domainlm.pretrain.hf_checkpoint import read_checkpoint_config, read_safetensors


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position: int = 512
    dropout: float = 0.1
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    type_vocab_size: int = 2
    """Rows of the token-type table (only row 0 is used): 2 for BERT, 1 for RoBERTa checkpoints."""
    position_offset: int = 0
    """Added to position ids before the lookup: RoBERTa numbers positions from pad_token_id + 1."""
    embedding_size: int | None = None
    """Width of the embeddings when it differs from hidden_size (ELECTRA's generator)."""
    family: str = "bert"
    """The transformers architecture the export writes: "bert" (BertForMaskedLM) or "roberta"."""

    @property
    def attention_window(self) -> int | None:
        """Tokens a local attention layer sees (None: every layer attends globally)."""
        return None

    def usable_positions(self) -> tuple[int, str]:
        """The longest row this model can take, and where that limit comes from."""
        offset = f", minus an offset of {self.position_offset}" if self.position_offset else ""
        return self.max_position - self.position_offset, f"{self.max_position} in its table{offset}"

    def to_hf(self):
        """The equivalent `transformers.BertConfig` (or `RobertaConfig` for the roberta family)."""
        from transformers import BertConfig as HFBertConfig
        from transformers import RobertaConfig

        if self.family not in ("bert", "roberta"):
            raise ValueError(f"BertConfig.family: expected 'bert' or 'roberta', got {self.family!r}")
        if self.family == "roberta" and self.position_offset != self.pad_token_id + 1:
            # transformers derives RoBERTa positions from the padding id; any other offset would not round-trip.
            raise ValueError(f"roberta family needs position_offset = pad_token_id + 1 = {self.pad_token_id + 1}, "
                             f"got {self.position_offset}")
        if self.family == "bert" and self.position_offset != 0:
            raise ValueError(f"bert family needs position_offset 0, got {self.position_offset}")
        config_class = RobertaConfig if self.family == "roberta" else HFBertConfig
        return config_class(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position, hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout, pad_token_id=self.pad_token_id,
            layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
            hidden_act="gelu", type_vocab_size=self.type_vocab_size,
            architectures=["RobertaForMaskedLM" if self.family == "roberta" else "BertForMaskedLM"],
        )


class Block(nn.Module):
    """One post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.num_heads = c.num_heads
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.attn_out = nn.Linear(c.hidden_size, c.hidden_size)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp_in = nn.Linear(c.hidden_size, c.intermediate_size)
        self.mlp_out = nn.Linear(c.intermediate_size, c.hidden_size)
        self.mlp_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.attn_dropout = c.dropout

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        shape = x.shape  # (B, T, H), or (N, H) when padding was removed (varlen)
        qkv = self.qkv(x).view(*shape[:-1], 3, self.num_heads, shape[-1] // self.num_heads)
        q, k, v = qkv.unbind(-3)  # (B, T, nh, hs) or (N, nh, hs)
        y = attend(q, k, v, attn, self.attn_dropout if self.training else 0.0)
        x = self.attn_norm(x + self.dropout(self.attn_out(y.reshape(shape))))
        return self.mlp_norm(x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(x)))))


class Bert(MaskedLM):
    def __init__(self, c: BertConfig, mlm_head: bool = True):
        super().__init__()
        self.config = c
        E = c.embedding_size or c.hidden_size
        self.tok_embed = nn.Embedding(c.vocab_size, E, padding_idx=c.pad_token_id)
        self.pos_embed = nn.Embedding(c.max_position, E)
        self.type_embed = nn.Embedding(c.type_vocab_size, E)  # kept for BERT compatibility; row 0 used
        self.embed_norm = nn.LayerNorm(E, eps=c.layer_norm_eps)
        # ELECTRA's generator: embeddings shared with the wider discriminator, projected to its width.
        self.embed_proj = nn.Linear(E, c.hidden_size) if E != c.hidden_size else None
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        if mlm_head:  # dense + GELU + LN, then a decoder tied to the token embeddings
            self.head_dense = nn.Linear(c.hidden_size, E)
            self.head_norm = nn.LayerNorm(E, eps=c.layer_norm_eps)
            self.head_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention) -> torch.Tensor:
        """input_ids, position_ids: (B, T); attn: from `document_attention`. Returns hidden states
        (B, T, H), or (N, H) for the real tokens only with varlen attention."""
        input_ids, position_ids = attn.select(input_ids), attn.select(position_ids)
        if self.config.position_offset:  # RoBERTa checkpoints: position 0 is row pad_token_id + 1
            position_ids = position_ids + self.config.position_offset
        x = self.tok_embed(input_ids) + self.pos_embed(position_ids) + self.type_embed.weight[0]
        x = self.dropout(self.embed_norm(x))
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        for block in self.blocks:
            x = block(x, attn)
        return x

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states of any shape (..., H)."""
        h = self.head_norm(F.gelu(self.head_dense(hidden)))
        return F.linear(h, self.tok_embed.weight, self.head_bias)


# Names in transformers' BertForMaskedLM for each of ours (per layer, `{i}` is the index).
_HF_NAMES = {
    "tok_embed.weight": "bert.embeddings.word_embeddings.weight",
    "pos_embed.weight": "bert.embeddings.position_embeddings.weight",
    "type_embed.weight": "bert.embeddings.token_type_embeddings.weight",
    "embed_norm.weight": "bert.embeddings.LayerNorm.weight",
    "embed_norm.bias": "bert.embeddings.LayerNorm.bias",
    "head_dense.weight": "cls.predictions.transform.dense.weight",
    "head_dense.bias": "cls.predictions.transform.dense.bias",
    "head_norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head_norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head_bias": "cls.predictions.bias",
}
_HF_LAYER_NAMES = {
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
    "mlp_norm": "output.LayerNorm",
}


# RobertaForMaskedLM's names differ only in the prefix and the head (BERT name prefix -> RoBERTa's).
_ROBERTA_NAMES = {
    "bert.": "roberta.",
    "cls.predictions.transform.dense.": "lm_head.dense.",
    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
    "cls.predictions.decoder.": "lm_head.decoder.",
    "cls.predictions.bias": "lm_head.bias",
}


def _roberta_name(bert_name: str) -> str:
    for old, new in _ROBERTA_NAMES.items():
        if bert_name.startswith(old):
            return new + bert_name[len(old):]
    raise KeyError(bert_name)


def to_hf_state_dict(model: Bert) -> dict[str, torch.Tensor]:
    """Our weights under `BertForMaskedLM`'s names (QKV split into query / key / value), or under
    `RobertaForMaskedLM`'s for the roberta family."""
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if name in _HF_NAMES:
            out[_HF_NAMES[name]] = tensor
            continue
        _, index, module, kind = name.split(".")  # blocks.{i}.{module}.{weight|bias}
        prefix = f"bert.encoder.layer.{index}."
        if module == "qkv":
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.self.{part}.{kind}"] = chunk.contiguous()
        else:
            out[f"{prefix}{_HF_LAYER_NAMES[module]}.{kind}"] = tensor
    if "cls.predictions.bias" in out:  # an encoder with its MLM head (ELECTRA's discriminator has none)
        out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    if model.config.family == "roberta":
        out = {_roberta_name(name): tensor for name, tensor in out.items()}
    return out


def to_hf_masked_lm(model: Bert, config: BertConfig | None = None):
    """The stock transformers masked-LM model (BertForMaskedLM or RobertaForMaskedLM, chosen by the
    config) holding our weights. `config` (default: the model's) is what its config says, e.g. dropout."""
    from transformers import AutoModelForMaskedLM

    hf = AutoModelForMaskedLM.from_config((config or model.config).to_hf())
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    return hf


# ------------------------------------------------------------------- transformers checkpoints in
SUPPORTED = ("bert", "electra", "roberta")
# Each family's names for the MLM head -> BertForMaskedLM's. Other non-encoder weights (pooler,
# next-sentence or discriminator heads, the decoder bias that duplicates the head bias) are ignored.
_HEAD_NAMES = {
    "bert": {"cls.predictions.": "cls.predictions."},
    "electra": {"generator_predictions.dense.": "cls.predictions.transform.dense.",
                "generator_predictions.LayerNorm.": "cls.predictions.transform.LayerNorm.",
                "generator_lm_head.bias": "cls.predictions.bias",
                "generator_lm_head.weight": "cls.predictions.decoder.weight"},
    "roberta": {"lm_head.dense.": "cls.predictions.transform.dense.",
                "lm_head.layer_norm.": "cls.predictions.transform.LayerNorm.", "lm_head.bias": "cls.predictions.bias",
                "lm_head.decoder.weight": "cls.predictions.decoder.weight"},
}
_HEAD_PARTS = {"dense": "head_dense.", "norm": "head_norm.", "bias": "head_bias"}
_HEAD_KEPT = {name for ours, name in _HF_NAMES.items() if ours.startswith("head")} | {"cls.predictions.decoder.weight"}


def bert_config(path: Path, hf: dict, dropout: float | None) -> BertConfig:
    """Our config of a transformers BERT / ELECTRA / RoBERTa config.json, or ModelError naming an
    unsupported model_type or what ours cannot reproduce."""
    family = hf.get("model_type")
    if family not in SUPPORTED:
        raise ModelError(f"{path}: model_type {family!r} is not supported; supported: {', '.join(SUPPORTED)}")
    problems = []
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (ours is exact GELU)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {hf['position_embedding_type']!r} (ours is absolute)")
    if family == "electra" and hf.get("embedding_size", hf["hidden_size"]) != hf["hidden_size"]:
        problems.append(f"embedding_size {hf['embedding_size']} != hidden_size {hf['hidden_size']} "
                        "(our Bert has no embedding projection)")
    if problems:
        raise ModelError(f"{path}: cannot load into our Bert: {'; '.join(problems)}")
    pad = hf.get("pad_token_id")
    pad = (1 if family == "roberta" else 0) if pad is None else pad
    return BertConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position=hf["max_position_embeddings"],
        dropout=hf.get("hidden_dropout_prob", 0.1) if dropout is None else dropout, pad_token_id=pad,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), initializer_range=hf.get("initializer_range", 0.02),
        type_vocab_size=hf.get("type_vocab_size", 2), position_offset=pad + 1 if family == "roberta" else 0,
        family="roberta" if family == "roberta" else "bert",  # ELECTRA is BERT arithmetic: it exports as BERT
    )


def _bert_names(weights: dict[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A checkpoint's weights under BertForMaskedLM's names, and the names that were ignored."""
    out, ignored = {}, []
    for name, tensor in weights.items():
        bare = name.removeprefix(f"{family}.")  # sentence-transformers and *Model dirs have no prefix
        if bare.startswith(("embeddings.", "encoder.")) and bare.endswith((".weight", ".bias")):  # not buffers
            out["bert." + bare] = tensor
            continue
        head = next((new + name[len(old):] for old, new in _HEAD_NAMES[family].items() if name.startswith(old)), None)
        if head in _HEAD_KEPT:
            out[head] = tensor
        else:
            ignored.append(name)
    return out, ignored


def load_hf_bert(path: Path, dropout: float | None = None) -> tuple[Bert, dict]:
    """Our `Bert` with the weights of a local BERT / ELECTRA / RoBERTa checkpoint directory.

    dropout: overrides the checkpoint's hidden_dropout_prob. A missing MLM head (BertModel,
    sentence-transformers, ELECTRA discriminators) is created with BERT's initialisation, from the
    global torch RNG. Returns (model, info) where info lists the head parts loaded and created and
    the checkpoint weights ignored.
    """
    path = Path(path)
    hf = read_checkpoint_config(path)
    config = bert_config(path, hf, dropout)
    weights, ignored = _bert_names(read_safetensors(path), hf["model_type"])
    decoder = weights.pop("cls.predictions.decoder.weight", None)
    embeddings = weights.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
        raise ModelError(f"{path}: the MLM decoder is not tied to the word embeddings; our Bert always ties them")

    ours = {ours: weights[theirs] for ours, theirs in _HF_NAMES.items() if theirs in weights}
    for i in range(config.num_layers):
        prefix = f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = [weights.get(f"{prefix}attention.self.{part}.{kind}") for part in ("query", "key", "value")]
            if all(t is not None for t in qkv):
                ours[f"blocks.{i}.qkv.{kind}"] = torch.cat(qkv)  # (3H, ...) fused as in Block
            for module, theirs in _HF_LAYER_NAMES.items():
                if f"{prefix}{theirs}.{kind}" in weights:
                    ours[f"blocks.{i}.{module}.{kind}"] = weights[f"{prefix}{theirs}.{kind}"]

    model = Bert(config)  # freshly initialised: what the checkpoint lacks keeps BERT's init
    missing, unexpected = model.load_state_dict(ours, strict=False)
    created = [part for part, prefix in _HEAD_PARTS.items() if any(k.startswith(prefix) for k in missing)]
    missing_encoder = [k for k in missing if not k.startswith(("head_dense.", "head_norm.", "head_bias"))]
    if missing_encoder or unexpected:
        raise ModelError(f"{path}: weights do not fit {config}: missing {missing_encoder}, unexpected {unexpected}")
    info = {"model_type": hf["model_type"], "architectures": hf.get("architectures", []),
            "head_created": created, "head_loaded": [p for p in _HEAD_PARTS if p not in created], "ignored": ignored}
    return model, info

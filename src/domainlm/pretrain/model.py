"""The training encoder: a BERT (post-LayerNorm, GELU, learned absolute positions) written for speed.

It differs from `transformers.BertForMaskedLM` only in layout, never in arithmetic, so training
can use packed sequences with document-aware attention and a masked-only prediction head, and the
export (`to_hf_state_dict`) is a renaming plus a split of the fused QKV projection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
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

    def to_hf(self):
        """The equivalent `transformers.BertConfig`."""
        from transformers import BertConfig

        return BertConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position, hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout, pad_token_id=self.pad_token_id,
            layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
            hidden_act="gelu", type_vocab_size=2, architectures=["BertForMaskedLM"],
        )

    def as_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """One post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, c: EncoderConfig):
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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, H)
        x = self.attn_norm(x + self.dropout(self.attn_out(y)))
        return self.mlp_norm(x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(x)))))


class Encoder(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.config = c
        self.tok_embed = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.pos_embed = nn.Embedding(c.max_position, c.hidden_size)
        self.type_embed = nn.Embedding(2, c.hidden_size)  # kept for BERT compatibility; row 0 used
        self.embed_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        # MLM head: dense + GELU + LN, then a decoder tied to the token embeddings.
        self.head_dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.head_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
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

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, position_ids: (B, T); attn_mask: (B, 1, T, T) bool, True where a query may
        attend a key. Returns hidden states (B, T, H)."""
        x = self.tok_embed(input_ids) + self.pos_embed(position_ids) + self.type_embed.weight[0]
        x = self.dropout(self.embed_norm(x))
        for block in self.blocks:
            x = block(x, attn_mask)
        return x

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states of any shape (..., H)."""
        h = self.head_norm(F.gelu(self.head_dense(hidden)))
        return F.linear(h, self.tok_embed.weight, self.head_bias)

    def mlm_loss(self, input_ids, position_ids, attn_mask, labels, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy (mean, or sum) over positions whose label is not -100. The vocabulary
        projection runs only on those (masked) positions: ~15% of the work of a full head."""
        hidden = self(input_ids, position_ids, attn_mask)
        selected = labels != -100
        logits = self.mlm_logits(hidden[selected])  # (n_masked, V)
        return F.cross_entropy(logits.float(), labels[selected], reduction=reduction)


def segment_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids (one id per packed document, padding its own id) -> (B, 1, T, T) bool
    mask that keeps attention inside each document."""
    return (segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1)


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


def to_hf_state_dict(model: Encoder) -> dict[str, torch.Tensor]:
    """Our weights under `BertForMaskedLM`'s names (QKV split into query / key / value)."""
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
    out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out

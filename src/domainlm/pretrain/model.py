"""The training encoder: a BERT (post-LayerNorm, GELU, learned absolute positions) written for speed.

It differs from `transformers.BertForMaskedLM` only in layout, never in arithmetic, so training
can use packed sequences with document-aware attention and a masked-only prediction head, and the
export (`to_hf_state_dict`) is a renaming plus a split of the fused QKV projection.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from functools import lru_cache

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
    type_vocab_size: int = 2
    """Rows of the token-type table (only row 0 is used): 2 for BERT, 1 for RoBERTa checkpoints."""
    position_offset: int = 0
    """Added to position ids before the lookup: RoBERTa numbers positions from pad_token_id + 1."""
    embedding_size: int | None = None
    """Width of the embeddings when it differs from hidden_size (ELECTRA's generator)."""
    family: str = "bert"
    """The transformers architecture the export writes: "bert" (BertForMaskedLM) or "roberta"."""

    def usable_positions(self) -> tuple[int, str]:
        """The longest row this model can take, and where that limit comes from."""
        offset = f", minus an offset of {self.position_offset}" if self.position_offset else ""
        return self.max_position - self.position_offset, f"{self.max_position} in its table{offset}"

    def to_hf(self):
        """The equivalent `transformers.BertConfig` (or `RobertaConfig` for the roberta family)."""
        from transformers import BertConfig, RobertaConfig

        if self.family not in ("bert", "roberta"):
            raise ValueError(f"EncoderConfig.family: expected 'bert' or 'roberta', got {self.family!r}")
        if self.family == "roberta" and self.position_offset != self.pad_token_id + 1:
            # transformers derives RoBERTa positions from the padding id; any other offset would not round-trip.
            raise ValueError(f"roberta family needs position_offset = pad_token_id + 1 = {self.pad_token_id + 1}, "
                             f"got {self.position_offset}")
        if self.family == "bert" and self.position_offset != 0:
            raise ValueError(f"bert family needs position_offset 0, got {self.position_offset}")
        config_class = RobertaConfig if self.family == "roberta" else BertConfig
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

    def forward(self, x: torch.Tensor, attn: Attention) -> torch.Tensor:
        shape = x.shape  # (B, T, H), or (N, H) when padding was removed (varlen)
        qkv = self.qkv(x).view(*shape[:-1], 3, self.num_heads, shape[-1] // self.num_heads)
        q, k, v = qkv.unbind(-3)  # (B, T, nh, hs) or (N, nh, hs)
        y = attend(q, k, v, attn, self.attn_dropout if self.training else 0.0)
        x = self.attn_norm(x + self.dropout(self.attn_out(y.reshape(shape))))
        return self.mlp_norm(x + self.dropout(self.mlp_out(F.gelu(self.mlp_in(x)))))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: Attention, dropout: float) -> torch.Tensor:
    """Attention of q, k, v in the token-major layout the projections give, (B, T, nh, hs) or
    (N, nh, hs) with varlen, by the kernel `attn` chose; the output has the same layout.
    `dropout` (attention probabilities) applies on the sdpa path only."""
    if attn.kind == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        # A local layer's window, inclusive on both sides (flash attention's (left, right) convention).
        window = {} if attn.half_window is None else {"window_size": (attn.half_window, attn.half_window)}
        return varlen_attn(q, k, v, attn.cu_seqlens, attn.cu_seqlens, attn.max_len, attn.max_len, **window)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    if attn.kind == "flex":
        y = _compiled_flex_attention()(q, k, v, block_mask=attn.block_mask)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn.mask, dropout_p=dropout)
    return y.transpose(1, 2)


def varlen_has_window() -> bool:
    """Whether this torch's varlen kernel takes a sliding window (ModernBERT's local layers need it)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return "window_size" in inspect.signature(varlen_attn).parameters


class MaskedLM(nn.Module):
    """What the training encoders share: `forward(input_ids, position_ids, attn)` gives hidden
    states, `mlm_logits` turns them into vocabulary logits, and the loss is computed on the masked
    positions only."""

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mlm_loss(self, input_ids, position_ids, attn: Attention, labels, reduction: str = "mean",
                 targets: MaskedTargets | None = None) -> torch.Tensor:
        """Cross-entropy (mean, or sum) over positions whose label is not -100. The vocabulary
        projection runs only on those (masked) positions: ~15% of the work of a full head.
        `targets`: those positions, found on the host so that the GPU never waits for a
        data-dependent shape (`masked_targets`; a fixed-capacity buffer keeps every shape static);
        found here from `labels` when not given."""
        hidden = self(input_ids, position_ids, attn)
        if targets is None:
            targets = MaskedTargets.of(attn.select(labels).reshape(-1))
        logits = self.masked_logits(hidden.reshape(-1, hidden.shape[-1]), targets)
        return F.cross_entropy(logits.float(), targets.labels, reduction=reduction)

    def masked_logits(self, flat_hidden: torch.Tensor, targets: MaskedTargets) -> torch.Tensor:
        """(K, V) vocabulary logits of the masked positions `targets.index` of (N, H) hidden states."""
        return self.mlm_logits(flat_hidden.index_select(0, targets.index))


class Encoder(MaskedLM):
    def __init__(self, c: EncoderConfig, mlm_head: bool = True):
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


@dataclass
class Attention:
    """How attention stays inside each packed document, for one batch.

    sdpa: a (B, 1, T, T) boolean same-document mask (works everywhere; on CPU it costs no more than
    no mask at all). flex: a FlexAttention block mask (GPU; blocks with no same-document pair are
    skipped). varlen: padding is removed, the model runs on (N, H) real tokens and the flash varlen
    kernel attends within each `cu_seqlens` range (GPU). flex and varlen have no
    attention-probability dropout (hidden-state dropout still applies).

    `within(w)` narrows any of them to a sliding window (ModernBERT's local layers): a token sees
    the tokens of its own document at most w positions away.
    """

    kind: str
    mask: torch.Tensor | None = None
    block_mask: object = None
    segment_ids: torch.Tensor | None = None  # flex: (B, T), what its block masks are built from
    real: torch.Tensor | None = None  # varlen: (B, T) bool, which positions the model keeps
    index: torch.Tensor | None = None  # varlen: their flat indices (computed on the host)
    cu_seqlens: torch.Tensor | None = None
    max_len: int = 0
    half_window: int | None = None  # set by `within`: keys at most this far from the query (varlen)

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """A (B, T, ...) tensor in the layout the model computes in (real tokens only for varlen)."""
        if self.kind != "varlen":
            return tensor
        return tensor.reshape(-1, *tensor.shape[2:]).index_select(0, self.index.to(tensor.device))

    def within(self, half_window: int) -> Attention:
        """This attention with a sliding window as well: query i sees key j only if
        |i - j| <= half_window (and, as before, j is in i's document). Inside a document row
        distance equals position distance, so the window is the same in every layout."""
        if self.kind == "varlen":
            return dataclasses.replace(self, half_window=half_window)
        if self.kind == "flex":
            return dataclasses.replace(self, block_mask=_document_block_mask(self.segment_ids, half_window))
        i = torch.arange(self.mask.shape[-1], device=self.mask.device)
        near = (i[:, None] - i[None, :]).abs() <= half_window  # (T, T)
        return dataclasses.replace(self, mask=self.mask & near)


def document_attention(segment_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                       kind: str = "sdpa", device: torch.device | str = "cpu") -> Attention:
    """Attention for a packed batch: `segment_ids` (B, T) give each document its own id (padding a
    unique negative one); `position_ids` (B, T) restart at 0 at each document (varlen needs them)."""
    if kind == "varlen":  # index arithmetic on the host (the batch is built there), then one copy each
        real = segment_ids >= 0
        index = torch.nonzero(real.flatten()).flatten()
        starts = torch.nonzero(position_ids.flatten()[index] == 0).flatten()  # each document starts at 0
        cu = torch.cat([starts, starts.new_tensor([len(index)])]).to(torch.int32)
        return Attention(kind, real=real.to(device), index=index.to(device), cu_seqlens=cu.to(device),
                         max_len=int((cu[1:] - cu[:-1]).max()))
    segment_ids = segment_ids.to(device)
    if kind == "sdpa":
        return Attention(kind, mask=(segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1))
    if kind == "flex":
        return Attention(kind, block_mask=_document_block_mask(segment_ids), segment_ids=segment_ids)
    raise ValueError(f"unknown attention kind '{kind}' (expected sdpa, flex or varlen)")


def document_mask_mod(segment_ids: torch.Tensor, half_window: int | None = None):
    """FlexAttention's mask_mod: query q sees key k of row b when both are in one document (and,
    with `half_window`, at most that many positions apart)."""
    def same_document(b, h, q, k):
        return segment_ids[b, q] == segment_ids[b, k]

    def nearby_in_document(b, h, q, k):
        return same_document(b, h, q, k) & ((q - k).abs() <= half_window)

    return same_document if half_window is None else nearby_in_document


def _document_block_mask(segment_ids: torch.Tensor, half_window: int | None = None):
    """A FlexAttention block mask of `document_mask_mod`: blocks with no visible pair are skipped."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = segment_ids.shape
    return create_block_mask(document_mask_mod(segment_ids, half_window), B, None, T, T,
                             device=str(segment_ids.device))


@dataclass
class MaskedTargets:
    """The masked positions of a (micro-)batch in the layout the model computes in: `index` (K,)
    their flat positions, `labels` (K,) the original ids, `noise` (K,) uniform draws for ELECTRA's
    sampling (or None). With a fixed capacity K the buffers are padded (index 0, label -100, noise
    0), so their shapes never change between steps; `overflow` counts masked positions that did not
    fit (left out of the loss)."""

    index: torch.Tensor
    labels: torch.Tensor
    noise: torch.Tensor | None = None
    overflow: int = 0

    @classmethod
    def of(cls, flat_labels: torch.Tensor, flat_noise: torch.Tensor | None = None,
           capacity: int | None = None) -> MaskedTargets:
        """From (N,) labels (-100 where nothing is predicted) and per-position noise, in order."""
        index = torch.nonzero(flat_labels != -100).flatten()
        overflow = 0
        if capacity is not None:
            overflow = max(0, len(index) - capacity)
            index = index[:capacity]
        labels = flat_labels.index_select(0, index)
        noise = None if flat_noise is None else flat_noise.index_select(0, index)
        if capacity is not None and len(index) < capacity:
            pad = capacity - len(index)
            index = torch.cat([index, index.new_zeros(pad)])
            labels = torch.cat([labels, labels.new_full((pad,), -100)])
            noise = None if noise is None else torch.cat([noise, noise.new_zeros(pad)])
        return cls(index, labels, noise, overflow)

    def to(self, device: torch.device | str) -> MaskedTargets:
        move = {"device": device, "non_blocking": True}
        return MaskedTargets(self.index.to(**move), self.labels.to(**move),
                             None if self.noise is None else self.noise.to(**move), self.overflow)


def masked_targets(labels: torch.Tensor, real: torch.Tensor | None, noise: torch.Tensor | None = None,
                   capacity: int | None = None) -> MaskedTargets:
    """The masked positions (label != -100) of a host batch in the layout the model computes in:
    `labels` (B, T), `real` the (B, T) real-token mask when padding is removed (varlen; None
    otherwise), `noise` (B, T) ELECTRA's sampling draws (or None); `capacity` pads to a fixed size."""
    def flat(tensor):
        return tensor.reshape(-1) if real is None else tensor[real]

    return MaskedTargets.of(flat(labels), None if noise is None else flat(noise), capacity)


def masked_capacity(positions: int, rate: float) -> int:
    """A fixed number of masked positions that a micro-batch of `positions` row positions almost
    never exceeds at mask rate `rate`: the expected count (as if every position were a real token)
    plus eight binomial standard deviations (whole words and spans vary more than single tokens),
    rounded up to a multiple of 64, at most `positions`. Every slot costs a row of the vocabulary
    projection, so the headroom is kept small; the rare overflow is left out of the loss."""
    expected = positions * rate
    spread = 8 * math.sqrt(positions * rate * (1 - rate))
    return min(positions, 64 * math.ceil((expected + spread) / 64))


def segment_attention_mask(segment_ids: torch.Tensor) -> Attention:
    """The portable document-aware attention (sdpa with a boolean mask)."""
    return document_attention(segment_ids, kind="sdpa", device=segment_ids.device)


@lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


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


def to_hf_state_dict(model: Encoder) -> dict[str, torch.Tensor]:
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


def to_hf_masked_lm(model: Encoder, config: EncoderConfig | None = None):
    """The stock transformers masked-LM model (BertForMaskedLM or RobertaForMaskedLM, chosen by the
    config) holding our weights. `config` (default: the model's) is what its config says, e.g. dropout."""
    from transformers import AutoModelForMaskedLM

    hf = AutoModelForMaskedLM.from_config((config or model.config).to_hf())
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
    return hf

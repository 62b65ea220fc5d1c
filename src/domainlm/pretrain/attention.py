"""Document-aware attention for packed rows, shared by every layout: which kernel runs (sdpa with
a same-document mask, FlexAttention block masks, or flash varlen on the real tokens only), the
masks each needs, and `attend`, which the layouts' layers call."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F


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


def segment_attention_mask(segment_ids: torch.Tensor) -> Attention:
    """The portable document-aware attention (sdpa with a boolean mask)."""
    return document_attention(segment_ids, kind="sdpa", device=segment_ids.device)


@lru_cache(maxsize=1)
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)



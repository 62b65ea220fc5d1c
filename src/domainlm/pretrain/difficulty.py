"""How hard each document is, for the data-order curricula of the data plan (`pretrain.curriculum`).

One score per document of the token shards, higher is harder (`pretrain.difficulty`):
- length: the document's token count;
- rarity: the mean negative log unigram probability of its tokens, the unigram counted over the
  token shards themselves (a document full of rare domain terms scores high);
- loss: a small masked LM's (`difficulty_model`) mean MLM loss on the document's first `seq_len`
  tokens, 15% of them masked (at least one) with a fixed seed, so scores do not depend on the run.
Rarity and loss are computed once and cached in the token shards' folder (`difficulty-*.npy`,
written atomically), so a resumed run, and every rank, ranks the documents the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from domainlm.config import resolve_path
from domainlm.errors import ConfigError, ModelError
from domainlm.io import atomic_write_bytes, fingerprint, input_signature
from domainlm.pretrain.architectures import load_checkpoint
from domainlm.pretrain.attention import segment_attention_mask
from domainlm.pretrain.data import TokenShards
from domainlm.progress import progress_bar
from domainlm.vocabulary import read_tokenizer, special_tokens


@dataclass(frozen=True)
class DifficultySettings:
    """The `pretrain` keys scoring reads (`config.picked(DifficultySettings, section)`)."""

    difficulty: str
    difficulty_model: str | None
    seq_len: int


SCORING_MASK_RATE = 0.15  # BERT's rate, fixed so that the scores are the model's, not the recipe's
SCORING_SEED = 0
SCORING_BATCH = 64  # documents per forward pass
TOKEN_BLOCK = 1 << 24  # tokens read from the memory map at a time (rarity)


def document_difficulty(shards: TokenShards, config: DifficultySettings, vocab_size: int | None = None) -> np.ndarray:
    """(D,) float64 difficulty of every document under `config.difficulty` (see the module
    docstring), read from the shards' cache when there, else computed and cached.
    vocab_size: the training vocabulary's size, which `difficulty_model` must have (ConfigError
    otherwise); when None, only checked to cover the shards' token ids."""
    if config.difficulty == "length":
        return np.diff(shards.offsets).astype(np.float64)
    if config.difficulty == "rarity":
        name = "difficulty-rarity.npy"
    else:
        if not config.difficulty_model:
            raise ConfigError("pretrain.difficulty: loss needs pretrain.difficulty_model (a local masked-LM directory)")
        model_dir = resolve_path(config.difficulty_model)
        key = fingerprint({"model": input_signature(model_dir), "seq_len": config.seq_len})[:16]
        name = f"difficulty-loss-{key}.npy"
    cache = shards.folder / name if shards.folder else None
    if cache is not None and cache.exists():
        return np.load(cache)
    if config.difficulty == "rarity":
        scores = rarity_scores(shards)
    else:
        scores = loss_scores(shards, model_dir, config.seq_len, vocab_size)
    if cache is not None:
        buffer = io.BytesIO()
        np.save(buffer, scores)
        atomic_write_bytes(cache, buffer.getvalue())
    return scores


def rarity_scores(shards: TokenShards) -> np.ndarray:
    """(D,) mean -log p(token) of each document's tokens, p the unigram frequency over all shards
    (0 for an empty document). Two passes over the memory map, a block at a time."""
    tokens, offsets = shards.tokens, shards.offsets
    counts = np.zeros(0, dtype=np.int64)
    for start in range(0, len(tokens), TOKEN_BLOCK):
        block = np.bincount(np.asarray(tokens[start : start + TOKEN_BLOCK]))
        counts = np.pad(counts, (0, max(0, len(block) - len(counts))))
        counts[: len(block)] += block
    with np.errstate(divide="ignore"):  # ids that never occur are never looked up
        surprise = -np.log(counts / counts.sum())

    sums = np.zeros(shards.num_docs)
    first = 0
    while first < shards.num_docs:  # documents first..last-1 hold at most a block (or one long document)
        last = max(first + 1, int(np.searchsorted(offsets, offsets[first] + TOKEN_BLOCK, side="right")) - 1)
        base = offsets[first]
        running = np.concatenate([[0.0], np.cumsum(surprise[np.asarray(tokens[base : offsets[last]])])])
        sums[first:last] = running[offsets[first + 1 : last + 1] - base] - running[offsets[first:last] - base]
        first = last
    return sums / np.maximum(np.diff(offsets), 1)


def load_scorer(model_dir: Path, vocab_size: int | None, max_token: int) -> tuple[torch.nn.Module, int]:
    """(the masked LM of `model_dir`, its [MASK] id); ConfigError when its vocabulary is not the
    training one, ModelError when it has no MLM head. The global torch RNG is left as it was (a
    loader initialises what a checkpoint lacks from it)."""
    with torch.random.fork_rng(devices=[]):
        model, info = load_checkpoint(model_dir)
    size = model.config.vocab_size
    if (vocab_size is not None and size != vocab_size) or size <= max_token:
        expected = f"the training vocabulary's {vocab_size}" if vocab_size is not None else f"ids up to {max_token}"
        raise ConfigError(f"pretrain.difficulty_model {model_dir} has a vocabulary of {size} tokens, not "
                          f"{expected}: score with a model of the same tokenizer")
    if info.get("head_created"):
        raise ModelError(f"pretrain.difficulty_model {model_dir} has no masked-LM head ({info['head_created']} "
                         "missing): difficulty: loss needs a masked LM")
    if not (model_dir / "tokenizer.json").exists():
        raise ConfigError(f"pretrain.difficulty_model {model_dir} has no tokenizer.json: its [MASK] id is needed")
    mask_id = read_tokenizer(model_dir).token_to_id(special_tokens(model_dir)["mask"])
    return model, mask_id


@torch.no_grad()
def loss_scores(shards: TokenShards, model_dir: Path, seq_len: int, vocab_size: int | None = None,
                batch_size: int = SCORING_BATCH) -> np.ndarray:
    """(D,) the mean masked-LM loss (nats) of `model_dir`'s model on each document's first
    `seq_len - 2` tokens, fed alone as `[CLS] tokens [SEP]` (0 for an empty document). Documents
    are batched by length; the masks come from a fixed-seed generator in that order."""
    model, mask_id = load_scorer(model_dir, vocab_size, int(shards.tokens.max()))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.float().eval().to(device)
    body = min(seq_len, model.config.usable_positions()[0]) - 2
    cls_id, sep_id, pad_id = (shards.special[k] for k in ("cls", "sep", "pad"))
    starts, lengths = shards.offsets[:-1], np.minimum(np.diff(shards.offsets), body)
    order = np.flatnonzero(lengths > 0)
    order = order[np.argsort(lengths[order], kind="stable")]  # similar lengths together: little padding
    generator = torch.Generator().manual_seed(SCORING_SEED)
    scores = np.zeros(shards.num_docs)
    with progress_bar(total=len(order), desc="difficulty", unit=" docs") as progress:
        for first in range(0, len(order), batch_size):
            docs = order[first : first + batch_size]
            n = torch.from_numpy(lengths[docs])  # (B,)
            T = int(n.max()) + 2
            column = torch.arange(T)
            body_at = np.minimum(starts[docs, None] + np.arange(T - 2)[None, :], len(shards.tokens) - 1)
            tokens = torch.from_numpy(np.asarray(shards.tokens[body_at], dtype=np.int64))  # (B, T - 2)
            ids = torch.full((len(docs), T), pad_id, dtype=torch.long)
            ids[:, 1:-1] = tokens
            inside = (column[None, :] >= 1) & (column[None, :] <= n[:, None])  # (B, T): the document's tokens
            ids = torch.where(inside, ids, pad_id)
            ids[:, 0] = cls_id
            ids[torch.arange(len(docs)), n + 1] = sep_id
            real = column[None, :] <= n[:, None] + 1
            # Mask SCORING_MASK_RATE of each document's tokens, and always its lowest draw.
            draws = torch.where(inside, torch.rand(len(docs), T, generator=generator), 2.0)
            chosen = inside & ((draws < SCORING_MASK_RATE) | (draws == draws.min(1, keepdim=True).values))
            masked = torch.where(chosen, mask_id, ids)
            segments = torch.where(real, 0, -1 - column.expand_as(ids))  # padding: its own negative ids
            positions = column.expand_as(ids)
            hidden = model(masked.to(device), positions.to(device), segment_attention_mask(segments.to(device)))
            logits = model.mlm_logits(hidden[chosen.to(device)])  # (K, V)
            losses = F.cross_entropy(logits.float(), ids[chosen].to(device), reduction="none").cpu().double()
            row = torch.nonzero(chosen)[:, 0]  # the document each masked position belongs to
            totals = torch.zeros(len(docs), dtype=torch.float64).index_add_(0, row, losses)
            scores[docs] = (totals / chosen.sum(1)).numpy()
            progress.update(len(docs))
    return scores

"""Pretraining data: tokenise once, pack documents into full rows, mask on the fly.

Arrays (saved as .npy and memory-mapped):
- `tokens`  (R, T) int32: packed rows, each a run of `[CLS] doc-chunk [SEP]` segments, padded at the end.
- `segments` (R, T) int16: which segment of its row each position belongs to; padding gets its own
  id so attention (same-segment only) never crosses documents and never reads padding.
- `positions` (R, T) int16: position inside the segment (restarts at 0 for each document, so a
  packed document looks exactly like one fed alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

PAD_SEGMENT = -1


def tokenize_documents(tokenizer: Tokenizer, texts, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every document, concatenated, and the offsets where each document starts
    (`offsets[i]:offsets[i+1]`). No special tokens; packing adds them."""
    chunks, lengths = [], []
    batch: list[str] = []
    progress = tqdm(desc="tokenize", unit=" docs", mininterval=1.0)

    def flush() -> None:
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            chunks.append(ids)
            lengths.append(len(ids))
        progress.update(len(batch))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    flush()
    progress.close()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return tokens, offsets


def pack_documents(
    tokens: np.ndarray, offsets: np.ndarray, seq_len: int, cls_id: int, sep_id: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack documents, in order, into rows of `seq_len` tokens.

    A document longer than a row is cut into chunks of `seq_len - 2` tokens; each chunk becomes a
    segment `[CLS] chunk [SEP]`. Segments fill a row until the next one does not fit; the rest of
    the row is padding. Returns (tokens, segments, positions), each (rows, seq_len).
    """
    body = seq_len - 2
    starts, ends = [], []
    for doc in range(len(offsets) - 1):
        for start in range(int(offsets[doc]), int(offsets[doc + 1]), body):
            starts.append(start)
            ends.append(min(start + body, int(offsets[doc + 1])))
    rows_tokens, rows_segments, rows_positions = [], [], []
    row_t = np.full(seq_len, pad_id, np.int32)
    row_s = np.full(seq_len, PAD_SEGMENT, np.int16)
    row_p = np.zeros(seq_len, np.int16)
    fill = segment = 0
    for start, end in zip(starts, ends, strict=True):
        length = end - start + 2
        if fill + length > seq_len:
            rows_tokens.append(row_t), rows_segments.append(row_s), rows_positions.append(row_p)
            row_t = np.full(seq_len, pad_id, np.int32)
            row_s = np.full(seq_len, PAD_SEGMENT, np.int16)
            row_p = np.zeros(seq_len, np.int16)
            fill = segment = 0
        row_t[fill] = cls_id
        row_t[fill + 1 : fill + length - 1] = tokens[start:end]
        row_t[fill + length - 1] = sep_id
        row_s[fill : fill + length] = segment
        row_p[fill : fill + length] = np.arange(length)
        fill += length
        segment += 1
    if fill:
        rows_tokens.append(row_t), rows_segments.append(row_s), rows_positions.append(row_p)
    if not rows_tokens:
        raise ValueError("the corpus is empty: nothing to pack")
    return np.stack(rows_tokens), np.stack(rows_segments), np.stack(rows_positions)


@dataclass
class PackedData:
    tokens: np.ndarray
    segments: np.ndarray
    positions: np.ndarray

    @classmethod
    def load(cls, folder: Path) -> PackedData:
        return cls(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("tokens", "segments", "positions")))

    def save(self, folder: Path) -> None:
        from domainlm.artifacts import atomic_directory

        with atomic_directory(folder) as tmp:
            for name in ("tokens", "segments", "positions"):
                np.save(tmp / f"{name}.npy", getattr(self, name))

    def __len__(self) -> int:
        return len(self.tokens)

    def real_tokens(self) -> int:
        return int((self.segments != PAD_SEGMENT).sum())

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        rows = np.sort(rows)  # sorted reads are kinder to a memory map; order within a batch is irrelevant
        segments = torch.from_numpy(self.segments[rows].astype(np.int64))
        # Padding: give each pad position a unique negative id so it attends only to itself.
        T = segments.shape[1]
        pad = segments == PAD_SEGMENT
        segments = torch.where(pad, -1 - torch.arange(T).expand_as(segments), segments)
        return {
            "input_ids": torch.from_numpy(self.tokens[rows].astype(np.int64)),
            "position_ids": torch.from_numpy(self.positions[rows].astype(np.int64)),
            "segment_ids": segments,
            "real": ~pad,
        }


def epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


def word_start_table(tokenizer: Tokenizer) -> torch.Tensor:
    """(V,) bool: True for tokens that begin a word (WordPiece continuations start with `##`)."""
    vocab = tokenizer.get_vocab()
    table = torch.ones(tokenizer.get_vocab_size(), dtype=torch.bool)
    for token, index in vocab.items():
        if token.startswith("##"):
            table[index] = False
    return table


MAX_SPAN_WORDS = 10


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    word_start: torch.Tensor,
    rate: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    mode: str = "whole-word",
    span_mean: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `rate` of the words (or tokens, for mode "token"), then replace 80% of
    the chosen tokens by [MASK], 10% by a random token, and keep 10%.

    mode: "whole-word" chooses words independently; "span" chooses runs of words whose lengths are
    geometric with mean `span_mean` (clipped at 10 words), starting often enough that about `rate`
    of the words are covered; "token" chooses word pieces independently.
    input_ids, maskable: (B, T); maskable is False on special tokens and padding.
    Returns (masked input ids, labels) with labels -100 where nothing is predicted.
    """
    B, T = input_ids.shape
    if mode == "token":
        chosen = (torch.rand(B, T, generator=generator) < rate) & maskable
    else:
        starts = word_start[input_ids] | ~maskable  # special tokens start their own "word"
        word_index = torch.cumsum(starts.long(), dim=1) - 1  # (B, T) word number of each token
        if mode == "whole-word":
            chosen_words = torch.rand(B, T, generator=generator) < rate
        elif mode == "span":
            p = 1.0 / span_mean
            span_begins = torch.rand(B, T, generator=generator) < rate * p  # (B, words)
            uniform = torch.rand(B, T, generator=generator).clamp_min(1e-12)
            lengths = (torch.log(uniform) / math.log(1 - p)).floor() + 1 if p < 1 else torch.ones(B, T)
            lengths = lengths.clamp(max=MAX_SPAN_WORDS)
            chosen_words = torch.zeros(B, T, dtype=torch.bool)
            for k in range(MAX_SPAN_WORDS):  # word w is covered if a span began at w - k with length > k
                chosen_words[:, k:] |= (span_begins & (lengths > k))[:, : T - k]
        else:
            raise ValueError(f"unknown masking mode '{mode}'")
        chosen = torch.gather(chosen_words, 1, word_index) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(B, T, generator=generator)
    random_tokens = torch.randint(vocab_size, (B, T), generator=generator)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels

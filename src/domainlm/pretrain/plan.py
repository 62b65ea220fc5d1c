"""Which rows each training step reads: a pure function of (config, corpus, seed, step).

Three schedules shape the stream of rows, and all of them are decided up front, per step, so that a
resumed run (or another rank) reads exactly the rows an uninterrupted run would:
- mixture: several corpus sources sampled with weights (a small domain source with a high weight is
  repeated more often), and an up-sampling of one source over the last part of training;
- batch-size warmup: fewer rows per step at the start, growing linearly to `batch_size`;
- sequence-length curriculum: short rows first (`short_seq_len`), with proportionally more rows
  per step so each step sees about as many tokens.
Each (sequence length, source) pair is a stream: its rows are read in per-epoch permutations.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from domainlm.config import PretrainConfig
from domainlm.errors import ConfigError
from domainlm.pretrain.data import Packing, TokenShards, epoch_order


class DataPlan:
    def __init__(self, shards: TokenShards, config: PretrainConfig, seed: int = 0,
                 source_weights: dict[str, float] | None = None):
        """source_weights: the corpus sources' `weight x repeat`, used when `config.mixture` is
        empty (each source then weighs its token count times that)."""
        source_weights = source_weights or {}
        self.seed = seed
        steps = np.arange(config.max_steps)
        lengths = [config.seq_len]
        short_steps = 0
        if config.short_seq_len and config.short_seq_fraction > 0:
            lengths.insert(0, config.short_seq_len)
            short_steps = int(round(config.short_seq_fraction * config.max_steps))
        self.length_index = (steps >= short_steps).astype(np.int64) if len(lengths) == 2 else np.zeros_like(steps)
        self.lengths = lengths

        rows = np.full(config.max_steps, float(config.batch_size))
        if config.batch_size_start and config.batch_warmup_fraction > 0:
            ramp = max(1, int(round(config.batch_warmup_fraction * config.max_steps)))
            start = config.batch_size_start
            rows = np.where(steps < ramp, start + (config.batch_size - start) * steps / ramp, rows)
        tokens_factor = config.seq_len / np.asarray(lengths, dtype=float)[self.length_index]
        self.rows_per_step = np.maximum(1, np.round(rows * tokens_factor)).astype(np.int64)

        # Sources: one stream over the whole corpus, or one per source with weights per step.
        if config.mixture or config.upsample_source or any(w != 1 for w in source_weights.values()):
            self.sources: list[int | None] = list(range(len(shards.source_names)))
            weights = np.array([float(config.mixture.get(name, 0.0)) if config.mixture else 0.0
                                for name in shards.source_names])
            unknown = set(config.mixture) - set(shards.source_names)
            if unknown:
                raise ConfigError(f"pretrain.mixture names unknown sources {sorted(unknown)}; "
                                 f"the corpus has: {', '.join(shards.source_names)}")
            if not config.mixture:  # natural proportions (by tokens), times the corpus weights
                weights = np.array([np.diff(shards.offsets)[shards.sources == k].sum() * source_weights.get(name, 1.0)
                                    for k, name in enumerate(shards.source_names)], dtype=float)
            per_step = np.tile(weights / weights.sum(), (config.max_steps, 1))
            if config.upsample_source:
                k = shards.source_index(config.upsample_source)
                tail = steps >= int(round((1 - config.upsample_fraction) * config.max_steps))
                per_step[tail, k] *= config.upsample_factor
            per_step /= per_step.sum(1, keepdims=True)
            rng = np.random.default_rng([seed, 1])
            counts = rng.multinomial(self.rows_per_step, per_step)  # (steps, sources)
        else:
            self.sources = [None]
            counts = self.rows_per_step[:, None]
        # counts per stream j = length_index * num_sources + source
        K = len(self.sources)
        self.counts = np.zeros((config.max_steps, len(lengths) * K), dtype=np.int64)
        for li in range(len(lengths)):
            self.counts[:, li * K : (li + 1) * K] = counts * (self.length_index == li)[:, None]
        self.before = np.cumsum(self.counts, axis=0) - self.counts  # rows each stream gave earlier steps
        self.shards = shards
        self.packings: dict[int, Packing] = {}

    def packing(self, stream: int) -> Packing:
        if stream not in self.packings:
            K = len(self.sources)
            packing = self.shards.pack(self.lengths[stream // K], self.sources[stream % K])
            self.packings[stream] = packing
        return self.packings[stream]

    @lru_cache(maxsize=16)  # noqa: B019 - a few epochs' permutations, tied to this plan's life
    def _order(self, stream: int, epoch: int) -> np.ndarray:
        return epoch_order(len(self.packing(stream)), self.seed, epoch, stream)

    def rows(self, step: int) -> list[tuple[Packing, np.ndarray]]:
        """The (packing, rows) pairs step `step` reads (all with the same sequence length)."""
        out = []
        for stream in np.flatnonzero(self.counts[step]):
            packing = self.packing(int(stream))
            n = len(packing)
            position = np.arange(self.before[step, stream], self.before[step, stream] + self.counts[step, stream])
            out.append((packing, np.array([self._order(int(stream), int(p // n))[p % n] for p in position])))
        return out

    def seq_len(self, step: int) -> int:
        return self.lengths[self.length_index[step]]

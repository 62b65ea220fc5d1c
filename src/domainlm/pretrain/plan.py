"""Which rows each training step reads: a pure function of (config, corpus, seed, step).

Four schedules shape the stream of rows, and all of them are decided up front, per step, so that a
resumed run (or another rank) reads exactly the rows an uninterrupted run would:
- mixture: several corpus sources sampled with weights (a small domain source with a high weight is
  repeated more often), and an up-sampling of one source over the last part of training;
- batch-size warmup: fewer rows per step at the start, growing linearly to `batch_size`;
- sequence-length curriculum: short rows first (`short_seq_len`), with proportionally more rows
  per step so each step sees about as many tokens;
- data-order curriculum (`curriculum`): documents ranked by a difficulty score
  (`difficulty.document_difficulty`) and a share of them readable per step (`competence`).
Each (sequence length, source) pair is a stream: its rows are read in per-epoch permutations.

With a data-order curriculum each stream packs its documents easiest first, so a row's index follows
its documents' difficulty rank. During the curriculum (the first `curriculum_fraction` of the steps)
step s draws its rows of a stream, without replacement, from the first ceil(c(s) * rows) of them
(the last, for hard-first), with a generator seeded by (seed, stream, step): no step depends on
another, so a resume reads the same rows. Later steps read the per-epoch permutations as without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from domainlm.errors import ConfigError
from domainlm.pretrain.data import Packing, TokenShards, cached_pack, epoch_order
from domainlm.pretrain.difficulty import document_difficulty

CURRICULUM_DRAWS = 3  # tags the seeds of curriculum draws apart from the mixture's and the epochs'


@dataclass(frozen=True)
class PlanSettings:
    """The `pretrain` keys the plan reads (`config.picked(PlanSettings, section)`)."""

    max_steps: int
    batch_size: int
    seq_len: int
    batch_size_start: int | None
    batch_warmup_fraction: float
    short_seq_len: int | None
    short_seq_fraction: float
    mixture: dict[str, float]
    upsample_source: str | None
    upsample_factor: float
    upsample_fraction: float
    curriculum: str
    curriculum_fraction: float
    curriculum_start: float
    curriculum_cycles: int
    difficulty: str
    difficulty_model: str | None


def curriculum_steps(config: PlanSettings) -> int:
    """How many first steps the data-order curriculum shapes (0 for `curriculum: none`)."""
    if config.curriculum == "none":
        return 0
    return max(1, int(round(config.curriculum_fraction * config.max_steps)))


def competence(config: PlanSettings) -> np.ndarray:
    """(max_steps,) the share c(s) of each stream's rows that step s may read.

    easy-first / hard-first: square-root pacing (Platanios et al. 2019, their best),
    c(s) = sqrt(c0^2 + (1 - c0^2) s / S) with c0 = `curriculum_start` and S the curriculum's steps.
    cyclical: c(s) = c0 + (1 - c0) (1 - cos(2 pi k s / S)) / 2, which rises to 1 and falls back to
    c0 k = `curriculum_cycles` times. Every step after the curriculum (and every step without one)
    reads all rows.
    """
    steps, span = np.arange(config.max_steps), curriculum_steps(config)
    progress, c0 = steps / max(span, 1), config.curriculum_start
    if config.curriculum == "cyclical":
        share = c0 + (1 - c0) * (1 - np.cos(2 * np.pi * config.curriculum_cycles * progress)) / 2
    else:
        share = np.sqrt(c0**2 + (1 - c0**2) * np.minimum(progress, 1.0))
    return np.where(steps < span, share, 1.0)


class DataPlan:
    def __init__(self, shards: TokenShards, config: PlanSettings, seed: int = 0,
                 source_weights: dict[str, float] | None = None, difficulty: np.ndarray | None = None):
        """source_weights: the corpus sources' `weight x repeat`, used when `config.mixture` is
        empty (each source then weighs its token count times that). difficulty: (D,) each
        document's score for `config.curriculum` (default: `document_difficulty`, cached)."""
        source_weights = source_weights or {}
        self.seed = seed
        self.curriculum, self.curriculum_steps = config.curriculum, curriculum_steps(config)
        self.competence = competence(config)
        self.difficulty = None
        if config.curriculum != "none":
            self.difficulty = document_difficulty(shards, config) if difficulty is None else np.asarray(difficulty)
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

    def streams(self) -> list[int]:
        """The streams (sequence length x source) some step draws rows from."""
        return np.flatnonzero(self.counts.sum(axis=0)).tolist()

    def packing(self, stream: int) -> Packing:
        if stream not in self.packings:
            K = len(self.sources)
            source = self.sources[stream % K]
            docs = np.arange(self.shards.num_docs) if source is None else np.flatnonzero(self.shards.sources == source)
            if self.difficulty is not None:  # easiest first: a row's index follows its documents' rank
                docs = docs[np.argsort(self.difficulty[docs], kind="stable")]
            self.packings[stream] = cached_pack(self.shards, docs, self.lengths[stream // K])
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
            if step < self.curriculum_steps:
                out.append((packing, self._curriculum_rows(int(stream), step, n)))
                continue
            position = np.arange(self.before[step, stream], self.before[step, stream] + self.counts[step, stream])
            out.append((packing, np.array([self._order(int(stream), int(p // n))[p % n] for p in position])))
        return out

    def _curriculum_rows(self, stream: int, step: int, n: int) -> np.ndarray:
        """A curriculum step's rows of one stream: drawn without replacement from the readable
        ones (with repeats only when the step wants more rows than are readable)."""
        readable = min(n, max(1, math.ceil(self.competence[step] * n - 1e-9)))  # 0.2 * 10 rows is 2, not 3
        rng = np.random.default_rng([self.seed, CURRICULUM_DRAWS, stream, step])
        repeats, rest = divmod(int(self.counts[step, stream]), readable)
        rows = np.concatenate([*(rng.permutation(readable) for _ in range(repeats)),
                               rng.choice(readable, rest, replace=False)])
        return n - 1 - rows if self.curriculum == "hard-first" else rows

    def seq_len(self, step: int) -> int:
        return self.lengths[self.length_index[step]]

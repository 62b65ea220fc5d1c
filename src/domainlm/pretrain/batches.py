"""The masked global batch of each step: rows from the `DataPlan`, masked (whole words, tokens or
spans; a lexicon's words preferred), plus the objective's per-batch draws, all from one CPU
generator that is the same on every rank and device. The generator's state before each step's
batch is what a checkpoint saves, so a resumed run draws the same batches, with or without prefetch."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from domainlm.pretrain.data import (
    TokenShards,
    lexicon_sequences,
    lexicon_word_starts,
    mask_tokens,
    word_start_table,
)
from domainlm.pretrain.encoder import MaskedTargets, masked_targets
from domainlm.pretrain.plan import DataPlan


@dataclass(frozen=True)
class MaskingSettings:
    masking: str  # whole-word, token or span
    mask_rate: float
    span_mean: float
    lexicon: str | None
    lexicon_rate: float


class MaskedBatches:
    """`batch(step)`: {"input_ids", "masked_ids", "labels", "position_ids", "segment_ids", "real",
    "draw.<name>"...}, each (rows, seq_len), the same for a step however often it is asked for
    after `load_state`. `draws`: the objective's (labels, generator) -> {name: (rows, seq_len)}."""

    def __init__(self, data: TokenShards, plan: DataPlan, tokenizer: Tokenizer, mask_token: str,
                 settings: MaskingSettings, draws, seed: int, pin: bool, prefetch: bool):
        self.data, self.plan, self.settings, self.draws = data, plan, settings, draws
        self.pin, self.prefetch = pin, prefetch  # on a CPU the thread would compete for the same cores
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._states: dict[int, torch.Tensor] = {}  # the generator's state before each drawn step
        if settings.masking == "token":  # every piece is its own "word"
            self.word_start = torch.ones(tokenizer.get_vocab_size(), dtype=torch.bool)
        else:
            self.word_start = word_start_table(tokenizer)
        specials = {tokenizer.token_to_id(t) for t in special_names(tokenizer)} | set(data.special.values())
        self.special_ids = torch.tensor(sorted(specials))
        self.mask_id = tokenizer.token_to_id(mask_token)
        self.lexicon = None
        if settings.lexicon:
            words = Path(settings.lexicon).read_text(encoding="utf-8").splitlines()
            self.lexicon = lexicon_sequences(tokenizer, words)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The global batch of a step, masked (the same on every rank)."""
        self._states[step] = self.generator.get_state()
        parts = [self.data.batch(packing, rows) for packing, rows in self.plan.rows(step)]
        batch = self.masked({key: torch.cat([p[key] for p in parts]) for key in parts[0]}, self.generator)
        if self.pin:  # page-locked, so that the copies to the GPU do not wait for it
            batch = {key: value.pin_memory() for key, value in batch.items()}
        return batch

    def masked(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A gathered batch (`TokenShards.batch`) with its masking and the objective's draws added,
        drawn from `generator`."""
        maskable = batch["real"] & ~torch.isin(batch["input_ids"], self.special_ids)
        preferred = None
        if self.lexicon:
            preferred = lexicon_word_starts(batch["input_ids"], self.word_start, self.lexicon)
        s = self.settings
        batch["masked_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], maskable, self.word_start, s.mask_rate, self.mask_id, len(self.word_start),
            generator, mode=s.masking, span_mean=s.span_mean, preferred=preferred, preferred_rate=s.lexicon_rate)
        return batch | {f"draw.{name}": value for name, value in self.draws(batch["labels"], generator).items()}

    def batches(self, start: int, stop: int):
        """(step, batch) for steps start..stop-1. With `prefetch` the next batch is gathered and
        masked on a CPU thread while the current step computes."""
        if not self.prefetch:
            for step in range(start, stop):
                yield step, self.batch(step)
            return
        with ThreadPoolExecutor(1) as pool:
            upcoming = pool.submit(self.batch, start)
            for step in range(start, stop):
                batch = upcoming.result()
                if step + 1 < stop:
                    upcoming = pool.submit(self.batch, step + 1)
                yield step, batch

    def state(self, step: int) -> torch.Tensor:
        """The generator's state before step `step`'s batch (what a checkpoint after step - 1 saves)."""
        state = self._states.get(step, self.generator.get_state())
        self._states = {k: v for k, v in self._states.items() if k >= step}
        return state

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def batch_targets(part: dict[str, torch.Tensor], unpadded: bool, capacity: int | None) -> MaskedTargets:
    """The masked positions of a (micro-)batch with its draws, found on the host, in the layout the
    model computes in (`unpadded`: real tokens only, as varlen attention); `capacity`: a fixed size."""
    draws = {key.removeprefix("draw."): value for key, value in part.items() if key.startswith("draw.")}
    return masked_targets(part["labels"], part["real"] if unpadded else None, draws, capacity)


def special_names(tokenizer: Tokenizer) -> set[str]:
    """Tokens the tokenizer treats as special (never masked)."""
    return {t["content"] for t in json.loads(tokenizer.to_str()).get("added_tokens", []) if t.get("special")}

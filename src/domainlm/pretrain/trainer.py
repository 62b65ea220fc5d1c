"""The pretraining loop: one `train_step` per optimizer step, checkpoints with exact resume.

Everything a step depends on is a function of the step number or is saved in the checkpoint:
the rows of step `s` come from the `DataPlan` (a pure function of config, corpus, seed and step),
masking and ELECTRA's sampling draw from generators whose states are saved, and so are the
optimizer, the scheduler and torch's global RNG (dropout).

Under `torchrun` every rank builds the same global batch (a cheap gather from the memory map),
masks it with the same generator, and computes on its own slice of rows; losses are normalised by
the global batch's masked / real token counts, so N processes compute the gradient one process
would (DDP, or FSDP for models that do not fit one device).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model
from tokenizers import Tokenizer

from domainlm.config import PretrainConfig
from domainlm.distributed import rank, world_size
from domainlm.errors import ConfigError, TrainingDiverged
from domainlm.io import atomic_directory, atomic_write_json, read_json
from domainlm.optim import lr_schedule, parameter_groups
from domainlm.pretrain.architectures import LayoutConfig, new_model
from domainlm.pretrain.attention import document_attention, varlen_has_window
from domainlm.pretrain.data import (
    TokenShards,
    lexicon_sequences,
    lexicon_word_starts,
    mask_tokens,
    word_start_table,
)
from domainlm.pretrain.distill import Distiller
from domainlm.pretrain.electra import Electra
from domainlm.pretrain.encoder import MaskedTargets, masked_capacity, masked_targets
from domainlm.pretrain.plan import DataPlan
from domainlm.pretrain.sparsity import apply_masks, magnitude_masks
from domainlm.progress import Curves, progress_bar

log = logging.getLogger(__name__)

# `final_loss` is the mean over this many last steps (a fixed window: no bookkeeping key moves it).
FINAL_LOSS_STEPS = 10
# Every loss a step can have, and the batch count each is normalised by: masked positions, or real tokens.
LOSSES = {"mlm": "masked", "rtd": "real", "kd": "masked", "hidden": "real"}


class Objective(torch.nn.Module):
    """The summed losses of one micro-batch, as a module so that DDP / FSDP wrap one forward
    (with a `Distiller`: its teacher and projection too)."""

    def __init__(self, model: torch.nn.Module, distiller: Distiller | None = None):
        super().__init__()
        self.model, self.distiller = model, distiller

    def forward(self, input_ids, position_ids, attn, real, targets: MaskedTargets) -> dict[str, torch.Tensor]:
        if isinstance(self.model, Electra):
            return self.model.losses(input_ids, position_ids, attn, real, targets)
        if self.distiller is not None:
            return self.distiller.losses(self.model, input_ids, position_ids, attn, real, targets)
        return {"mlm": self.model.mlm_loss(input_ids, position_ids, attn, None, reduction="sum", targets=targets)}


def static_losses(objective: torch.nn.Module, input_ids, position_ids, segment_ids, real, index, labels,
                  draws) -> dict[str, torch.Tensor]:
    """The objective on tensors of fixed shapes only (the same-document mask is built inside), the
    function `torch.compile` takes whole: forward and loss here, the backward through AOTAutograd."""
    attn = document_attention(segment_ids, kind="sdpa", device=segment_ids.device)
    return objective(input_ids, position_ids, attn, real, MaskedTargets(index, labels, draws))


def resolve_attention(kind: str, device: torch.device, dropout: float, static: bool = False,
                      windowed: bool = False) -> str:
    """`auto`: varlen where its flash kernel runs (CUDA, no attention-probability dropout asked
    for, shapes free to vary, and for a `windowed` model (local attention layers) a kernel that
    takes a sliding window), else sdpa. An explicit choice the device (or static shapes) cannot
    run is an error, not a silent fallback (static shapes with another kind are refused by the recipe)."""
    if kind == "auto":
        varlen = device.type == "cuda" and dropout == 0 and not static and (not windowed or varlen_has_window())
        return "varlen" if varlen else "sdpa"
    if kind in ("flex", "varlen") and device.type != "cuda":
        raise ConfigError(f"pretrain.attention: {kind} needs a CUDA GPU (its CPU kernels have no backward); use sdpa")
    if kind == "varlen" and windowed and not varlen_has_window():
        raise ConfigError(f"pretrain.attention: varlen in torch {torch.__version__} takes no sliding window, which "
                          "the model's local attention layers need; use flex or sdpa")
    return kind


def choose_micro_batch(rows: int, fits) -> int:
    """The largest divisor of `rows` for which `fits(divisor)` holds (tried from the largest down;
    every micro-batch then has the same shape), or 1."""
    for candidate in (d for d in range(rows, 0, -1) if rows % d == 0):
        if fits(candidate):
            return candidate
    return 1


def training_device(tf32: bool) -> torch.device:
    """This rank's GPU (TF32 matmuls allowed if `tf32`), or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def optimizer_and_schedule(model: torch.nn.Module, config: PretrainConfig):
    """AdamW (betas 0.9 / 0.98, eps 1e-6, as RoBERTa) and its learning-rate schedule."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
        fused=True,  # one kernel for all parameters, on CPU too: ~10x faster steps than the default loop
    )
    warmup = max(1, math.ceil(config.warmup_fraction * config.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(config.schedule, warmup, config.max_steps, config.decay_fraction))
    return optimizer, scheduler


class Trainer:
    """Pretrains one model on token shards: `train()` runs `train_step` per step, checkpoints and
    resumes; the model, optimizer, scheduler, RNG and data position are all in a checkpoint.
    `curves`: where loss, learning rate, tokens/s and gradient norm go every `log_every` steps.
    `teacher`: a frozen masked LM to distil from (`pretrain.teacher`). With `pretrain.sparsity`
    the transformer layers' weights keep fixed magnitude masks (SPDF), saved in checkpoints."""

    def __init__(self, model_config: LayoutConfig, config: PretrainConfig, data: TokenShards,
                 tokenizer: Tokenizer, checkpoint_dir: Path, seed: int = 0, model: torch.nn.Module | None = None,
                 mask_token: str = "[MASK]", source_weights: dict[str, float] | None = None,
                 curves: Curves | None = None, teacher: torch.nn.Module | None = None):
        self.config, self.data, self.checkpoint_dir, self.seed = config, data, checkpoint_dir, seed
        self.rank, self.world = rank(), world_size()
        self.device = training_device(config.tf32)
        torch.manual_seed(seed)  # the model's initialisation draws from the global generator
        if model is None:
            model = Electra(model_config, config.generator_fraction) if config.objective == "electra" \
                else new_model(model_config)
        self.model = model.to(self.device)
        self.sparse_masks = magnitude_masks(self.model, config.sparsity)  # SPDF: fixed from the start
        apply_masks(self.model, self.sparse_masks)
        self.distiller = None
        if teacher is not None:
            self.distiller = Distiller(teacher, model_config.hidden_size, config.distill_logits, config.distill_hidden,
                                       config.distill_temperature).to(self.device)
        self.loss_names = ["mlm", "rtd"] if isinstance(model, Electra) else ["mlm"]
        if self.distiller is not None:
            self.loss_names += [k for k, w in (("kd", config.distill_logits), ("hidden", config.distill_hidden)) if w]
        # What the optimizer updates: the model, and a distillation projection when there is one.
        projection = self.distiller.projection if self.distiller is not None else None
        self.trainable = self.model if projection is None else torch.nn.ModuleDict(
            {"model": self.model, "projection": projection})
        self.static = config.static_shapes
        windowed = model_config.attention_window is not None  # ModernBERT's local layers
        self.attention = resolve_attention(config.attention, self.device, model_config.dropout, self.static, windowed)
        if config.compile and not self.static:
            self.compile_blocks()
        self.objective = self._distribute(Objective(self.model, self.distiller))
        self.forward = self._static_forward() if self.static else None
        self.optimizer, self.scheduler = optimizer_and_schedule(self.trainable, config)
        self.plan = DataPlan(data, config, seed, source_weights)
        # Masking and ELECTRA's sampling draws: one CPU generator, the same on every rank and device.
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._set_masking(tokenizer, mask_token)
        self.curves = curves
        self.step = 0
        self.losses: list[float] = []
        self.parts: dict[str, list[float]] = {}  # per-objective losses (ELECTRA: mlm and rtd)
        self.learning_rates: list[float] = []
        self.elapsed = 0.0  # seconds spent in train steps, across resumes
        self.real_tokens = 0
        self.positions = 0  # row positions, padding included (sdpa / flex compute on them)
        self.masked_tokens = 0  # positions predicted (what the MLM head computes on)
        self.skipped_steps: list[int] = []  # steps whose loss or gradient was NaN/inf
        self.bad_in_a_row = 0
        self.grad_norm = math.nan  # of the last step
        self.masked_overflow = 0  # masked positions a fixed-capacity buffer could not hold (static shapes)
        self._auto_micro: int | None = None  # micro_batch_size: auto, once decided
        self._pending: list[tuple[int, torch.Tensor]] = []  # steps whose losses are still on the device
        self._masking_states: dict[int, torch.Tensor] = {}
        self.prefetch = self.device.type == "cuda"  # on a CPU the thread would compete for the same cores

    def _set_masking(self, tokenizer: Tokenizer, mask_token: str) -> None:
        """What masking needs from the vocabulary: word starts, special ids, the mask id, the lexicon."""
        if self.config.masking == "token":  # every piece is its own "word"
            self.word_start = torch.ones(tokenizer.get_vocab_size(), dtype=torch.bool)
        else:
            self.word_start = word_start_table(tokenizer)
        specials = {tokenizer.token_to_id(t) for t in _special_names(tokenizer)} | set(self.data.special.values())
        self.special_ids = torch.tensor(sorted(specials))
        self.mask_id = tokenizer.token_to_id(mask_token)
        self.lexicon = None
        if self.config.lexicon:
            words = Path(self.config.lexicon).read_text(encoding="utf-8").splitlines()
            self.lexicon = lexicon_sequences(tokenizer, words)

    def compile_blocks(self) -> None:
        """torch.compile each transformer layer (the loss's data-dependent indexing stays eager)."""
        try:
            for layer in self.model.layers():
                layer.compile(dynamic=self.attention == "varlen" or None)
        except Exception as err:  # noqa: BLE001 - compilation support varies by platform; eager still works
            log.warning("pretrain: torch.compile unavailable (%s); running eager", err)

    def _static_forward(self):
        """`static_losses` on this objective: compiled whole when `compile` is on (fullgraph in one
        process: a graph break is an error, not a silent slowdown), else as it is."""
        forward = functools.partial(static_losses, self.objective)
        if not self.config.compile:
            return forward
        backend = os.environ.get("DOMAINLM_COMPILE_BACKEND", "inductor")  # e.g. aot_eager to debug or test
        mode = None if self.config.compile_mode == "default" or backend != "inductor" else self.config.compile_mode
        return torch.compile(forward, fullgraph=self.world == 1, dynamic=False, backend=backend, mode=mode)

    def _distribute(self, objective: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return objective
        if self.config.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in self.model.layers():
                fully_shard(layer)
            return fully_shard(objective)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)

    # ------------------------------------------------------------------------------- data
    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The global batch of a step, masked (the same on every rank)."""
        self._masking_states[step] = self.generator.get_state()  # what a checkpoint before this step saves
        parts = [self.data.batch(packing, rows) for packing, rows in self.plan.rows(step)]
        batch = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        maskable = batch["real"] & ~torch.isin(batch["input_ids"], self.special_ids)
        preferred = None
        if self.lexicon:
            preferred = lexicon_word_starts(batch["input_ids"], self.word_start, self.lexicon)
        batch["masked_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], maskable, self.word_start, self.config.mask_rate, self.mask_id,
            len(self.word_start), self.generator, mode=self.config.masking, span_mean=self.config.span_mean,
            preferred=preferred, preferred_rate=self.config.lexicon_rate,
        )
        if isinstance(self.model, Electra):  # one uniform draw per masked position samples its replacement
            masked = batch["labels"] != -100
            batch["draw.noise"] = torch.zeros(masked.shape).masked_scatter_(
                masked, torch.rand(int(masked.sum()), generator=self.generator))
        if self.device.type == "cuda":  # page-locked, so that the copies to the GPU do not wait for it
            batch = {key: value.pin_memory() for key, value in batch.items()}
        return batch

    def batches(self, start: int, stop: int):
        """(step, batch) for steps start..stop-1. On a GPU the next batch is gathered and masked on
        a CPU thread while the current step computes (on a CPU the thread would compete for the
        same cores)."""
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

    # ------------------------------------------------------------------------------- step
    def train_step(self, step: int, batch: dict[str, torch.Tensor] | None = None) -> None:
        """One optimizer step on the global batch of `step` (gathered and masked here when not
        given). Its losses stay on the device until `_flush`; a non-finite loss or gradient skips
        the update (found on the device: the step itself never waits for it)."""
        batch = self.batch(step) if batch is None else batch
        chunks = self._chunks(len(batch["input_ids"]))  # every rank's micro-batches, as row indices
        parts = [batch if len(rows) == len(batch["input_ids"]) else {k: v[rows] for k, v in batch.items()}
                 for rows in chunks[self.rank]]
        # Normalise by the global batch's counts: micro-batches and ranks then add up to the
        # gradient of the whole batch (DDP/FSDP average over ranks, hence the factor `world`).
        counts = {"masked": max(1, int((batch["labels"] != -100).sum())), "real": max(1, int(batch["real"].sum()))}
        targets = [self._targets(part) for part in parts]
        if self.static:  # masked positions that did not fit a buffer (on any rank) are not predicted
            overflow = sum(self._targets({k: v[rows] for k, v in batch.items()}).overflow
                           for rank, mine in enumerate(chunks) if rank != self.rank for rows in mine)
            overflow += sum(t.overflow for t in targets)
            self.masked_overflow += overflow
            counts["masked"] = max(1, counts["masked"] - overflow)
        totals = {key: counts[count] for key, count in LOSSES.items()}
        c = self.config
        weights = {"mlm": 1.0, "rtd": c.rtd_weight, "kd": c.distill_logits, "hidden": c.distill_hidden}
        self.objective.train()
        sums = torch.zeros(len(LOSSES), dtype=torch.float64, device=self.device)  # summed losses, on the device
        for index, (part, target) in enumerate(zip(parts, targets, strict=True)):
            self._backward(part, target.to(self.device), totals, weights, sums, last=index == len(parts) - 1)
        self._update(step, batch, sums, totals, weights)

    def _chunks(self, rows: int) -> list[list[np.ndarray]]:
        """Per rank, the row indices of its micro-batches (its slice of the batch, cut every
        `micro_batch_size` rows)."""
        out = []
        for mine in np.array_split(np.arange(rows), self.world):
            micro = self._micro_batch(len(mine))
            out.append([mine[i : i + micro] for i in range(0, len(mine), micro)])
        return out

    def _micro_batch(self, rows: int) -> int:
        """Rows per forward/backward for a rank holding `rows` of the batch (`auto` is decided once,
        on the first step's size, and kept)."""
        setting = self.config.micro_batch_size
        if setting != "auto":
            return setting or rows
        if self._auto_micro is None:
            fits = functools.partial(self._fits_in_memory, seq_len=self.config.seq_len)
            self._auto_micro = choose_micro_batch(rows, fits) if self.device.type == "cuda" else rows
            log.info("pretrain: micro_batch_size auto -> %d rows", self._auto_micro)
        return self._auto_micro

    def _fits_in_memory(self, rows: int, seq_len: int) -> bool:
        """Whether a forward and backward of `rows` full rows stays within `memory_fraction` of the
        GPU (run once on synthetic tokens; the RNG, gradients and weights are left as they were)."""
        rng, static = (torch.get_rng_state(), torch.cuda.get_rng_state()), self.static
        draws = torch.Generator().manual_seed(0)
        ids = torch.randint(5, self.model.config.vocab_size, (rows, seq_len), generator=draws)
        labels = torch.where(torch.rand(rows, seq_len, generator=draws) < self.config.mask_rate, ids, -100)
        part = {"masked_ids": ids, "position_ids": torch.arange(seq_len).expand(rows, seq_len),
                "segment_ids": torch.zeros(rows, seq_len, dtype=torch.long), "labels": labels,
                "real": torch.ones(rows, seq_len, dtype=torch.bool), "draw.noise": torch.rand(rows, seq_len, generator=draws)}
        torch.cuda.reset_peak_memory_stats()
        self.static = False  # the eager step: trying sizes must not compile a graph for each
        try:
            sums = torch.zeros(len(LOSSES), dtype=torch.float64, device=self.device)
            ones = dict.fromkeys(LOSSES, 1)
            self._backward(part, self._targets(part).to(self.device), ones, ones, sums, last=True)
            peak = torch.cuda.max_memory_allocated()
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            self.static = static
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            torch.set_rng_state(rng[0])
            torch.cuda.set_rng_state(rng[1])
        return peak <= self.config.memory_fraction * torch.cuda.get_device_properties(self.device).total_memory

    def _targets(self, part: dict[str, torch.Tensor]) -> MaskedTargets:
        """A micro-batch's masked positions, found on the host (a fixed-capacity buffer under static shapes)."""
        capacity = masked_capacity(part["labels"].numel(), self.config.mask_rate) if self.static else None
        real = part["real"] if self.attention == "varlen" else None
        draws = {key.removeprefix("draw."): value for key, value in part.items() if key.startswith("draw.")}
        return masked_targets(part["labels"], real, draws, capacity)

    def _backward(self, part: dict[str, torch.Tensor], targets: MaskedTargets, totals: dict[str, int],
                  weights: dict[str, float], sums: torch.Tensor, last: bool) -> None:
        """Forward and backward of one micro-batch; its summed losses are added to `sums` (in `LOSSES` order)."""
        to = {"device": self.device, "non_blocking": True}
        defer_sync = self.objective.no_sync() if hasattr(self.objective, "no_sync") and not last else nullcontext()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"), defer_sync:
            if self.static:
                losses = self.forward(part["masked_ids"].to(**to), part["position_ids"].to(**to),
                                      part["segment_ids"].to(**to), part["real"].to(**to), targets.index,
                                      targets.labels, targets.draws)
            else:
                attn = document_attention(part["segment_ids"], part["position_ids"], self.attention, self.device)
                losses = self.objective(part["masked_ids"].to(**to), part["position_ids"].to(**to), attn,
                                        part["real"].to(**to), targets)
            loss = sum(weights[k] * v / totals[k] for k, v in losses.items()) * self.world
            loss.backward()
        for slot, key in enumerate(LOSSES):
            if key in losses:
                sums[slot] += losses[key].detach().double()

    def _update(self, step: int, batch: dict[str, torch.Tensor], sums: torch.Tensor, totals: dict[str, int],
                weights: dict[str, float]) -> None:
        """Clip, step the optimizer (a non-finite loss or gradient makes the fused AdamW skip the
        update on the device) and the schedule, count the tokens; the step's loss, gradient norm and
        parts wait on the device for `_flush`."""
        if self.world > 1:
            dist.all_reduce(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), self.config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a distributed tensor
            grad_norm = grad_norm.full_tensor()
        parts = {key: sums[slot] / totals[key] for slot, key in enumerate(LOSSES) if key in self.loss_names}
        value = sum(weights[k] * v for k, v in parts.items())
        grad_norm = grad_norm.to(sums)
        self.optimizer.found_inf = (~(torch.isfinite(value) & torch.isfinite(grad_norm))).float()
        self.optimizer.step()
        apply_masks(self.model, self.sparse_masks)  # pruned weights stay zero (SPDF)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.real_tokens += int(batch["real"].sum())
        self.positions += batch["real"].numel()
        self.masked_tokens += totals["mlm"]
        self._pending.append((step, torch.stack([value, grad_norm, *(parts.values() if len(parts) > 1 else [])])))

    def _flush(self) -> list[tuple[int, float]]:
        """Bring the waiting steps' losses to the host (one wait for the device), record them, the
        gradient norm and skipped steps; (step, loss) of each."""
        if not self._pending:
            return []
        steps = [step for step, _ in self._pending]
        rows = torch.stack([row for _, row in self._pending]).tolist()
        self._pending = []
        for step, (value, grad_norm, *parts) in zip(steps, rows, strict=True):
            self.losses.append(value)
            self.grad_norm = grad_norm
            if not (math.isfinite(value) and math.isfinite(grad_norm)):
                self.skipped_steps.append(step)  # the weights stayed as they were
            for key, part in zip(self.loss_names, parts, strict=False):
                self.parts.setdefault(key, []).append(part)
        return [(step, row[0]) for step, row in zip(steps, rows, strict=True)]

    def train(self) -> None:
        """Steps from the current one to `max_steps`, a checkpoint every `checkpoint_every`. Under
        static shapes the losses are read (and NaN/inf acted on) every `log_every` steps."""
        total, config = self.config.max_steps, self.config
        batches = self.batches(self.step, total)
        with progress_bar(total=total, initial=self.step, desc="pretrain", unit=" steps",
                          disable=self.rank != 0) as progress:
            try:
                while self.step < total:
                    started = time.perf_counter()
                    self.learning_rates.append(self.scheduler.get_last_lr()[0])
                    _, batch = next(batches)
                    self.train_step(self.step, batch)
                    self.step += 1
                    logged = self.step % config.log_every == 0 or self.step == total
                    if not self.static or logged or self.step % config.checkpoint_every == 0:
                        for step, loss in self._flush():
                            self._check_finite(step, loss)
                    self.elapsed += time.perf_counter() - started
                    progress.update()
                    if logged:
                        self._log(progress)
                    if self.step % config.checkpoint_every == 0 or self.step == total:
                        self.save_checkpoint()
            finally:
                batches.close()  # stops a prefetching thread

    def _check_finite(self, step: int, loss: float) -> None:
        """Count steps in a row whose loss was not finite; TrainingDiverged after `max_bad_steps`."""
        if math.isfinite(loss):
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1  # the update was skipped, so the weights (and any checkpoint) stay sound
        log.warning("pretrain: step %d: non-finite loss (%s), update skipped", step, loss)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_in_a_row} steps in a row ended with a non-finite loss (last at step "
                f"{step}); stopped. Lower pretrain.lr; the last good checkpoint is in {self.checkpoint_dir}.")

    def _log(self, progress) -> None:
        """The recent loss and tokens/s on the progress bar, and every curve to TensorBoard."""
        recent = [x for x in self.losses[-self.config.log_every :] if math.isfinite(x)] or [math.nan]
        loss, tokens_per_s = sum(recent) / len(recent), self.real_tokens / max(self.elapsed, 1e-9)
        progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
        if self.curves is not None:
            self.curves.add(self.step, **{"pretrain/loss": loss, "pretrain/lr": self.learning_rates[-1],
                                          "pretrain/real_tokens_per_s": tokens_per_s,
                                          "pretrain/grad_norm": self.grad_norm})

    # ------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"step": self.step, "losses": self.losses, "parts": self.parts, "learning_rates": self.learning_rates,
                "elapsed": self.elapsed, "real_tokens": self.real_tokens, "positions": self.positions, "skipped_steps": self.skipped_steps,
                "masked_tokens": self.masked_tokens,
                "world_size": self.world}

    def _full_states(self) -> tuple[dict, dict]:
        """Model and optimizer states as whole tensors (gathered from the shards under FSDP)."""
        if self.world > 1 and self.config.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_state_dict(self.model, self.optimizer, options=options)
        return self.model.state_dict(), self.optimizer.state_dict()

    def unsharded_model(self) -> torch.nn.Module:
        """The trained model with whole tensors: the model itself, or under FSDP a copy assembled
        from the shards (every rank must call this; rank 0's copy holds the weights)."""
        if not (self.world > 1 and self.config.distributed == "fsdp"):
            return self.model
        state, _ = self._full_states()
        c = self.model.config
        copy = Electra(c, self.config.generator_fraction) if isinstance(self.model, Electra) else new_model(c)
        if self.rank == 0:
            copy.load_state_dict(state)
        return copy

    def save_checkpoint(self) -> Path | None:
        final = self.checkpoint_dir / f"step-{self.step:08d}"
        model_state, optimizer_state = self._full_states()
        if self.rank == 0:
            with atomic_directory(final) as tmp:
                if self.world > 1 and self.config.distributed == "fsdp":
                    save_file({k: v.contiguous() for k, v in model_state.items()}, tmp / "model.safetensors")
                else:
                    save_model(self.model, str(tmp / "model.safetensors"))  # handles ELECTRA's shared embeddings
                torch.save({"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict()},
                           tmp / "optimizer.pt")
                masking = self._masking_states.get(self.step, self.generator.get_state())
                rng = {"masking": masking, "torch": torch.get_rng_state()}
                if torch.cuda.is_available():
                    rng["cuda"] = torch.cuda.get_rng_state()
                save_file(rng, tmp / "rng.safetensors")
                extras = {f"mask.{name}": mask for name, mask in self.sparse_masks.items()}
                if self.trainable is not self.model:
                    extras |= {f"projection.{k}": v for k, v in self.trainable["projection"].state_dict().items()}
                if extras:
                    save_file({k: v.contiguous() for k, v in extras.items()}, tmp / "extras.safetensors")
                atomic_write_json(tmp / "state.json", self.state())
            for old in sorted(self.checkpoint_dir.glob("step-*"))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._masking_states = {k: v for k, v in self._masking_states.items() if k >= self.step}
        if self.world > 1:
            dist.barrier()
        return final

    def resume_if_possible(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns True if it resumed."""
        complete = sorted(p for p in self.checkpoint_dir.glob("step-*") if (p / "state.json").exists())
        if not complete:
            return False
        folder = complete[-1]
        states = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        if self.world > 1 and self.config.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.optimizer, model_state_dict=load_file(folder / "model.safetensors"),
                           optim_state_dict=states["optimizer"],
                           options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
        else:
            load_model(self.model, str(folder / "model.safetensors"), device=str(self.device))
            self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])
        rng = load_file(folder / "rng.safetensors")
        if (folder / "extras.safetensors").exists():  # SPDF masks, a distillation projection
            extras = load_file(folder / "extras.safetensors", device=str(self.device))
            self.sparse_masks = {k[len("mask."):]: v for k, v in extras.items() if k.startswith("mask.")}
            if self.trainable is not self.model:
                self.trainable["projection"].load_state_dict(
                    {k[len("projection."):]: v for k, v in extras.items() if k.startswith("projection.")})
        self.generator.set_state(rng["masking"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        state = read_json(folder / "state.json")
        self.step, self.losses, self.learning_rates = state["step"], state["losses"], state["learning_rates"]
        self.parts = state.get("parts", {})
        self.elapsed, self.real_tokens, self.positions = state["elapsed"], state["real_tokens"], state["positions"]
        self.skipped_steps = state.get("skipped_steps", [])
        self.masked_tokens = state.get("masked_tokens", 0)
        if self.rank == 0:
            log.info("pretrain: resumed from %s", folder.name)
        return True

    # ------------------------------------------------------------------------------ report
    def history(self) -> dict:
        return {"loss": self.losses, "lr": self.learning_rates, "log_every": self.config.log_every, **self.parts}

    def summary(self) -> dict:
        tail = self.losses[-FINAL_LOSS_STEPS:]
        return {
            "steps": self.step,
            "objective": self.config.objective,
            "final_loss": sum(tail) / len(tail),
            "real_tokens_seen": self.real_tokens,
            "step_seconds": round(self.elapsed, 2),
            "real_tokens_per_s": self.real_tokens / max(self.elapsed, 1e-9),
            "padding_share": 1 - self.real_tokens / max(self.positions, 1),
            "positions": self.positions,
            "masked_tokens": self.masked_tokens,
            "skipped_steps": self.skipped_steps,
            "attention": self.attention,
            "world_size": self.world,
            "corpus_documents": self.data.num_docs,
            "corpus_tokens": int(self.data.offsets[-1]),
            "device": str(self.device),
        }


def _special_names(tokenizer: Tokenizer) -> set[str]:
    """Tokens the tokenizer treats as special (never masked)."""
    return {t["content"] for t in json.loads(tokenizer.to_str()).get("added_tokens", []) if t.get("special")}


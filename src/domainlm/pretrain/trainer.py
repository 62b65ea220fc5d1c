"""The pretraining loop: one `train_step` per optimizer step, checkpoints with exact resume.

Everything a step depends on is a function of the step number or is saved in the checkpoint:
the rows of step `s` come from the `DataPlan` (a pure function of config, corpus, seed and step),
masking and an objective's draws come from a generator whose state is saved, and so are the
optimizer, the scheduler and torch's global RNG (dropout).

Under `torchrun` every rank builds the same global batch (a cheap gather from the memory map),
masks it with the same generator, and computes on its own slice of rows; losses are normalised by
the global batch's masked / real token counts, so N processes compute the gradient one process
would (DDP, or FSDP for models that do not fit one device).
The parts it orchestrates: `objectives`, `batches`, `engine` (device, kernels, DDP/FSDP), `record`, `checkpoint`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from tokenizers import Tokenizer

from domainlm.config import PretrainConfig, picked
from domainlm.distributed import rank, world_size
from domainlm.pretrain import checkpoint, engine
from domainlm.pretrain.architectures import LayoutConfig
from domainlm.pretrain.attention import document_attention
from domainlm.pretrain.batches import MaskedBatches, MaskingSettings, batch_targets
from domainlm.pretrain.data import TokenShards
from domainlm.pretrain.encoder import MaskedTargets, masked_capacity
from domainlm.pretrain.objectives import OBJECTIVES, objective_name
from domainlm.pretrain.plan import DataPlan, PlanSettings
from domainlm.pretrain.record import TrainingRecord
from domainlm.pretrain.sparsity import apply_masks, magnitude_masks
from domainlm.progress import Curves, progress_bar


class Trainer:
    """Pretrains one model on token shards: `train()` runs `train_step` per step, checkpoints and
    resumes. `model`: the model to continue (default: a fresh one the objective builds from
    `model_config`). `curves`: where loss, learning rate, tokens/s and gradient norm go every
    `log_every` steps. `teacher`: a frozen masked LM to distil from (`pretrain.teacher`). With
    `pretrain.sparsity` the transformer layers' weights keep fixed magnitude masks (SPDF)."""

    def __init__(self, model_config: LayoutConfig, config: PretrainConfig, data: TokenShards,
                 tokenizer: Tokenizer, checkpoint_dir: Path, seed: int = 0, model: torch.nn.Module | None = None,
                 mask_token: str = "[MASK]", source_weights: dict[str, float] | None = None,
                 curves: Curves | None = None, teacher: torch.nn.Module | None = None):
        self.config, self.data, self.checkpoint_dir, self.curves = config, data, checkpoint_dir, curves
        self.rank, self.world = rank(), world_size()
        self.device = engine.training_device(config.tf32)
        self.objective_name = objective_name(config, teacher)
        row = OBJECTIVES[self.objective_name]
        torch.manual_seed(seed)  # the model's initialisation draws from the global generator
        self.model = (row.build(model_config, config) if model is None else model).to(self.device)
        self.sparse_masks = magnitude_masks(self.model, config.sparsity)  # SPDF: fixed from the start
        apply_masks(self.model, self.sparse_masks)
        loss_module = row.loss_module(self.model, config, teacher).to(self.device)
        self.weights = row.weights(config)
        self.counts = {name: row.counts[name] for name in self.weights}
        extra = loss_module.extra_parts()  # what the optimizer trains beside the model (a projection)
        self.trainable = torch.nn.ModuleDict({"model": self.model, **extra}) if extra else self.model
        self.static = config.static_shapes
        self.attention = engine.resolve_attention(config.attention, self.device, model_config.dropout, self.static,
                                                  windowed=model_config.attention_window is not None)
        if config.compile and not self.static:
            engine.compile_layers(self.model, dynamic=self.attention == "varlen")
        self.objective = engine.distribute(loss_module, self.model, config.distributed, self.device, self.world)
        self.forward = engine.static_forward(self.objective, config.compile, config.compile_mode, self.world == 1) \
            if self.static else None
        self.optimizer, self.scheduler = engine.optimizer_and_schedule(
            self.trainable, picked(engine.OptimizerSettings, config))
        cuda = self.device.type == "cuda"  # on a CPU a prefetching thread would compete for the same cores
        self.batches = MaskedBatches(data, DataPlan(data, picked(PlanSettings, config), seed, source_weights), tokenizer, mask_token,
                                     picked(MaskingSettings, config), row.draws, seed, pin=cuda, prefetch=cuda)
        self.record = TrainingRecord(list(self.weights), world_size=self.world)
        self.masked_overflow = 0  # masked positions a fixed-capacity buffer could not hold (static shapes)
        self.micro = engine.MicroBatching(config.micro_batch_size, self.world, self._fits, probe=cuda)
        self.checkpointer = checkpoint.Checkpointer(checkpoint_dir, config.keep_checkpoints, self._parts(extra), self.rank == 0)

    @property
    def step(self) -> int:
        return self.record.step

    @property
    def losses(self) -> list[float]:
        return self.record.losses

    # ------------------------------------------------------------------------------- step
    def train_step(self, step: int, batch: dict[str, torch.Tensor] | None = None) -> None:
        """One optimizer step on the global batch of `step` (gathered and masked here when not
        given). Its losses stay on the device until the record's `flush`; a non-finite loss or
        gradient skips the update (found on the device: the step itself never waits for it)."""
        batch = self.batches.batch(step) if batch is None else batch
        chunks = self.micro.chunks(len(batch["input_ids"]))  # every rank's micro-batches, as row indices
        parts = [batch if len(rows) == len(batch["input_ids"]) else {k: v[rows] for k, v in batch.items()}
                 for rows in chunks[self.rank]]
        # Normalise by the global batch's counts: micro-batches and ranks then add up to the
        # gradient of the whole batch (DDP/FSDP average over ranks, hence the factor `world`).
        counts = {"masked": max(1, int((batch["labels"] != -100).sum())), "real": max(1, int(batch["real"].sum()))}
        targets = [self._targets(part, self.static) for part in parts]
        if self.static:  # masked positions that did not fit a buffer (on any rank) are not predicted
            overflow = sum(self._targets({k: v[rows] for k, v in batch.items()}, static=True).overflow
                           for rank, mine in enumerate(chunks) if rank != self.rank for rows in mine)
            overflow += sum(t.overflow for t in targets)
            self.masked_overflow += overflow
            counts["masked"] = max(1, counts["masked"] - overflow)
        self.record.masked_tokens += counts["masked"]
        totals = {name: counts[count] for name, count in self.counts.items()}
        self.objective.train()
        sums = torch.zeros(len(totals), dtype=torch.float64, device=self.device)  # summed losses, on the device
        for index, (part, target) in enumerate(zip(parts, targets, strict=True)):
            self._backward(part, target.to(self.device), totals, sums, index == len(parts) - 1, self.static)
        self._update(step, batch, sums, totals)

    def _fits(self, rows: int) -> bool:
        """Whether an eager step of `rows` full rows fits (`engine.fits_in_memory`; trying sizes
        must not compile a graph for each); gradients cleared after."""
        def step(part):
            sums = torch.zeros(len(self.counts), dtype=torch.float64, device=self.device)
            targets = self._targets(part, static=False).to(self.device)
            self._backward(part, targets, dict.fromkeys(self.counts, 1), sums, last=True, static=False)

        c = self.config
        try:
            return engine.fits_in_memory(step, rows, c.seq_len, self.model.config.vocab_size, c.mask_rate,
                                         self.batches.draws, self.device, c.memory_fraction)
        finally:
            self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def heldout_loss(self, data: TokenShards, max_rows: int = 256, seed: int = 1234) -> dict[str, float] | None:
        """The objective's MLM loss per masked token on held-out documents: packed at the training
        length (the first `max_rows` rows), masked as in training from a fixed seed, so one model and
        one text always give one number; None without an MLM loss or held-out text. Every rank
        takes part (a collective under FSDP)."""
        if not data.num_docs or not len(data.tokens):
            return None
        packing = data.pack(self.config.seq_len)
        batch = self.batches.masked(data.batch(packing, list(range(min(max_rows, len(packing))))),
                                    torch.Generator().manual_seed(seed))
        self.objective.eval()
        total, masked = 0.0, 0
        try:
            for start in range(0, len(batch["input_ids"]), self.config.batch_size):
                part = {key: value[start:start + self.config.batch_size] for key, value in batch.items()}
                ids, positions, real = (part[k].to(self.device) for k in ("masked_ids", "position_ids", "real"))
                attn = document_attention(part["segment_ids"], part["position_ids"], self.attention, self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                    losses = self.objective(ids, positions, attn, real, self._targets(part, static=False).to(self.device))
                if "mlm" not in losses:
                    return None
                total += float(losses["mlm"])
                masked += int((part["labels"] != -100).sum())
        finally:
            self.objective.train()
        return {"heldout_mlm_loss": total / max(1, masked), "heldout_masked_tokens": masked}

    def _targets(self, part: dict[str, torch.Tensor], static: bool) -> MaskedTargets:
        """A micro-batch's masked positions (a fixed-capacity buffer under static shapes)."""
        capacity = masked_capacity(part["labels"].numel(), self.config.mask_rate) if static else None
        return batch_targets(part, self.attention == "varlen", capacity)

    def _backward(self, part: dict[str, torch.Tensor], targets: MaskedTargets, totals: dict[str, int],
                  sums: torch.Tensor, last: bool, static: bool) -> None:
        """Forward and backward of one micro-batch; its summed losses are added to `sums` (in `totals`' order)."""
        to = {"device": self.device, "non_blocking": True}
        ids, positions, real = (part[k].to(**to) for k in ("masked_ids", "position_ids", "real"))
        defer_sync = self.objective.no_sync() if hasattr(self.objective, "no_sync") and not last else nullcontext()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"), defer_sync:
            if static:
                losses = self.forward(ids, positions, part["segment_ids"].to(**to), real, targets.index,
                                      targets.labels, targets.draws)
            else:
                attn = document_attention(part["segment_ids"], part["position_ids"], self.attention, self.device)
                losses = self.objective(ids, positions, attn, real, targets)
            loss = sum(self.weights[k] * v / totals[k] for k, v in losses.items()) * self.world
            loss.backward()
        for slot, key in enumerate(totals):
            if key in losses:
                sums[slot] += losses[key].detach().double()

    def _update(self, step: int, batch: dict[str, torch.Tensor], sums: torch.Tensor, totals: dict[str, int]) -> None:
        """Clip, step the optimizer (a non-finite loss or gradient makes the fused AdamW skip the
        update on the device) and the schedule, count the tokens; the step's loss, gradient norm and
        parts wait on the device in the record."""
        if self.world > 1:
            dist.all_reduce(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), self.config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a distributed tensor
            grad_norm = grad_norm.full_tensor()
        parts = {key: sums[slot] / totals[key] for slot, key in enumerate(totals)}
        value = sum(self.weights[k] * v for k, v in parts.items())
        grad_norm = grad_norm.to(sums)
        self.optimizer.found_inf = (~(torch.isfinite(value) & torch.isfinite(grad_norm))).float()
        self.optimizer.step()
        apply_masks(self.model, self.sparse_masks)  # pruned weights stay zero (SPDF)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.record.real_tokens += int(batch["real"].sum())
        self.record.positions += batch["real"].numel()
        self.record.add(step, value, grad_norm, parts)

    def train(self) -> None:
        """Steps from the current one to `max_steps`, a checkpoint every `checkpoint_every`. Under
        static shapes the losses are read (and NaN/inf acted on) every `log_every` steps."""
        config, record = self.config, self.record
        batches, first = self.batches.batches(record.step, config.max_steps), record.step
        with progress_bar(total=config.max_steps, initial=record.step, desc="pretrain", unit=" steps",
                          disable=self.rank != 0) as progress:
            try:
                while record.step < config.max_steps:
                    started = time.perf_counter()
                    record.learning_rates.append(self.scheduler.get_last_lr()[0])
                    _, batch = next(batches)
                    self.train_step(record.step, batch)
                    if record.step == first and self.device.type == "cuda":  # it probed micro-batch sizes
                        torch.cuda.reset_peak_memory_stats(self.device)  # the peak is the later steps'
                    record.step += 1
                    last = record.step == config.max_steps
                    logged = record.step % config.log_every == 0 or last
                    if not self.static or logged or record.step % config.checkpoint_every == 0:
                        for step, loss in record.flush():
                            record.check_finite(step, loss, config.max_bad_steps, self.checkpoint_dir)
                    record.elapsed += time.perf_counter() - started
                    progress.update()
                    if logged:
                        record.log(progress, self.curves, config.log_every)
                    if record.step % config.checkpoint_every == 0 or last:
                        self.save_checkpoint()
            finally:
                batches.close()  # stops a prefetching thread

    # ------------------------------------------------------------------------- checkpoints
    def _parts(self, extra: dict[str, torch.nn.Module]) -> list[checkpoint.Part]:
        """Every stateful part of the run, in the order a checkpoint restores them."""
        return [*checkpoint.model_parts(self.model, self.optimizer, self.world > 1 and self.config.distributed == "fsdp"),
                checkpoint.scheduler_part(self.scheduler),
                checkpoint.rng_part(lambda: self.batches.state(self.step), self.batches.load_state),
                checkpoint.tensors_part("mask", self.sparse_masks, self.device),
                *(checkpoint.module_part(name, module) for name, module in extra.items()),
                checkpoint.progress_part(self.record.state, self.record.load_state)]

    def save_checkpoint(self) -> Path:
        final = self.checkpointer.save(self.step)
        if self.world > 1:
            dist.barrier()
        return final

    def resume_if_possible(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns True if it resumed."""
        return self.checkpointer.resume()

    def unsharded_model(self) -> torch.nn.Module:
        """The trained model with whole tensors: the model itself, or under FSDP a copy assembled
        from the shards (every rank must call this; rank 0's copy holds the weights)."""
        if not (self.world > 1 and self.config.distributed == "fsdp"):
            return self.model
        state = self.checkpointer.parts[0].state()
        copy = OBJECTIVES[self.objective_name].build(self.model.config, self.config)
        if self.rank == 0:
            copy.load_state_dict(state)
        return copy

    # ------------------------------------------------------------------------------ report
    def summary(self) -> dict:
        """The record's totals and what trained: objective, attention, corpus, device, the rows per
        micro-batch of a rank, and on a GPU the peak allocated bytes after the first step (None on CPU)."""
        cuda = self.device.type == "cuda"
        return {**self.record.summary(), "objective": self.config.objective, "attention": self.attention,
                "corpus_documents": self.data.num_docs, "corpus_tokens": int(self.data.offsets[-1]),
                "device": str(self.device), "micro_batch_rows": self.micro.size(-(-self.config.batch_size // self.world)),
                "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if cuda else None}

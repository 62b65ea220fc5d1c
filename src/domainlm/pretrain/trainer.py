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
from domainlm.pretrain.data import (
    TokenShards,
    lexicon_sequences,
    lexicon_word_starts,
    mask_tokens,
    word_start_table,
)
from domainlm.pretrain.electra import Electra
from domainlm.pretrain.model import Encoder, EncoderConfig, document_attention, masked_positions
from domainlm.pretrain.plan import DataPlan
from domainlm.progress import Curves, progress_bar

log = logging.getLogger(__name__)


class Objective(torch.nn.Module):
    """The summed losses of one micro-batch, as a module so that DDP / FSDP wrap one forward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attn, labels, real, sampler, masked=None) -> dict[str, torch.Tensor]:
        if isinstance(self.model, Electra):
            return self.model.losses(input_ids, position_ids, attn, labels, real, sampler)
        return {"mlm": self.model.mlm_loss(input_ids, position_ids, attn, labels, reduction="sum", masked=masked)}


def resolve_attention(kind: str, device: torch.device, dropout: float) -> str:
    """`auto`: varlen where its flash kernel runs (CUDA, no attention-probability dropout asked
    for), else sdpa. An explicit choice the device cannot run is an error, not a silent fallback."""
    if kind == "auto":
        return "varlen" if device.type == "cuda" and dropout == 0 else "sdpa"
    if kind in ("flex", "varlen") and device.type != "cuda":
        raise ConfigError(f"pretrain.attention: {kind} needs a CUDA GPU (its CPU kernels have no backward); use sdpa")
    return kind


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
    `curves`: where loss, learning rate, tokens/s and gradient norm go every `log_every` steps."""

    def __init__(self, model_config: EncoderConfig, config: PretrainConfig, data: TokenShards,
                 tokenizer: Tokenizer, checkpoint_dir: Path, seed: int = 0, model: torch.nn.Module | None = None,
                 mask_token: str = "[MASK]", source_weights: dict[str, float] | None = None,
                 curves: Curves | None = None):
        self.config, self.data, self.checkpoint_dir, self.seed = config, data, checkpoint_dir, seed
        self.rank, self.world = rank(), world_size()
        self.device = training_device(config.tf32)
        torch.manual_seed(seed)  # the model's initialisation draws from the global generator
        if model is None:
            model = Electra(model_config, config.generator_fraction) if config.objective == "electra" \
                else Encoder(model_config)
        self.model = model.to(self.device)
        self.attention = resolve_attention(config.attention, self.device, model_config.dropout)
        if config.compile:
            self.compile_blocks()
        self.objective = self._distribute(Objective(self.model))
        self.optimizer, self.scheduler = optimizer_and_schedule(self.model, config)
        self.plan = DataPlan(data, config, seed, source_weights)
        self.generator = torch.Generator().manual_seed(seed + 1)  # masking draws (CPU, same on every rank)
        self.sampler = torch.Generator(device=self.device).manual_seed(seed + 2)  # ELECTRA's sampling
        self._set_masking(tokenizer, mask_token)
        self.curves = curves
        self.step = 0
        self.losses: list[float] = []
        self.parts: dict[str, list[float]] = {}  # per-objective losses (ELECTRA: mlm and rtd)
        self.learning_rates: list[float] = []
        self.elapsed = 0.0  # seconds spent in train steps, across resumes
        self.real_tokens = 0
        self.positions = 0  # row positions, padding included (sdpa / flex compute on them)
        self.skipped_steps: list[int] = []  # steps whose loss or gradient was NaN/inf
        self.bad_in_a_row = 0
        self.grad_norm = math.nan  # of the last step
        self._masking_states: dict[int, torch.Tensor] = {}
        self.prefetch = self.device.type == "cuda"  # on a CPU the thread would compete for the same cores

    def _set_masking(self, tokenizer: Tokenizer, mask_token: str) -> None:
        """What masking needs from the vocabulary: word starts, special ids, the mask id, the lexicon."""
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
            for module in self.model.modules():
                if module.__class__.__name__ == "Block":
                    module.compile(dynamic=self.attention == "varlen" or None)
        except Exception as err:  # noqa: BLE001 - compilation support varies by platform; eager still works
            log.warning("pretrain: torch.compile unavailable (%s); running eager", err)

    def _distribute(self, objective: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return objective
        if self.config.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for module in self.model.modules():
                if module.__class__.__name__ == "Block":
                    fully_shard(module)
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
    def train_step(self, step: int, batch: dict[str, torch.Tensor] | None = None) -> float:
        """One optimizer step on the global batch of `step` (gathered and masked here when not
        given). Returns the loss; a non-finite loss or gradient skips the update."""
        batch = self.batch(step) if batch is None else batch
        # Normalise by the global batch's counts: micro-batches and ranks then add up to the
        # gradient of the whole batch (DDP/FSDP average over ranks, hence the factor `world`).
        totals = {"mlm": max(1, int((batch["labels"] != -100).sum())), "rtd": max(1, int(batch["real"].sum()))}
        weights = {"mlm": 1.0, "rtd": self.config.rtd_weight}
        mine = np.array_split(np.arange(len(batch["input_ids"])), self.world)[self.rank]
        micro = self.config.micro_batch_size or len(mine)
        chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        self.model.train()
        # Losses are summed on the device; the step waits for it once, for losses and gradient norm.
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        for index, rows in enumerate(chunks):
            whole = len(rows) == len(batch["input_ids"])
            part = batch if whole else {k: v[rows] for k, v in batch.items()}
            self._backward(part, totals, weights, sums, last=index == len(chunks) - 1)
        return self._update(step, batch, sums, totals, weights)

    def _backward(self, part: dict[str, torch.Tensor], totals: dict[str, int], weights: dict[str, float],
                  sums: torch.Tensor, last: bool) -> None:
        """Forward and backward of one micro-batch; its summed losses are added to `sums` (mlm, rtd)."""
        attn = document_attention(part["segment_ids"], part["position_ids"], self.attention, self.device)
        masked = masked_positions(part["labels"], part["real"] if attn.kind == "varlen" else None, self.device)
        to = {"device": self.device, "non_blocking": True}
        defer_sync = self.objective.no_sync() if hasattr(self.objective, "no_sync") and not last else nullcontext()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"), defer_sync:
            losses = self.objective(part["masked_ids"].to(**to), part["position_ids"].to(**to), attn,
                                    part["labels"].to(**to), part["real"].to(**to), self.sampler, masked)
            loss = sum(weights[k] * v / totals[k] for k, v in losses.items()) * self.world
            loss.backward()
        for slot, key in enumerate(("mlm", "rtd")):
            if key in losses:
                sums[slot] += losses[key].detach().double()

    def _update(self, step: int, batch: dict[str, torch.Tensor], sums: torch.Tensor, totals: dict[str, int],
                weights: dict[str, float]) -> float:
        """Clip, step the optimizer (unless the loss or gradient is not finite) and the schedule,
        count the tokens; the step's loss."""
        if self.world > 1:
            dist.all_reduce(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a distributed tensor
            grad_norm = grad_norm.full_tensor()
        *summed, self.grad_norm = torch.cat([sums, grad_norm.reshape(1).to(sums)]).tolist()
        parts = {key: summed[slot] / totals[key] for slot, key in enumerate(("mlm", "rtd"))}
        if not isinstance(self.model, Electra):
            parts.pop("rtd")
        value = sum(weights[k] * v for k, v in parts.items())
        if math.isfinite(value) and math.isfinite(self.grad_norm):
            self.optimizer.step()
        else:  # skip the update: the weights stay as they were, the step is reported
            self.skipped_steps.append(step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.real_tokens += int(batch["real"].sum())
        self.positions += batch["real"].numel()
        if len(parts) > 1:
            for key, v in parts.items():
                self.parts.setdefault(key, []).append(v)
        return value

    def train(self) -> None:
        """Steps from the current one to `max_steps`, a checkpoint every `checkpoint_every`."""
        total = self.config.max_steps
        batches = self.batches(self.step, total)
        with progress_bar(total=total, initial=self.step, desc="pretrain", unit=" steps",
                          disable=self.rank != 0) as progress:
            try:
                while self.step < total:
                    started = time.perf_counter()
                    self.learning_rates.append(self.scheduler.get_last_lr()[0])
                    _, batch = next(batches)
                    loss = self.train_step(self.step, batch)
                    self.elapsed += time.perf_counter() - started
                    self.losses.append(loss)
                    self.step += 1
                    progress.update()
                    self._check_finite(loss)
                    if self.step % self.config.log_every == 0 or self.step == total:
                        self._log(progress)
                    if self.step % self.config.checkpoint_every == 0 or self.step == total:
                        self.save_checkpoint()
            finally:
                batches.close()  # stops a prefetching thread

    def _check_finite(self, loss: float) -> None:
        """Count steps in a row whose loss was not finite; TrainingDiverged after `max_bad_steps`."""
        if math.isfinite(loss):
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1  # the update was skipped, so the weights (and any checkpoint) stay sound
        log.warning("pretrain: step %d: non-finite loss (%s), update skipped", self.step - 1, loss)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_in_a_row} steps in a row ended with a non-finite loss (last at step "
                f"{self.step - 1}); stopped. Lower pretrain.lr; the last good checkpoint is in "
                f"{self.checkpoint_dir}.")

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
        copy = Electra(c, self.config.generator_fraction) if isinstance(self.model, Electra) else Encoder(c)
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
                rng = {"masking": masking, "sampling": self.sampler.get_state().cpu(),
                       "torch": torch.get_rng_state()}
                if torch.cuda.is_available():
                    rng["cuda"] = torch.cuda.get_rng_state()
                save_file(rng, tmp / "rng.safetensors")
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
        self.generator.set_state(rng["masking"])
        self.sampler.set_state(rng["sampling"])  # a CPU byte tensor, for a CUDA generator too
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        state = read_json(folder / "state.json")
        self.step, self.losses, self.learning_rates = state["step"], state["losses"], state["learning_rates"]
        self.parts = state.get("parts", {})
        self.elapsed, self.real_tokens, self.positions = state["elapsed"], state["real_tokens"], state["positions"]
        self.skipped_steps = state.get("skipped_steps", [])
        if self.rank == 0:
            log.info("pretrain: resumed from %s", folder.name)
        return True

    # ------------------------------------------------------------------------------ report
    def history(self) -> dict:
        return {"loss": self.losses, "lr": self.learning_rates, "log_every": self.config.log_every, **self.parts}

    def summary(self) -> dict:
        tail = self.losses[-max(1, self.config.log_every) :]
        return {
            "steps": self.step,
            "objective": self.config.objective,
            "final_loss": sum(tail) / len(tail),
            "real_tokens_seen": self.real_tokens,
            "step_seconds": round(self.elapsed, 2),
            "real_tokens_per_s": self.real_tokens / max(self.elapsed, 1e-9),
            "padding_share": 1 - self.real_tokens / max(self.positions, 1),
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


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
from tqdm.auto import tqdm

from domainlm.artifacts import atomic_directory, atomic_write_json, read_json
from domainlm.config import PretrainConfig
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


def lr_schedule(kind: str, warmup_steps: int, total_steps: int, decay_fraction: float = 0.2):
    """LR multiplier for step `step` (0-based), for `torch.optim.lr_scheduler.LambdaLR`.

    - linear: linear warmup 0 -> 1, then linear decay to 0 at `total_steps` (BERT).
    - cosine: linear warmup, then half a cosine down to 0.
    - one-cycle: warmup from 1/25 of the peak, then a cosine down to 1/10,000 of it (torch's OneCycleLR).
    - wsd: warmup, stable at the peak, then linear decay to 0 over the last `decay_fraction` of the
      steps (warmup-stable-decay: a run can be extended before the decay starts).
    """
    if kind not in ("linear", "cosine", "one-cycle", "wsd"):
        raise ValueError(f"unknown schedule '{kind}' (expected linear, cosine, one-cycle or wsd)")
    warmup_steps = max(1, warmup_steps)
    decay_start = max(warmup_steps, int(round(total_steps * (1 - decay_fraction))))

    def factor(step: int) -> float:
        if step < warmup_steps:
            start = 1 / 25 if kind == "one-cycle" else 0.0
            return start + (1 - start) * (step + 1) / warmup_steps
        if kind == "wsd":
            if step < decay_start:
                return 1.0
            return max(0.0, (total_steps - step) / max(1, total_steps - decay_start))
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        floor = 1e-4 if kind == "one-cycle" else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; none on biases and LayerNorm (as BERT)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps produced a non-finite loss."""



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
        raise ValueError(f"pretrain.attention: {kind} needs a CUDA GPU (its CPU kernels have no backward); use sdpa")
    return kind


class Trainer:
    def __init__(self, model_config: EncoderConfig, config: PretrainConfig, data: TokenShards,
                 tokenizer: Tokenizer, checkpoint_dir: Path, seed: int = 0, model: torch.nn.Module | None = None,
                 mask_token: str = "[MASK]", source_weights: dict[str, float] | None = None):
        self.config, self.data, self.checkpoint_dir, self.seed = config, data, checkpoint_dir, seed
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
            if config.tf32:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device("cpu")
        torch.manual_seed(seed)
        if model is None:
            model = Electra(model_config, config.generator_fraction) if config.objective == "electra" \
                else Encoder(model_config)
        self.model = model.to(self.device)
        self.attention = resolve_attention(config.attention, self.device, model_config.dropout)
        if config.compile:
            self.compile_blocks()
        self.objective = self._distribute(Objective(self.model))
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
            fused=True,  # one kernel for all parameters, on CPU too: ~10x faster steps than the default loop
        )
        warmup = max(1, math.ceil(config.warmup_fraction * config.max_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config.schedule, warmup, config.max_steps, config.decay_fraction))
        self.plan = DataPlan(data, config, seed, source_weights)
        self.generator = torch.Generator().manual_seed(seed + 1)  # masking draws (CPU, same on every rank)
        self.sampler = torch.Generator(device=self.device).manual_seed(seed + 2)  # ELECTRA's sampling
        self.word_start = word_start_table(tokenizer)
        specials = {tokenizer.token_to_id(t) for t in _special_names(tokenizer)} | set(data.special.values())
        self.special_ids = torch.tensor(sorted(specials))
        self.mask_id = tokenizer.token_to_id(mask_token)
        self.lexicon = None
        if config.lexicon:
            words = Path(config.lexicon).read_text(encoding="utf-8").splitlines()
            self.lexicon = lexicon_sequences(tokenizer, words)
        self.step = 0
        self.losses: list[float] = []
        self.parts: dict[str, list[float]] = {}  # per-objective losses (ELECTRA: mlm and rtd)
        self.learning_rates: list[float] = []
        self.elapsed = 0.0  # seconds spent in train steps, across resumes
        self.real_tokens = 0
        self.positions = 0  # row positions, padding included (sdpa / flex compute on them)
        self.skipped_steps: list[int] = []  # steps whose loss or gradient was NaN/inf
        self.bad_in_a_row = 0
        self._masking_states: dict[int, torch.Tensor] = {}
        self.prefetch = self.device.type == "cuda"  # on a CPU the thread would compete for the same cores

    def compile_blocks(self) -> None:
        """torch.compile each transformer layer (the loss's data-dependent indexing stays eager)."""
        try:
            for module in self.model.modules():
                if module.__class__.__name__ == "Block":
                    module.compile(dynamic=self.attention == "varlen" or None)
        except Exception as err:  # noqa: BLE001 - compilation support varies by platform; eager still works
            print(f"pretrain: torch.compile unavailable ({err}); running eager")

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
            attn = document_attention(part["segment_ids"], part["position_ids"], self.attention, self.device)
            masked = masked_positions(part["labels"], part["real"] if attn.kind == "varlen" else None, self.device)
            to = {"device": self.device, "non_blocking": True}
            last = index == len(chunks) - 1
            defer_sync = self.objective.no_sync() if hasattr(self.objective, "no_sync") and not last else nullcontext()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"), defer_sync:
                losses = self.objective(part["masked_ids"].to(**to), part["position_ids"].to(**to), attn,
                                        part["labels"].to(**to), part["real"].to(**to), self.sampler, masked)
                loss = sum(weights[k] * v / totals[k] for k, v in losses.items()) * self.world
                loss.backward()
            for slot, key in enumerate(("mlm", "rtd")):
                if key in losses:
                    sums[slot] += losses[key].detach().double()
        if self.world > 1:
            dist.all_reduce(sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a distributed tensor
            grad_norm = grad_norm.full_tensor()
        *summed, grad_norm = torch.cat([sums, grad_norm.reshape(1).to(sums)]).tolist()
        parts = {key: summed[slot] / totals[key] for slot, key in enumerate(("mlm", "rtd"))}
        if not isinstance(self.model, Electra):
            parts.pop("rtd")
        value = sum(weights[k] * v for k, v in parts.items())
        if math.isfinite(value) and math.isfinite(grad_norm):
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
        total = self.config.max_steps
        progress = tqdm(total=total, initial=self.step, desc="pretrain", unit=" steps", mininterval=1.0,
                        disable=self.rank != 0)
        batches = self.batches(self.step, total)
        while self.step < total:
            started = time.perf_counter()
            self.learning_rates.append(self.scheduler.get_last_lr()[0])
            _, batch = next(batches)
            loss = self.train_step(self.step, batch)
            self.elapsed += time.perf_counter() - started
            self.losses.append(loss)
            self.step += 1
            progress.update()
            if math.isfinite(loss):
                self.bad_in_a_row = 0
            else:  # the update was skipped, so the weights (and any checkpoint) stay sound
                self.bad_in_a_row += 1
                print(f"pretrain: step {self.step - 1}: non-finite loss ({loss}), update skipped")
                if self.bad_in_a_row >= self.config.max_bad_steps:
                    progress.close()
                    batches.close()
                    raise TrainingDiverged(
                        f"{self.bad_in_a_row} steps in a row ended with a non-finite loss (last at step "
                        f"{self.step - 1}); stopped. Lower pretrain.lr; the last good checkpoint is in "
                        f"{self.checkpoint_dir}.")
            if self.step % self.config.log_every == 0 or self.step == total:
                recent = [x for x in self.losses[-self.config.log_every :] if math.isfinite(x)] or [math.nan]
                progress.set_postfix(loss=f"{sum(recent) / len(recent):.3f}",
                                     tok_s=f"{self.real_tokens / max(self.elapsed, 1e-9):.0f}")
            if self.step % self.config.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
        progress.close()

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
            print(f"pretrain: resumed from {folder.name}")
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


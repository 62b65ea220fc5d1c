"""The pretraining loop: one `train_step` per optimizer step, checkpoints with exact resume.

Everything a step depends on is a function of the step number or is saved in the checkpoint:
the rows of step `s` are positions `s*B ... s*B+B-1` of the concatenated per-epoch permutations
(`epoch_order`), masking draws from a generator whose state is saved, and so are the optimizer,
the scheduler and torch's global RNG (dropout).
"""

from __future__ import annotations

import math
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from domainlm.artifacts import atomic_directory, atomic_write_json, read_json
from domainlm.config import PretrainConfig
from domainlm.pretrain.data import PackedData, epoch_order, mask_tokens, word_start_table
from domainlm.pretrain.model import Encoder, EncoderConfig, segment_attention_mask


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


class Trainer:
    def __init__(self, model_config: EncoderConfig, config: PretrainConfig, data: PackedData,
                 tokenizer: Tokenizer, checkpoint_dir: Path, seed: int = 0):
        self.config, self.data, self.checkpoint_dir, self.seed = config, data, checkpoint_dir, seed
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        self.model = Encoder(model_config).to(self.device)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
            fused=True,  # one kernel for all parameters, on CPU too: ~10x faster steps than the default loop
        )
        warmup = max(1, math.ceil(config.warmup_fraction * config.max_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config.schedule, warmup, config.max_steps, config.decay_fraction))
        self.generator = torch.Generator().manual_seed(seed + 1)  # masking draws
        self.word_start = word_start_table(tokenizer)
        self.special_ids = torch.tensor([tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")])
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.step = 0
        self.losses: list[float] = []
        self.learning_rates: list[float] = []
        self.elapsed = 0.0  # seconds spent in train steps, across resumes
        self.real_tokens = 0
        self.skipped_steps: list[int] = []  # steps whose loss or gradient was NaN/inf
        self.bad_in_a_row = 0

    # ------------------------------------------------------------------------------- data
    @lru_cache(maxsize=4)  # noqa: B019 - a few epochs' permutations, tied to this trainer's life
    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(len(self.data), self.seed, epoch)

    def rows_for_step(self, step: int) -> np.ndarray:
        size, n = self.config.batch_size, len(self.data)
        indices = np.arange(step * size, (step + 1) * size)
        return np.array([self._order(int(i // n))[i % n] for i in indices])

    # ------------------------------------------------------------------------------- step
    def train_step(self, step: int) -> float:
        batch = self.data.batch(self.rows_for_step(step))
        maskable = batch["real"] & ~torch.isin(batch["input_ids"], self.special_ids)
        input_ids, labels = mask_tokens(
            batch["input_ids"], maskable, self.word_start, self.config.mask_rate, self.mask_id,
            len(self.word_start), self.generator, mode=self.config.masking, span_mean=self.config.span_mean,
        )
        attn_mask = segment_attention_mask(batch["segment_ids"])
        to = {"device": self.device, "non_blocking": True}
        self.model.train()
        # Gradient accumulation: micro-batches sum their losses and divide by the masked-token
        # count of the whole batch, so the gradient is the one the whole batch would give.
        micro = self.config.micro_batch_size or len(input_ids)
        masked_total = max(1, int((labels != -100).sum()))
        loss_sum = 0.0
        for start in range(0, len(input_ids), micro):
            part = slice(start, start + micro)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                part_loss = self.model.mlm_loss(input_ids[part].to(**to), batch["position_ids"][part].to(**to),
                                                attn_mask[part].to(**to), labels[part].to(**to), reduction="sum")
            (part_loss / masked_total).backward()
            loss_sum += float(part_loss.detach())
        value = loss_sum / masked_total
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if math.isfinite(value) and math.isfinite(float(grad_norm)):
            self.optimizer.step()
        else:  # skip the update: the weights stay as they were, the step is reported
            self.skipped_steps.append(step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.real_tokens += int(batch["real"].sum())
        return value

    def train(self) -> None:
        total = self.config.max_steps
        progress = tqdm(total=total, initial=self.step, desc="pretrain", unit=" steps", mininterval=1.0)
        while self.step < total:
            started = time.perf_counter()
            self.learning_rates.append(self.scheduler.get_last_lr()[0])
            loss = self.train_step(self.step)
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
        return {"step": self.step, "losses": self.losses, "learning_rates": self.learning_rates,
                "elapsed": self.elapsed, "real_tokens": self.real_tokens, "skipped_steps": self.skipped_steps}

    def save_checkpoint(self) -> Path:
        final = self.checkpoint_dir / f"step-{self.step:08d}"
        with atomic_directory(final) as tmp:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, tmp / "model.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       tmp / "optimizer.pt")
            rng = {"masking": self.generator.get_state(), "torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            save_file(rng, tmp / "rng.safetensors")
            atomic_write_json(tmp / "state.json", self.state())
        for old in sorted(self.checkpoint_dir.glob("step-*"))[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def resume_if_possible(self) -> bool:
        """Load the newest complete checkpoint, if any. Returns True if it resumed."""
        complete = sorted(p for p in self.checkpoint_dir.glob("step-*") if (p / "state.json").exists())
        if not complete:
            return False
        folder = complete[-1]
        self.model.load_state_dict(load_file(folder / "model.safetensors", device=str(self.device)))
        states = torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])
        rng = load_file(folder / "rng.safetensors")
        self.generator.set_state(rng["masking"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        state = read_json(folder / "state.json")
        self.step, self.losses, self.learning_rates = state["step"], state["losses"], state["learning_rates"]
        self.elapsed, self.real_tokens = state["elapsed"], state["real_tokens"]
        self.skipped_steps = state.get("skipped_steps", [])
        print(f"pretrain: resumed from {folder.name}")
        return True

    # ------------------------------------------------------------------------------ report
    def history(self) -> dict:
        return {"loss": self.losses, "lr": self.learning_rates, "log_every": self.config.log_every}

    def summary(self) -> dict:
        tail = self.losses[-max(1, self.config.log_every) :]
        return {
            "steps": self.step,
            "final_loss": sum(tail) / len(tail),
            "real_tokens_seen": self.real_tokens,
            "step_seconds": round(self.elapsed, 2),
            "real_tokens_per_s": self.real_tokens / max(self.elapsed, 1e-9),
            "skipped_steps": self.skipped_steps,
            "corpus_rows": len(self.data),
            "corpus_real_tokens": self.data.real_tokens(),
            "device": str(self.device),
        }

"""Where a training step runs: the device, the attention kernel, compilation, DDP / FSDP, the
optimizer, and the micro-batch size that fits the device. Each function takes the few settings it
reads; the layers it compiles or shards come from the model (`encoder.Encoder.layers`)."""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from domainlm.errors import ConfigError
from domainlm.optim import lr_schedule, parameter_groups
from domainlm.pretrain.attention import document_attention, varlen_has_window
from domainlm.pretrain.encoder import Encoder, MaskedTargets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float
    weight_decay: float
    warmup_fraction: float
    max_steps: int
    schedule: str
    decay_fraction: float


def training_device(tf32: bool) -> torch.device:
    """This rank's GPU (TF32 matmuls allowed if `tf32`), or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


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


def compile_layers(model: Encoder, dynamic: bool) -> None:
    """torch.compile each transformer layer (the loss's data-dependent indexing stays eager)."""
    try:
        for layer in model.layers():
            layer.compile(dynamic=dynamic or None)
    except Exception as err:  # noqa: BLE001 - compilation support varies by platform; eager still works
        log.warning("pretrain: torch.compile unavailable (%s); running eager", err)


def static_losses(objective: torch.nn.Module, input_ids, position_ids, segment_ids, real, index, labels,
                  draws) -> dict[str, torch.Tensor]:
    """The objective on tensors of fixed shapes only (the same-document mask is built inside), the
    function `torch.compile` takes whole: forward and loss here, the backward through AOTAutograd."""
    attn = document_attention(segment_ids, kind="sdpa", device=segment_ids.device)
    return objective(input_ids, position_ids, attn, real, MaskedTargets(index, labels, draws))


def static_forward(objective: torch.nn.Module, compile: bool, mode: str, fullgraph: bool):
    """`static_losses` on `objective`: compiled whole when `compile` is on (fullgraph in one
    process: a graph break is an error, not a silent slowdown), else as it is."""
    forward = functools.partial(static_losses, objective)
    if not compile:
        return forward
    backend = os.environ.get("DOMAINLM_COMPILE_BACKEND", "inductor")  # e.g. aot_eager to debug or test
    mode = None if mode == "default" or backend != "inductor" else mode
    return torch.compile(forward, fullgraph=fullgraph, dynamic=False, backend=backend, mode=mode)


def distribute(objective: torch.nn.Module, model: Encoder, kind: str, device: torch.device, world: int):
    """`objective` wrapped for `world` processes: as it is in one, else DDP, or FSDP (`kind`)
    sharding each of the model's layers and then the rest."""
    if world == 1:
        return objective
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers():
            fully_shard(layer)
        return fully_shard(objective)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)


def optimizer_and_schedule(model: torch.nn.Module, settings: OptimizerSettings):
    """AdamW (betas 0.9 / 0.98, eps 1e-6, as RoBERTa) and its learning-rate schedule."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6,
        fused=True,  # one kernel for all parameters, on CPU too: ~10x faster steps than the default loop
    )
    warmup = max(1, math.ceil(settings.warmup_fraction * settings.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(settings.schedule, warmup, settings.max_steps, settings.decay_fraction))
    return optimizer, scheduler


class MicroBatching:
    """Each rank's micro-batches: its slice of the global batch (rows split evenly over `world`
    ranks), cut every `setting` rows (0: none; "auto": the largest divisor of a rank's rows that
    `fits`, decided once on the first step's size, on a GPU only, and kept)."""

    def __init__(self, setting: int | str, world: int, fits, probe: bool):
        self.setting, self.world, self.fits, self.probe = setting, world, fits, probe
        self.auto: int | None = None

    def size(self, rows: int) -> int:
        """Rows per forward/backward for a rank holding `rows` of the batch."""
        if self.setting != "auto":
            return self.setting or rows
        if self.auto is None:
            self.auto = choose_micro_batch(rows, self.fits) if self.probe else rows
            log.info("pretrain: micro_batch_size auto -> %d rows", self.auto)
        return self.auto

    def chunks(self, rows: int) -> list[list[np.ndarray]]:
        """Per rank, the row indices of its micro-batches."""
        out = []
        for mine in np.array_split(np.arange(rows), self.world):
            micro = self.size(len(mine))
            out.append([mine[i : i + micro] for i in range(0, len(mine), micro)])
        return out


def choose_micro_batch(rows: int, fits) -> int:
    """The largest divisor of `rows` for which `fits(divisor)` holds (tried from the largest down;
    every micro-batch then has the same shape), or 1."""
    for candidate in (d for d in range(rows, 0, -1) if rows % d == 0):
        if fits(candidate):
            return candidate
    return 1


def fits_in_memory(step, rows: int, seq_len: int, vocab_size: int, mask_rate: float, draws, device: torch.device,
                   memory_fraction: float) -> bool:
    """Whether `step(part)` (a forward and backward) on `rows` full synthetic rows stays within
    `memory_fraction` of the GPU; the global RNG is left as it was (the caller clears gradients).
    `draws`: the objective's per-batch draws (`objectives.Objective.draws`)."""
    rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (rows, seq_len), generator=generator)
    labels = torch.where(torch.rand(rows, seq_len, generator=generator) < mask_rate, ids, -100)
    part = {"masked_ids": ids, "position_ids": torch.arange(seq_len).expand(rows, seq_len),
            "segment_ids": torch.zeros(rows, seq_len, dtype=torch.long), "labels": labels,
            "real": torch.ones(rows, seq_len, dtype=torch.bool)}
    part |= {f"draw.{name}": value for name, value in draws(labels, generator).items()}
    torch.cuda.reset_peak_memory_stats()
    try:
        step(part)
        peak = torch.cuda.max_memory_allocated()
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1])
    return peak <= memory_fraction * torch.cuda.get_device_properties(device).total_memory

"""Checkpoints over stateful parts: each part (model, optimizer, scheduler, RNG, the data position,
sparsity masks, projection heads, progress) gives its state and restores it; the `Checkpointer`
holds one list of them and knows only which file each goes to.

A checkpoint is a folder `step-NNNNNNNN/`, written atomically (the layout of every checkpoint so
far, so older ones resume):
- `model.safetensors`: the weights (a tensor shared by two names, as ELECTRA's embeddings, once);
- `optimizer.pt`: {"optimizer", "scheduler"} (read with `weights_only`);
- `rng.safetensors`: the masking generator and torch's CPU (and CUDA) generators;
- `extras.safetensors`: "mask.<layer>" SPDF masks, "<part>.<name>" an objective's extra parts;
- `state.json`: progress (`record.TrainingRecord`), written last: a folder without it is incomplete.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from domainlm.errors import ModelError
from domainlm.io import atomic_directory, atomic_write_json, read_json

log = logging.getLogger(__name__)

PREFIX = "step-"  # a checkpoint folder is step-NNNNNNNN
FILES = ("model.safetensors", "optimizer.pt", "rng.safetensors", "extras.safetensors", "state.json")


@dataclass
class Part:
    """A stateful part: `state()` what it saves (a tensor, or a dict), `load(state)` restores it.
    In its file the state sits under the part's name (`prefixed`), or its keys at the top."""

    name: str
    file: str
    state: Callable[[], Any]
    load: Callable[[Any], None]
    prefixed: bool = True


class Checkpointer:
    """Saves every part into `folder/step-NNNNNNNN/` (keeping the newest `keep`) and loads the
    newest complete checkpoint back. Every rank calls `save` (a part's state may be a collective,
    as FSDP's gathered weights); only the `writer` writes."""

    def __init__(self, folder: Path, keep: int, parts: list[Part], writer: bool = True):
        assert all(p.file in FILES for p in parts), [p.file for p in parts]
        self.folder, self.keep, self.parts, self.writer = folder, keep, parts, writer

    def save(self, step: int) -> Path:
        final = self.folder / f"{PREFIX}{step:08d}"
        by_file: dict[str, dict[str, Any]] = {}
        for part in self.parts:
            state = part.state()
            if state is None or (isinstance(state, dict) and not state and part.prefixed):
                continue  # nothing to save (no masks, no extra part)
            entry = by_file.setdefault(part.file, {})
            entry.update({part.name: state} if part.prefixed else state)
        if self.writer:
            with atomic_directory(final) as tmp:
                for file in FILES:  # state.json last
                    if file in by_file:
                        write(tmp / file, by_file[file])
            for old in sorted(self.folder.glob(f"{PREFIX}*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def resume(self) -> bool:
        """Load the newest complete checkpoint, if any; whether there was one."""
        newest = self.newest()
        if newest is None:
            return False
        self.load(newest)
        if self.writer:
            log.info("pretrain: resumed from %s", newest.name)
        return True

    def newest(self) -> Path | None:
        complete = sorted(p for p in self.folder.glob(f"{PREFIX}*") if (p / FILES[-1]).exists())
        return complete[-1] if complete else None

    def load(self, checkpoint: Path) -> None:
        """Restore every part that `checkpoint` holds state for, in the list's order."""
        contents = {file: read(checkpoint / file) for file in FILES if (checkpoint / file).exists()}
        for part in self.parts:
            stored = contents.get(part.file, {})
            if not part.prefixed:  # everything in its file that no prefixed part claims
                others = [p.name for p in self.parts if p.prefixed and p.file == part.file]
                part.load({k: v for k, v in stored.items() if k.split(".")[0] not in others})
            elif part.name in stored:
                part.load(stored[part.name])
            elif own := {k[len(part.name) + 1 :]: v for k, v in stored.items() if k.startswith(part.name + ".")}:
                part.load(own)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder was saved after."""
    return int(folder.name.removeprefix(PREFIX))


def write(path: Path, content: dict[str, Any]) -> None:
    if path.suffix == ".json":
        atomic_write_json(path, content)
    elif path.suffix == ".pt":
        torch.save(content, path)
    else:
        save_file(unique_tensors(flatten(content)), path)


def read(path: Path) -> dict[str, Any]:
    """A checkpoint file's content (tensors on the CPU; the parts move what they keep)."""
    if path.suffix == ".json":
        return read_json(path)
    if path.suffix == ".pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    return load_file(path)


def flatten(content: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in content.items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            out[key] = value
    return out


def tensor_identity(value: torch.Tensor) -> tuple:
    """What two names of one tied tensor share (storage, offset, shape)."""
    return value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape)


def unique_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, a tensor that several names share (tied weights) under its first name only."""
    seen, out = set(), {}
    for key, value in tensors.items():
        if value.numel() and tensor_identity(value) in seen:
            continue
        seen.add(tensor_identity(value))
        out[key] = value.contiguous()
    return out


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by `Checkpointer` (a tied tensor under one of its names); ModelError
    naming what is missing or unexpected, before anything is loaded."""
    own = model.state_dict()
    tied: dict[tuple, list[str]] = {}
    for key, value in own.items():
        tied.setdefault(tensor_identity(value) if value.numel() else (key,), []).append(key)
    missing = sorted(key for names in tied.values() if not any(n in state for n in names) for key in names)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"checkpoint weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state, strict=False)


def model_parts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> list[Part]:
    """The weights and the optimizer state, as whole tensors (gathered from FSDP's shards when
    `sharded`: a collective, every rank takes part)."""
    from torch.distributed.checkpoint import state_dict as dcp

    gather = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    scatter = dcp.StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    if not sharded:
        return [Part("model", "model.safetensors", model.state_dict, functools.partial(load_weights, model),
                     prefixed=False),
                Part("optimizer", "optimizer.pt", optimizer.state_dict, optimizer.load_state_dict)]
    return [Part("model", "model.safetensors", lambda: dcp.get_model_state_dict(model, options=gather),
                 lambda s: dcp.set_model_state_dict(model, s, options=scatter), prefixed=False),
            Part("optimizer", "optimizer.pt", lambda: dcp.get_optimizer_state_dict(model, optimizer, options=gather),
                 lambda s: dcp.set_optimizer_state_dict(model, optimizer, s, options=scatter))]


def rng_part(masking: Callable[[], torch.Tensor], load_masking: Callable[[torch.Tensor], None]) -> Part:
    """The masking generator (`masking()`: its state before the next step's batch) and torch's
    CPU and CUDA generators (dropout)."""
    def state() -> dict[str, torch.Tensor]:
        cuda = {"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {}
        return {"masking": masking(), "torch": torch.get_rng_state()} | cuda

    def load(state: dict[str, torch.Tensor]) -> None:
        load_masking(state["masking"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])

    return Part("rng", "rng.safetensors", state, load, prefixed=False)


def tensors_part(name: str, tensors: dict[str, torch.Tensor], device: torch.device) -> Part:
    """A dict of tensors kept as it is (SPDF masks), replaced in place on load."""
    def load(state: dict[str, torch.Tensor]) -> None:
        tensors.clear()
        tensors.update({key: value.to(device) for key, value in state.items()})

    return Part(name, "extras.safetensors", lambda: tensors, load)


def module_part(name: str, module: torch.nn.Module) -> Part:
    """A module an objective trains beside the model (a distillation projection)."""
    return Part(name, "extras.safetensors", module.state_dict, module.load_state_dict)


def scheduler_part(scheduler) -> Part:
    """The learning-rate schedule's position, beside the optimizer's state."""
    return Part("scheduler", "optimizer.pt", scheduler.state_dict, scheduler.load_state_dict)


def progress_part(state: Callable[[], dict], load: Callable[[dict], None]) -> Part:
    """What the run has done so far (`record.TrainingRecord`), written last."""
    return Part("progress", "state.json", state, load, prefixed=False)

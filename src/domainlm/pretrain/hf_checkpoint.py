"""Reading a local Hugging Face checkpoint directory, for every layout: its config.json and its
safetensors weights (never a pickle, never remote code)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from domainlm.errors import ModelError


def read_checkpoint_config(path: Path) -> dict:
    """A checkpoint directory's config.json, or ModelError naming the directory."""
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not a readable checkpoint directory (config.json: {err})") from None


def check_weights_file(path: Path) -> None:
    """ModelError naming the directory when it holds no safetensors weights (model.safetensors or
    a sharded index), and which pickled weights it has instead."""
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return
    found = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5"))
    raise ModelError(f"{path}: no model.safetensors (found {found or 'no weights'}); safetensors is required "
                     "because pickled weights can run code on load. Convert the checkpoint first.")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint directory's weights (model.safetensors, or its shards); never a pickle."""
    check_weights_file(path)
    try:
        if (path / "model.safetensors").exists():
            return load_file(path / "model.safetensors")
        shards = set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
        return {k: v for shard in sorted(shards) for k, v in load_file(path / shard).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as err:  # a truncated download, a broken index
        raise ModelError(f"{path}: its safetensors weights cannot be read ({type(err).__name__}: {err})") from None

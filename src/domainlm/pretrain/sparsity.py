"""Sparse pretraining, dense fine-tuning (SPDF; Thangarasa et al. 2023, "SPDF: Sparse
Pre-training and Dense Fine-tuning for Large Language Models").

Unstructured weight sparsity on the transformer layers' linear weights (attention QKV and output,
MLP in and out; embeddings, the MLM head and norms stay dense): in each such matrix the share
`sparsity` of entries with the smallest magnitude at the start of pretraining is zeroed, and the
same entries are zeroed again after every optimizer step (fixed masks, no regrowth). The masks
belong to the trainer and its checkpoints only: the exported model is its weights, zeros
included, so fine-tuning updates every entry (dense).

On hardware without sparse kernels (CPUs, and GPUs here) the step costs what the dense step
costs; the saving SPDF reports is in FLOPs counted as a sparse kernel would spend them
(`domainlm.pretrain.flops`).
"""

from __future__ import annotations

import torch
from torch import nn

from domainlm.pretrain.encoder import Encoder, layer_linears


def sparse_linears(model: Encoder) -> dict[str, nn.Linear]:
    """The linear layers SPDF sparsifies: every `nn.Linear` directly inside one of the model's
    transformer layers (`Encoder.layers`), by qualified name."""
    return layer_linears(model)


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per sparsified layer, a bool mask of its weight's shape that keeps exactly
    round((1 - sparsity) x entries) of the largest magnitudes (ties broken by position). Empty
    when sparsity is 0."""
    if not sparsity:
        return {}
    masks = {}
    for name, linear in sparse_linears(model).items():
        weight = linear.weight.detach()
        keep = round((1 - sparsity) * weight.numel())
        mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
        mask[weight.abs().flatten().topk(keep, sorted=False).indices] = True
        masks[name] = mask.view_as(weight)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out weights (after initialisation and after every optimizer step)."""
    for name, mask in masks.items():  # a lookup per mask, no walk over the model: this runs every step
        model.get_submodule(name).weight.mul_(mask)


def density(model: nn.Module) -> float:
    """Share of non-zero entries over the sparsified layers' weights (1.0 for a dense model)."""
    weights = [linear.weight for linear in sparse_linears(model).values()]
    return float(sum(int(w.count_nonzero()) for w in weights) / max(1, sum(w.numel() for w in weights)))

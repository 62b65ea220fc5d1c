"""Model growth: a bigger encoder initialised from a smaller trained one, after bert2BERT (Chen et
al. 2022, "bert2BERT: Towards Reusable Pretrained Language Models", ACL; its width expansion is
Net2Net's, Chen et al. 2016), so that pretraining the big model starts from what the small one knows.

Width: each axis of each weight has a role (`ROLES`): the residual stream, the attention heads,
the MLP's units, or a size that never changes (vocabulary, positions). Every unit of a grown axis
copies a source unit: unit j copies unit j mod n_old, so the first n_old units are the source's own
and each source unit is copied equally often (for the residual stream that keeps every LayerNorm's
mean and variance, hence its output). Rows (what a weight writes) are copied as they are; columns
(what a Linear sums over) are copied and divided by the number of copies of their source unit, so
the sum is unchanged. That is function-preserving initialisation (`fpi`): the grown model gives
the source's logits. bert2BERT's advanced knowledge initialisation (`aki`) instead takes a layer's
new rows from the layer above it (the top layer from itself): no longer the same function, but the
new units start different from the ones they copy, which fpi's exact copies are not (they stay
identical in training unless dropout sets them apart).

Depth: the grown layers are copies of the (widened) source layers, stacked (1..L, 1..L, ...; StackBERT,
Gong et al. 2019, and bert2BERT) or interleaved (1, 1, 2, 2, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from domainlm.errors import ConfigError, ModelError
from domainlm.pretrain.architectures import LayoutConfig, architecture_of, new_model
from domainlm.pretrain.encoder import MaskedLM, layer_names

SIZE_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")

# The role of each axis of each parameter, by name inside its layer (`local_name`): "width" the
# residual stream, "heads" the attention heads' units (head-major), "qkv" [q | k | v] each split by
# heads, "inner" the MLP's units; None an axis that keeps its size (vocabulary, positions, token
# types). "/copies": the axis a Linear sums over, divided by the copies of each source unit.
ROLES: dict[str, tuple[str | None, ...]] = {
    "tok_embed.weight": (None, "width"),
    "pos_embed.weight": (None, "width"),
    "type_embed.weight": (None, "width"),
    "embed_norm.weight": ("width",), "embed_norm.bias": ("width",),
    "qkv.weight": ("qkv", "width/copies"), "qkv.bias": ("qkv",),
    "attn_out.weight": ("width", "heads/copies"), "attn_out.bias": ("width",),
    "attn_norm.weight": ("width",), "attn_norm.bias": ("width",),
    "mlp_in.weight": ("inner", "width/copies"), "mlp_in.bias": ("inner",),
    "mlp_out.weight": ("width", "inner/copies"), "mlp_out.bias": ("width",),
    "mlp_norm.weight": ("width",), "mlp_norm.bias": ("width",),
    "final_norm.weight": ("width",),
    "head_dense.weight": ("width", "width/copies"), "head_dense.bias": ("width",),
    "head_norm.weight": ("width",), "head_norm.bias": ("width",),
    "head_bias": (None,),
}
# ModernBERT's GeGLU input gives values then gates: both halves grow as the MLP's units ("geglu").
LAYOUT_ROLES = {"bert": ROLES, "modernbert": ROLES | {"mlp_in.weight": ("geglu", "width/copies")}}

# Which source layer target layer t copies, for L source and T target layers (T >= L).
DEPTH_RULES = {
    "stack": lambda t, L, T: t % L,  # 1..L, 1..L, ...
    "interleave": lambda t, L, T: t * L // T,  # 1, 1, 2, 2, ... (copy counts differ by at most one)
}


def check_growth(source: LayoutConfig, sizes: dict[str, int]) -> None:
    """ConfigError naming the `model` keys when the target `sizes` cannot grow from `source`:
    hidden_size not a multiple of the source's, a different head size, or fewer layers or MLP units."""
    H, h = sizes["hidden_size"], source.hidden_size
    if H % h:
        raise ConfigError(f"model.hidden_size {H} is not a multiple of {h}, the hidden size of model.grow_from: "
                          "growth copies every unit of the residual stream equally often")
    head_size = h // source.num_heads
    if H // sizes["num_heads"] != head_size or H % sizes["num_heads"]:
        raise ConfigError(f"model.num_heads {sizes['num_heads']} with model.hidden_size {H} changes the head size "
                          f"of model.grow_from ({head_size}): set model.num_heads: {H // head_size}")
    for key in ("intermediate_size", "num_layers"):
        if sizes[key] < getattr(source, key):
            raise ConfigError(f"model.{key} {sizes[key]} is smaller than model.grow_from's "
                              f"{getattr(source, key)}: growth only adds units and layers")


def grown_config(source: LayoutConfig, sizes: dict[str, Any]) -> LayoutConfig:
    """The source's config (layout, vocabulary, positions, dropout, ...) with the four sizes of
    `sizes` (`SIZE_KEYS`; other keys are ignored); ConfigError as `check_growth`."""
    check_growth(source, sizes)
    return dataclasses.replace(source, **{key: sizes[key] for key in SIZE_KEYS})


def unit_sources(source: LayoutConfig, target: LayoutConfig) -> dict[str, torch.Tensor]:
    """For each axis role, the source index each target index copies: (target size,) integer tensors."""
    H, I, heads = source.hidden_size, source.intermediate_size, source.num_heads  # noqa: E741 - the paper's names
    head_size = H // heads
    head = torch.arange(target.num_heads) % heads  # (target heads,)
    by_head = (head[:, None] * head_size + torch.arange(head_size)).flatten()  # (target hidden,)
    inner = torch.arange(target.intermediate_size) % I
    return {"width": torch.arange(target.hidden_size) % H, "heads": by_head,
            "qkv": torch.cat([by_head + part * H for part in range(3)]),
            "inner": inner, "geglu": torch.cat([inner, inner + I])}


def grow_tensor(tensor: torch.Tensor, axes: tuple[str | None, ...], sources: dict[str, torch.Tensor]) -> torch.Tensor:
    """`tensor` widened along each axis by its role (`ROLES`), a new tensor."""
    for axis, role in enumerate(axes):
        if role is None:
            continue
        name, _, divided = role.partition("/")
        index = sources[name]
        tensor = tensor.index_select(axis, index)
        if divided:
            copies = torch.bincount(index)[index].to(tensor.dtype)  # (target size,)
            shape = [1] * tensor.dim()
            shape[axis] = -1
            tensor = tensor / copies.view(shape)
    return tensor


def new_units(index: torch.Tensor) -> torch.Tensor:
    """(len(index),) bool: which target units are copies of a source unit seen earlier in `index`
    (the units growth added; the first copy of each source unit is the unit itself)."""
    order = torch.arange(len(index))
    first = torch.full((int(index.max()) + 1,), len(index)).scatter_reduce(0, index, order, "amin")
    return order != first[index]


def local_name(name: str, layers: list[str]) -> tuple[int | None, str]:
    """(the index of the layer a parameter belongs to, or None; its name inside that layer, as
    `ROLES` has it). `layers`: the model's layer names (`encoder.layer_names`)."""
    for index, layer in enumerate(layers):
        if name.startswith(layer + "."):
            return index, name[len(layer) + 1 :]
    return None, name


def layer_sources(source_layers: int, target_layers: int, depth: str) -> list[int]:
    """The source layer each target layer copies (`DEPTH_RULES`)."""
    return [DEPTH_RULES[depth](t, source_layers, target_layers) for t in range(target_layers)]


@torch.no_grad()
def grow(source: MaskedLM, target_config: LayoutConfig, depth: str = "stack", init: str = "fpi") -> MaskedLM:
    """A model of `target_config` (from `grown_config`) initialised from `source`: widened by the
    axis roles, then deepened by `depth` ("stack" or "interleave"); `init` "fpi" (the same logits
    as `source`, while the depth is unchanged) or "aki" (each layer's new rows from the layer above).
    What the source lacks (ModernBERT's layer 0 has no attention norm; a copy of it higher up has
    one) keeps the layout's initialisation. ModelError for a parameter without a growth rule
    (ELECTRA's embedding projection)."""
    roles = LAYOUT_ROLES[architecture_of(source.config)]
    sources = unit_sources(source.config, target_config)
    weights = source.state_dict()
    source_layers = layer_names(source)
    unknown = sorted(name for name in weights if local_name(name, source_layers)[1] not in roles)
    if unknown:
        raise ModelError(f"model growth has no rule for the parameters {unknown}")

    def widened(name: str) -> torch.Tensor:
        return grow_tensor(weights[name], roles[local_name(name, source_layers)[1]], sources)

    target = new_model(target_config)
    state = target.state_dict()
    target_layers = layer_names(target)
    copied = layer_sources(len(source_layers), len(target_layers), depth)
    for name in state:
        layer, local = local_name(name, target_layers)
        if layer is None:
            state[name] = widened(name)
            continue
        own, above = (f"{source_layers[i]}.{local}" if i < len(source_layers) else None
                      for i in (copied[layer], copied[layer] + 1))
        if own not in weights:
            continue
        tensor = widened(own)
        if init == "aki" and above in weights:
            added = new_units(sources[roles[local][0]])  # along axis 0, what the layer writes
            tensor[added] = widened(above)[added]
        state[name] = tensor
    # The decoder is the token embeddings, whose columns are copied, not divided: the logits would
    # be k times the source's. The LayerNorm right before the decoder takes the 1 / k instead.
    factor = target_config.hidden_size // source.config.hidden_size
    for name in ("head_norm.weight", "head_norm.bias"):
        if name in state:
            state[name] = state[name] / factor
    target.load_state_dict(state)
    return target


def growth_info(source: LayoutConfig, target: LayoutConfig, depth: str, init: str) -> dict[str, Any]:
    """What the stage's summary records about a growth."""
    return {"method": "bert2BERT", "depth": depth, "init": init,
            "source_sizes": {key: getattr(source, key) for key in SIZE_KEYS},
            "target_sizes": {key: getattr(target, key) for key in SIZE_KEYS}}

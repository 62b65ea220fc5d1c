"""The encoder layouts pretraining trains, one row per `model.architecture`: its config dataclass,
its module, its export to stock `transformers`, and how a local checkpoint of the transformers
`model_type`s it reads is loaded into it (continued pretraining).

The stage and the trainer look a layout up here and never branch on it: every module takes
(input_ids, position_ids, attention) and has `mlm_logits` and `mlm_loss` (`encoder.MaskedLM`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domainlm.errors import ModelError
from domainlm.pretrain import bert, hf_checkpoint, modernbert
from domainlm.pretrain.encoder import MaskedLM


@dataclass(frozen=True)
class Architecture:
    config: type  # the dataclass config, built as config(vocab_size=..., max_position=..., dropout=..., ...)
    model: type  # the module, built as model(config)
    to_hf: Callable  # (model, config) -> the stock transformers masked LM holding its weights
    load: Callable  # (checkpoint directory, dropout) -> (model, info)
    read_config: Callable  # (checkpoint directory, its config.json as a dict, dropout) -> config
    model_types: tuple[str, ...]  # the transformers model_type values `load` reads


# A model config of any layout (not the recipe's `model:` section, `domainlm.config.ModelConfig`).
LayoutConfig = bert.BertConfig | modernbert.ModernBertConfig

ARCHITECTURES = {
    "bert": Architecture(bert.BertConfig, bert.Bert, bert.to_hf_masked_lm, bert.load_hf_bert,
                         bert.bert_config, bert.SUPPORTED),
    "modernbert": Architecture(modernbert.ModernBertConfig, modernbert.ModernBert, modernbert.to_hf_masked_lm,
                               modernbert.load_hf_modernbert, modernbert.modernbert_config, ("modernbert",)),
}


def architecture_of(config) -> str:
    """The `model.architecture` name of a model config."""
    return next(name for name, a in ARCHITECTURES.items() if isinstance(config, a.config))


def new_model(config) -> MaskedLM:
    """A freshly initialised model of the layout `config` describes (from the global torch RNG)."""
    return ARCHITECTURES[architecture_of(config)].model(config)


def to_hf_masked_lm(trained: MaskedLM, config=None):
    """The stock transformers masked LM (BertForMaskedLM, RobertaForMaskedLM or
    ModernBertForMaskedLM) holding `trained`'s weights; `config` (default: the model's) is what
    its config says, e.g. dropout."""
    return ARCHITECTURES[architecture_of(trained.config)].to_hf(trained, config)


def _layout_of(path: Path) -> tuple[str, dict]:
    """(the layout a checkpoint's model_type loads into, its config.json); ModelError naming the
    model_type and those supported when none does."""
    hf = hf_checkpoint.read_checkpoint_config(path)
    supported = {t: name for name, a in ARCHITECTURES.items() for t in a.model_types}
    if hf.get("model_type") not in supported:
        raise ModelError(f"{path}: model_type {hf.get('model_type')!r} is not supported; supported: "
                         f"{', '.join(sorted(supported))}")
    return supported[hf["model_type"]], hf


def load_checkpoint(path: Path, dropout: float | None = None) -> tuple[MaskedLM, dict]:
    """Our model of a local transformers checkpoint directory, in the layout its model_type
    loads into; ModelError as `checkpoint_config`. Returns (model, info) with info["architecture"]
    the layout chosen."""
    layout, _ = _layout_of(Path(path))
    loaded, info = ARCHITECTURES[layout].load(Path(path), dropout)
    return loaded, info | {"architecture": layout}


def checkpoint_config(path: Path) -> tuple[LayoutConfig, dict]:
    """What a checkpoint would load as, read from its config.json alone (no weights): (our config
    of it, {"model_type", "architecture"}). ModelError for an unreadable config.json, an unsupported
    model_type, settings our layout cannot reproduce, or no safetensors weights."""
    layout, hf = _layout_of(Path(path))
    config = ARCHITECTURES[layout].read_config(Path(path), hf, None)
    hf_checkpoint.check_weights_file(Path(path))
    return config, {"model_type": hf["model_type"], "architecture": layout}

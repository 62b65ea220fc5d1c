"""Continued pretraining: start our `Encoder` from a local Hugging Face checkpoint, and optionally
extend its WordPiece vocabulary with the domain tokens that save the most tokens on domain text.

Only `model.safetensors` weights are read (never pickles, never remote code). BERT, ELECTRA and
RoBERTa checkpoints share the layer layout, so loading is a renaming to `BertForMaskedLM`'s names
followed by the inverse of `to_hf_state_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from domainlm.errors import ModelError
from domainlm.pretrain.model import _HF_LAYER_NAMES, _HF_NAMES, Encoder, EncoderConfig
from domainlm.vocabulary import save_tokenizer, special_tokens, untruncated, with_corpus_normalization

SUPPORTED = ("bert", "electra", "roberta")
# Each family's names for the MLM head -> BertForMaskedLM's. Other non-encoder weights (pooler,
# next-sentence or discriminator heads, the decoder bias that duplicates the head bias) are ignored.
_HEAD_NAMES = {
    "bert": {"cls.predictions.": "cls.predictions."},
    "electra": {"generator_predictions.dense.": "cls.predictions.transform.dense.",
                "generator_predictions.LayerNorm.": "cls.predictions.transform.LayerNorm.",
                "generator_lm_head.bias": "cls.predictions.bias",
                "generator_lm_head.weight": "cls.predictions.decoder.weight"},
    "roberta": {"lm_head.dense.": "cls.predictions.transform.dense.",
                "lm_head.layer_norm.": "cls.predictions.transform.LayerNorm.", "lm_head.bias": "cls.predictions.bias",
                "lm_head.decoder.weight": "cls.predictions.decoder.weight"},
}
_HEAD_PARTS = {"dense": "head_dense.", "norm": "head_norm.", "bias": "head_bias"}
_HEAD_KEPT = {name for ours, name in _HF_NAMES.items() if ours.startswith("head")} | {"cls.predictions.decoder.weight"}


def bert_config(path: Path, hf: dict, dropout: float | None) -> EncoderConfig:
    """Our config of a transformers BERT / ELECTRA / RoBERTa config.json, or ModelError naming an
    unsupported model_type or what ours cannot reproduce."""
    family = hf.get("model_type")
    if family not in SUPPORTED:
        raise ModelError(f"{path}: model_type {family!r} is not supported; supported: {', '.join(SUPPORTED)}")
    problems = []
    if hf.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (ours is exact GELU)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {hf['position_embedding_type']!r} (ours is absolute)")
    if family == "electra" and hf.get("embedding_size", hf["hidden_size"]) != hf["hidden_size"]:
        problems.append(f"embedding_size {hf['embedding_size']} != hidden_size {hf['hidden_size']} "
                        "(our Encoder has no embedding projection)")
    if problems:
        raise ModelError(f"{path}: cannot load into our Encoder: {'; '.join(problems)}")
    pad = hf.get("pad_token_id")
    pad = (1 if family == "roberta" else 0) if pad is None else pad
    return EncoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position=hf["max_position_embeddings"],
        dropout=hf.get("hidden_dropout_prob", 0.1) if dropout is None else dropout, pad_token_id=pad,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), initializer_range=hf.get("initializer_range", 0.02),
        type_vocab_size=hf.get("type_vocab_size", 2), position_offset=pad + 1 if family == "roberta" else 0,
        family="roberta" if family == "roberta" else "bert",  # ELECTRA is BERT arithmetic: it exports as BERT
    )


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


def _bert_names(weights: dict[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A checkpoint's weights under BertForMaskedLM's names, and the names that were ignored."""
    out, ignored = {}, []
    for name, tensor in weights.items():
        bare = name.removeprefix(f"{family}.")  # sentence-transformers and *Model dirs have no prefix
        if bare.startswith(("embeddings.", "encoder.")) and bare.endswith((".weight", ".bias")):  # not buffers
            out["bert." + bare] = tensor
            continue
        head = next((new + name[len(old):] for old, new in _HEAD_NAMES[family].items() if name.startswith(old)), None)
        if head in _HEAD_KEPT:
            out[head] = tensor
        else:
            ignored.append(name)
    return out, ignored


def load_hf_encoder(path: Path, dropout: float | None = None) -> tuple[Encoder, dict]:
    """Our `Encoder` with the weights of a local BERT / ELECTRA / RoBERTa checkpoint directory.

    dropout: overrides the checkpoint's hidden_dropout_prob. A missing MLM head (BertModel,
    sentence-transformers, ELECTRA discriminators) is created with BERT's initialisation, from the
    global torch RNG. Returns (model, info) where info lists the head parts loaded and created and
    the checkpoint weights ignored.
    """
    path = Path(path)
    hf = read_checkpoint_config(path)
    config = bert_config(path, hf, dropout)
    weights, ignored = _bert_names(read_safetensors(path), hf["model_type"])
    decoder = weights.pop("cls.predictions.decoder.weight", None)
    embeddings = weights.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
        raise ModelError(f"{path}: the MLM decoder is not tied to the word embeddings; our Encoder always ties them")

    ours = {ours: weights[theirs] for ours, theirs in _HF_NAMES.items() if theirs in weights}
    for i in range(config.num_layers):
        prefix = f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            qkv = [weights.get(f"{prefix}attention.self.{part}.{kind}") for part in ("query", "key", "value")]
            if all(t is not None for t in qkv):
                ours[f"blocks.{i}.qkv.{kind}"] = torch.cat(qkv)  # (3H, ...) fused as in Block
            for module, theirs in _HF_LAYER_NAMES.items():
                if f"{prefix}{theirs}.{kind}" in weights:
                    ours[f"blocks.{i}.{module}.{kind}"] = weights[f"{prefix}{theirs}.{kind}"]

    model = Encoder(config)  # freshly initialised: what the checkpoint lacks keeps BERT's init
    missing, unexpected = model.load_state_dict(ours, strict=False)
    created = [part for part, prefix in _HEAD_PARTS.items() if any(k.startswith(prefix) for k in missing)]
    missing_encoder = [k for k in missing if not k.startswith(("head_dense.", "head_norm.", "head_bias"))]
    if missing_encoder or unexpected:
        raise ModelError(f"{path}: weights do not fit {config}: missing {missing_encoder}, unexpected {unexpected}")
    info = {"model_type": hf["model_type"], "architectures": hf.get("architectures", []),
            "head_created": created, "head_loaded": [p for p in _HEAD_PARTS if p not in created], "ignored": ignored}
    return model, info


def _wordpiece(token: str, vocab: dict[str, int], prefix: str, unk: str) -> list[str]:
    """Pieces of one vocabulary entry under WordPiece's greedy longest match (a `##` entry is
    matched as the continuation of a word, as it would be inside text)."""
    continuation = token.startswith(prefix)
    word, start, pieces = token.removeprefix(prefix), 0, []
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 and not continuation else prefix + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return [unk]  # as WordPiece does: a word with an unmatched part is one unknown token
    return pieces


def extend_vocabulary(model: Encoder, old_tokenizer: Tokenizer, domain_tokenizer: Tokenizer,
                      texts: Iterable[str], max_new_tokens: int) -> tuple[Encoder, Tokenizer, list[str]]:
    """Add to a WordPiece vocabulary the (at most `max_new_tokens`) domain-tokenizer entries that save
    the most tokens on `texts`, and grow a copy of the model to match.

    A candidate's usefulness = times the domain tokenizer emits it on `texts` × (its pieces under the
    old tokenizer − 1). New ids go after the old ones; a new embedding row (and MLM bias) is the mean of
    its old pieces' rows; old rows are unchanged. Returns (model, tokenizer, added tokens in id order).
    """
    old_json, domain_json = json.loads(old_tokenizer.to_str()), json.loads(domain_tokenizer.to_str())
    for name, data in (("old", old_json), ("domain", domain_json)):
        if data["model"]["type"] != "WordPiece":
            raise ModelError(f"extend_vocabulary needs WordPiece tokenizers; the {name} one is {data['model']['type']}")
    vocab = old_json["model"]["vocab"]
    prefix, unk = old_json["model"]["continuing_subword_prefix"], old_json["model"]["unk_token"]
    size = old_tokenizer.get_vocab_size(with_added_tokens=True)
    if size != model.config.vocab_size:
        raise ValueError(f"old tokenizer has {size} tokens but the model {model.config.vocab_size} rows")

    domain = untruncated(domain_tokenizer)
    emitted: Counter[str] = Counter()
    texts = iter(texts)
    while batch := list(itertools.islice(texts, 1000)):  # streamed: the corpus need not fit in memory
        emitted.update(t for e in domain.encode_batch(batch, add_special_tokens=False) for t in e.tokens)
    known = {t["content"] for t in domain_json["added_tokens"]} | set(old_tokenizer.get_vocab())
    normalize = old_tokenizer.normalizer.normalize_str if old_tokenizer.normalizer else (lambda s: s)
    pieces, usefulness = {}, {}
    for token, count in emitted.items():
        # Skip what the old tokenizer has, or could never produce (e.g. uppercase under a lowercasing one).
        if token in known or normalize(token.removeprefix(prefix)) != token.removeprefix(prefix):
            continue
        pieces[token] = _wordpiece(token, vocab, prefix, unk)
        usefulness[token] = count * (len(pieces[token]) - 1)
    ranked = sorted((t for t in usefulness if usefulness[t] > 0), key=lambda t: (-usefulness[t], t))
    added = ranked[:max_new_tokens]

    for offset, token in enumerate(added):
        vocab[token] = size + offset
    tokenizer = Tokenizer.from_str(json.dumps(old_json))

    model = copy.deepcopy(model)
    with torch.no_grad():
        rows = [[vocab[p] for p in pieces[t]] for t in added]  # each new token's old piece ids
        weight, bias = model.tok_embed.weight, model.head_bias
        weight = torch.cat([weight, *(weight[r].float().mean(0, keepdim=True).to(weight.dtype) for r in rows)])
        bias = torch.cat([bias, *(bias[r].float().mean(0, keepdim=True).to(bias.dtype) for r in rows)])
        model.tok_embed = nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=model.config.pad_token_id)
        model.head_bias = nn.Parameter(bias)  # mlm_logits decodes with tok_embed.weight: still tied
    model.config = dataclasses.replace(model.config, vocab_size=size + len(added))
    return model, tokenizer, added


def save_tokenizer_dir(tokenizer: Tokenizer, out_dir: Path, like: Path, unicode_form: str | None = None) -> None:
    """Write `tokenizer` as a transformers tokenizer directory with the special tokens and
    model_max_length of the tokenizer directory `like`; every transformers loader reads it with
    `tokenizer`'s ids (`vocabulary.write_loader_settings`: casing flags follow what `tokenizer` does,
    not what `like` declared). `unicode_form` (the corpus's `corpus.normalization`): the saved
    tokenizer first normalises text that way, as the corpus continued pretraining read was."""
    settings_file = Path(like) / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    if unicode_form:
        tokenizer = with_corpus_normalization(tokenizer, unicode_form)
    save_tokenizer(tokenizer, out_dir, special_tokens(like), settings.get("model_max_length", 512))

"""Vocabulary extension for continued pretraining (a general checkpoint's WordPiece vocabulary
grown by the domain tokens that save the most tokens on domain text), and the tokenizer folder
that goes with the extended model."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from domainlm.errors import ModelError
from domainlm.pretrain.bert import Bert
from domainlm.vocabulary import save_tokenizer, special_tokens, untruncated, with_corpus_normalization


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


def extend_vocabulary(model: Bert, old_tokenizer: Tokenizer, domain_tokenizer: Tokenizer,
                      texts: Iterable[str], max_new_tokens: int) -> tuple[Bert, Tokenizer, list[str]]:
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

"""Tokenizer stage: train a domain WordPiece vocabulary and measure how well it fits the domain.

Fit is measured on the corpus's held-out documents: *fertility* (sub-word tokens per word) and the
share of words split into more than one piece, for the domain vocabulary and, when configured, a
general reference vocabulary. A lower fertility means the vocabulary has whole-word entries for
the domain's terms (PubMedBERT's argument for an in-domain vocabulary).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from domainlm.artifacts import atomic_write_json
from domainlm.config import RunConfig, TokenizerConfig, resolve_path
from domainlm.corpus import iter_corpus_texts

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD = re.compile(r"\w+")


def train_wordpiece(texts, config: TokenizerConfig) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer ([CLS] text [SEP]) on an iterator of texts."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


def save_for_transformers(tokenizer: Tokenizer, out: Path, model_max_length: int = 512) -> None:
    """Write tokenizer.json plus the config files `transformers.AutoTokenizer` reads."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=model_max_length,
    )
    fast.save_pretrained(str(out))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json or a model directory holding one."""
    path = resolve_path(str(path))
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def vocabulary_fit(tokenizer: Tokenizer, texts: list[str]) -> dict[str, Any]:
    """Fertility (pieces per word) and share of words split, over the words (`\\w+` runs) of `texts`.

    Words are found by one rule for every tokenizer, then handed over pre-split, so two vocabularies
    are compared on exactly the same words.
    """
    word_lists = [_WORD.findall(t) for t in texts]
    word_lists = [w for w in word_lists if w]
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: saved tokenizers may truncate (MiniLM at 128)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    pieces = words = split = 0
    split_counts: Counter[str] = Counter()
    for encoding, word_list in zip(
        tokenizer.encode_batch(word_lists, is_pretokenized=True, add_special_tokens=False), word_lists, strict=True
    ):
        per_word = Counter(i for i in encoding.word_ids if i is not None)
        for index, word in enumerate(word_list):
            count = per_word.get(index, 0)
            pieces += count
            words += 1
            if count > 1:
                split += 1
                split_counts[word.lower()] += 1
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "words": words,
        "fertility": pieces / max(words, 1),
        "split_share": split / max(words, 1),
        "most_split": [w for w, _ in split_counts.most_common(15)],
    }


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    corpus_dir = config.directory / "corpus"
    tokenizer = train_wordpiece(iter_corpus_texts(corpus_dir, "train"), config.tokenizer)
    save_for_transformers(tokenizer, out, model_max_length=config.model.max_position)

    heldout = list(iter_corpus_texts(corpus_dir, "heldout"))
    if not heldout:  # tiny corpora: fall back to a slice of the training text
        heldout = [t for _, t in zip(range(500), iter_corpus_texts(corpus_dir, "train"), strict=False)]
    fit = {"domain": vocabulary_fit(tokenizer, heldout), "reference": None, "reference_path": None}
    reference = config.tokenizer.reference
    if reference:
        try:
            fit["reference"] = vocabulary_fit(load_tokenizer(reference), heldout)
            fit["reference_path"] = reference
        except FileNotFoundError as err:
            if not (config.tokenizer.reference_optional and reference.startswith("pkg://")):
                raise
            fit["reference_note"] = f"skipped: {err}"
    atomic_write_json(out / "fit.json", fit)
    line = f"tokenizer: vocab {tokenizer.get_vocab_size()}, fertility {fit['domain']['fertility']:.3f}"
    if fit["reference"]:
        line += f" (reference {fit['reference']['fertility']:.3f})"
    print(line)
    return {"vocab_size": tokenizer.get_vocab_size(), "fertility": fit["domain"]["fertility"]}

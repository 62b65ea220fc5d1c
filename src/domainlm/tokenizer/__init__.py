"""Tokenizer stage: train a domain vocabulary and measure how well it fits the domain.

`tokenizer.model` chooses the sub-word model, each built as its model family builds it
(`SUBWORD_MODELS`): WordPiece with BERT's normaliser, pre-tokenizer and `[CLS] text [SEP]`;
byte-level BPE as RoBERTa and ModernBERT (Radford et al. 2019: every byte is a symbol, so nothing
is unknown) with `<s> text </s>`; Unigram as SentencePiece (Kudo 2018; `▁` marks a word's start,
an unseen character is `<unk>`) with `<s> text </s>`.

Fit is measured on the corpus's held-out documents: *fertility* (sub-word tokens per word), the
share of words split into more than one piece and the share the vocabulary cannot spell ([UNK]), for
the domain vocabulary and, when configured, a general reference vocabulary of any model. A lower
fertility means the vocabulary has whole-word entries for the domain's terms (PubMedBERT's argument
for an in-domain vocabulary).

The saved tokenizer normalises text as the corpus stage did (`corpus.normalization`), so raw text
(task files, any user of the exported model) gets the ids its normalised form gets; and training is
reproducible: the same corpus and settings give a byte-identical tokenizer.json in any process.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from domainlm.config import RunConfig, TokenizerConfig
from domainlm.errors import ConfigError
from domainlm.io import atomic_write_json, input_signature
from domainlm.layout import RunLayout
from domainlm.vocabulary import (
    BERT_SPECIAL_TOKENS,
    ROBERTA_SPECIAL_TOKENS,
    corpus_normalizers,
    corpus_whitespace_normalizers,
    read_tokenizer,
    save_tokenizer,
    vocabulary_fit,
)

log = logging.getLogger(__name__)


def bert_pipeline(config: TokenizerConfig, unicode_form: str) -> Tokenizer:
    """An untrained WordPiece tokenizer with BERT's normaliser and pre-tokenizer, behind the corpus
    stage's own normalisation (`corpus_normalizers`)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    bert = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=config.lowercase
    )
    tokenizer.normalizer = normalizers.Sequence([*corpus_normalizers(unicode_form), bert])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _lowercase(config: TokenizerConfig) -> list[normalizers.Normalizer]:
    return [normalizers.Lowercase()] if config.lowercase else []


def byte_level_pipeline(config: TokenizerConfig, unicode_form: str) -> Tokenizer:
    """An untrained byte-level BPE tokenizer (RoBERTa's pre-tokenizer and decoder) behind the corpus
    stage's normalisation, whitespace included (`corpus_whitespace_normalizers`: here a doubled space
    is a token). `add_prefix_space`, unlike RoBERTa: a text's first word gets the pieces it gets
    anywhere else (`Ġword`), and so does a pre-split word (token classification, the fit report)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence(
        [*corpus_normalizers(unicode_form), *corpus_whitespace_normalizers(), *_lowercase(config)])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def unigram_pipeline(config: TokenizerConfig, unicode_form: str) -> Tokenizer:
    """An untrained Unigram tokenizer as SentencePiece builds one: line breaks read as spaces, each
    space a `▁` at the start of the piece that follows it (Metaspace)."""
    tokenizer = Tokenizer(models.Unigram())
    lines_joined = normalizers.Replace(Regex("\n+"), " ")  # after the corpus's own whitespace steps
    tokenizer.normalizer = normalizers.Sequence(
        [*corpus_normalizers(unicode_form), *corpus_whitespace_normalizers(), lines_joined, *_lowercase(config)])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    return tokenizer


@dataclass(frozen=True)
class SubwordModel:
    """How one `tokenizer.model` is built and trained."""

    specials: dict[str, str]  # role -> token, in the order they take the first ids
    pipeline: Callable[[TokenizerConfig, str], Tokenizer]  # untrained: model, normaliser, pre-tokenizer, decoder
    trainer: Callable[[int, list[str], TokenizerConfig], trainers.Trainer]  # (vocab_size, special tokens, config)
    single: str  # the post-processor's templates, for one text and for a pair
    pair: str


SUBWORD_MODELS = {
    "wordpiece": SubwordModel(
        BERT_SPECIAL_TOKENS, bert_pipeline,
        lambda vocab_size, specials, config: trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
            continuing_subword_prefix="##", show_progress=vocab_size > 0),
        "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
    "bpe": SubwordModel(
        ROBERTA_SPECIAL_TOKENS, byte_level_pipeline,
        lambda vocab_size, specials, config: trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=config.min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
        "<s> $A </s>", "<s> $A </s> </s> $B </s>"),
    "unigram": SubwordModel(
        ROBERTA_SPECIAL_TOKENS, unigram_pipeline,
        lambda vocab_size, specials, config: trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=ROBERTA_SPECIAL_TOKENS["unk"]),
        "<s> $A </s>", "<s> $A </s> </s> $B </s>"),
}


def with_post_processor(tokenizer: Tokenizer, model: SubwordModel) -> Tokenizer:
    """`tokenizer` putting its family's special tokens around one text or a pair."""
    cls, sep = model.specials["cls"], model.specials["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=model.single, pair=model.pair,
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    return tokenizer


def _train(texts: Iterable[str], model: SubwordModel, config: TokenizerConfig, unicode_form: str,
           specials: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = model.pipeline(config, unicode_form)
    tokenizer.train_from_iterator(texts, trainer=model.trainer(vocab_size, specials, config))
    return tokenizer


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig, unicode_form: str = "NFKC") -> Tokenizer:
    """Train a `config.model` tokenizer on `texts` with its family's special tokens (`SUBWORD_MODELS`)
    first in the vocabulary and around every text, reproducibly (WordPiece: `train_wordpiece`;
    Unigram: `unigram_in_canonical_order`; byte-level BPE numbers its sorted byte alphabet first).

    texts: read twice for WordPiece, so a list or a re-iterable.
    unicode_form: the corpus's `corpus.normalization`; the tokenizer applies it to raw text.
    """
    if config.model == "wordpiece":
        return train_wordpiece(texts, config, unicode_form)
    model = SUBWORD_MODELS[config.model]
    try:
        tokenizer = _train(texts, model, config, unicode_form, list(model.specials.values()), config.vocab_size)
    except Exception as err:  # the Unigram trainer refuses a vocabulary that cannot hold every character
        _refuse_too_small_an_alphabet(err, texts, model, config, unicode_form)
        raise
    if config.model == "unigram":
        tokenizer = unigram_in_canonical_order(tokenizer, len(model.specials))
    return with_post_processor(tokenizer, model)


def _refuse_too_small_an_alphabet(err: Exception, texts: Iterable[str], model: SubwordModel, config: TokenizerConfig,
                                  unicode_form: str) -> None:
    """ConfigError when training failed because `tokenizer.vocab_size` cannot hold every character
    of the corpus (Unigram keeps them all); returns (for the caller to re-raise) otherwise."""
    if iter(texts) is texts:  # a one-shot iterator, already read: the characters cannot be counted
        return
    normalizer = model.pipeline(config, unicode_form).normalizer
    characters = {char for text in texts for char in normalizer.normalize_str(text)} - {" "} | {"▁"}
    needed = len(characters) + len(model.specials)
    if needed > config.vocab_size:
        raise ConfigError(f"tokenizer.vocab_size {config.vocab_size}: a {config.model} vocabulary holds every "
                          f"character of the corpus, and it has {len(characters)} (with the {len(model.specials)} "
                          f"special tokens, {needed} entries before any piece of a word); raise tokenizer.vocab_size "
                          f"well above {needed} ({err})") from None


def vocabulary_size_note(tokenizer: Tokenizer, config: TokenizerConfig) -> str | None:
    """Why a trained vocabulary's size differs from `tokenizer.vocab_size`, and the fix; None when
    it does not. Larger: the trainer keeps the corpus's whole alphabet (every character; every
    byte for byte-level BPE; with WordPiece each character's `##` continuation too) and the special
    tokens, whatever the request, and learns pieces of words only in the room left. Smaller: the
    corpus has no more pieces to add (WordPiece and BPE: no pair of pieces occurs `min_frequency`
    times)."""
    size, requested = tokenizer.get_vocab_size(), config.vocab_size
    if size == requested:
        return None
    said = f"tokenizer: the trained vocabulary has {size} entries, not tokenizer.vocab_size {requested}"
    if size < requested:
        cause = "too few distinct words and pieces" if config.model == "unigram" else \
            f"no more pairs of pieces that occur tokenizer.min_frequency ({config.min_frequency}) times or more"
        more = "more text" if config.model == "unigram" else "more text or a lower min_frequency"
        return f"{said}: the training text has {cause}; this is all the vocabulary it supports ({more} gives more)"
    vocab = tokenizer.get_vocab()
    characters = sum(len(token) == 1 for token in vocab)
    continuations = sum(len(token) == 3 and token.startswith("##") for token in vocab)
    specials = len(SUBWORD_MODELS[config.model].specials)
    alphabet = characters + continuations + specials
    parts = f"{characters} {'byte symbols' if config.model == 'bpe' else 'characters'}" + (
        f", {continuations} '##' continuations" if continuations else "") + f" and {specials} special tokens"
    return (f"{said}: every {config.model} vocabulary keeps its alphabet ({parts}: {alphabet} entries), "
            f"which leaves {max(0, requested - alphabet)} of the {requested} for pieces of words ({size - alphabet} "
            f"learned: common words stay split into characters); raise tokenizer.vocab_size well above {alphabet}")


UNIGRAM_SCORE_DIGITS = 6
_READDED_CHARACTER_STEP = 1e-4  # the score step between characters the Unigram trainer adds back


def unigram_in_canonical_order(tokenizer: Tokenizer, specials: int) -> Tokenizer:
    """A trained Unigram tokenizer made independent of the process that trained it.

    The `tokenizers` Unigram trainer sums its piece scores in hash-map order, so they differ in the
    last digits from one process to the next; and the characters it adds back after pruning get
    scores one step (1e-4) apart in hash-map order too. Here scores are rounded to
    UNIGRAM_SCORE_DIGITS decimals, the added-back characters (single characters on the rungs
    lowest, lowest + 1e-4, ...) take those scores in character order, and the pieces after the
    `specials` first ones are numbered by score, then text. A near-tie in the trainer's pruning may
    still fall either way on a large corpus.
    """
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    scores = {piece: round(score, UNIGRAM_SCORE_DIGITS) for piece, score in vocab[specials:]}
    lowest, rungs = min(scores.values()), []  # rung k: the characters scored lowest + k steps
    while rung := sorted(piece for piece, score in scores.items() if len(piece) == 1 and abs(
            score - lowest - len(rungs) * _READDED_CHARACTER_STEP) < 10 ** -(UNIGRAM_SCORE_DIGITS - 1)):
        rungs.append(rung)
    readded = [piece for rung in rungs for piece in rung]
    scores |= dict(zip(sorted(readded), sorted((scores[p] for p in readded), reverse=True), strict=True))
    pieces = sorted(([piece, score] for piece, score in scores.items()), key=lambda entry: (-entry[1], entry[0]))
    data["model"]["vocab"] = vocab[:specials] + pieces
    return Tokenizer.from_str(json.dumps(data))


def train_wordpiece(texts: Iterable[str], config: TokenizerConfig, unicode_form: str = "NFKC") -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer ([CLS] text [SEP]) on `texts`, reproducibly.

    texts: read twice, so a list or a re-iterable (a one-shot iterator raises TypeError).
    unicode_form: the corpus's `corpus.normalization`; the tokenizer applies it to raw text.

    The `tokenizers` trainer (BPE merges, then WordPiece) numbers the continuation pieces (`##x`)
    in the order it meets them while walking a hash map whose order changes with every process,
    and breaks ties between equally frequent merges by those numbers: the same corpus gave another
    vocabulary in each process. So a first pass (no merges) finds the continuation pieces, and the
    real pass gets them, sorted, as reserved tokens that it numbers first: every number, tie and
    merge is then fixed, and tokenizer.json is byte-identical across processes. The reserved
    pieces stay ordinary vocabulary entries (they are not kept as special tokens). (Byte-level BPE
    has no continuation pieces and numbers its sorted byte alphabet first: one pass is enough.)
    """
    if iter(texts) is texts:
        raise TypeError("train_wordpiece reads the texts twice: pass a list or a re-iterable, not an iterator")
    model = SUBWORD_MODELS["wordpiece"]
    specials = list(model.specials.values())
    first = _train(texts, model, config, unicode_form, specials, vocab_size=0)
    continuations = sorted(token for token in first.get_vocab() if token.startswith("##"))
    trained = _train(texts, model, config, unicode_form, specials + continuations, config.vocab_size)
    trained = json.loads(trained.to_str())
    trained["added_tokens"] = [t for t in trained["added_tokens"] if t["content"] in specials]
    return with_post_processor(Tokenizer.from_str(json.dumps(trained)), model)


def save_for_transformers(tokenizer: Tokenizer, out: Path, model_max_length: int = 512) -> None:
    """Write a domain tokenizer trained here as a transformers tokenizer directory that every loader
    reads with the same ids (see `vocabulary.write_loader_settings`), naming its family's special
    tokens (its model, `WordPiece` / `BPE` / `Unigram`, says which)."""
    model = SUBWORD_MODELS[json.loads(tokenizer.to_str())["model"]["type"].lower()]
    save_tokenizer(tokenizer, out, model.specials, model_max_length)


class CorpusTexts:
    """The corpus's texts of one split, read afresh on every iteration (training reads them twice);
    with `share` < 1 a reproducible sample: the texts whose hash falls below it."""

    def __init__(self, run_dir: RunLayout, split: str, share: float = 1.0) -> None:
        self.run_dir, self.split, self.share = run_dir, split, share

    def __iter__(self) -> Iterator[str]:
        texts = self.run_dir.corpus_texts(self.split)
        return texts if self.share >= 1 else (t for t in texts if in_sample(t, self.share))


def in_sample(text: str, share: float) -> bool:
    """Whether a text belongs to a `share` sample (its own hash, independent of the corpus's held-out split)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"tok-sample").digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def training_share(run_dir: RunLayout, max_bytes: int) -> float:
    """The share of the training shards' bytes that `max_bytes` is (1.0 when they are smaller)."""
    total = sum(path.stat().st_size for path in run_dir.corpus_files.shards())
    return min(1.0, max_bytes / total) if total else 1.0


def needs(config: RunConfig) -> tuple[str, ...]:
    return ("corpus",)


def inputs(config: RunConfig) -> list[str]:
    return []  # the corpus, through the corpus stage's output


def settings(config: RunConfig) -> dict[str, Any]:
    # Both go into the saved tokenizer: max_position as its model_max_length, the corpus's Unicode
    # form as its first normaliser. `tokenizer.model` is recorded under its old name, `kind`, so
    # the WordPiece runs made before BPE and Unigram keep their fingerprint.
    tokenizer = config.tokenizer.fingerprinted()
    tokenizer["kind"] = tokenizer.pop("model")
    return {"tokenizer": tokenizer, "max_position": config.model.max_position,
            "normalization": config.corpus.normalization}


def output_digest(config: RunConfig) -> str:
    """What later stages read of this stage's output: the tokenizer files, not the fit report (a
    rerun for another `reference` gives the same vocabulary, and pretraining stays up to date)."""
    run_dir = RunLayout(config.directory)
    return input_signature(run_dir.tokenizer, leave_out=tuple(path.name for path in (
        run_dir.tokenizer_fit, run_dir.manifest("tokenizer"), run_dir.in_progress("tokenizer"))))


def reference_fit(config: TokenizerConfig, heldout: list[str]) -> dict[str, Any]:
    """The general reference vocabulary's fit on the held-out text (nothing when none is set, or
    when an optional `pkg://` reference is not installed)."""
    if not config.reference:
        return {"reference": None, "reference_path": None}
    try:
        return {"reference": vocabulary_fit(read_tokenizer(config.reference), heldout),
                "reference_path": config.reference}
    except FileNotFoundError as err:
        if not (config.reference_optional and config.reference.startswith("pkg://")):
            raise
        return {"reference": None, "reference_path": None, "reference_note": f"skipped: {err}"}


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    run_dir = RunLayout(config.directory)
    share = training_share(run_dir, config.tokenizer.max_training_bytes)
    if share < 1:
        log.info("tokenizer: training on a %.1f%% sample of the corpus (tokenizer.max_training_bytes %d)",
                 100 * share, config.tokenizer.max_training_bytes)
    tokenizer = train_tokenizer(CorpusTexts(run_dir, "train", share), config.tokenizer, config.corpus.normalization)
    save_for_transformers(tokenizer, run_dir.tokenizer, model_max_length=config.model.max_position)

    heldout = list(run_dir.corpus_texts("heldout"))
    if not heldout:  # tiny corpora: fall back to a slice of the training text
        heldout = [t for _, t in zip(range(500), run_dir.corpus_texts("train"), strict=False)]
    note = vocabulary_size_note(tokenizer, config.tokenizer)
    if note:
        log.warning(note)
    fit = {"domain": vocabulary_fit(tokenizer, heldout)} | reference_fit(config.tokenizer, heldout) | {
        "requested_vocab_size": config.tokenizer.vocab_size, "vocab_size_note": note, "training_share": share}
    atomic_write_json(run_dir.tokenizer_fit, fit)
    log.info("tokenizer: vocab %d, fertility %.3f, unknown words %.2f%%%s", tokenizer.get_vocab_size(),
             fit["domain"]["fertility"], 100 * fit["domain"]["unknown_share"],
             f" (reference {fit['reference']['fertility']:.3f})" if fit["reference"] else "")
    return {"vocab_size": tokenizer.get_vocab_size(), "fertility": fit["domain"]["fertility"]} | (
        {"requested_vocab_size": config.tokenizer.vocab_size, "vocab_size_note": note} if note else {})

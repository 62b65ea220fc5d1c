"""Vocabularies shared by the stages: BERT's special tokens, reading and saving tokenizers, the
corpus's text normalisation as tokenizer normalisers, finding a tokenizer directory's special
tokens, how cased a vocabulary is, and measuring how well a vocabulary fits a text.

Fit (Rust et al. 2021; PubMedBERT's argument for an in-domain vocabulary): *fertility* is the number
of sub-word pieces per word, and the *split share* the share of words cut into more than one piece;
a vocabulary that has whole-word entries for a domain's terms scores low on both. A word the
vocabulary cannot spell comes out as the unknown token: it is counted apart (the *unknown share*),
never as a fit.

A saved tokenizer directory must give the ids of its tokenizer.json with every `transformers`
loader: `save_tokenizer` / `write_loader_settings` write `tokenizer_class: PreTrainedTokenizerFast`
(so `AutoTokenizer` reads tokenizer.json as it is), the casing, accent and Chinese-character flags
that class-specific loaders (`BertTokenizer`, `BertTokenizerFast`, the slow one) rebuild their
normaliser from, and `vocab.txt` for the slow one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, normalizers

from domainlm.config import resolve_path
from domainlm.io import atomic_write_json, atomic_write_text

# Role -> token, in the order they take the first ids of a vocabulary trained here.
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}
_WORD = re.compile(r"\w+")
_UNICODE_FORMS = {"NFC": normalizers.NFC, "NFKC": normalizers.NFKC}  # corpus.normalization's forms
_ZERO_WIDTH_SPACE = "\u200b"


def read_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json or a model directory holding one (`pkg://` paths
    too); FileNotFoundError when there is none."""
    path = resolve_path(str(path))
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    return Tokenizer.from_file(str(file))


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    """A copy that neither truncates nor pads (saved tokenizers may: MiniLM's truncates at 128)."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def corpus_normalizers(unicode_form: str) -> list[normalizers.Normalizer]:
    """The corpus stage's text handling (`corpus.filters.normalize_text`) as `tokenizers` normalisers,
    to run before a BERT normaliser, so raw text gets the ids its corpus-normalised form gets.

    `unicode_form`: `corpus.normalization` ("NFKC", "NFC" or "none"; KeyError otherwise). Besides the
    form, only one step of `normalize_text` changes tokens: it reads a zero-width space as a space,
    where BERT's normaliser deletes it (joining two words). Its other steps (control characters
    dropped, runs of spaces and blank lines collapsed, lines stripped) are whitespace and control
    handling that BERT's normaliser and pre-tokenizer already do, so they are not repeated.
    """
    form = [] if unicode_form == "none" else [_UNICODE_FORMS[unicode_form]()]
    return [*form, normalizers.Replace(_ZERO_WIDTH_SPACE, " ")]


def with_corpus_normalization(tokenizer: Tokenizer, unicode_form: str) -> Tokenizer:
    """A copy of `tokenizer` that first normalises text as the corpus stage did (`corpus_normalizers`);
    the tokenizer itself when it already does."""
    steps = corpus_normalizers(unicode_form)
    own = json.loads(tokenizer.to_str())["normalizer"]
    wanted = [json.loads(step.__getstate__()) for step in steps]
    if own and own.get("type") == "Sequence" and own["normalizers"][:len(steps)] == wanted:
        return tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.normalizer = normalizers.Sequence([*steps, *([tokenizer.normalizer] if own else [])])
    return copy


def bert_loader_flags(tokenizer: Tokenizer) -> dict[str, bool]:
    """What `tokenizer`'s normaliser does, as the flags transformers' BERT tokenizer classes rebuild
    theirs from (`do_lower_case`, `strip_accents`, `tokenize_chinese_chars`), found by normalising
    probe characters (so a normaliser inside a Sequence counts too)."""
    normalize = tokenizer.normalizer.normalize_str if tokenizer.normalizer else (lambda text: text)
    return {"do_lower_case": normalize("A") == "a", "strip_accents": normalize("\u00e9") == "e",
            "tokenize_chinese_chars": normalize("\u4e2d") == " \u4e2d "}


def write_loader_settings(folder: Path) -> None:
    """Make every transformers loader of the WordPiece tokenizer directory `folder` give its
    tokenizer.json's ids (other tokenizers are left as they are).

    tokenizer_config.json gets `tokenizer_class: PreTrainedTokenizerFast` (AutoTokenizer then reads
    tokenizer.json as saved; a BERT class would rebuild the normaliser and drop a Unicode form) and
    `bert_loader_flags` (BertTokenizer(Fast) would default to lower-casing); vocab.txt (the entries in
    id order) is written for the slow BertTokenizer. Transformers' BERT classes rebuild a plain BERT
    normaliser, so they cannot apply a Unicode normal form: on text already in that form they give
    the same ids, on raw text with compatibility characters (`ﬁ`, `²`, `µ`) they may not.
    """
    folder = Path(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    model = json.loads(tokenizer.to_str())["model"]
    if model["type"] != "WordPiece":
        return
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    atomic_write_json(config_file, config | {"tokenizer_class": "PreTrainedTokenizerFast"} | bert_loader_flags(tokenizer))
    ordered = sorted(model["vocab"], key=model["vocab"].get)
    if [model["vocab"][t] for t in ordered] == list(range(len(ordered))):  # one line per id, no holes
        atomic_write_text(folder / "vocab.txt", "".join(f"{token}\n" for token in ordered))


def save_tokenizer(tokenizer: Tokenizer, folder: Path, specials: dict[str, str], model_max_length: int) -> None:
    """Write tokenizer.json plus the files `transformers` loaders read (`write_loader_settings`);
    `specials` maps the roles pad / unk / cls / sep / mask to their tokens."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   **{f"{role}_token": token for role, token in specials.items()})
    fast.save_pretrained(str(folder))
    write_loader_settings(Path(folder))


def special_tokens(tokenizer_dir: Path) -> dict[str, str]:
    """The pad / unk / cls / sep / mask token strings of a Hugging Face tokenizer directory: from
    special_tokens_map.json and tokenizer_config.json, else BERT's or RoBERTa's, whichever the
    vocabulary holds."""
    tokenizer_dir = Path(tokenizer_dir)
    declared: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tokenizer_dir / name).exists():
            for key, value in json.loads((tokenizer_dir / name).read_text()).items():
                if key.endswith("_token") and key[:-6] in BERT_SPECIAL_TOKENS and value:
                    declared[key[:-6]] = value["content"] if isinstance(value, dict) else value
    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab()
    defaults = ROBERTA_SPECIAL_TOKENS if "<s>" in vocab and "[CLS]" not in vocab else BERT_SPECIAL_TOKENS
    return {role: declared.get(role, default) for role, default in defaults.items()}


def vocabulary_casing(tokens: Iterable[str]) -> dict[str, Any]:
    """How cased a vocabulary is: of its entries with a cased letter, how many hold an upper-case one.

    Entries that look like markers (`[CLS]`, `<s>`, `[unused3]`) are left out, and sub-word prefixes
    do not matter (only letters are looked at). Returns {"cased_entries", "upper_entries",
    "upper_share": upper / cased (0.0 when none is cased)}: about 0 for a vocabulary trained on
    lower-cased text, a fifth or more for one trained on cased text.
    """
    cased = upper = 0
    for token in tokens:
        if token[:1] + token[-1:] in ("[]", "<>"):
            continue
        letters = [c for c in token if c.lower() != c.upper()]
        cased += bool(letters)
        upper += any(c.isupper() for c in letters)
    return {"cased_entries": cased, "upper_entries": upper, "upper_share": upper / cased if cased else 0.0}


def unknown_id(tokenizer: Tokenizer) -> int | None:
    """The id of the token a tokenizer emits for what its vocabulary cannot spell (None if it has none,
    e.g. byte-level BPE)."""
    model = json.loads(tokenizer.to_str())["model"]
    if model.get("unk_id") is not None:  # Unigram
        return model["unk_id"]
    return tokenizer.token_to_id(model["unk_token"]) if model.get("unk_token") else None


def vocabulary_fit(tokenizer: Tokenizer, texts: list[str]) -> dict[str, Any]:
    """Fertility (pieces per word), share of words split, and share of unknown words, over the words
    (`\\w+` runs) of `texts`.

    Words are found by one rule for every tokenizer, then handed over pre-split, so two vocabularies
    are compared on exactly the same words. A word is *unknown* when one of its pieces is the unknown
    token (WordPiece makes the whole word one [UNK]). An unknown word never counts as a fit: it counts
    in `split_share` (words not kept as one known piece) and in `unknown_share`, and it is left out of
    `fertility`, since its one [UNK] piece says nothing about how finely the vocabulary cuts it.

    Returns {"vocab_size", "words": all words, "fertility": pieces per known word (0.0 when none is
    known), "split_share": (split + unknown words) / words, "most_split": the 15 known words most
    often split (lower-cased), "unknown_share": unknown words / words, "most_unknown": the 15 most
    frequent unknown words (lower-cased)}.
    """
    word_lists = [w for w in (_WORD.findall(t) for t in texts) if w]
    unknown = unknown_id(tokenizer)
    pieces = known = 0
    split_counts: Counter[str] = Counter()
    unknown_counts: Counter[str] = Counter()
    encodings = untruncated(tokenizer).encode_batch(word_lists, is_pretokenized=True, add_special_tokens=False)
    for encoding, word_list in zip(encodings, word_lists, strict=True):
        per_word: dict[int, list[int]] = {}
        for index, token_id in zip(encoding.word_ids, encoding.ids, strict=True):
            if index is not None:
                per_word.setdefault(index, []).append(token_id)
        for index, word in enumerate(word_list):
            ids = per_word.get(index, [])
            if unknown is not None and unknown in ids:
                unknown_counts[word.lower()] += 1
                continue
            known += 1
            pieces += len(ids)
            if len(ids) > 1:
                split_counts[word.lower()] += 1
    words = known + sum(unknown_counts.values())
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "words": words,
        "fertility": pieces / known if known else 0.0,
        "split_share": (split_counts.total() + unknown_counts.total()) / max(words, 1),
        "most_split": [w for w, _ in split_counts.most_common(15)],
        "unknown_share": unknown_counts.total() / max(words, 1),
        "most_unknown": [w for w, _ in unknown_counts.most_common(15)],
    }

"""Vocabularies shared by the stages: BERT's and RoBERTa's special tokens, reading and saving
tokenizers, the corpus's text normalisation as tokenizer normalisers, finding a tokenizer
directory's special tokens, how cased a vocabulary is, and measuring how well a vocabulary fits a
text, whatever its model (WordPiece, BPE, Unigram).

Fit (Rust et al. 2021; PubMedBERT's argument for an in-domain vocabulary): *fertility* is the number
of sub-word pieces per word, and the *split share* the share of words cut into more than one piece;
a vocabulary that has whole-word entries for a domain's terms scores low on both. A word the
vocabulary cannot spell comes out as the unknown token: it is counted apart (the *unknown share*),
never as a fit.

A saved tokenizer directory must give the ids of its tokenizer.json with every `transformers`
loader: `save_tokenizer` / `write_loader_settings` write `tokenizer_class: PreTrainedTokenizerFast`
(so `AutoTokenizer` reads tokenizer.json as it is, normaliser and post-processor included) and
what class-specific loaders rebuild their pipeline from: the casing, accent and Chinese-character
flags of `BertTokenizer(Fast)` (and `vocab.txt` for the slow one), and for byte-level BPE
`add_prefix_space` (`RobertaTokenizer`).
"""

from __future__ import annotations

import bisect
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Encoding, Regex, Tokenizer, normalizers

from domainlm.config import resolve_path
from domainlm.io import atomic_write_json, atomic_write_text

# Role -> token, in the order they take the first ids of a vocabulary trained here (RoBERTa's in its own
# order: <s> 0, <pad> 1, </s> 2, <unk> 3).
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIAL_TOKENS = {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"}
_WORD = re.compile(r"\w+")
FIT_BATCH = 4096  # texts encoded at a time by `vocabulary_fit`
_UNICODE_FORMS = {"NFC": normalizers.NFC, "NFKC": normalizers.NFKC}  # corpus.normalization's forms
_ZERO_WIDTH_SPACE = "\u200b"
# Oniguruma patterns (tokenizers' regexes; \uHHHH, not \xHH, above ASCII) for what Python's re calls
# a space (`\s`, which onig's `\s` is not), without and with the newline.
_BLANK = r"\t\x0b\x0c\r\x1c-\x1f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE = rf"[{_BLANK}\n]"


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
    """The corpus stage's text handling (`corpus.normalize.normalize_text`) as `tokenizers` normalisers,
    to run before a BERT normaliser, so raw text gets the ids its corpus-normalised form gets.

    `unicode_form`: `corpus.normalization` ("NFKC", "NFC" or "none"; KeyError otherwise). Besides the
    form, only one step of `normalize_text` changes tokens: it reads a zero-width space as a space,
    where BERT's normaliser deletes it (joining two words). Its other steps (control characters
    dropped, runs of spaces and blank lines collapsed, lines stripped) are whitespace and control
    handling that BERT's normaliser and pre-tokenizer already do, so they are not repeated here
    (tokenizers that keep whitespace add `corpus_whitespace_normalizers`).
    """
    form = [] if unicode_form == "none" else [_UNICODE_FORMS[unicode_form]()]
    return [*form, normalizers.Replace(_ZERO_WIDTH_SPACE, " ")]


def corpus_whitespace_normalizers() -> list[normalizers.Normalizer]:
    """The rest of `corpus.normalize.normalize_text` (control characters dropped, runs of spaces and of
    blank lines collapsed, lines stripped) as `tokenizers` normalisers, for tokenizers that keep
    whitespace (byte-level BPE): there, unlike behind BERT's normaliser, a tab or a doubled space
    changes the ids. Runs after `corpus_normalizers`."""
    def replace(pattern: str, content: str) -> normalizers.Normalizer:
        return normalizers.Replace(Regex(pattern), content)

    return [replace(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", ""), replace(r"\r\n|\r", "\n"),
            replace(r"[ \t\u00a0\u2000-\u200b\u3000]+", " "), replace(rf"\n{_SPACE}*\n{_SPACE}*(\n{_SPACE}*)*", "\n\n"),
            replace(rf"[{_BLANK}]*\n[{_BLANK}]*", "\n"), normalizers.Strip()]


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


def loader_settings(tokenizer: Tokenizer) -> dict[str, Any]:
    """What `tokenizer` does to text, as the settings transformers' class-specific tokenizers rebuild
    their pipeline from: casing, accents and CJK splitting (`bert_loader_flags`: BertTokenizer, and
    stated for any model) and, for a byte-level pre-tokenizer, `add_prefix_space` (RobertaTokenizer)."""
    pre_tokenizer = json.loads(tokenizer.to_str())["pre_tokenizer"] or {}
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    byte_level = [step["add_prefix_space"] for step in steps if step.get("type") == "ByteLevel"]
    return bert_loader_flags(tokenizer) | ({"add_prefix_space": byte_level[0]} if byte_level else {})


def write_loader_settings(folder: Path) -> None:
    """Make every transformers loader of the tokenizer directory `folder` give its tokenizer.json's
    ids, as far as it can.

    tokenizer_config.json gets `tokenizer_class: PreTrainedTokenizerFast` (AutoTokenizer then reads
    tokenizer.json as saved; a BERT or RoBERTa class would rebuild the normaliser and drop a Unicode
    form) and `loader_settings` (BertTokenizer(Fast) would default to lower-casing); for WordPiece,
    vocab.txt (the entries in id order) is written for the slow BertTokenizer. Class-specific loaders
    rebuild a normaliser of their own, so they cannot apply a Unicode normal form (nor, for RoBERTa's
    classes, lower-casing): on text already in that form they give the same ids, on raw text with
    compatibility characters (`ﬁ`, `²`, `µ`) they may not.
    """
    folder = Path(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    atomic_write_json(config_file, config | {"tokenizer_class": "PreTrainedTokenizerFast"} | loader_settings(tokenizer))
    model = json.loads(tokenizer.to_str())["model"]
    if model["type"] != "WordPiece":
        return
    ordered = sorted(model["vocab"], key=model["vocab"].get)
    if [model["vocab"][t] for t in ordered] == list(range(len(ordered))):  # one line per id, no holes
        atomic_write_text(folder / "vocab.txt", "".join(f"{token}\n" for token in ordered))


def save_tokenizer(tokenizer: Tokenizer, folder: Path, specials: dict[str, str], model_max_length: int) -> None:
    """Write tokenizer.json plus the files `transformers` loaders read (`write_loader_settings`);
    `specials` maps the roles pad / unk / cls / sep / mask to their tokens (RoBERTa's `<s>` and
    `</s>` are also its bos and eos tokens)."""
    from transformers import PreTrainedTokenizerFast

    roles = dict(specials)
    if specials.get("cls") == ROBERTA_SPECIAL_TOKENS["cls"]:
        roles |= {"bos": specials["cls"], "eos": specials["sep"]}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length,
                                   **{f"{role}_token": token for role, token in roles.items()})
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
    defaults = family_special_tokens(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")))
    return {role: declared.get(role, default) for role, default in defaults.items()}


def family_special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """BERT's or RoBERTa's special tokens, whichever `tokenizer`'s vocabulary holds."""
    vocab = tokenizer.get_vocab()
    return ROBERTA_SPECIAL_TOKENS if "<s>" in vocab and "[CLS]" not in vocab else BERT_SPECIAL_TOKENS


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


def word_pieces(text: str, encoding: Encoding) -> list[list[int]]:
    """The token ids of each word (`\\w+` run) of `text`, from `encoding` (of `text`, untruncated),
    matched by character offsets, so any tokenizer's pieces count: WordPiece's `##` pieces, BPE's
    and Unigram's whatever their markers.

    A piece belongs to every word it overlaps. A piece that covers only a word-start marker (a lone
    `Ġ` or `▁`, which spans a space or nothing) belongs to the word its next piece in the same
    pre-token starts; a piece over punctuation belongs to no word.
    """
    spans = [match.span() for match in _WORD.finditer(text)]
    starts, ends = [start for start, _ in spans], [end for _, end in spans]
    pieces: list[list[int]] = [[] for _ in spans]
    waiting: tuple[int | None, list[int]] = (None, [])  # (pre-token, its marker pieces not yet in a word)
    for token_id, (start, end), pre_token in zip(encoding.ids, encoding.offsets, encoding.word_ids, strict=True):
        overlapped = range(bisect.bisect_right(ends, start), bisect.bisect_left(starts, end))
        markers = waiting[1] if waiting[0] == pre_token else []
        if overlapped:
            pieces[overlapped[0]].extend(markers)
            for word in overlapped:
                pieces[word].append(token_id)
            waiting = (None, [])
        else:  # a marker waits for its word; punctuation ends the wait
            waiting = (pre_token, [*markers, token_id]) if not text[start:end].strip() else (None, [])
    return pieces


def vocabulary_fit(tokenizer: Tokenizer, texts: list[str]) -> dict[str, Any]:
    """Fertility (pieces per word), share of words split, and share of unknown words, over the words
    (`\\w+` runs) of `texts`, for a tokenizer of any model.

    Words are found by one rule for every tokenizer, and each tokenizer's pieces are matched to them
    by offsets (`word_pieces`) in the running text it encodes, so two vocabularies of different
    models are compared on exactly the same words, each cut as it is in use (a byte-level BPE word
    with its leading space). A word is *unknown* when one of its pieces is the unknown token
    (WordPiece makes the whole word one [UNK], Unigram an unknown character one <unk>; byte-level
    BPE has none). An unknown word never counts as a fit: it counts in `split_share` (words not kept
    as one known piece) and in `unknown_share`, and it is left out of `fertility`, since its [UNK]
    piece says nothing about how finely the vocabulary cuts it.

    Returns {"vocab_size", "words": all words, "fertility": pieces per known word (0.0 when none is
    known), "split_share": (split + unknown words) / words, "most_split": the 15 known words most
    often split (lower-cased), "unknown_share": unknown words / words, "most_unknown": the 15 most
    frequent unknown words (lower-cased)}.
    """
    unknown = unknown_id(tokenizer)
    pieces = known = 0
    split_counts: Counter[str] = Counter()
    unknown_counts: Counter[str] = Counter()
    whole = untruncated(tokenizer)
    for start in range(0, len(texts), FIT_BATCH):  # memory bounded by one batch's encodings (~100 bytes a token)
        batch = texts[start:start + FIT_BATCH]
        for text, encoding in zip(batch, whole.encode_batch(batch, add_special_tokens=False), strict=True):
            for word, ids in zip(_WORD.findall(text), word_pieces(text, encoding), strict=True):
                if unknown is not None and unknown in ids:
                    unknown_counts[word.lower()] += 1
                    continue
                known += 1
                pieces += len(ids)
                if len(ids) > 1:
                    split_counts[word.lower()] += 1
    words = known + unknown_counts.total()
    return {
        "vocab_size": tokenizer.get_vocab_size(),
        "words": words,
        "fertility": pieces / known if known else 0.0,
        "split_share": (split_counts.total() + unknown_counts.total()) / max(words, 1),
        "most_split": [w for w, _ in split_counts.most_common(15)],
        "unknown_share": unknown_counts.total() / max(words, 1),
        "most_unknown": [w for w, _ in unknown_counts.most_common(15)],
    }

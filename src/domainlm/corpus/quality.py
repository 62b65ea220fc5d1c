"""Heuristic quality filters, PII masking and optional language id: plain functions over text.

The rules follow C4 (Raffel et al. 2020), Gopher / MassiveText (Rae et al. 2021, appendix A) and
FineWeb (Penedo et al. 2024); every threshold lives in `QualityConfig`. The document rules are
steps (`STEPS`), run in the order `QualityConfig.steps` names, each returning None to keep a
document or the reason to drop it, as datatrove's filters do. Texts arrive normalised by
`normalize.normalize_text`: spaces collapsed, lines stripped, paragraphs separated by one blank line.
Speed: cheap checks run first, and the costly ones (n-gram counts, most regexes) are skipped when a
cheaper test shows they cannot fire.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import compress
from typing import Any

from domainlm.config import QualityConfig, resolve_path

# ------------------------------------------------------------------------------------ C4 lines
_BOILERPLATE_HINTS = ("javascript", "terms of use", "privacy policy", "cookie")
_BOILERPLATE = re.compile(  # whole words; "in terms of use of antibiotics" is ordinary prose
    r"\b(?:javascript|(?<!in )terms of use|privacy policy|cookie policy|uses? cookies|use of cookies)\b"
)
_CITATION_LINE = re.compile(r"(?:\[(?:\d+|edit|citation needed)\] ?)+", re.I)
_TERMINAL = (".", "!", "?", '"', "'", "”", "’")


def clean_lines(text: str, config: QualityConfig) -> tuple[str, int]:
    """Remove C4's boilerplate lines; return the cleaned text and the number of lines removed.

    A line goes if it mentions javascript or cookie / terms-of-use / privacy-policy boilerplate,
    if it holds only citation marks (`[1]`, `[edit]`, `[citation needed]`), and, with
    `c4_terminal_punct`, if it does not end in terminal punctuation.
    """
    if not config.c4_lines:
        return text, 0
    lower = text.lower()
    if not (config.c4_terminal_punct or "[" in text or any(hint in lower for hint in _BOILERPLATE_HINTS)):
        return text, 0  # the common case: nothing to remove, so no per-line work
    kept, removed = [], 0
    for line in text.split("\n"):
        if line and (
            _BOILERPLATE.search(line.lower())
            or _CITATION_LINE.fullmatch(line)
            or (config.c4_terminal_punct and not line.endswith(_TERMINAL))
        ):
            removed += 1
        else:
            kept.append(line)  # blank lines stay: they separate paragraphs
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), removed


# --------------------------------------------------------------------------------------- steps
@dataclass
class QualityText:
    """A normalised document as the quality steps read it. Its views (lower case, words, lines)
    are computed once, when a step first asks, so a step that decides early costs nothing more."""

    text: str

    @cached_property
    def lower(self) -> str:
        return self.text.lower()

    @cached_property
    def words(self) -> list[str]:
        return self.lower.split()

    @cached_property
    def lines(self) -> list[str]:
        return [line for line in self.text.split("\n") if line]


def quality_reason(text: str, config: QualityConfig) -> str | None:
    """The reason of the first step in `config.steps` (`STEPS`) that drops a normalised document,
    or None to keep it."""
    doc = QualityText(text)
    for name in config.steps:
        reason = STEPS[name](doc, config)
        if reason:
            return reason
    return None


def length_reason(doc: QualityText, config: QualityConfig) -> str | None:
    """`too_long` by characters, then `too_short` / `too_long` by words."""
    if len(doc.text) > config.max_chars:
        return "too_long"  # before splitting, so a 50 MB line costs nothing
    if len(doc.words) < config.min_words:
        return "too_short"
    if len(doc.words) > config.max_words:
        return "too_long"
    return None


def c4_reason(doc: QualityText, config: QualityConfig) -> str | None:
    """C4's document rules (`c4:*`), with `c4_docs`."""
    if not config.c4_docs:
        return None
    if "lorem ipsum" in doc.lower:
        return "c4:lorem_ipsum"
    if config.c4_curly_bracket and "{" in doc.text:
        return "c4:curly_bracket"
    return None


# a whitespace-led token without a letter ("12.5", "(p<0.05)", ","); the text gets a leading space
_LETTERLESS_WORD = re.compile(r"\s((?:[^\w\s]|[\d_])+)(?!\S)")
_DIGIT = re.compile(r"[\d_]")
_BULLETS = ("•", "●", "○", "◦", "▪", "▫", "‣", "⁃", "-", "*", "·")
_ELLIPSES = ("...", "…")
_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))


def gopher_quality_reason(doc: QualityText, config: QualityConfig) -> str | None:
    """Gopher's quality rules (word length, symbols, bullets, ellipses, alphabetic words, stop
    words: `gopher:*`), with `gopher_quality`."""
    if not config.gopher_quality or not doc.words:  # no words: nothing to measure
        return None
    text, words, lines = doc.text, doc.words, doc.lines
    # Word length and stop words count only tokens with a letter: numbers, and punctuation that
    # pre-tokenised corpora split off ("1 . 8 mg / kg"), say nothing about how words look.
    letterless = _LETTERLESS_WORD.findall(" " + text)
    lettered = len(words) - len(letterless)
    if lettered:
        mean = (sum(map(len, words)) - sum(map(len, letterless))) / lettered
        if not config.gopher_min_mean_word_length <= mean <= config.gopher_max_mean_word_length:
            return "gopher:mean_word_length"
    symbols = max(text.count("#"), text.count("...") + text.count("…"))
    if symbols > config.gopher_max_symbol_ratio * len(words):
        return "gopher:symbol_ratio"
    if len(lines) > 1:  # with one line a share is all or nothing
        if sum(line.startswith(_BULLETS) for line in lines) > config.gopher_max_bullet_lines * len(lines):
            return "gopher:bullet_lines"
        if sum(line.endswith(_ELLIPSES) for line in lines) > config.gopher_max_ellipsis_lines * len(lines):
            return "gopher:ellipsis_lines"
    punctuation = sum(not _DIGIT.search(word) for word in letterless)  # web text attaches it to words
    if not lettered or lettered < config.gopher_min_alpha_words * (len(words) - punctuation):
        return "gopher:alpha_words"
    if (
        lettered >= config.gopher_stop_words_min_words
        and sum(map(_STOP_WORDS.__contains__, words)) < config.gopher_min_stop_words
    ):
        return "gopher:stop_words"
    return None


def gopher_repetition_reason(doc: QualityText, config: QualityConfig) -> str | None:
    """Gopher's repetition rules (`gopher:dup_*`, `gopher:top_*`), with `gopher_repetition`."""
    if not config.gopher_repetition or not doc.words or len(doc.words) < config.gopher_repetition_min_words:
        return None
    text, words, lines = doc.text, doc.words, doc.lines
    if len(lines) > 1:
        share, char_share = _duplicate_shares(lines)
        if share > config.gopher_max_dup_lines:
            return "gopher:dup_lines"
        if char_share > config.gopher_max_dup_line_chars:
            return "gopher:dup_line_chars"
    if "\n\n" in text:
        share, char_share = _duplicate_shares(text.split("\n\n"))
        if share > config.gopher_max_dup_paragraphs:
            return "gopher:dup_paragraphs"
        if char_share > config.gopher_max_dup_paragraph_chars:
            return "gopher:dup_paragraph_chars"
    lengths = [len(word) for word in words]
    total = sum(lengths)
    # An n-gram covers at most the characters of its n words' occurrences, so the n largest
    # count * length products bound its share; mostly that bound already rules the n-gram out.
    weights = sorted((count * len(word) for word, count in Counter(words).items()), reverse=True)
    for n, limit in config.gopher_max_top_ngram.items():
        if sum(weights[:n]) > limit * total and _top_ngram_share(words, lengths, n, total) > limit:
            return f"gopher:top_{n}gram"
    limits = list(config.gopher_max_dup_ngram.items())
    for i, (n, limit) in enumerate(limits):
        if len(words) < n:
            break
        share = _duplicate_ngram_share(words, lengths, n, total)
        if share > limit:
            return f"gopher:dup_{n}gram"
        if all(share <= later for _, later in limits[i + 1 :]):
            break  # the share can only fall as n grows, so no later n can fail
    return None


def _duplicate_shares(items: list[str]) -> tuple[float, float]:
    """(share of items repeating an earlier item, share of characters in those repeats)."""
    seen: set[str] = set()
    repeats = repeated_chars = 0
    for item in items:
        if item in seen:
            repeats += 1
            repeated_chars += len(item)
        seen.add(item)
    return repeats / len(items), repeated_chars / max(1, sum(map(len, items)))


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n)), strict=False))  # stops at the shortest


def _top_ngram_share(words: list[str], lengths: list[int], n: int, total_chars: int) -> float:
    """Share of word characters covered by the most frequent n-gram, 0 if no n-gram repeats."""
    grams = _ngrams(words, n)
    if not grams:
        return 0.0  # fewer than n words (gopher_repetition_min_words below n): no n-gram at all
    ((top, count),) = Counter(grams).most_common(1)
    starts = [i for i, gram in enumerate(grams) if gram == top] if count > 1 else []
    return _covered_share(lengths, n, starts, total_chars)


def _duplicate_ngram_share(words: list[str], lengths: list[int], n: int, total_chars: int) -> float:
    """Share of word characters inside repeats (not first occurrences) of any n-gram."""
    grams = _ngrams(words, n)
    if len(set(grams)) == len(grams):
        return 0.0  # the common case: nothing repeats
    seen: set[tuple[str, ...]] = set()
    starts = []
    for i, gram in enumerate(grams):
        if gram in seen:
            starts.append(i)
        seen.add(gram)
    return _covered_share(lengths, n, starts, total_chars)


def _covered_share(lengths: list[int], n: int, starts: list[int], total_chars: int) -> float:
    """Share of characters in the words covered by the n-grams starting at `starts`; a word
    covered by several overlapping n-grams ("a a a") counts once."""
    covered = bytearray(len(lengths))
    for i in starts:
        covered[i : i + n] = b"\x01" * n
    return sum(compress(lengths, covered)) / total_chars


def fineweb_reason(doc: QualityText, config: QualityConfig) -> str | None:
    """FineWeb's rules (`fineweb:*`), with `fineweb`."""
    if not config.fineweb or not doc.words:
        return None
    text, words, lines = doc.text, doc.words, doc.lines
    if len(lines) < 2:
        return None  # the rules describe a page's lines; one line says nothing
    if sum(line.endswith(_TERMINAL) for line in lines) < config.fineweb_min_line_punct * len(lines):
        return "fineweb:line_punct_ratio"
    if _duplicate_shares(lines)[1] > config.fineweb_max_dup_line_chars:
        return "fineweb:dup_line_chars"
    short = sum(len(line) < config.fineweb_short_line_chars for line in lines)
    if short > config.fineweb_max_short_lines * len(lines):
        return "fineweb:short_lines"
    if config.fineweb_max_newline_ratio and text.count("\n") > config.fineweb_max_newline_ratio * len(words):
        return "fineweb:list_like"
    return None


# ----------------------------------------------------------------------------------- language
_LANGUAGE_MODELS: dict[str, Any] = {}  # path -> loaded fastText model, once per process


def _language_model(path: str) -> Any:
    if path not in _LANGUAGE_MODELS:
        if not resolve_path(path).is_file():
            raise FileNotFoundError(f"corpus.quality.language_model: fastText model not found: {path} "
                                    "(nothing is downloaded; fetch e.g. lid.176.bin yourself)")
        try:
            import fasttext
        except ImportError as err:
            raise ImportError("corpus.quality.language_model needs fastText: pip install fasttext") from err
        _LANGUAGE_MODELS[path] = fasttext.load_model(str(resolve_path(path)))
    return _LANGUAGE_MODELS[path]


def language_reason(doc: QualityText, config: QualityConfig) -> str | None:
    """fastText language id (`lang:*`), with a `language_model`."""
    if not config.language_model or not doc.words:
        return None
    # fastText predicts one line at a time; its labels look like "__label__en"
    labels, scores = _language_model(config.language_model).predict(doc.text.replace("\n", " "))
    language = labels[0].removeprefix("__label__")
    if config.languages and language not in config.languages:
        return f"lang:{language}"
    if scores[0] < config.language_threshold:
        return "lang:low_confidence"
    return None


# The quality steps by name, in their default order (`corpus.quality.steps` chooses which run, and
# in which order): each returns None to keep a document, or the reason it is dropped.
STEPS: dict[str, Callable[[QualityText, QualityConfig], str | None]] = {
    "length": length_reason,
    "c4": c4_reason,
    "gopher_quality": gopher_quality_reason,
    "gopher_repetition": gopher_repetition_reason,
    "fineweb": fineweb_reason,
    "language": language_reason,
}


# ---------------------------------------------------------------------------------------- PII
# Patterns start with a digit, "(" or "+" where they can, which lets `re` skip ahead quickly;
# a look-behind placed after that first character checks what precedes the match.
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\.?\d|\w)")
_HEX = r"[0-9A-Fa-f]{1,4}"
_IPV6 = re.compile(rf"(?<![\w:])(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,6}}(?::{_HEX}){{1,6}})(?![\w:])")
_PHONE_END = r"(?![\w\-/]|\.\d)"  # not followed by more of a number, a range or an identifier
_PHONES = (
    # +44 20 7946 0958, (+1) 555-123-4567: not after a word ("CD4+ 12"); 8+ digits checked below
    re.compile(r"(?:\(\+\d{1,3}\)|\+(?<!\w\+)\d{1,3})[ -]?(?:\(\d{1,4}\)[ -]?)?\d{1,4}(?:[ -]\d{1,4}){1,4}"
               + _PHONE_END),
    re.compile(r"\(\d{3}\) ?\d{3}[-. ]\d{4}" + _PHONE_END),  # (555) 123-4567
    re.compile(r"\d(?<![\w+.\-/]\d)\d\d([-.])\d{3}\1\d{4}" + _PHONE_END),  # 555-123-4567, 555.123.4567
)


def mask_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replace e-mail addresses, IP addresses and phone numbers with `<EMAIL>`, `<IP>`, `<PHONE>`.

    Returns the masked text and how many of each kind were replaced. Phone numbers must be in
    international form or grouped 3-3-4, so years, page ranges, dates, identifiers and statistics
    in scientific text are left alone; four dotted numbers are an IP only as `is_ipv4_address`
    decides (not an enzyme number, a version or a section number).
    """
    counts = {"email": 0, "ip": 0, "phone": 0}
    if "@" in text:
        text, counts["email"] = _mask(_EMAIL, "<EMAIL>", text)
    text, counts["ip"] = _mask(_IPV4, "<IP>", text, lambda match: is_ipv4_address(match.string, *match.span()))
    if "::" in text or text.count(":") >= 7:
        text, found = _mask(_IPV6, "<IP>", text)
        counts["ip"] += found
    for pattern in _PHONES:
        text, found = _mask(pattern, "<PHONE>", text, _is_phone)
        counts["phone"] += found
    return text, counts


def _mask(pattern: re.Pattern[str], token: str, text: str, valid: Any = None) -> tuple[str, int]:
    """`pattern.subn(token, text)`, leaving alone the matches that `valid` rejects."""
    count = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal count
        if valid and not valid(match):
            return match[0]
        count += 1
        return token

    return pattern.sub(substitute, text), count


# Words after which dotted numbers name an enzyme, a release or a place in a document, never a
# machine (compared in lower case without dots or other non-letters: "E.C." is "ec", "ver." "ver").
_IDENTIFIER_WORDS = frozenset((
    "ec", "enzyme", "enzymes", "iubmb",  # EC 3.4.21.4, "enzyme commission number 2.7.11.1"
    "version", "versions", "ver", "v", "release", "released", "rel", "build", "firmware", "fw", "software",
    "patch", "update", "updated", "upgraded", "rev", "revision",
    "accession", "lot", "batch", "catalog", "catalogue", "cat", "clone", "ref", "id",  # labels of reagents, records
    "section", "sections", "sec", "sect", "§", "chapter", "clause", "paragraph", "para", "appendix", "table",
    "figure", "fig",
    "code", "codes", "icd", "icdcm", "icdpcs", "atc", "oid",  # ICD-10-CM code 1.2.3.4
))
# Passed over on the way back to the deciding word: the filler of "enzyme commission number(s)",
# and the numbers and conjunctions of a list ("EC 1.1.1.1, 1.1.1.2 and 2.7.11.1").
_FILLER_WORDS = frozenset(("commission", "number", "numbers", "no", "nos", "and", "or", "to", "&"))
_RELEASE_WORDS_AFTER = frozenset(("firmware", "release", "build", "version", "patch", "update"))
_DOTTED = re.compile(r"(?:\d+|-)(?:\.(?:\d+|-))+\.?")  # 1.1.1.2, 3.4.-.- (a partial EC number)
_WORD_SPLIT = re.compile(r"[\s,;:()\[\]/]+")  # a slash too: "EC 1.1.1.1/1.1.1.2"
# Enzyme names end in -ase ("nitric oxide synthase (1.14.13.39)"); these words do too, and are not.
_NOT_ENZYMES = frozenset(("database", "databases", "codebase", "base", "case", "cases", "release", "increase",
                          "decrease", "disease", "diseases", "phase", "lease", "please", "purchase", "showcase",
                          "testcase", "use", "erase", "ease", "chase", "firebase", "vase", "cease", "phrase"))
_CONTEXT_CHARS = 80  # how far back the deciding word is looked for


def is_ipv4_address(text: str, start: int, end: int) -> bool:
    """Whether `text[start:end]`, four dotted numbers that are not part of a longer dotted number
    (`_IPV4` sees to that), is an IPv4 address rather than an identifier that looks like one.

    It is an address when each number is an octet (0-255, without a leading zero: `300.1.1.1`,
    `01.02.03.04` are not) and the nearest word before it, passing over the numbers and
    conjunctions of a list and the filler of "enzyme commission number", is not one that makes
    dotted numbers an identifier (`_IDENTIFIER_WORDS`: `EC:3.4.21.4`, `E.C. 3.4.21.5`, `SPSS version
    25.0.0.1`, `Section 1.2.3.4`, `EC 1.1.1.1, 1.1.1.2`), and the word right after it is not a
    release word (`2.1.0.3 firmware`). Any other word decides for an address (`IP 8.8.8.8`, "the
    server at 10.0.0.5", "firmware on host 10.0.0.5"), as does no word: `192.168.1.10` alone. An
    enzyme's name (a word ending in -ase, "synthase (1.14.13.39)") counts as an identifier word.
    """
    if not all(part == "0" or (part[0] != "0" and int(part) <= 255) for part in text[start:end].split(".")):
        return False
    for word in reversed(_WORD_SPLIT.split(text[max(0, start - _CONTEXT_CHARS) : start])):
        name = _word_name(word)
        if not word or _DOTTED.fullmatch(word) or name in _FILLER_WORDS:
            continue
        if name in _IDENTIFIER_WORDS or (name.endswith(("ase", "ases")) and name not in _NOT_ENZYMES):
            return False
        break  # the nearest other word ("at", "host", "IP"): nothing says it is not an address
    following = _WORD_SPLIT.split(text[end : end + 20].lstrip(), maxsplit=1)[0]
    return _word_name(following) not in _RELEASE_WORDS_AFTER


def _word_name(word: str) -> str:
    """A word as the context lists hold it: lower case, letters and § only ("E.C." -> "ec")."""
    return re.sub(r"[^a-z§]", "", word.lower())


def _is_phone(match: re.Match[str]) -> bool:
    return sum(char.isdigit() for char in match[0]) >= 8  # fewer: a signed value such as "+12 5"

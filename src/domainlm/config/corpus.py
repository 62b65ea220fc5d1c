"""The `corpus:` section: sources, normalisation, quality rules, deduplication, decontamination."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from domainlm.config.base import Section, existing_file, resolve_path


class SourceConfig(Section):
    path: str = ""
    """File or folder to read (unused for `python-docs`, which reads the running Python's standard
    library; for `hf-hub` it is the dataset name)."""
    format: Literal["auto", "txt", "txt-files", "jsonl", "parquet", "csv", "hf-disk", "hf-hub",
                    "python-docs"] = "auto"
    """txt: one document per line. txt-files: a folder, one document per .txt file. jsonl: one JSON
    object per line (also .json holding a list of objects). parquet, csv: a text column. hf-disk:
    a `datasets` folder from `save_to_disk`. hf-hub: a Hub dataset (needs a network). Files may
    end in .gz or .zst. `auto` picks from the path."""
    name: str = ""
    """Label stored as each document's `source`, and the key of `pretrain.mixture` (default: the
    file or folder name; where two sources share it, the path below the folder their paths have in
    common, e.g. `pubmed/abstracts.txt`). Names must be unique."""
    text_field: str = "text"
    """jsonl, parquet, csv, HF datasets: the field / column holding the document text."""
    split: str = "train"
    """HF datasets: the split to read."""
    max_docs: int | None = Field(default=None, ge=1)
    """Read at most this many documents (for quick runs)."""
    weight: float = Field(default=1.0, gt=0)
    """Mixing weight of this source for pretraining, relative to the others (by tokens)."""
    repeat: int = Field(default=1, ge=1)
    """Up-sampling: pretraining sees this source `repeat` times as often (multiplies `weight`)."""

    @model_validator(mode="after")
    def _check_path(self) -> SourceConfig:
        if self.format in ("python-docs", "hf-hub"):
            if self.format == "hf-hub" and not self.path:
                raise ValueError("an hf-hub source needs `path`: the dataset name")
            return self
        if not self.path:
            raise ValueError("a source needs a `path` (or format: python-docs)")
        existing_file(self.path)
        return self


# Every quality step a recipe may name (what each one does: `corpus.quality.STEPS`, same order).
QUALITY_STEPS = ("length", "c4", "gopher_quality", "gopher_repetition", "fineweb", "language")
# The steps of a recipe that names none. A step added later stays out of this list: it runs only
# where a recipe names it, so the runs made before it keep their results (and fingerprints).
DEFAULT_QUALITY_STEPS = ("length", "c4", "gopher_quality", "gopher_repetition", "fineweb", "language")


class QualityConfig(Section):
    """Heuristic quality filters, applied to each normalised document as steps in the order of
    `steps`; a document is dropped by the first rule it fails, and that rule is its reason in
    stats.json. Rules come from C4 (Raffel et al. 2020), Gopher (Rae et al. 2021, appendix A) and
    FineWeb (Penedo et al. 2024), with their published thresholds unless a field says otherwise."""

    # Added after runs existed: at its default (today's order) it stays out of fingerprints.
    LATER = {"steps": ("steps",)}

    steps: list[str] = Field(default_factory=lambda: list(DEFAULT_QUALITY_STEPS))
    """The quality steps to run, in order: `length` (min/max words, max chars), `c4`, `gopher_quality`,
    `gopher_repetition`, `fineweb`, `language`. A step left out does not run; each group's switch
    below (`c4_docs`, `gopher_quality`, ...) still turns it off. Order decides which reason a document
    failing several rules is counted under (and the speed: cheap steps first)."""

    min_words: int = Field(default=5, ge=0)
    """Documents with fewer words are dropped as `too_short`."""
    max_words: int = Field(default=100_000, ge=1)
    """...with more, as `too_long`."""
    max_chars: int = Field(default=1_000_000, ge=1)
    """...with more characters, as `too_long` (protects memory from a 50 MB single line)."""

    c4_lines: bool = True
    """C4 line cleaning: remove lines mentioning javascript, cookie/terms/privacy-policy
    boilerplate, or holding only citation marks such as `[1]`, `[edit]`."""
    c4_terminal_punct: bool = False
    """C4 line cleaning: also remove lines not ending in terminal punctuation (off: one-sentence-
    per-line domain corpora and titles often lack it)."""
    c4_docs: bool = True
    """C4 document rules: drop documents containing "lorem ipsum" (`c4:lorem_ipsum`)."""
    c4_curly_bracket: bool = False
    """C4 document rule: drop documents containing "{" (`c4:curly_bracket`); off because code and
    maths (LaTeX) corpora legitimately contain braces."""

    gopher_quality: bool = True
    """Gopher quality rules (`gopher:*`): word length, symbols, bullets, ellipses, alphabetic words,
    stop words."""
    gopher_min_mean_word_length: float = Field(default=3.0, ge=0)
    """The mean length of words must lie in [min, max]. In the Gopher rules a word is a
    whitespace-separated token containing a letter: numbers and split-off punctuation
    ("1 . 8 mg / kg" in pre-tokenised corpora) say nothing about how words look."""
    gopher_max_mean_word_length: float = Field(default=10.0, gt=0)
    """Upper end of that range (Gopher: 3 to 10 characters)."""
    gopher_max_symbol_ratio: float = Field(default=0.1, ge=0)
    """Most `#` symbols, or ellipses, per word."""
    gopher_max_bullet_lines: float = Field(default=0.9, ge=0, le=1)
    """Largest share of lines starting with a bullet (documents of two lines or more)."""
    gopher_max_ellipsis_lines: float = Field(default=0.3, ge=0, le=1)
    """Largest share of lines ending in an ellipsis (documents of two lines or more)."""
    gopher_min_alpha_words: float = Field(default=0.5, ge=0, le=1)
    """Smallest share of tokens (punctuation-only ones excluded) containing a letter. Gopher uses
    0.8 on web pages, but scientific sentences reporting statistics ("26 % ( 95 % CI , 15 - 41 % )")
    fall to 0.6 and 3% of biomedical abstracts below 0.8; under 0.5 the text is mostly numbers."""
    gopher_min_stop_words: int = Field(default=2, ge=0)
    """Fewest occurrences of the stop words (the, be, to, of, and, that, have, with) a document needs."""
    gopher_stop_words_min_words: int = Field(default=50, ge=0)
    """The stop-word rule applies only to documents of at least this many words: Gopher wrote it
    for web pages of 50 words or more, and a single short sentence ("Mutations in BRCA1 cause
    breast cancer.") may well contain none of the stop words."""

    gopher_repetition: bool = True
    """Gopher repetition rules (`gopher:dup_*`, `gopher:top_*`): repeated lines, paragraphs, n-grams."""
    gopher_repetition_min_words: int = Field(default=50, ge=0)
    """The repetition rules apply only to documents of at least this many words: Gopher's thresholds
    assume its 50-word minimum, and in one sentence a single repeated phrase ("Mr. and Mrs.") is
    already a fifth of the characters."""
    gopher_max_dup_lines: float = Field(default=0.30, ge=0, le=1)
    """Largest share of lines that repeat an earlier line."""
    gopher_max_dup_line_chars: float = Field(default=0.20, ge=0, le=1)
    """Largest share of characters inside such repeated lines."""
    gopher_max_dup_paragraphs: float = Field(default=0.30, ge=0, le=1)
    """Largest share of paragraphs (split on blank lines) that repeat an earlier paragraph."""
    gopher_max_dup_paragraph_chars: float = Field(default=0.20, ge=0, le=1)
    """Largest share of characters inside such repeated paragraphs."""
    gopher_max_top_ngram: dict[int, float] = Field(default_factory=lambda: {2: 0.30, 3: 0.27, 4: 0.24})
    """n -> largest share of word characters inside the most frequent n-gram (counted when it
    repeats). 1.5 x Gopher's 0.20, 0.18, 0.16: abstracts repeat multi-word terms ("human
    immunodeficiency virus type 1") and their title, and Gopher's values drop 2.7% of them."""
    gopher_max_dup_ngram: dict[int, float] = Field(
        default_factory=lambda: {5: 0.225, 6: 0.21, 7: 0.195, 8: 0.18, 9: 0.165, 10: 0.15}
    )
    """n -> largest share of word characters inside repeated occurrences of any n-gram (1.5 x
    Gopher's 0.15 ... 0.10, for the same reason)."""

    fineweb: bool = True
    """FineWeb rules (`fineweb:*`), applied to documents of at least two lines."""
    fineweb_min_line_punct: float = Field(default=0.12, ge=0, le=1)
    """Smallest share of lines ending in terminal punctuation."""
    fineweb_max_dup_line_chars: float = Field(default=0.10, ge=0, le=1)
    """Largest share of characters inside lines that repeat an earlier line."""
    fineweb_short_line_chars: int = Field(default=30, ge=1)
    """Lines shorter than this many characters are short..."""
    fineweb_max_short_lines: float = Field(default=0.67, ge=0, le=1)
    """...and at most this share of lines may be short."""
    fineweb_max_newline_ratio: float | None = Field(default=None, gt=0)
    """List-like documents: most newlines per word (`fineweb:list_like`; FineWeb uses 0.3; off)."""

    language_model: str | None = None
    """Local fastText language-id model (e.g. lid.176.bin); unset: no language filter. Never
    downloaded; needs `pip install fasttext`."""
    languages: list[str] = Field(default_factory=list)
    """Labels to keep, as the model names them (`en`; `eng_Latn` for GlotLID); empty: any."""
    language_threshold: float = Field(default=0.65, ge=0, le=1)
    """Documents whose top language scores lower are dropped as `lang:low_confidence`."""

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, steps: list[str]) -> list[str]:
        unknown = [step for step in steps if step not in QUALITY_STEPS]
        if unknown:
            raise ValueError(f"unknown quality step {', '.join(map(repr, unknown))}: the steps are "
                             f"{', '.join(QUALITY_STEPS)}")
        repeated = sorted({step for step in steps if steps.count(step) > 1})
        if repeated:
            raise ValueError(f"quality step {', '.join(map(repr, repeated))} named twice: each step runs once")
        return steps

    @field_validator("gopher_max_top_ngram", "gopher_max_dup_ngram")
    @classmethod
    def _check_ngram_limits(cls, limits: dict[int, float]) -> dict[int, float]:
        if any(n < 1 or not 0 <= share <= 1 for n, share in limits.items()):
            raise ValueError(f"expected n >= 1 mapped to a share in [0, 1], got {limits}")
        return dict(sorted(limits.items()))


class DedupConfig(Section):
    exact: bool = True
    """Drop a document whose normalised text was seen before (`duplicate`)."""
    near: bool = True
    """MinHash LSH near-duplicate removal: one document is kept per cluster (`near_duplicate`)."""
    shingle_words: int = Field(default=5, ge=1)
    """Shingles are runs of this many words (lowercased)."""
    permutations: int = Field(default=128, ge=16)
    """MinHash signature length."""
    threshold: float = Field(default=0.8, gt=0, lt=1)
    """Jaccard similarity above which two documents are near-duplicates."""


class DecontaminationConfig(Section):
    enabled: bool = True
    """Drop corpus documents that share a long n-gram with the dev/test text of any task in the run."""
    ngram: int = Field(default=13, ge=3)
    """n-gram length in words (lowercased), 13 as in GPT-3's decontamination."""
    min_words: int = Field(default=8, ge=1)
    """A dev/test text shorter than `ngram` words but at least this long is looked for whole (a
    sentence of this length quoted verbatim is a leak); shorter ones cannot be checked and are
    counted as such in stats.json and the report."""


class DomainSelectionConfig(Section):
    seed: SourceConfig | None = None
    """Domain text to select by (a few hundred documents or sentences are enough; read like a
    corpus source, `max_docs` caps it). Unset: no selection."""
    negatives: SourceConfig | None = None
    """Text the domain is told apart from. Unset: a sample of the corpus's own sources (the pool
    is mostly off-domain, as data-filtering classifiers assume), read once at planning."""
    max_negatives: int = Field(default=20_000, ge=10)
    """Negative documents the classifier trains on (a seeded reservoir sample)."""
    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Keep a document whose domain probability is at least this; the rest are dropped as
    `off_domain`, each with its score."""
    keep_fraction: float | None = Field(default=None, gt=0, le=1)
    """Instead of `threshold`: keep about this share of the corpus, the best-scoring. The
    threshold is the matching quantile of the scores of a held-out sample of the corpus (a
    classifier trained on a narrow seed scores most of a pool low, the domain part less low:
    ranking finds it where a fixed 0.5 does not)."""


class CorpusConfig(Section):
    # How the kept documents are cut into files: the documents, their order and every count stay the same.
    BOOKKEEPING = ("shard_docs",)
    LATER = {"domain_selection": ("domain_selection",)}  # unset: runs made before it keep their fingerprints

    sources: list[SourceConfig] = Field(min_length=1)
    """Where the domain text comes from."""
    normalization: Literal["NFC", "NFKC", "none"] = "NFKC"
    """Unicode normal form applied to every document (NFKC folds compatibility characters)."""
    min_words: int | None = Field(default=None, ge=0)
    """Shorthand for `quality.min_words` (kept for older recipes)."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Heuristic quality rules (C4, Gopher, FineWeb, language id)."""
    pii: bool = True
    """Mask e-mail addresses, phone numbers and IP addresses (counted in stats.json)."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    """Exact and MinHash near-duplicate removal."""
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    """Removal of corpus documents that overlap the tasks' dev/test text."""
    domain_selection: DomainSelectionConfig = Field(default_factory=DomainSelectionConfig)
    """Keep only the documents a classifier trained on a seed of domain text scores as in-domain
    (growing a domain corpus out of a general pool; `corpus.selection`)."""
    keep_dropped: bool = False
    """Also write every dropped document with its reason (`dropped-*.jsonl`) for inspection."""
    unit_bytes: int = Field(default=64 * 2**20, ge=1024)
    """Uncompressed txt/jsonl inputs are split into work units of about this many bytes."""
    heldout_fraction: float = Field(default=0.02, ge=0.0, lt=0.5)
    """Share of kept documents set aside (by hash of the text) to measure tokenizer fit."""
    shard_docs: int = Field(default=50_000, ge=1)
    """Documents per output shard."""

    @model_validator(mode="after")
    def _shorthand(self) -> CorpusConfig:
        if self.min_words is not None:
            self.quality.min_words = self.min_words
        return self

    @model_validator(mode="after")
    def _unique_source_names(self) -> CorpusConfig:
        names = self.source_names()
        for i, name in enumerate(names):
            if name in names[:i]:
                first = names.index(name)
                raise ValueError(f"corpus.sources {first} ({self.sources[first].path or self.sources[first].format}) "
                                 f"and {i} ({self.sources[i].path or self.sources[i].format}) are both named "
                                 f"'{name}': give each source a distinct `name` (documents, stats and "
                                 "pretrain.mixture tell sources apart by it)")
        return self

    def source_names(self) -> list[str]:
        """Each source's name (see `SourceConfig.name`), in the order of `sources`."""
        return [s.name or label for s, label in zip(self.sources, self.source_labels(), strict=True)]

    def source_labels(self) -> list[str]:
        """What a source's document ids start with (`abstracts.txt:17`): its file or folder name,
        or where two sources share that, the path below the folder their paths have in common."""
        labels = [Path(s.path).name if s.path else s.format for s in self.sources]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1 and self.sources[i].path
                    and self.sources[i].format != "hf-hub"]
        if len(clashing) > 1:
            paths = [os.path.abspath(resolve_path(self.sources[i].path)) for i in clashing]
            root = os.path.commonpath([os.path.dirname(p) for p in paths])
            for i, path in zip(clashing, paths, strict=True):
                labels[i] = Path(os.path.relpath(path, root)).as_posix()
        return labels

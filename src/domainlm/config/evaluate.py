"""The `evaluate:` and `report:` sections: which models are compared on the tasks, how they are fine-tuned, and
what the report compares against."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, field_validator, model_validator

from domainlm.config.base import Section, resolve_path, unique_names

# Exported classes that hold a masked-LM head besides the ...ForMaskedLM ones (BERT's pretraining
# class adds next-sentence prediction to it; ELECTRA's holds the discriminator only).
MASKED_LM_CLASSES = ("BertForPreTraining", "AlbertForPreTraining")
LEXICAL = ("tfidf", "bm25")
"""Model kinds that are word-count baselines: no network, no learning rate, no pretraining."""


def masked_lm_problem(config: dict) -> str | None:
    """Why a model directory's `config.json` (as a dict) cannot be fine-tuned through a masked-LM
    head, or None: its `architectures` name no class with one (an ELECTRA discriminator, a bare
    encoder such as a sentence-transformers export, a fine-tuned classifier). A config without
    `architectures` passes; the weights are checked when they are loaded."""
    names = config.get("architectures") or []
    if not names or any(n.endswith("ForMaskedLM") or n in MASKED_LM_CLASSES for n in names):
        return None
    what = "an ELECTRA discriminator, " if "ElectraForPreTraining" in names else ""
    return (f"it is {what}{', '.join(names)}, without a masked-LM head; prompt-based fine-tuning needs a masked-LM "
            "export (BertForMaskedLM, RobertaForMaskedLM, ModernBertForMaskedLM, ...)")


class ModelEntry(Section):
    # Added after runs existed: at their defaults (head-based fine-tuning, 20 pair rounds), fingerprints leave them out.
    LATER = {"pair_iterations": ("pair_iterations",), "finetuning": ("finetuning",),
             "hard_negatives": ("hard_negatives",), "rerank_depth": ("rerank_depth",)}

    name: str
    """Row label in the results."""
    kind: Literal["domain", "random-init", "hf", "tfidf", "bm25", "self-training", "distilled", "setfit", "simcse"]
    """domain: the model this run pretrained. random-init: the same architecture and tokenizer,
    untrained. hf: a local Hugging Face model directory (`path`). tfidf: TF-IDF (or word-window
    features for token tasks) + logistic regression; on retrieval tasks BM25. bm25: BM25, retrieval
    tasks only (other types skip it, saying so). self-training: `teacher` (another entry)
    fine-tuned on the gold labels labels `unlabeled` in-domain text; a fresh copy of the teacher's
    model trains on those pseudo-labels, then fine-tunes on the gold labels. distilled: `teacher`
    fine-tuned on the gold labels gives soft targets on `unlabeled` text; the `student` entry's
    model learns them (knowledge distillation), then fine-tunes on the gold labels. setfit: the
    sentence encoder at `path` fine-tuned contrastively on pairs of the labelled examples, then a
    logistic regression on its embeddings (Tunstall et al. 2022; classes only). simcse: the encoder
    at `path` (or experiment arm `arm`) adapted without labels to the domain by unsupervised SimCSE
    (Gao et al. 2021: each of `max_unlabeled` `unlabeled` texts is its own positive under two
    dropout masks, the batch's other texts its negatives; one pass), then used as a bi-encoder on
    retrieval tasks (`finetuning: none` or `head`)."""
    path: str | None = None
    """hf, setfit, simcse: the model directory (`pkg://package/sub/path` for one inside an installed package)."""
    optional: bool = False
    """If the path is a `pkg://` path whose package is missing, skip this model with a note."""
    teacher: str | None = None
    """self-training, distilled: the name of the model entry fine-tuned to label the unlabeled text
    (domain, random-init or hf)."""
    student: str | None = None
    """distilled: the name of the model entry whose model learns the teacher's soft targets
    (domain, random-init or hf; typically a smaller one, such as another experiment arm)."""
    temperature: float = Field(default=2.0, gt=0)
    """distilled: soft-target temperature T (Hinton et al. 2015); the loss is scaled by T^2."""
    distill_epochs: int = Field(default=1, ge=1)
    """distilled: epochs over the soft targets before the gold labels."""
    arm: str | None = None
    """In an experiment: `domain` / `random-init` take this arm's pretrained model / architecture."""
    unlabeled: str = "corpus"
    """self-training, distilled, simcse: unlabeled text, one document per line (txt/.gz), or `corpus` (this run's
    curated corpus)."""
    max_unlabeled: int = Field(default=2000, ge=1)
    """self-training, distilled: at most this many unlabeled inputs are labelled (a seeded sample);
    simcse: the texts it adapts on (steps = max_unlabeled / evaluate.batch_size)."""
    confidence: float = Field(default=0.9, ge=0, le=1)
    """self-training: keep pseudo-labels whose predicted probability is at least this (token
    tasks: the lowest over the sentence's words)."""
    pair_iterations: int = Field(default=20, ge=1)
    """setfit: rounds of pair sampling; each gives every training example one pair with an example
    of its class and one with an example of another class (SetFit's `num_iterations`, default 20),
    so the encoder trains one epoch on 2 x pair_iterations x (training examples) pairs."""
    finetuning: Literal["head", "prompt", "none", "cross-encoder"] = "head"
    """domain, random-init, hf: `head` puts a new classification head on the encoder (retrieval: a
    bi-encoder, mean pooling, trained with in-batch negatives); `prompt` (PET, Schick & Schütze
    2021; LM-BFF, Gao et al. 2021) wraps each input in its task's template and trains the
    masked-LM head to put the label's word at the mask (classification, pair-classification,
    relation, yes-no-qa; other task types are skipped for this entry), and needs a model exported
    with its masked-LM head. Retrieval only (other types are skipped): `none` scores the encoder
    as it ships (zero-shot bi-encoder); `cross-encoder` trains it to score query and document read
    together and reranks BM25's top `rerank_depth`. Entries of one model, one per mode, compare them."""
    hard_negatives: int = Field(default=0, ge=0)
    """Retrieval, bi-encoder and cross-encoder: BM25's top non-relevant documents per training
    query used as negatives (bi-encoder: one of the first `hard_negatives` beside each pair's
    in-batch negatives; cross-encoder: that many per query, default 4 when 0)."""
    rerank_depth: int = Field(default=100, ge=1)
    """Retrieval, cross-encoder: how many of BM25's top documents per query it reranks."""

    @model_validator(mode="after")
    def _check_path(self) -> ModelEntry:
        if self.kind == "simcse" and not (self.path or self.arm):
            raise ValueError(f"model '{self.name}' (kind simcse) needs a `path` (a model directory) or an `arm`")
        if self.kind in ("hf", "setfit") or self.kind == "simcse" and self.path:
            if not self.path:
                raise ValueError(f"model '{self.name}' (kind {self.kind}) needs a `path`")
            try:
                exists = resolve_path(self.path).exists()
            except FileNotFoundError as err:
                if self.optional:
                    return self
                raise ValueError(str(err)) from None
            if not exists:
                raise ValueError(f"model '{self.name}' directory not found: {self.path}")
        if self.kind in ("self-training", "distilled") and not self.teacher:
            raise ValueError(f"model '{self.name}' (kind {self.kind}) needs a `teacher` (another model's name)")
        if self.kind == "distilled" and not self.student:
            raise ValueError(f"model '{self.name}' (kind distilled) needs a `student` (another model's name)")
        if self.finetuning == "prompt":
            self._check_prompt()
        if self.finetuning in ("none", "cross-encoder") and self.kind not in ("domain", "hf", "simcse"):
            raise ValueError(f"model '{self.name}': finetuning: {self.finetuning} applies to domain, hf and simcse "
                             f"models (retrieval tasks), not {self.kind}")
        return self

    def _check_prompt(self) -> None:
        """Prompt-based fine-tuning applies to the neural kinds, and an hf directory's config must
        name a class with a masked-LM head (a config.json that cannot be read is reported later)."""
        if self.kind not in ("domain", "random-init", "hf"):
            raise ValueError(f"model '{self.name}': finetuning: prompt applies to domain, random-init and hf models, "
                             f"not {self.kind}")
        if self.kind != "hf":
            return
        try:
            config_file = resolve_path(self.path) / "config.json"
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, OSError):
            return
        problem = masked_lm_problem(config) if isinstance(config, dict) else None
        if problem:
            raise ValueError(f"model '{self.name}' ({self.path}): finetuning: prompt: {problem}")

    def rates(self, grid: list[float]) -> list[float]:
        """The learning rates its runs take: `grid`, or [0.0] for a model that takes none (TF-IDF
        and BM25, an encoder scored zero-shot)."""
        return [0.0] if self.kind in LEXICAL or self.finetuning == "none" else grid

    @property
    def reads_unlabeled(self) -> bool:
        """Whether this entry reads unlabeled in-domain text (`unlabeled`)."""
        return self.kind in ("self-training", "distilled", "simcse")


class LearningCurveConfig(Section):
    """Few labels: every model fine-tuned again on nested subsamples of each task's training split
    (docs/evaluation.md, "Learning curves")."""

    # Added after runs existed: unset, fingerprints leave it out.
    LATER = {"min_steps": ("min_steps",)}

    sizes: list[int] = Field(default_factory=lambda: [8, 16, 32, 64, 128], min_length=1)
    """The curve's points. Tasks with classes (classification, multi-label, pair, relation, yes/no/maybe,
    multiple choice: the answer's position is the class): labelled examples per class. Token tasks
    (sentences) and regression (examples): examples in all. Each sample holds the smaller ones."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """Subsample seeds: each draws its own nested samples; every one is fine-tuned with every
    `evaluate.seeds` (so a point has len(seeds) x len(evaluate.seeds) runs)."""
    min_steps: int | None = Field(default=None, ge=1)
    """Fewest optimizer steps a curve run takes (None: `evaluate.epochs` epochs, whatever the size).
    A sample too small to give them in `evaluate.epochs` epochs gets more epochs, and `patience`
    grows by the same factor, as few-shot studies fix steps rather than epochs (Gao et al. 2021,
    LM-BFF: 1,000 steps); a k=8 sample otherwise trains for a handful of steps. Models without
    epochs (TF-IDF, SetFit's pairs) are unaffected."""
    include_full: bool = True
    """Whether the report ends each curve with the full training split (the evaluation's own runs,
    not run again) and measures label savings against a model's full-data score; false: against its
    score at the largest size. Read by the report only."""

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"sizes must be distinct counts >= 1, got {sizes}")
        return sorted(sizes)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds


STRATEGIES = ("entropy", "margin", "random")  # active learning's query strategies


class ActiveLearningConfig(Section):
    """Pool-based active learning (docs/evaluation.md, "Active learning"; Settles 2009, Schröder &
    Niekler 2020): from `start` labelled training examples, each round fine-tunes the model, scores
    the rest of the training split (the pool) and labels the `batch` examples the strategy picks."""

    start: int = Field(default=16, ge=1)
    """Labelled examples at round 0, drawn at random (the AL seed) from the training split."""
    batch: int = Field(default=16, ge=1)
    """Examples moved from the pool into the labelled set per round (the query size)."""
    rounds: int = Field(default=5, ge=1)
    """Queries; the model is fine-tuned and tested rounds + 1 times (before the first query and after each)."""
    strategies: list[Literal["entropy", "margin", "random"]] = Field(
        default_factory=lambda: list(STRATEGIES), min_length=1)
    """entropy: highest predictive entropy; margin: smallest gap between the two most probable
    classes (smallest-margin / breaking ties); random: a seeded random draw, the baseline. Token
    tasks: the sentence's mean over its words."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    """AL seeds: each draws its own start set (and random queries) and is the fine-tuning seed."""
    models: list[str] = Field(default_factory=list)
    """Names of evaluate.models to run it for (default: every domain, random-init and hf model;
    a name that is no model of the run, as in an experiment arm's own evaluation, is passed over)."""

    @field_validator("strategies", "seeds")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"must be distinct, got {values}")
        return values


class EvaluateConfig(Section):
    # Added after runs existed: while they are off (None), fingerprints leave them out.
    LATER = {"learning_curve": ("learning_curve",), "active_learning": ("active_learning",)}

    models: list[ModelEntry] = Field(
        default_factory=lambda: [
            ModelEntry(name="domain", kind="domain"),
            ModelEntry(name="random-init", kind="random-init"),
            ModelEntry(name="tfidf", kind="tfidf"),
        ]
    )
    """The rows of the comparison (default: the domain model, random init and TF-IDF)."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """Fine-tuning seeds (head initialisation, batch order); every model runs with each."""
    epochs: int = Field(default=3, ge=1)
    """Most epochs per run; the epoch with the best dev score is tested (early stopping)."""
    patience: int | None = Field(default=2, ge=1)
    """Stop a run after this many epochs without a better dev score (None: run every epoch)."""
    lr: float | list[float] = 1e-4
    """A learning rate, or a grid: each is run with every seed, and the one with the best mean dev
    score is reported (the same grid and seeds for every model)."""
    batch_size: int = Field(default=32, ge=1)
    """Examples per fine-tuning step."""
    max_length: int = Field(default=128, ge=8)
    """Longest input in tokens; longer inputs are truncated."""
    warmup_fraction: float = Field(default=0.1, ge=0, le=1)
    """Linear warmup over this share of the fine-tuning steps, then linear decay to zero."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay on weight matrices."""
    general_corpus: str | None = None
    """General-domain text (txt/.gz, one document per line) for the domain-distance score."""
    general_tokenizer: str | None = None
    """The general vocabulary for the domain-distance score (default: tokenizer.reference)."""
    bootstrap_samples: int = Field(default=1000, ge=100)
    """Resamples of the test set in the paired bootstrap (the report's intervals)."""
    learning_curve: LearningCurveConfig | None = None
    """Few labels (None: off): fine-tune every model on nested subsamples of each task's training
    split, dev drawn the same way within the same budget; the report plots score against labels
    and says how many labels each model needs to reach another's score."""
    active_learning: ActiveLearningConfig | None = None
    """Pool-based active learning (None: off): per model, task, strategy and seed, rounds of
    fine-tuning on a growing labelled set chosen by the model's uncertainty; the report plots score
    against labels per strategy."""

    @property
    def learning_rates(self) -> list[float]:
        """The grid: `lr` as a list."""
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
        neural = ("domain", "random-init", "hf")  # models a teacher or student can be
        for m in (m for m in self.models if m.kind in ("self-training", "distilled")):
            roles = [("teacher", m.teacher)] + ([("student", m.student)] if m.kind == "distilled" else [])
            for role, name in roles:
                if name in names and names[name].finetuning == "prompt":
                    raise ValueError(f"model '{m.name}': {role} '{name}' uses finetuning: prompt; {m.kind} fine-tunes "
                                     "its teacher and student with heads: name an entry with finetuning: head")
                if name not in names or names[name].kind not in neural:
                    found = f"is a {names[name].kind} model" if name in names else "is not a model name"
                    raise ValueError(f"model '{m.name}': {role} '{name}' {found}; it must name a domain, random-init "
                                     f"or hf model of evaluate.models")
        if self.active_learning:
            # Names only checked when present: an experiment arm's evaluate section holds fewer models.
            for name in self.active_learning.models:
                if name in names and names[name].kind not in neural:
                    raise ValueError(f"active_learning.models: '{name}' is a {names[name].kind} model; active "
                                     f"learning runs domain, random-init and hf models")
        return self

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelEntry]) -> list[ModelEntry]:
        return unique_names(models, "model")


class ReportConfig(Section):
    title: str = ""
    """The report's heading (default: `domainlm report: <run name>`)."""
    reference_model: str = "random-init"
    """The model every other row is compared with (bootstrap intervals, verdict)."""
    domain_model: str = "domain"
    """The model whose gain the verdict and the domain-distance correlation are about."""

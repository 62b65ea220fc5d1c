"""The `pretrain:` section: objective, masking, schedule, data mixture and curricula, attention, checkpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, model_validator

from domainlm.config.base import Section, existing_file


class PretrainConfig(Section):
    # Checkpoint cadence and retention, logging, memory probing, when to give up on NaN losses:
    # none changes the weights a run ends with, so none reruns the stage (a killed run resumes).
    BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "log_every", "memory_fraction", "max_bad_steps")
    # Keys added with the compute savers (distillation, SPDF, curricula).
    LATER = {key: (key,) for key in ("teacher", "distill_logits", "distill_hidden", "distill_temperature", "sparsity",
                                     "curriculum", "difficulty", "difficulty_model", "curriculum_start",
                                     "curriculum_fraction", "curriculum_cycles", "prompt_tasks")}

    max_steps: int = Field(default=1000, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(default=32, ge=1)
    """Sequences per optimizer step."""
    micro_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    """Sequences per forward/backward pass; smaller than batch_size means gradient accumulation
    (same gradient, less memory). `auto`: on a GPU the largest divisor of each rank's rows whose
    forward and backward keep peak memory within `memory_fraction` of the card (found by trying
    once at start), on a CPU the whole batch."""
    memory_fraction: float = Field(default=0.6, gt=0, le=1)
    """`micro_batch_size: auto`: the share of the GPU's memory a micro-batch may use at its peak."""
    seq_len: int = Field(default=128, ge=16)
    """Packed sequence length in tokens (documents packed, attention kept within each document)."""
    lr: float = Field(default=5e-4, gt=0)
    """Peak learning rate of AdamW (betas 0.9, 0.98; eps 1e-6, as RoBERTa)."""
    warmup_fraction: float = Field(default=0.06, ge=0, le=1)
    """Linear warmup over this share of the steps."""
    schedule: Literal["linear", "cosine", "one-cycle", "wsd"] = "linear"
    """After warmup: linear decay to zero (BERT), cosine, one-cycle, or warmup-stable-decay."""
    decay_fraction: float = Field(default=0.2, gt=0, le=1)
    """wsd: the final share of the steps over which the learning rate decays to zero."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay, on weight matrices only (not biases or LayerNorm)."""
    grad_clip: float = Field(default=1.0, gt=0)
    """Gradients are clipped to this global L2 norm."""
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
    teacher: str | None = None
    """Knowledge distillation: a local masked-LM directory with the same vocabulary (a domainlm
    export, or `arm:<name>` for an earlier experiment arm's) whose MLM distribution on the masked
    positions and last hidden states the model learns besides MLM: self-distillation when the model
    continues the checkpoint the teacher was further pretrained from, distillation into a small
    model when it is a smaller preset (a learned projection maps its width to the teacher's)."""
    distill_logits: float = Field(default=1.0, ge=0)
    """teacher: weight of the KL divergence to the teacher's MLM distribution (masked positions)."""
    distill_hidden: float = Field(default=1.0, ge=0)
    """teacher: weight of the mean squared difference to the teacher's last hidden states (real tokens)."""
    distill_temperature: float = Field(default=1.0, gt=0)
    """teacher: softmax temperature of the logit distillation (the loss is scaled by its square)."""
    sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Sparse pretraining, dense fine-tuning (SPDF, Thangarasa et al. 2023): this share of every
    transformer layer's linear weights is zeroed at the start (smallest magnitudes, per layer) and
    kept at zero for the whole run; the export holds the weights alone, so fine-tuning is dense."""
    prompt_tasks: list[str] = Field(default_factory=list)
    """Prompt-based continued pretraining (PCP; Shi & Lipani 2023, "Don't Stop Pretraining? Make
    Prompt-based Fine-tuning Powerful Learner"): these tasks' training texts, each wrapped in its
    task's prompt template with the mask token where the label word goes, are added to the
    pretraining data as a source of their own, `prompt:<task>` (weigh it with `mixture`). Tasks
    of a type with a template: classification, pair-classification, relation, yes-no-qa."""
    lexicon: str | None = None
    """Lexicon-guided masking: a file with one word (or phrase) per line that whole-word masking
    chooses preferentially, at `lexicon_rate`, keeping the overall rate at `mask_rate`."""
    lexicon_rate: float = Field(default=0.5, gt=0, le=1)
    """Share of the lexicon's words masked (at most what `mask_rate` allows per row)."""
    mixture: dict[str, float] = Field(default_factory=dict)
    """Corpus source name -> sampling weight (default: all documents in natural proportion)."""
    upsample_source: str | None = None
    """Up-sample this corpus source over the last `upsample_fraction` of the steps."""
    upsample_factor: float = Field(default=3.0, ge=1)
    """The up-sampled source's weight is multiplied by this..."""
    upsample_fraction: float = Field(default=0.15, gt=0, le=1)
    """...over this final share of the steps."""
    batch_size_start: int | None = Field(default=None, ge=1)
    """Batch-size warmup: start with this many sequences per step..."""
    batch_warmup_fraction: float = Field(default=0.0, ge=0, le=1)
    """...growing linearly to `batch_size` over this share of the steps."""
    short_seq_len: int | None = Field(default=None, ge=16)
    """Sequence-length curriculum: the first `short_seq_fraction` of the steps use rows of this
    length (with proportionally more rows per step)."""
    short_seq_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Share of the steps that use `short_seq_len` rows (0: no curriculum)."""
    curriculum: Literal["none", "easy-first", "hard-first", "cyclical"] = "none"
    """Data-order curriculum over documents ranked by `difficulty` (within each stream: source and
    row length). none: random order. easy-first: competence-based (Platanios et al. 2019), step s
    reads only the easiest c(s) share of the rows, c growing as sqrt from `curriculum_start` to 1
    over the first `curriculum_fraction` of the steps, then all rows in random order. hard-first:
    the same from the hardest end (anti-curriculum). cyclical: c rises to 1 and falls back to
    `curriculum_start`, `curriculum_cycles` times over that share (Kesgin & Amasyali 2023), easy
    end first."""
    difficulty: Literal["length", "rarity", "loss"] = "length"
    """What makes a document hard: its token count; rarity, the mean negative log unigram
    probability of its tokens (counted over the corpus); loss, `difficulty_model`'s masked-LM loss
    on its first `seq_len` tokens. Scores are computed once and cached with the token shards."""
    difficulty_model: str | None = None
    """difficulty loss: a local masked-LM directory (with its tokenizer) of the same vocabulary."""
    curriculum_start: float = Field(default=0.2, gt=0, le=1)
    """The share of each stream's rows readable at step 0 (and at the troughs of `cyclical`)."""
    curriculum_fraction: float = Field(default=0.5, gt=0, le=1)
    """The curriculum runs over this first share of the steps; later steps read every row."""
    curriculum_cycles: int = Field(default=2, ge=1)
    """cyclical: rises and falls of the readable share within `curriculum_fraction`."""
    attention: Literal["auto", "sdpa", "flex", "varlen"] = "auto"
    """Document-aware attention: sdpa (boolean same-document mask; works everywhere, fastest on
    CPU), flex (FlexAttention block mask; GPU), varlen (padding removed, flash varlen kernel;
    GPU). auto: varlen on CUDA when available, else sdpa."""
    compile: bool = False
    """torch.compile: with `static_shapes`, the whole forward, loss and backward as one graph;
    without, each transformer layer (skipped with a note where compilation is unavailable)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """torch.compile's mode for the whole step: `reduce-overhead` replays it as a CUDA graph on a GPU
    (launch overhead gone; needs `static_shapes`)."""
    static_shapes: bool = False
    """One static-shape step: every micro-batch has the same rows x seq_len, its masked positions
    sit in a fixed-capacity buffer (sized from `mask_rate` with headroom; the rare overflow is left
    out of the loss and counted), and no step waits for the device (NaN/inf is found there and read
    every `log_every` steps). With `compile` the step is one graph. Needs sdpa attention, no
    batch-size warmup or sequence-length curriculum, and micro-batches that divide the batch."""
    tf32: bool = True
    """Allow TF32 matmuls on GPUs that have them."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: replicate the model (ddp) or shard it (fsdp)."""
    max_bad_steps: int = Field(default=3, ge=1)
    """Stop after this many consecutive steps with a NaN/inf loss (each such step is skipped)."""
    checkpoint_every: int = Field(default=200, ge=1)
    """Save a checkpoint (weights, optimizer, RNG, data position) every this many steps; a killed
    run resumes from the newest."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """How many of the newest checkpoints are kept."""
    log_every: int = Field(default=10, ge=1)
    """Steps between progress updates (loss, tokens/s) and TensorBoard points."""

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> PretrainConfig:
        if self.short_seq_len and self.short_seq_len >= self.seq_len:
            raise ValueError(f"short_seq_len ({self.short_seq_len}) must be below seq_len ({self.seq_len})")
        if self.static_shapes and (self.batch_size_start or self.short_seq_len):
            raise ValueError("static_shapes keeps every step's shape: it cannot be combined with batch_size_start "
                             "(batch-size warmup) or short_seq_len (sequence-length curriculum)")
        if self.static_shapes and isinstance(self.micro_batch_size, int) and self.batch_size % self.micro_batch_size:
            raise ValueError(f"static_shapes needs micro_batch_size ({self.micro_batch_size}) to divide batch_size "
                             f"({self.batch_size}): every micro-batch has the same shape")
        if self.batch_size_start and self.batch_size_start > self.batch_size:
            raise ValueError(f"batch_size_start ({self.batch_size_start}) exceeds batch_size ({self.batch_size})")
        if self.lexicon:
            existing_file(self.lexicon, info.context)
        if self.teacher and self.objective == "electra":
            raise ValueError("pretrain.teacher distils into a masked language model: it cannot be combined with "
                             "pretrain.objective electra")
        if self.teacher and not (self.distill_logits or self.distill_hidden):
            raise ValueError("pretrain.teacher is set but distill_logits and distill_hidden are both 0: nothing "
                             "would be learned from it")
        if self.difficulty == "loss" and not self.difficulty_model:
            raise ValueError("pretrain.difficulty: loss scores documents with a masked LM: set "
                             "pretrain.difficulty_model to a local model directory of the same vocabulary")
        if self.difficulty_model and self.difficulty != "loss":
            raise ValueError(f"pretrain.difficulty_model is only read with difficulty: loss, but difficulty is "
                             f"'{self.difficulty}': set difficulty: loss or remove difficulty_model")
        if self.difficulty_model:
            existing_file(self.difficulty_model, info.context)
        if self.static_shapes and self.attention not in ("auto", "sdpa"):
            raise ValueError(f"pretrain.static_shapes needs attention sdpa (varlen's token count varies; flex builds a "
                             f"mask per batch), got {self.attention}: set attention: sdpa (or auto)")
        if self.sparsity and self.distributed == "fsdp":
            raise ValueError("pretrain.sparsity keeps masks on whole weight matrices, which FSDP shards: set "
                             "pretrain.distributed: ddp, or sparsity: 0")
        if any(w < 0 for w in self.mixture.values()) or (self.mixture and not sum(self.mixture.values())):
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {self.mixture}")
        return self

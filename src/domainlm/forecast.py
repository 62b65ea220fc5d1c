"""`domainlm plan RECIPE`: what a recipe will cost before it runs — its data, compute, memory and
time — so a user can decide whether the expensive part is worth it.

- data: documents, words and tokens per corpus source (the corpus stage's counts when it ran;
  otherwise the raw inputs, read once, before curation's filters and dedup), the tokens each
  pretraining arm reads and the passes that makes over each source (a warning above 4: repeating
  data beyond ~4 epochs buys little, Muennighoff et al. 2023), and the tokens per vocabulary entry;
- compute: parameters and training FLOPs per arm (the FLOP counter the pretrain stage reports,
  `pretrain.flops`), the wall time on this machine from a few timed training steps of the arm's own
  model at its batch and sequence length, and on named GPUs from their dense bf16 peak at a
  stated model-FLOPs utilisation (`--mfu`), the fine-tuning runs the evaluation will make;
- memory: weights, gradients and AdamW state (16 bytes per parameter with fp32 master weights)
  and activations per sequence (34 x seq_len x hidden bytes per layer in bf16 with fused
  attention, Korthikanti et al. 2022, plus the masked positions' logits), so whether a card of
  24 / 40 / 80 GiB holds it, and at which micro-batch, is answered;
- stage times: the corpus and tokenizer stages timed on samples of the inputs, pretraining from
  timed steps, fine-tuning from timed steps per model and task;
- with pilots (`--pilots`): each arm's final held-out MLM loss from a short pilot run (the
  annealing law of Tissue et al. 2024, or the reason there is no forecast), and an experimental
  outlook on where domain pretraining could pay (task distances and the pilot losses).

Tokens are counted with the domain tokenizer when it was trained, else the recipe's reference
(general) vocabulary, else 1.3 tokens per word; every estimate says which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from domainlm.config import LEXICAL, RunConfig, resolve_path
from domainlm.corpus.normalize import normalize_text
from domainlm.corpus.readers import plan_units, read_unit
from domainlm.errors import ConfigError
from domainlm.io import atomic_write_json, atomic_write_text, read_json
from domainlm.layout import RunLayout
from domainlm.vocabulary import read_tokenizer, untruncated

if TYPE_CHECKING:
    from domainlm.pretrain.data import TokenShards

# torch and the pretrain stage are imported where used: the CLI imports this module, and so does
# every worker the corpus stage spawns (it re-imports the `domainlm` script), where torch would
# add seconds to each start.

log = logging.getLogger(__name__)

GPUS = {"H100 SXM": (989e12, 80), "A100 80GB": (312e12, 80), "L4": (121e12, 24), "RTX 4090": (165e12, 24)}
"""Dense bf16 tensor-core peak FLOP/s and memory (GiB), from the vendors' datasheets."""
DEFAULT_MFU = 0.35
"""Model-FLOPs utilisation assumed on a GPU when none is given: a typical encoder pretraining
value; domainlm's own on an H100 is not measured yet (benchmarks/gpu/ waits for a device)."""
CARDS_GIB = (24, 40, 80)
MAX_EPOCHS = 4  # Muennighoff et al. 2023: repeated data beyond ~4 epochs adds little
TOKENS_PER_ENTRY = 1000  # fewer corpus tokens per vocabulary entry than this: many entries stay rare
WORDS_TOKENS = 1.3  # tokens per word when no vocabulary is at hand
LENGTH_QUANTILES = np.linspace(0, 1, 21)  # a source's document lengths in tokens, kept every 5%
SAMPLE_DOCS = 20_000  # documents per source drawn uniformly: their words and tokens are counted, stages timed on them


@contextlib.contextmanager
def _quiet(*names: str):
    """The stages' own log lines silenced (errors aside) while the plan times them on samples:
    their findings are about the sample, not the corpus."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ------------------------------------------------------------------------------------------- data
def counting_tokenizer(config: RunConfig):
    """(the tokenizer tokens are counted with, what it is): the trained domain vocabulary, the
    reference one, or None (then WORDS_TOKENS per word)."""
    trained = RunLayout(config.directory).tokenizer
    if (trained / "tokenizer.json").exists():  # untruncated: a checkpoint's tokenizer may cut at 128 or 512
        return untruncated(read_tokenizer(trained)), "the trained domain vocabulary"
    if config.tokenizer.reference:
        return untruncated(read_tokenizer(config.tokenizer.reference)), \
            f"the reference vocabulary ({config.tokenizer.reference})"
    return None, f"{WORDS_TOKENS} tokens per word (no vocabulary yet)"


def _sample_counts(texts: list[str], tokenizer) -> tuple[float, float, np.ndarray]:
    """(mean words, mean tokens, tokens of each document) of a sample."""
    if not texts:
        return 0.0, 0.0, np.zeros(0)
    words = np.array([len(t.split()) for t in texts], dtype=np.float64)
    if tokenizer is None:
        tokens = words * WORDS_TOKENS
    else:
        tokens = np.array([len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)], dtype=np.float64)
    return float(words.mean()), float(tokens.mean()), tokens


def _sampled(documents: Iterator[tuple[str, str]], seed: int = 0) -> tuple[Counter, dict[str, list[str]]]:
    """(documents per source, a uniform sample of `SAMPLE_DOCS` texts per source) of a stream of
    (source, text) read once (reservoir sampling per source): corpora are often ordered (long
    abstracts first, then sentences), so their first documents would not stand for the rest."""
    rng, counts, samples = random.Random(seed), Counter(), {}
    for source, text in documents:
        seen, sample = counts[source], samples.setdefault(source, [])
        counts[source] += 1
        if seen < SAMPLE_DOCS:
            sample.append(text)
        elif (slot := rng.randrange(seen + 1)) < SAMPLE_DOCS:
            sample[slot] = text
    return counts, samples


def raw_samples(config: RunConfig) -> dict[str, tuple[int, list[str], float]]:
    """Per corpus source (by its unique name): its documents in the raw inputs (`max_docs`
    applied), a uniform sample of `SAMPLE_DOCS` of their texts, and the seconds reading them
    took, in one pass over them."""
    found = {}
    for source, name in zip(config.corpus.sources, config.corpus.source_names(), strict=True):
        source = source.model_copy(update={"name": name})
        started = time.perf_counter()
        documents, sample = _sampled((name, record["text"]) for unit in plan_units([source], 2**62)
                                     for record in itertools.islice(_records(unit, source), source.max_docs))
        found[name] = (documents[name], sample.get(name, []), time.perf_counter() - started)
    return found


def corpus_counts(config: RunConfig, raw: dict[str, tuple[int, list[str], float]] | None = None) -> dict[str, Any]:
    """Per source: documents, words, tokens and the weight it is read at; `basis` says whether
    they are the corpus stage's (after curation) or the raw inputs' (before it; `raw_samples`,
    read here unless given). Words and tokens are the mean of a uniform sample of each source's
    documents times its documents."""
    layout, tokenizer_info = RunLayout(config.directory), counting_tokenizer(config)
    tokenizer, counted_with = tokenizer_info
    sources: dict[str, dict[str, Any]] = {}
    if layout.corpus_stats.exists():
        stats = read_json(layout.corpus_stats)
        _, samples = _sampled((doc.get("source", "corpus"), doc["text"]) for doc in layout.corpus_documents())
        training = 1 - stats["heldout"] / max(1, stats["kept"])  # pretraining reads the kept less the held-out
        for name, counts in stats["sources"].items():
            sources[name] = {"documents": round(counts["kept"] * training), "weight": counts["weight"],
                             "sample": samples.get(name, [])}
        basis = "the corpus stage's counts (after curation)"
    else:
        raw = raw if raw is not None else raw_samples(config)
        for source, name in zip(config.corpus.sources, config.corpus.source_names(), strict=True):
            documents, sample, _ = raw[name]
            sources[name] = {"documents": documents, "weight": source.weight * source.repeat,
                             "sample": [normalize_text(text, config.corpus.normalization) for text in sample]}
        basis = "the raw inputs (the corpus stage has not run: its filters and dedup will lower them)"
    for counts in sources.values():
        words, tokens, lengths = _sample_counts(counts.pop("sample"), tokenizer)
        counts.update(words=round(words * counts["documents"]), tokens=round(tokens * counts["documents"]),
                      token_length_quantiles=np.quantile(lengths, LENGTH_QUANTILES).round().astype(int).tolist()
                      if len(lengths) else [])
    return {"basis": basis, "tokens_counted_with": counted_with, "sources": sources}


def _records(unit, source):
    """A work unit's readable records (skipped ones left out)."""
    return (record for record in read_unit(unit, source) if "skip" not in record)


def reads(arm: RunConfig, corpus: dict[str, Any]) -> dict[str, Any]:
    """The tokens an arm reads (its row positions: steps x batch x seq_len, padding included, an
    upper bound on the real tokens) and the passes that make over each source, at the mixture the
    data plan draws (`pretrain.mixture`, else each source's tokens times its weight)."""
    pretrain = arm.pretrain
    positions = pretrain.max_steps * pretrain.batch_size * pretrain.seq_len
    sources = corpus["sources"]
    if pretrain.mixture:
        shares = {name: float(pretrain.mixture.get(name, 0.0)) for name in sources}
    else:
        shares = {name: counts["tokens"] * counts["weight"] for name, counts in sources.items()}
    total = sum(shares.values()) or 1.0
    epochs = {name: positions * share / total / max(1, sources[name]["tokens"]) for name, share in shares.items()}
    return {"positions": positions, "epochs": {name: round(e, 3) for name, e in epochs.items()}}


# ---------------------------------------------------------------------------------------- compute
def arm_model(arm: RunConfig, vocab_size: int):
    """The arm's model without weights (on the meta device): the checkpoint it continues, or the
    model section's layout at `vocab_size`."""
    import torch

    from domainlm.pretrain import encoder_config
    from domainlm.pretrain.architectures import checkpoint_config, new_model


    with torch.device("meta"):
        if arm.model.init_from:
            layout, _ = checkpoint_config(resolve_path(arm.model.init_from))
            return new_model(layout)
        return new_model(encoder_config(arm, vocab_size, 0))


def training_flops(model, seq_len: int, positions: int, mask_rate: float) -> float:
    """3 forwards' worth (Kaplan et al. 2020) over `positions`, the MLM head on mask_rate of them."""
    from domainlm.pretrain.flops import forward_flops


    return 3 * forward_flops(model, seq_len, positions, round(positions * mask_rate))


def memory(model, arm: RunConfig) -> dict[str, Any]:
    """Bytes of training state and of activations per sequence, and per card size the largest
    micro-batch that fits (90% of the card) with the accumulation steps it needs."""
    parameters = sum(p.numel() for p in model.parameters())
    state = 16 * parameters  # fp32 weights 4 + gradients 4 + AdamW's two moments 8
    config, pretrain = model.config, arm.pretrain
    per_row = 34 * pretrain.seq_len * config.hidden_size * config.num_layers \
        + 6 * round(pretrain.seq_len * pretrain.mask_rate) * config.vocab_size  # bf16 logits + fp32 loss
    fits = {}
    for gib in CARDS_GIB:
        micro = int((0.9 * gib * 2**30 - state) // per_row)
        fits[f"{gib} GiB"] = {"micro_batch": min(micro, pretrain.batch_size) if micro > 0 else 0,
                              "accumulation": math.ceil(pretrain.batch_size / micro) if micro > 0 else None}
    return {"parameters": parameters, "state_bytes": state, "activation_bytes_per_sequence": per_row,
            "at_batch_bytes": state + per_row * pretrain.batch_size, "cards": fits}


def _stand_in_tokenizer(vocab_size: int):
    """A WordPiece vocabulary of `vocab_size` entries (BERT's special tokens, words and ##pieces),
    built instantly: timing a step needs the vocabulary's size, not its contents."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import Whitespace

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rest = vocab_size - len(specials)
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(rest - rest // 3)]
                                                + [f"##p{i}" for i in range(rest // 3)])}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def document_lengths(corpus: dict[str, Any] | None, count: int, longest: int, rng: np.random.Generator) -> np.ndarray:
    """`count` document lengths in tokens drawn from the corpus's sources (in proportion to their
    documents times weight, each from its `token_length_quantiles`, by inverse CDF), each at least
    1; without counts, `longest` each (full rows)."""
    sources = [c for c in (corpus or {}).get("sources", {}).values() if c.get("token_length_quantiles")]
    if not sources:
        return np.full(count, longest)
    shares = np.array([c["documents"] * c["weight"] for c in sources], dtype=np.float64)
    picks, levels, drawn = rng.choice(len(sources), size=count, p=shares / shares.sum()), rng.random(count), np.zeros(count)
    for i, source in enumerate(sources):
        quantiles = source["token_length_quantiles"]
        drawn[picks == i] = np.interp(levels[picks == i], np.linspace(0, 1, len(quantiles)), quantiles)
    return np.maximum(1, drawn.round()).astype(np.int64)


def measured_step(arm: RunConfig, layout, corpus: dict[str, Any] | None = None, steps: int = 12,
                  warmup: int = 2) -> dict[str, float]:
    """Seconds per optimizer step of a model of `layout` (fresh weights) at the arm's batch and
    sequence length on this machine, through the pretraining engine on documents of the corpus's
    lengths (`document_lengths`: packed rows pad and mask as the real ones) with random tokens:
    the median of `steps` timed steps (a shared machine's slow outliers left out), after `warmup`
    untimed ones (allocation, warm-up)."""
    import torch

    from domainlm.pretrain.data import TokenShards
    from domainlm.pretrain.trainer import Trainer

    torch.manual_seed(0)
    pretrain, vocab_size = arm.pretrain, layout.vocab_size
    if pretrain.dropout is not None:  # what the engine trains with (`pretrain.training_configs`)
        layout = dataclasses.replace(layout, dropout=pretrain.dropout)
    tokenizer = _stand_in_tokenizer(vocab_size)
    rng = np.random.default_rng(0)
    rows = (pretrain.batch_size + 1) * (steps + warmup)
    lengths = document_lengths(corpus, rows, pretrain.seq_len - 2, rng)
    while lengths.sum() < rows * pretrain.seq_len:  # enough documents to fill the rows the steps read
        lengths = np.concatenate([lengths, document_lengths(corpus, rows, pretrain.seq_len - 2, rng)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = TokenShards(rng.integers(5, vocab_size, offsets[-1]).astype(np.int32), offsets,
                       np.zeros(len(lengths), np.int16), ["corpus"], {"cls": 2, "sep": 3, "pad": 0})
    settings = pretrain.model_copy(update={"max_steps": steps + warmup, "checkpoint_every": 10**9, "short_seq_fraction": 0,
                                           "batch_size_start": None, "curriculum": "none", "mixture": {},
                                           "upsample_source": None, "teacher": None})
    if arm.resources.pretrain_threads:
        torch.set_num_threads(arm.resources.pretrain_threads)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(layout, settings, data, tokenizer, Path(folder), seed=0, mask_token="[MASK]")
        times = []
        for step in range(steps + warmup):
            started = time.perf_counter()
            trainer.train_step(step)
            trainer.record.flush()  # the loss reaches the host: the step has finished
            times.append(time.perf_counter() - started)
    return {"seconds_per_step": float(np.median(times[warmup:])), "steps_timed": steps}


FORECAST_KINDS = ("domain", "random-init", "hf")  # fine-tuning of one encoder, forecast from timed steps


TIMED_RUNS = ((4, 1), (12, 2))
"""The two short fine-tuning runs a (model, task) is timed on: (batches, epochs). The longer one
sees its batches' shapes twice, as a full run sees most of its shapes again in later epochs."""


def _model_directory(config: RunConfig, entry, layouts: dict[str, Any], folder: Path) -> tuple[Path, bool] | None:
    """(a model directory the fine-tuning code loads, whether to keep its weights) for an entry:
    an `hf` entry's own; for a pretraining arm's model, a fresh model of the arm's layout written
    with the arm's trained tokenizer (else the reference one, else a stand-in of one token per
    word) into `folder` (the time does not depend on the weights). None for an arm the recipe
    does not pretrain."""
    import torch

    from domainlm.pretrain import export_model
    from domainlm.pretrain.architectures import new_model
    from domainlm.tokenizer import save_for_transformers

    if entry.kind == "hf":
        return resolve_path(entry.path), True
    arm = entry.arm or "domain"
    arms = arms_of(config)
    if arm not in layouts or arm not in arms:
        return None
    trained = RunLayout(arms[arm].directory).tokenizer
    tokenizer_dir = trained if (trained / "tokenizer.json").exists() else (
        resolve_path(config.tokenizer.reference) if config.tokenizer.reference else folder / "stand-in")
    if not Path(tokenizer_dir).exists():
        save_for_transformers(_stand_in_tokenizer(layouts[arm].vocab_size), Path(tokenizer_dir))
    out = folder / arm
    if not out.exists():
        layout = dataclasses.replace(layouts[arm], vocab_size=read_tokenizer(tokenizer_dir).get_vocab_size())
        torch.manual_seed(0)
        export_model(new_model(layout), Path(tokenizer_dir), out)
    return out, True


def _timed_run(path: Path, task, batches: int, epochs: int, config: RunConfig) -> tuple[float, float]:
    """(wall seconds, test examples per second) of one fine-tuning run through the evaluate
    stage's code (`evaluate.finetune`) on `batches` training batches for `epochs` epochs, with
    two batches of dev (scored once: its share is left out of the timing below) and of test."""
    from domainlm.evaluate.finetune import finetune

    batch = config.evaluate.batch_size
    short = dataclasses.replace(task, train=task.train[:batches * batch], dev=task.dev[:2 * batch],
                                test=task.test[:2 * batch])
    settings = config.evaluate.model_copy(update={"epochs": epochs, "patience": None})
    started = time.perf_counter()
    result = finetune(path, True, short, 0, settings.learning_rates[0], settings)
    return time.perf_counter() - started, result["test_examples_per_second"]


def fine_tuning_time(config: RunConfig, layouts: dict[str, Any]) -> dict[str, Any]:
    """Seconds the evaluation's fine-tuning runs will take on this machine. Per (model, task), two
    short runs of the evaluate stage's own code (`TIMED_RUNS`; two batches of dev and test) give
    the seconds per training step (their difference) and a fixed part (loading, encoding); a full run is the fixed part, epochs x ceil(train / batch) steps and
    its dev and test passes at the measured test speed, times seeds x learning rates, over
    `resources.evaluate_workers`. Models of other kinds (SetFit, distillation, ...) and retrieval
    tasks are left out and named. `layouts`: the pretraining arms' model layouts, by arm name."""
    from domainlm.tasks.load import load_task

    evaluate, total, rows, skipped = config.evaluate, 0.0, [], []
    tasks = [load_task(t, seed=config.seed) for t in config.tasks]
    with tempfile.TemporaryDirectory() as folder:
        for entry in evaluate.models:
            if entry.kind in LEXICAL:
                continue
            found = _model_directory(config, entry, layouts, Path(folder)) if entry.kind in FORECAST_KINDS else None
            if found is None:
                skipped.append(entry.name)
                continue
            for task in tasks:
                if task.documents:  # retrieval: a bi-encoder's loop, not forecast here
                    skipped.append(f"{entry.name} on {task.name}")
                    continue
                available = math.ceil(len(task.train) / evaluate.batch_size)
                (few, one), (many, two) = ((min(n, available), epochs) for n, epochs in TIMED_RUNS)
                with _quiet("domainlm.evaluate"):
                    (short, _), (long, speed) = (_timed_run(found[0], task, n, e, config)
                                                 for n, e in ((few, one), (many, two)))
                speed, scored = max(speed, 1e-9), min(len(task.dev), 2 * evaluate.batch_size)
                extra = (two - one) * scored / speed  # the longer run scores dev once more
                step = max(0.0, (long - short - extra) / (many * two - few * one)) if many * two > few * one \
                    else short / max(1, few)
                fixed = max(0.0, short - few * step - (scored + min(len(task.test), 2 * evaluate.batch_size)) / speed)
                steps = evaluate.epochs * math.ceil(len(task.train) / evaluate.batch_size)
                runs = len(evaluate.seeds) * max(1, len(evaluate.learning_rates))
                per_run = fixed + steps * step + (evaluate.epochs * len(task.dev) + len(task.test)) / speed
                rows.append({"model": entry.name, "task": task.name, "step_seconds": step, "fixed_seconds": fixed,
                             "test_examples_per_second": speed, "steps_per_run": steps, "runs": runs,
                             "seconds": runs * per_run})
                total += runs * per_run
    return {"seconds": total / config.resources.evaluate_workers, "per_model_task": rows, "not_forecast": skipped}


def evaluation_runs(config: RunConfig) -> dict[str, Any]:
    """The fine-tuning runs the evaluation makes: models x tasks x seeds x learning rates (TF-IDF
    and BM25 rows train no encoder)."""
    models = [m for m in config.evaluate.models if m.kind not in LEXICAL]
    rates = max(1, len(config.evaluate.learning_rates))
    runs = len(models) * len(config.tasks) * len(config.evaluate.seeds) * rates
    return {"encoder_models": [m.name for m in models], "tasks": len(config.tasks), "seeds": len(config.evaluate.seeds),
            "learning_rates": rates, "runs": runs}


# ----------------------------------------------------------------------------------- stage times
STAGE_SAMPLES = (2_000, SAMPLE_DOCS)  # documents per source the corpus and tokenizer stages are timed on
BYTES_PER_WORD = 6  # UTF-8 bytes per word of English text with its space, for the tokenizer's sample share


def _on_line(timings: list[tuple[int, float]], amount: float) -> float:
    """Seconds at `amount` (documents) on the line through two (amount, seconds) timings: a fixed
    part (start-up, reading the tasks, the reference vocabulary) and a part per document."""
    (n1, t1), (n2, t2) = timings
    if n2 <= n1:  # both timed everything there is (a small corpus): their mean, in proportion
        return (t1 + t2) / 2 * amount / max(1, n2)
    per_unit = max(0.0, (t2 - t1) / (n2 - n1))
    return max(0.0, t1 - per_unit * n1) + per_unit * amount


def stage_times(config: RunConfig, corpus: dict[str, Any],
                raw: dict[str, tuple[int, list[str], float]] | None = None) -> dict[str, Any]:
    """Seconds of the corpus and tokenizer stages on this machine: the stages' own code run on
    2,000 and on 20,000 documents of each source drawn uniformly (`raw_samples`, read here unless
    given), extrapolated along the line through the two timings to the corpus's documents, plus,
    for the corpus stage, the time reading the raw inputs took (a stage that already ran: its
    recorded time). The samples are curated as one work unit per source: a corpus of many units
    curates faster on several workers than said."""
    from domainlm.corpus import run as curate_stage
    from domainlm.tokenizer import run as tokenizer_stage

    layout, found = RunLayout(config.directory), {}
    done = {stage: layout.manifest(stage).exists() for stage in ("corpus", "tokenizer")}
    for stage in (s for s, ran in done.items() if ran):
        found[stage] = {"seconds": layout.stage_seconds(stage), "basis": "measured: the stage ran"}
    if all(done.values()):
        return found
    raw = raw if raw is not None else raw_samples(config)
    timings: dict[str, list[tuple[int, float]]] = {"corpus": [], "tokenizer": []}
    with _quiet("domainlm.corpus", "domainlm.tokenizer"), tempfile.TemporaryDirectory() as inputs:
        for n in STAGE_SAMPLES:
            sources = []
            for number, (source, name) in enumerate(zip(config.corpus.sources, config.corpus.source_names(),
                                                        strict=True)):
                path = Path(inputs) / f"{n}-{number}.jsonl"
                path.write_text("".join(json.dumps({"text": text}) + "\n" for text in raw[name][1][:n]))
                sources.append(source.model_copy(update={"path": str(path), "format": "jsonl", "name": name,
                                                         "text_field": "text", "max_docs": None}))
            read = sum(min(n, len(raw[name][1])) for name in config.corpus.source_names())
            with tempfile.TemporaryDirectory() as folder:
                sample = config.model_copy(update={"run_dir": folder,
                                                   "corpus": config.corpus.model_copy(update={"sources": sources})})
                out = RunLayout(sample.directory)
                started = time.perf_counter()
                curate_stage(sample, out.root / "corpus")
                timings["corpus"].append((read, time.perf_counter() - started))
                started = time.perf_counter()
                tokenizer_stage(sample, out.tokenizer)
                timings["tokenizer"].append((read, time.perf_counter() - started))
    documents = sum(c["documents"] for c in corpus["sources"].values())
    words = sum(c["words"] for c in corpus["sources"].values())
    share = min(1.0, config.tokenizer.max_training_bytes / max(1, BYTES_PER_WORD * words))  # the stage's sample
    for stage, ran in done.items():
        if not ran:
            read = documents * (share if stage == "tokenizer" else 1.0)
            reading = sum(seconds for _, _, seconds in raw.values()) if stage == "corpus" else 0.0
            found[stage] = {"seconds": reading + _on_line(timings[stage], read), "timed_documents": timings[stage],
                            "basis": f"timed on {STAGE_SAMPLES[0]:,} and {STAGE_SAMPLES[1]:,} documents per source"}
    return found


# ------------------------------------------------------------------------------ loss from pilots
PILOT_FRACTION = 1 / 8
"""An arm's pilot: one run of this share of its steps, with its own warmup and decay (12.5% of the budget)."""
PILOT_POINTS = 16  # held-out loss measurements along a pilot, evenly spaced
MIN_POINTS = 5  # pilot points in the context regime needed for a fit
ANNEALING_DECAY = 0.999  # Tissue et al. 2024: the momentum of the annealing area
BOOTSTRAP = 200  # residual-bootstrap refits for the interval


def schedule_areas(multipliers: np.ndarray, decay: float = ANNEALING_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each step of a learning-rate schedule (multipliers of the peak rate, one per
    step), as in the annealing law of Tissue et al. 2024 ("Scaling Law with Learning Rate
    Annealing"): S1 the summed rates (the forward area), S2 the summed annealing momentum
    m_i = decay * m_(i-1) + (eta_(i-1) - eta_i) over the steps where the rate falls (warmup adds nothing)."""
    multipliers = np.asarray(multipliers, dtype=np.float64)
    falls = np.maximum(0.0, -np.diff(multipliers, prepend=multipliers[:1]))
    momentum = np.zeros_like(multipliers)
    carried = 0.0
    for i, fall in enumerate(falls):
        carried = decay * carried + fall
        momentum[i] = carried
    return np.cumsum(multipliers), np.cumsum(momentum)


def annealing_law(params: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Held-out loss L = L0 + A * S1^-alpha - C * S2 (Tissue et al. 2024): a power law in the
    forward area, lowered in proportion to the annealing area."""
    l0, a, alpha, c = params
    return l0 + a * np.power(s1, -alpha) - c * s2


def fit_annealing_law(s1: np.ndarray, s2: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Least-squares (L0, A, alpha, C) of `annealing_law` to points of loss curves (all >= 0)."""
    from scipy.optimize import least_squares

    start = np.array([float(loss.min()) * 0.8, float(loss.max() - loss.min()) + 1.0, 0.3, 1e-3])
    found = least_squares(lambda p: annealing_law(p, s1, s2) - loss, start,
                          bounds=([0.0, 0.0, 0.0, 0.0], [np.inf, np.inf, 4.0, np.inf]))
    return found.x


def unigram_cross_entropy(train: TokenShards, heldout: TokenShards, vocab_size: int) -> float:
    """Nats per held-out token of the best model that ignores context: the training tokens'
    frequencies (add-half smoothing). MLM losses above it mean the model is not using context yet
    (the plateau small encoders sit on before their loss starts its power-law descent)."""
    special = list(train.special.values())
    counts = np.bincount(np.asarray(train.tokens), minlength=vocab_size).astype(np.float64)
    seen = np.bincount(np.asarray(heldout.tokens), minlength=vocab_size).astype(np.float64)
    counts[special] = seen[special] = 0
    probabilities = (counts + 0.5) / (counts.sum() + 0.5 * vocab_size)
    return float(-(seen * np.log(probabilities)).sum() / max(1.0, seen.sum()))


def pilot_curve(arm: RunConfig, steps: int) -> dict[str, Any]:
    """Held-out MLM loss along a pilot run of the arm's own model and data for `steps` steps (its
    own warmup and decay), measured `PILOT_POINTS` times as the pretrain stage measures its final
    one; and the corpus's unigram cross-entropy. Needs the arm's prepared pretraining data
    (`domainlm pretrain --data-only`)."""
    import torch

    from domainlm.pretrain import heldout_shards, initial_model, prepare_data, training_configs
    from domainlm.pretrain.trainer import Trainer

    layout = RunLayout(arm.directory)
    model, tokenizer_dir, specials, _ = initial_model(arm, write=False)
    tokenizer = read_tokenizer(tokenizer_dir)
    data = prepare_data(arm, tokenizer_dir, specials)
    settings = arm.pretrain.model_copy(update={"max_steps": steps, "checkpoint_every": 10**9})
    _, train_config = training_configs(arm.model_copy(update={"pretrain": settings}), model, tokenizer, specials)
    if arm.resources.pretrain_threads:
        torch.set_num_threads(arm.resources.pretrain_threads)
    started, points, multipliers, measuring = time.perf_counter(), [], [], 0.0
    at = set(np.linspace(0, steps, PILOT_POINTS + 1).round().astype(int)[1:].tolist())
    with tempfile.TemporaryDirectory() as folder:
        heldout = heldout_shards(layout, tokenizer_dir, specials, Path(folder))
        if heldout is None:
            return {"steps": steps, "points": [], "reason": "the corpus holds no held-out documents"}
        trainer = Trainer(train_config, settings, data, tokenizer, Path(folder) / "checkpoints", seed=arm.seed,
                          model=model, mask_token=specials["mask"], source_weights=layout.corpus_source_weights())
        batches = trainer.batches.batches(0, steps)
        looping = time.perf_counter()
        try:
            for step in range(steps):
                multipliers.append(trainer.scheduler.get_last_lr()[0] / settings.lr)
                _, batch = next(batches)
                trainer.train_step(step, batch)
                trainer.record.step += 1
                if step + 1 in at:
                    trainer.record.flush()
                    paused = time.perf_counter()
                    points.append((step + 1, trainer.heldout_loss(heldout)["heldout_mlm_loss"]))
                    measuring += time.perf_counter() - paused
        finally:
            batches.close()
        training = time.perf_counter() - looping - measuring  # the steps alone, measurements left out
        unigram = unigram_cross_entropy(data, heldout, tokenizer.get_vocab_size())
    return {"steps": steps, "points": points, "multipliers": multipliers, "unigram_cross_entropy": unigram,
            "seconds": time.perf_counter() - started, "seconds_per_step": training / steps}


def full_schedule(arm: RunConfig) -> np.ndarray:
    """The arm's learning-rate multiplier at each of its steps (`optim.lr_schedule`)."""
    from domainlm.optim import lr_schedule

    p = arm.pretrain
    factor = lr_schedule(p.schedule, math.ceil(p.warmup_fraction * p.max_steps), p.max_steps, p.decay_fraction)
    return np.array([factor(step) for step in range(p.max_steps)])


def loss_forecast(arm: RunConfig, pilot: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The arm's final held-out MLM loss forecast from its pilot: `annealing_law` fitted to the
    pilot's points below the corpus's unigram cross-entropy (where the loss has started its
    power-law descent), evaluated at the full run's schedule; a 95% interval by refitting to the
    fitted curve plus resampled residuals (`BOOTSTRAP` times: the fit's noise, not the law's
    error). No forecast, with the reason, when fewer than `MIN_POINTS` points are below the
    unigram cross-entropy: a power law fitted before that point extrapolates the plateau's exit,
    not the descent (measured: docs/planning.md)."""
    points = pilot.get("points") or []
    found = {"pilot_steps": pilot["steps"], "pilot_fraction": pilot["steps"] / arm.pretrain.max_steps,
             "pilot_points": points, "unigram_cross_entropy": pilot.get("unigram_cross_entropy"),
             "pilot_seconds": pilot.get("seconds"), "pilot_seconds_per_step": pilot.get("seconds_per_step")}
    if not points:
        return found | {"forecast": None, "reason": pilot.get("reason", "no pilot points")}
    unigram = pilot["unigram_cross_entropy"]
    s1, s2 = schedule_areas(np.array(pilot["multipliers"]))
    used = [(s1[step - 1], s2[step - 1], loss) for step, loss in points if loss < unigram]
    if len(used) < MIN_POINTS:
        return found | {"forecast": None, "reason": (
            f"it ends at held-out loss {points[-1][1]:.3f}, with {len(used)} of its points below the corpus's unigram cross-entropy "
            f"{unigram:.3f}: the model has not yet started using context, and a curve fitted there forecasts the "
            "plateau's exit rather than the descent after it (a longer budget gives a pilot past it)")}
    x1, x2, loss = (np.array(column) for column in zip(*used, strict=True))
    params = fit_annealing_law(x1, x2, loss)
    f1, f2 = schedule_areas(full_schedule(arm))
    predict = lambda p: float(annealing_law(p, f1[-1:], f2[-1:])[0])  # noqa: E731
    fitted = annealing_law(params, x1, x2)
    residuals, rng = loss - fitted, np.random.default_rng(seed)
    draws = [predict(fit_annealing_law(x1, x2, fitted + rng.choice(residuals, len(residuals)))) for _ in range(BOOTSTRAP)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return found | {"forecast": predict(params), "low": float(low), "high": float(high), "points_fitted": len(used),
                    "law": dict(zip(("L0", "A", "alpha", "C"), map(float, params), strict=True)),
                    "fit_rmse": float(np.sqrt(np.mean(residuals ** 2)))}


def pilot_forecasts(config: RunConfig, fraction: float = PILOT_FRACTION) -> dict[str, dict[str, Any]]:
    """Per pretraining arm: its corpus, tokenizer and pretraining data prepared (stages the run then
    reuses), a pilot run of `fraction` of its steps, and the forecast of its final held-out MLM
    loss (`loss_forecast`). ConfigError for a fraction outside (0, 1)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--pilots {fraction}: a pilot runs a share of the budget, between 0 and 1 (e.g. 0.125)")
    from domainlm.pipeline import run_all, run_lock, run_stage

    found = {}
    for name, arm in arms_of(config).items():
        run_all(arm, stages=("corpus", "tokenizer"))
        steps = max(1, round(fraction * arm.pretrain.max_steps))
        with run_lock(arm):  # no run of the recipe changes the data under the pilot
            run_stage(arm, "pretrain", prepare_only=True)
            log.info("plan: arm %s: pilot of %d steps (%.1f%% of %d)", name, steps,
                     100 * steps / arm.pretrain.max_steps, arm.pretrain.max_steps)
            pilot = pilot_curve(arm, steps)
        found[name] = loss_forecast(arm, pilot)
    return found


# ------------------------------------------------------------------- downstream gain (experimental)
def gain_outlook(config: RunConfig, arms: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """An experimental outlook on where domain pretraining could pay, never a measurement: the
    tasks ranked by how far their text is from general text (the share of their words a general
    vocabulary splits, `evaluate.task_distances`; gains grow as overlap with general text falls,
    Gururangan et al. 2020), and per arm with a pilot forecast whether its model is expected to use
    context at all by the end of its budget (a forecast held-out loss below the corpus's unigram
    cross-entropy). An arm forecast not to is not expected to beat a pretrained general model on
    any task; one whose pilot is still on the plateau gets no outlook. None without tasks or a
    general vocabulary."""
    from domainlm.evaluate import task_distances
    from domainlm.tasks.load import load_task

    if not config.tasks:
        return None
    distances = task_distances(config, [load_task(t, seed=config.seed) for t in config.tasks]).get("tasks")
    if not distances:
        return None
    ranked = sorted(distances, key=lambda t: -distances[t]["split_share"])
    expectations = {}
    for name, arm in arms.items():
        forecast = arm.get("loss_forecast")
        if forecast is None or forecast.get("unigram_cross_entropy") is None:
            continue
        final, unigram = forecast["forecast"], forecast["unigram_cross_entropy"]
        if final is None:
            expectations[name] = (f"no outlook: its pilot ended on the unigram plateau (held-out loss above the "
                                  f"unigram cross-entropy {unigram:.2f}), so whether it learns to use context in "
                                  "the rest of its budget, and how much, is not forecast; a model that starts late "
                                  "has little budget left to gain with")
        elif final >= unigram:
            expectations[name] = (f"not expected to beat a pretrained general model on any task: by the end of its "
                                  f"budget its held-out loss is not forecast below the unigram cross-entropy "
                                  f"{unigram:.2f} (it will hardly use context)")
        else:
            expectations[name] = (f"may gain where the text is far from general text ({ranked[0]} first): its "
                                  f"forecast held-out loss {final:.2f} is {unigram - final:.2f} nats below the "
                                  f"unigram cross-entropy (it learns context)")
    return {"label": "experimental: an outlook from distances and pilot losses, not a measurement",
            "tasks_by_distance": [{"task": t, "split_share": distances[t]["split_share"],
                                   "js_divergence": distances[t]["js_divergence"]} for t in ranked],
            "arms": expectations}


# ------------------------------------------------------------------------------------------ plan
def arms_of(config: RunConfig) -> dict[str, RunConfig]:
    """The pretraining runs the recipe makes: its experiment's arms, or itself when it pretrains."""
    if config.experiment is not None:
        return config.arm_configs()
    pretrains = config.corpus is not None and any(m.kind in ("domain", "random-init") for m in config.evaluate.models)
    return {"domain": config} if pretrains else {}


def plan(config: RunConfig, mfu: float = DEFAULT_MFU, measure: bool = True,
         pilots: float | None = None) -> dict[str, Any]:
    """The whole forecast (see the module docstring) as one JSON-able mapping, with `warnings`;
    with `pilots` (a share of the steps), each arm's final held-out MLM loss forecast from a pilot
    run of that share (`pilot_forecasts`)."""
    found: dict[str, Any] = {"recipe": config.name, "warnings": [], "gpu_mfu": mfu, "arms": {}}
    fresh = config.corpus is not None and not RunLayout(config.directory).corpus_stats.exists()
    raw = raw_samples(config) if fresh else None  # the raw inputs, read once for counts and stage timings
    corpus = corpus_counts(config, raw) if config.corpus is not None else None
    found["corpus"] = corpus
    if corpus:
        total_tokens = sum(c["tokens"] for c in corpus["sources"].values())
        per_entry = total_tokens / max(1, config.tokenizer.vocab_size)
        found["tokens_per_vocabulary_entry"] = round(per_entry)
        if per_entry < TOKENS_PER_ENTRY:
            found["warnings"].append(
                f"tokenizer.vocab_size {config.tokenizer.vocab_size} against ~{total_tokens:,} corpus tokens: "
                f"{per_entry:.0f} tokens per entry (fewer than {TOKENS_PER_ENTRY}); many entries will be rare and "
                "poorly trained: a smaller vocabulary, or more text")
    for name, arm in arms_of(config).items():
        model = arm_model(arm, _vocab_size(arm))
        data = reads(arm, corpus) if corpus else {"positions": 0, "epochs": {}}
        for source, epochs in data["epochs"].items():
            if epochs > MAX_EPOCHS:
                found["warnings"].append(
                    f"arm {name}: {epochs:.1f} passes over source '{source}' (more than {MAX_EPOCHS}: repeated "
                    "data adds little beyond ~4 epochs, Muennighoff et al. 2023): more text or fewer steps")
        flops = training_flops(model, arm.pretrain.seq_len, data["positions"], arm.pretrain.mask_rate)
        entry = {"steps": arm.pretrain.max_steps, "batch_size": arm.pretrain.batch_size,
                 "seq_len": arm.pretrain.seq_len, **data, "flops": flops, "memory": memory(model, arm),
                 "gpu_hours": {gpu: flops / (peak * mfu) / 3600 for gpu, (peak, _) in GPUS.items()}}
        if measure:
            step = measured_step(arm, model.config, corpus)
            entry["this_machine"] = step | {
                "pretrain_seconds": step["seconds_per_step"] * arm.pretrain.max_steps,
                "flops_per_second": flops / arm.pretrain.max_steps / step["seconds_per_step"]}
        found["arms"][name] = entry
    if measure and corpus:
        found["stages"] = stage_times(config, corpus, raw)
    if pilots and found["arms"]:
        for name, forecast in pilot_forecasts(config, pilots).items():
            entry = found["arms"][name]
            entry["loss_forecast"] = forecast
            if entry.get("this_machine") and forecast.get("pilot_seconds_per_step"):  # real data, many steps
                step = forecast["pilot_seconds_per_step"]
                entry["this_machine"] |= {"seconds_per_step": step, "pretrain_seconds": step * entry["steps"],
                                          "flops_per_second": entry["flops"] / entry["steps"] / step,
                                          "timed_on": "the pilot's training steps"}
    if pilots:
        found["gain_outlook"] = gain_outlook(config, found["arms"])
    found["evaluation"] = evaluation_runs(config)
    if measure and config.tasks:
        layouts = {name: arm_model(arm, _vocab_size(arm)).config for name, arm in arms_of(config).items()}
        found["evaluation"]["this_machine"] = fine_tuning_time(config, layouts)
    return found


def _vocab_size(arm: RunConfig) -> int:
    """The arm's vocabulary size: its trained tokenizer's, else the one it is asked to have."""
    trained = RunLayout(arm.directory).tokenizer / "tokenizer.json"
    return read_tokenizer(trained).get_vocab_size() if trained.exists() else arm.tokenizer.vocab_size


def markdown(found: dict[str, Any]) -> str:
    """The plan as Markdown tables (what `domainlm plan` prints)."""
    lines = [f"# Plan: {found['recipe']}", ""]
    corpus = found.get("corpus")
    if corpus:
        lines += [f"Corpus, from {corpus['basis']}; tokens counted with {corpus['tokens_counted_with']}.", "",
                  "| source | documents | words | tokens | weight |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['documents']:,} | {c['words']:,} | {c['tokens']:,} | {c['weight']:g} |"
                  for name, c in corpus["sources"].items()]
        lines.append("")
    if found["arms"]:
        gpus = list(GPUS)
        lines += ["| arm | params | steps x batch x seq | tokens read | passes | FLOPs | this machine | "
                  + " | ".join(f"{g} h" for g in gpus) + " | fits (micro-batch x accumulation) |",
                  "|---|---:|---|---:|---|---:|---:|" + "---:|" * len(gpus) + "---|"]
        for name, arm in found["arms"].items():
            passes = ", ".join(f"{s} {e:.2f}" for s, e in arm["epochs"].items())
            here = arm.get("this_machine")
            here = f"{here['pretrain_seconds'] / 60:.1f} min" if here else "—"
            fits = ", ".join(f"{card}: {f['micro_batch']}x{f['accumulation']}" if f["micro_batch"] else f"{card}: no"
                             for card, f in arm["memory"]["cards"].items())
            lines.append(f"| {name} | {arm['memory']['parameters'] / 1e6:.1f} M | {arm['steps']} x {arm['batch_size']} x "
                         f"{arm['seq_len']} | {arm['positions']:,} | {passes} | {arm['flops']:.2e} | {here} | "
                         + " | ".join(f"{arm['gpu_hours'][g]:.3g}" for g in gpus) + f" | {fits} |")
        lines += ["", f"GPU hours at {found['gpu_mfu']:.0%} model-FLOPs utilisation of the dense bf16 peak."]
        for name, arm in found["arms"].items():
            if "loss_forecast" in arm:
                lines += ["", _loss_line(name, arm["loss_forecast"])]
    lines += [""] if found.get("stages") else []
    for stage, timed in found.get("stages", {}).items():
        lines.append(f"The {stage} stage: about {timed['seconds']:.0f} s on this machine ({timed['basis']}).")
    runs = found["evaluation"]
    lines += ["", f"Evaluation: {runs['runs']} fine-tuning runs ({len(runs['encoder_models'])} encoder models x "
                  f"{runs['tasks']} tasks x {runs['seeds']} seeds x {runs['learning_rates']} learning rates)"
              + (f", about {runs['this_machine']['seconds'] / 60:.1f} min on this machine" if "this_machine" in runs
                 else "") + "."]
    if runs.get("this_machine", {}).get("not_forecast"):
        lines.append(f"Not in that time: {', '.join(runs['this_machine']['not_forecast'])}.")
    outlook = found.get("gain_outlook")
    if outlook:
        tasks = ", ".join(f"{t['task']} ({t['split_share']:.0%} of words split)" for t in outlook["tasks_by_distance"])
        lines += ["", f"Downstream gain ({outlook['label']}): tasks from the farthest from general text: {tasks}."]
        lines += [f"- arm {name}: {text}." for name, text in outlook["arms"].items()]
    if found["warnings"]:
        lines += ["", "Warnings:", *[f"- {w}" for w in found["warnings"]]]
    return "\n".join(lines) + "\n"


def _loss_line(name: str, forecast: dict[str, Any]) -> str:
    pilot = f"a pilot of {forecast['pilot_steps']} steps ({forecast['pilot_fraction']:.1%} of the budget)"
    if forecast["forecast"] is None:
        return f"Final held-out MLM loss of arm {name}: no forecast from {pilot}: {forecast['reason']}."
    return (f"Final held-out MLM loss of arm {name}: about {forecast['forecast']:.2f} (95% interval "
            f"{forecast['low']:.2f}-{forecast['high']:.2f}, the fit's noise only), from {pilot}: the annealing law "
            f"of Tissue et al. 2024 fitted to its {forecast['points_fitted']} points below the unigram cross-entropy "
            f"{forecast['unigram_cross_entropy']:.2f}.")


def write_plan(config: RunConfig, found: dict[str, Any]) -> Path:
    """plan.json and plan.md in the run folder; returns the Markdown file."""
    layout = RunLayout(config.directory)
    atomic_write_json(layout.plan_json, found)
    atomic_write_text(layout.plan_markdown, markdown(found))
    return layout.plan_markdown

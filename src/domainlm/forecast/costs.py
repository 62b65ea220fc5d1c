"""What a recipe costs: its data (counts, passes), compute (FLOPs, timed steps), memory, and the
times of its stages on this machine (see the package docstring)."""

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
from typing import Any

import numpy as np

from domainlm.config import LEXICAL, RunConfig, resolve_path
from domainlm.corpus.normalize import normalize_text
from domainlm.corpus.readers import plan_units, read_unit
from domainlm.io import read_json
from domainlm.layout import RunLayout
from domainlm.vocabulary import read_tokenizer, untruncated

# torch and the pretrain stage are imported where used: the CLI imports this module, and so does
# every worker the corpus stage spawns (it re-imports the `domainlm` script), where torch would
# add seconds to each start.

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
    recorded time). A first, untimed-for-the-line run on 2,000 documents pays what a stage loads
    once per process (transformers for the tokenizer's loader files: about a second), which is
    added back: the real stage pays it too. Call it before anything imports torch or transformers.
    The samples are curated as one work unit per source: a corpus of many units curates faster on
    several workers than said."""
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
        for n in (STAGE_SAMPLES[0], *STAGE_SAMPLES):  # the first: what each stage loads once
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
            (_, first), *line = timings[stage]
            loading = max(0.0, first - line[0][1])
            read = documents * (share if stage == "tokenizer" else 1.0)
            reading = sum(seconds for _, _, seconds in raw.values()) if stage == "corpus" else 0.0
            found[stage] = {"seconds": reading + loading + _on_line(line, read), "timed_documents": line,
                            "loading_seconds": loading,
                            "basis": f"timed on {STAGE_SAMPLES[0]:,} and {STAGE_SAMPLES[1]:,} documents per source"}
    return found


# ----------------------------------------------------------------------------------------- arms
def arms_of(config: RunConfig) -> dict[str, RunConfig]:
    """The pretraining runs the recipe makes: its experiment's arms, or itself when it pretrains."""
    if config.experiment is not None:
        return config.arm_configs()
    pretrains = config.corpus is not None and any(m.kind in ("domain", "random-init") for m in config.evaluate.models)
    return {"domain": config} if pretrains else {}



def arm_vocab_size(arm: RunConfig) -> int:
    """The arm's vocabulary size: its trained tokenizer's, else the one it is asked to have."""
    trained = RunLayout(arm.directory).tokenizer / "tokenizer.json"
    return read_tokenizer(trained).get_vocab_size() if trained.exists() else arm.tokenizer.vocab_size

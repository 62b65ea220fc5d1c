"""Evaluate stage: every model on every task, over a learning-rate grid and every seed.

Models: the domain model this run (or an experiment's arm) pretrained, the same architecture
randomly initialised, any local Hugging Face directory named in the recipe, TF-IDF + a linear
model, self-training rows (a teacher's pseudo-labels on unlabeled in-domain text train a
student before the gold labels) and distilled rows (a teacher's soft targets on that text train
another model before the gold labels; `distillation.json` puts the student's size, speed and
score next to the teacher's). Each (model, task, lr, seed) result is saved when it is done
(`runs/<model>/<task>/lr-<lr>/seed-N.json`, with the test predictions for the bootstrap), so a
killed evaluation resumes where it stopped. Per (model, task) the learning rate with the best mean
dev score is selected (`selection.json`); `results.jsonl` holds its rows (model, task, seed,
metric, value). With `evaluate.learning_curve` every model is also fine-tuned on nested subsamples
of each task (`tasks.subsample`), the rate chosen per sample on its own small dev; those rows carry
`size` and `subsample_seed` too (`learning_curve.json`: the samples and the choices). With
`evaluate.active_learning` each model also runs pool-based active learning (`evaluate.active`);
its rows carry `strategy`, `round` and `labels`. A model that fails (a corrupt or unsupported directory) is recorded in
`failures.json` with the reason and the others go on. Before any training, each task's distance
from general text is measured (`distance.json`) and its test gold labels saved (`gold/`).
"""

from __future__ import annotations

import logging
import platform
import random
import shutil
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.config import LEXICAL, ModelEntry, RunConfig, resolve_path
from domainlm.errors import UnsupportedTask
from domainlm.io import atomic_write_json, atomic_write_jsonl, fingerprint, read_json, read_lines
from domainlm.layout import RunLayout
from domainlm.progress import progress_bar
from domainlm.tasks.load import Task, load_task
from domainlm.tasks.metrics import select_runs, summarize, task_metrics
from domainlm.tasks.subsample import curve_samples, per_class, size_unit, subsampled
from domainlm.tasks.types import TASK_TYPES

PRETRAINED_KINDS = ("domain", "random-init")  # models read from a pretrain stage's export
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ the stage's contract
def needs(config: RunConfig) -> tuple[str, ...]:
    """This run's own pretrained model, unless every model that needs one comes from an arm; the
    corpus, when self-training or distillation reads it."""
    stages = ["corpus"] if any(m.reads_unlabeled and m.unlabeled == "corpus" for m in config.evaluate.models) else []
    if config.pretrains:
        stages += ["tokenizer", "pretrain"]
    return tuple(stages)


def inputs(config: RunConfig) -> list[str]:
    """Task files, general and unlabeled text, model directories, and the exports of the arms the
    models name (with the experiment's record of failed arms)."""
    files = [path for t in config.tasks for path in t.files()]
    files += [p for p in [config.evaluate.general_corpus] + [m.unlabeled for m in config.evaluate.models
                                                               if m.reads_unlabeled] if p and p != "corpus"]
    run_dir = RunLayout(config.directory)
    models = [m.path for m in config.evaluate.models if m.kind in ("hf", "setfit", "simcse") and m.path]
    models += [str(run_dir.arm(m.arm).export) for m in config.evaluate.models if m.arm]
    if any(m.arm for m in config.evaluate.models):
        models.append(str(run_dir.arms))
    return files + list(dict.fromkeys(path for path in models if _exists(path)))


def _exists(path: str) -> bool:
    try:
        return resolve_path(path).exists()
    except FileNotFoundError:  # an optional pkg:// model whose package is not installed
        return False


def settings(config: RunConfig) -> dict[str, Any]:
    """The evaluate section (without `bootstrap_samples` and `learning_curve.include_full`, which
    only the report reads), the tasks, Python."""
    evaluate = config.evaluate.fingerprinted(leave_out=("bootstrap_samples",))
    if "learning_curve" in evaluate:
        evaluate["learning_curve"].pop("include_full")
    return {"evaluate": evaluate, "tasks": [t.fingerprinted() for t in config.tasks],
            "python": platform.python_version()}


def discarded_work(config: RunConfig) -> str | None:
    """What rerunning the stage from scratch throws away: its finished fine-tuning runs."""
    finished = sum(1 for _ in RunLayout(config.directory).finished_runs())
    return f"Its {finished} finished fine-tuning runs are discarded" if finished else None


# ------------------------------------------------------------------------------------------ one run
def model_location(entry: ModelEntry, run_dir: RunLayout) -> tuple[Path, bool]:
    """(directory, use pretrained weights) for a neural model entry."""
    if entry.kind in PRETRAINED_KINDS or entry.kind == "simcse" and not entry.path:
        owner = run_dir.arm(entry.arm) if entry.arm else run_dir  # an experiment's arm, or this run
        return owner.export, entry.kind == "domain"
    return resolve_path(entry.path), True  # kind "hf"


def unlabeled_examples(entry: ModelEntry, task: Task, run_dir: RunLayout, seed: int) -> list[dict]:
    """Unlabeled in-domain inputs in the task's shape (its target's `unlabeled` in
    `evaluate.heads`): texts, or sentences split into words."""
    from domainlm.evaluate.heads import HEADS

    head = HEADS[task.target]
    limit = 20 * entry.max_unlabeled
    texts = run_dir.corpus_texts() if entry.unlabeled == "corpus" else read_lines(entry.unlabeled, limit)
    pool = []
    for text in texts:
        pool += head.layout.pieces(text)
        if len(pool) >= limit:
            break
    chosen = random.Random(seed).sample(pool, min(entry.max_unlabeled, len(pool)))
    return [x for x in map(head.unlabeled, chosen) if x is not None]


def check_unlabeled_fits(task: Task, method: str) -> None:
    """UnsupportedTask unless unlabeled in-domain text can be put in the task's shape."""
    if not TASK_TYPES[task.type].self_training:
        supported = ", ".join(name for name, kind in TASK_TYPES.items() if kind.self_training)
        raise UnsupportedTask(f"{method} needs single-text tasks ({supported}), not {task.type}")


def teacher_on_unlabeled(entry: ModelEntry, teacher: ModelEntry, task: Task, seed: int, lr: float,
                         config: RunConfig) -> tuple[dict, Any, Any, list[dict], Any]:
    """What self-training and distillation start from: the teacher fine-tuned on gold (this seed
    and learning rate; its result, model and tokenizer), and `entry`'s unlabeled inputs in the
    task's shape with their encoding for the teacher (None when there are none)."""
    from domainlm.evaluate.finetune import encode, finetune

    run_dir = RunLayout(config.directory)
    path, pretrained = model_location(teacher, run_dir)
    first = finetune(path, pretrained, task, seed, lr, config.evaluate, keep_model=True)
    model, tokenizer = first.pop("model"), first.pop("tokenizer")
    examples = unlabeled_examples(entry, task, run_dir, seed)
    data = encode(tokenizer, task, examples, task.max_length or config.evaluate.max_length) if examples else None
    return first, model, tokenizer, examples, data


def self_train(entry: ModelEntry, teacher: ModelEntry, task: Task, seed: int, lr: float, config: RunConfig,
               log_dir: Path | None = None) -> dict:
    """Teacher fine-tuned on gold -> pseudo-labels on unlabeled text (kept when confident) ->
    a fresh student trains one epoch on them, then fine-tunes on gold."""
    from domainlm.evaluate.finetune import finetune, predict
    from domainlm.evaluate.heads import HEADS

    check_unlabeled_fits(task, "self-training")
    first, model, tokenizer, examples, data = teacher_on_unlabeled(entry, teacher, task, seed, lr, config)
    labels, confidence = [], []
    if examples:
        labels, confidence = predict(model, data, task, examples, config.evaluate.batch_size,
                                     tokenizer.pad_token_id or 0, next(model.parameters()).device)
    key = HEADS[task.target].layout.gold
    pseudo = [x | {key: y} for x, y, c in zip(examples, labels, confidence, strict=True) if c >= entry.confidence]
    del model
    path, pretrained = model_location(teacher, RunLayout(config.directory))
    result = finetune(path, pretrained, task, seed, lr, config.evaluate, pseudo=pseudo or None, log_dir=log_dir)
    result.update(teacher_metrics=first["metrics"], unlabeled=len(examples), pseudo_labeled=len(pseudo))
    return result


def distil(entry: ModelEntry, teacher: ModelEntry, student: ModelEntry, task: Task, seed: int, lr: float,
           config: RunConfig, log_dir: Path | None = None) -> dict:
    """Task-level knowledge distillation (Hinton et al. 2015; the task-specific stage of DistilBERT
    / TinyBERT students): the teacher fine-tuned on gold (this seed and learning rate) -> its
    probabilities at `entry.temperature` on unlabeled in-domain inputs -> the student entry's model
    learns them for `entry.distill_epochs`, then fine-tunes on gold like any model. The result is
    the student's, plus `teacher`, `student` (entry names), `teacher_metrics`,
    `teacher_parameters`, `teacher_test_examples_per_second` and `unlabeled` (inputs distilled on).
    UnsupportedTask for task types unlabeled text cannot be shaped into."""
    from domainlm.evaluate.finetune import SoftTargets, finetune, soft_targets

    check_unlabeled_fits(task, "distillation")
    first, model, tokenizer, examples, data = teacher_on_unlabeled(entry, teacher, task, seed, lr, config)
    targets = []
    if examples:
        targets = soft_targets(model, data, task, examples, entry.temperature, config.evaluate.batch_size,
                               tokenizer.pad_token_id or 0, next(model.parameters()).device)
    del model
    path, pretrained = model_location(student, RunLayout(config.directory))
    soft = SoftTargets(examples, targets, entry.temperature, entry.distill_epochs)
    result = finetune(path, pretrained, task, seed, lr, config.evaluate, soft=soft, log_dir=log_dir)
    result.update(teacher=teacher.name, student=student.name, teacher_metrics=first["metrics"],
                  teacher_parameters=first["parameters"],
                  teacher_test_examples_per_second=first["test_examples_per_second"], unlabeled=len(examples))
    return result


def evaluate_one(entry: ModelEntry, task: Task, seed: int, lr: float, config: RunConfig,
                 log_dir: Path | None = None, save_to: Path | None = None) -> dict[str, Any]:
    """One (model, task, seed, learning rate): test metrics, the best dev score, test predictions;
    a neural model's per-epoch curves go to `log_dir` (TensorBoard, when installed); a fine-tuned
    bi-encoder is saved to `save_to` (retrieval)."""
    if task.ranks:
        return retrieval_one(entry, task, seed, lr, config, save_to)
    if entry.finetuning in ("none", "cross-encoder") or entry.kind == "bm25":
        applies = f"finetuning: {entry.finetuning}" if entry.kind != "bm25" else "kind bm25 (use tfidf here)"
        raise UnsupportedTask(f"{applies} applies to retrieval tasks, not {task.type}")
    if entry.kind == "tfidf":
        from domainlm.evaluate.baselines import tfidf_predict

        dev_predictions, test_predictions = tfidf_predict(task, seed)
        return {"metrics": task_metrics(task.type, task.gold("test"), test_predictions, task.labels),
                "dev_score": task_metrics(task.type, task.gold("dev"), dev_predictions, task.labels)[task.metric],
                "predictions": test_predictions}
    if entry.kind == "self-training":
        teacher = next(m for m in config.evaluate.models if m.name == entry.teacher)
        return self_train(entry, teacher, task, seed, lr, config, log_dir)
    if entry.kind == "setfit":
        from domainlm.evaluate.setfit import setfit_run

        return setfit_run(entry.name, resolve_path(entry.path), task, seed, lr, config.evaluate, entry.pair_iterations)
    if entry.kind == "distilled":
        named = {m.name: m for m in config.evaluate.models}
        return distil(entry, named[entry.teacher], named[entry.student], task, seed, lr, config, log_dir)
    from domainlm.evaluate.finetune import HEAD, finetune

    tuning = HEAD
    if entry.finetuning == "prompt":
        from domainlm.evaluate.prompt import prompt_tuning

        if task.template is None:
            supported = ", ".join(name for name, kind in TASK_TYPES.items() if kind.template)
            raise UnsupportedTask(f"prompt-based fine-tuning applies to {supported}, not {task.type}")
        tuning = prompt_tuning(config.evaluate)
    path, pretrained = model_location(entry, RunLayout(config.directory))
    return finetune(path, pretrained, task, seed, lr, config.evaluate, log_dir=log_dir, tuning=tuning)


def retrieval_one(entry: ModelEntry, task: Task, seed: int, lr: float, config: RunConfig,
                  save_to: Path | None = None) -> dict[str, Any]:
    """One run on a retrieval task: BM25 for `bm25` and `tfidf`, else the entry's encoder as a bi-encoder
    (zero-shot or fine-tuned, then saved to `save_to`) or a cross-encoder reranking BM25
    (`domainlm.evaluate.retrieval`)."""
    from domainlm.evaluate import retrieval

    if entry.kind in LEXICAL:
        return retrieval.bm25_run(task)
    if entry.kind not in ("domain", "hf", "simcse") or entry.finetuning == "prompt":
        raise UnsupportedTask(f"retrieval ranks with BM25 (kind bm25 or tfidf) or a pretrained encoder (kind domain, hf or "
                              f"simcse; finetuning head, none or cross-encoder), not {entry.kind} / {entry.finetuning}")
    try:
        import sentence_transformers  # noqa: F401 - the neural rows' library, an optional extra
    except ImportError:
        raise UnsupportedTask("retrieval with an encoder needs sentence-transformers: "
                              "pip install 'domainlm[retrieval]'") from None
    path, _ = model_location(entry, RunLayout(config.directory))
    adaptation = {}
    if entry.kind == "simcse":
        path, record = simcse_adapted(entry, path, seed, config)
        adaptation = {"adaptation": record}
    if entry.finetuning == "cross-encoder":
        return retrieval.cross_encoder_run(path, task, seed, lr, config.evaluate, entry.rerank_depth,
                                           entry.hard_negatives or 4) | adaptation
    fine_tune = entry.finetuning == "head"
    return retrieval.bi_encoder_run(path, task, seed, lr, config.evaluate, fine_tune, entry.hard_negatives,
                                    save_to if fine_tune else None) | adaptation


def simcse_adapted(entry: ModelEntry, path: Path, seed: int, config: RunConfig) -> tuple[Path, dict]:
    """The encoder at `path` adapted by unsupervised SimCSE on the entry's unlabeled text, and the
    adaptation's record (texts, steps, mean loss, seconds): once per (encoder, unlabeled text,
    number of texts, batch size) and seed, then reused by every entry, task and learning rate
    that asks for the same."""
    from domainlm.evaluate.retrieval import simcse_adapt

    run_dir = RunLayout(config.directory)
    key = fingerprint([str(path), entry.unlabeled, entry.max_unlabeled, config.evaluate.batch_size])[:12]
    target, record = run_dir.adapted_encoder(key, seed), run_dir.adaptation_record(key, seed)
    if not target.exists():
        started = time.time()
        limit = 20 * entry.max_unlabeled
        texts = run_dir.corpus_texts() if entry.unlabeled == "corpus" else read_lines(entry.unlabeled, limit)
        pool = [t for _, t in zip(range(limit), texts, strict=False)]
        chosen = random.Random(seed).sample(pool, min(entry.max_unlabeled, len(pool)))
        found = simcse_adapt(path, chosen, seed, config.evaluate, target)
        atomic_write_json(record, {"method": "simcse", "texts": len(chosen), **found,
                                   "seconds": round(time.time() - started, 1)})
    return target, read_json(record) if record.exists() else {}


def task_distances(config: RunConfig, tasks: list[Task]) -> dict[str, Any]:
    """Each task's distance from general text, measured before any training."""
    from domainlm.evaluate.distance import domain_distance
    from domainlm.vocabulary import read_tokenizer

    name = config.evaluate.general_tokenizer or config.tokenizer.reference
    if not name:
        return {"note": "no general tokenizer (evaluate.general_tokenizer or tokenizer.reference)"}
    try:
        tokenizer = read_tokenizer(name)
    except FileNotFoundError as err:
        return {"note": f"general tokenizer unavailable: {err}"}
    general = read_lines(config.evaluate.general_corpus, 20_000) if config.evaluate.general_corpus else None
    return {"general_tokenizer": name, "general_corpus": config.evaluate.general_corpus,
            "tasks": {t.name: domain_distance(t.texts(), tokenizer, general) for t in tasks}}


# ------------------------------------------------------------------------------------ many runs
@dataclass(frozen=True)
class Job:
    """One fine-tuning run to do: a model on a task (or on a learning curve's sample of it, `point`)
    at one learning rate and seed."""

    entry: ModelEntry
    task: Task
    lr: float
    seed: int
    point: tuple[int, int] | None = None
    """A learning-curve run's (size, subsample seed); None for a run on the full training split."""

    @property
    def key(self) -> tuple:
        return self.entry.name, self.task.name, self.lr, self.seed, self.point

    def target(self, run_dir: RunLayout) -> Path:
        """Where its result is saved."""
        if self.point is None:
            return run_dir.run_file(self.entry.name, self.task.name, self.lr, self.seed)
        return run_dir.curve_run_file(self.entry.name, self.task.name, *self.point, self.lr, self.seed)

    def log_dir(self, run_dir: RunLayout) -> Path:
        """Where its per-epoch curves go (TensorBoard)."""
        if self.point is None:
            return run_dir.curves(self.entry.name, self.task.name, self.lr, self.seed)
        return run_dir.curve_curves(self.entry.name, self.task.name, *self.point, self.lr, self.seed)


def with_min_steps(config: RunConfig, job: Job) -> RunConfig:
    """`config` for the job: a learning-curve run on a sample too small for
    `learning_curve.min_steps` optimizer steps in `evaluate.epochs` epochs gets the epochs that
    give them, and its patience grows by the same factor."""
    evaluate, curve = config.evaluate, config.evaluate.learning_curve
    if job.point is None or curve is None or curve.min_steps is None:
        return config
    steps_per_epoch = -(-len(job.task.train) // evaluate.batch_size)
    epochs = max(evaluate.epochs, -(-curve.min_steps // max(steps_per_epoch, 1)))
    if epochs == evaluate.epochs:
        return config
    patience = evaluate.patience and -(-evaluate.patience * epochs // evaluate.epochs)
    return config.model_copy(update={"evaluate": evaluate.model_copy(update={"epochs": epochs, "patience": patience})})


def run_job(job: Job, config: RunConfig) -> tuple:
    """One run, saved to `job.target`; ("done" | "unsupported" | "failed", reason, traceback)."""
    config = with_min_steps(config, job)
    if config.resources.evaluate_threads:
        import torch

        torch.set_num_threads(config.resources.evaluate_threads)
    run_dir = RunLayout(config.directory)
    try:
        save_to = run_dir.encoder_dir(job.entry.name, job.task.name, job.lr, job.seed) \
            if job.point is None and job.task.ranks else None
        result = evaluate_one(job.entry, job.task, job.seed, job.lr, config, job.log_dir(run_dir), save_to)
    except UnsupportedTask as err:
        return "unsupported", str(err), ""
    except Exception as err:  # noqa: BLE001 - one broken model must not stop the others
        return "failed", f"{type(err).__name__}: {err}", traceback.format_exc(limit=3)
    result.update(model=job.entry.name, kind=job.entry.kind, task=job.task.name, seed=job.seed)
    if job.point is not None:
        result.update(size=job.point[0], subsample_seed=job.point[1], train_examples=len(job.task.train),
                      dev_examples=len(job.task.dev))
    atomic_write_json(job.target(run_dir), result)
    return "done", "", ""


def compute(jobs: list[Job], config: RunConfig, run_dir: RunLayout) -> dict[tuple, tuple]:
    """Run the jobs whose result file is missing: in this process (a model that fails is not tried
    on further tasks), or on `resources.evaluate_workers` processes at once (small models leave a
    GPU, or a many-core CPU, mostly idle one run at a time). Returns each run's outcome by `Job.key`."""
    todo = [job for job in jobs if not job.target(run_dir).exists()]
    outcomes: dict[tuple, tuple] = {}
    with progress_bar(total=len(todo), desc="evaluate", unit=" runs") as progress:
        if config.resources.evaluate_workers > 1 and len(todo) > 1:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            with ProcessPoolExecutor(config.resources.evaluate_workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(run_job, job, config): job for job in todo}
                for future in futures:
                    outcomes[futures[future].key] = future.result()
                    progress.update()
        else:
            broken: set = set()
            for job in todo:
                if job.entry.name not in broken and (job.entry.name, job.task.name) not in broken:
                    outcome = outcomes[job.key] = run_job(job, config)
                    if outcome[0] != "done" and job.point is None:  # a curve's tiny sample says nothing of the model
                        broken.add(job.entry.name if outcome[0] == "failed" else (job.entry.name, job.task.name))
                progress.update()  # after the run: the bar counts finished runs, and its ETA follows
    for (model, task, *_), (status, reason, _) in outcomes.items():
        if status == "failed":
            log.warning("evaluate: %s failed on %s: %s", model, task, reason)
    return outcomes


def available_models(config: RunConfig, run_dir: RunLayout) -> tuple[list[ModelEntry], list[dict], list[dict]]:
    """(models to run, failures: arms without a model, skipped: optional models not installed)."""
    models, failures, skipped = [], [], []
    for entry in config.evaluate.models:
        if entry.arm and not model_location(entry, run_dir)[0].exists():
            failures.append({"model": entry.name, "task": "", "error": run_dir.arm_failure(entry.arm)})
            log.warning("evaluate: %s: %s", entry.name, failures[-1]["error"])
            continue
        try:
            if entry.kind in ("hf", "setfit") and not resolve_path(entry.path).exists():
                raise FileNotFoundError(f"model directory not found: {entry.path}")
            models.append(entry)
        except FileNotFoundError as err:
            skipped.append({"model": entry.name, "reason": str(err)})
            log.warning("evaluate: skipping %s: %s", entry.name, err)
    return models, failures, skipped


def collect(jobs: list[Job], outcomes: dict[tuple, tuple], run_dir: RunLayout, failures: list[dict],
            skipped: list[dict]) -> tuple[dict, dict]:
    """The saved runs per (model, task) — (model, task, size, subsample seed) for a learning curve's
    — and learning rate, and what broke: a model name (failed), or (model, task) for a kind that
    does not apply, -> reason (also appended to `failures` / `skipped`)."""
    broken: dict = {}
    done: dict[tuple, dict[float, list[dict]]] = {}
    for job in jobs:
        entry, task, lr, target = job.entry, job.task, job.lr, job.target(run_dir)
        if target.exists():
            done.setdefault((entry.name, task.name, *(job.point or ())), {}).setdefault(lr, []).append(read_json(target))
            continue
        status, reason, trace = outcomes.get(job.key, ("not run", "", ""))
        if status == "unsupported" and (entry.name, task.name) not in broken:
            broken[(entry.name, task.name)] = reason
            skipped.append({"model": entry.name, "task": task.name, "reason": reason})
        elif status == "failed" and entry.name not in broken:
            broken[entry.name] = reason
            failures.append({"model": entry.name, "task": task.name, "error": reason, "traceback": trace})
    return done, broken


def _distilled_side(runs: list[dict], role: str, metric: str) -> dict:
    """The student's or the teacher's (`role`) name, mean test score and speed over the seeds, and size."""
    prefix = "teacher_" if role == "teacher" else ""
    return {"name": runs[0][role], "score": statistics.mean(r[prefix + "metrics"][metric] for r in runs),
            "parameters": runs[0][prefix + "parameters"],
            "test_examples_per_second": statistics.mean(r[prefix + "test_examples_per_second"] for r in runs)}


def distillation_summary(done: dict, selection: dict, tasks: list[Task]) -> list[dict]:
    """Per distilled (model, task), at its selected learning rate: the student's and the teacher's
    test score (the task's headline metric) and test examples per second, means over the seeds,
    and parameter counts."""
    metric = {t.name: t.metric for t in tasks}
    summary = []
    for model, chosen in selection.items():
        for task, pick in chosen.items():
            runs = done[(model, task)][pick["lr"]]
            if runs[0].get("kind") == "distilled":
                summary.append({"model": model, "task": task, "metric": metric[task], "lr": pick["lr"],
                                "seeds": len(runs), "unlabeled": runs[0]["unlabeled"],
                                "student": _distilled_side(runs, "student", metric[task]),
                                "teacher": _distilled_side(runs, "teacher", metric[task])})
    return summary


def curve_results(jobs: list[Job], outcomes: dict[tuple, tuple], run_dir: RunLayout,
                  failures: list[dict]) -> tuple[list[dict], list[dict]]:
    """The learning curve's result rows (full-data rows plus `size`, `subsample_seed`,
    `train_examples`) and its selection: per (model, task, size, subsample seed) the learning rate
    with the best mean dev score on that sample's own dev (`select_runs`). A point with a run that
    failed is left out, and per (model, task) how many were is appended to `failures`; the
    full-data results are left alone (a tiny sample can break a run that the full split does not)."""
    runs: dict[tuple, dict[float, list[dict]]] = {}
    failed: dict[tuple, dict[tuple, str]] = {}  # (model, task) -> point -> reason
    for job in jobs:
        point, target = (job.entry.name, job.task.name, *job.point), job.target(run_dir)
        if target.exists():
            runs.setdefault(point, {}).setdefault(job.lr, []).append(read_json(target))
        else:  # a failed run, or one not run: its model failed or does not apply (already recorded)
            status, reason, _ = outcomes.get(job.key, ("not run", "", ""))
            failed.setdefault(point[:2], {}).setdefault(point[2:], reason if status == "failed" else "")
    for (model, task), points in failed.items():
        if reasons := {point: reason for point, reason in points.items() if reason}:
            (size, sample), reason = next(iter(reasons.items()))
            failures.append({"model": model, "task": task, "error": f"learning curve: {len(reasons)} "
                             f"sample{'s' * (len(reasons) != 1)} left out, a run failed (first: size {size}, subsample seed {sample}: {reason})"})
    rows, selection = [], []
    for (model, task, size, sample), found in runs.items():
        if (size, sample) in failed.get((model, task), {}):
            continue
        point_rows, chosen = select_runs({(model, task): found})
        train = next(iter(found.values()))[0]["train_examples"]
        rows += [r | {"size": size, "subsample_seed": sample, "train_examples": train} for r in point_rows]
        selection.append({"model": model, "task": task, "size": size, "subsample_seed": sample}
                         | chosen[model][task])
    return rows, selection


def keep_best_encoder(done: dict, selection: dict, run_dir: RunLayout) -> None:
    """Of the fine-tuned bi-encoders saved by retrieval runs, the one with the best dev score (at
    its model's chosen learning rate) becomes `run_dir.embedding_model`, with a record of its run;
    the others are removed (this stage wrote them)."""
    saved = run_dir.root / "evaluate" / "encoders"
    if not saved.exists():
        return
    candidates = [(r["dev_score"], model, task, lr, r["seed"], r["metrics"])
                  for (model, task), runs in done.items() if task in (selection.get(model) or {})
                  for lr, results in runs.items() if lr == selection[model][task]["lr"] for r in results
                  if run_dir.encoder_dir(model, task, lr, r["seed"]).exists()]
    if candidates:
        dev, model, task, lr, seed, metrics = max(candidates, key=lambda c: c[0])
        target = run_dir.embedding_model
        shutil.rmtree(target, ignore_errors=True)
        run_dir.encoder_dir(model, task, lr, seed).rename(target)
        atomic_write_json(target.with_suffix(".json"), {"model": model, "task": task, "lr": lr, "seed": seed,
                                                        "dev_score": dev, "test_metrics": metrics})
    shutil.rmtree(saved)


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    run_dir = RunLayout(config.directory)
    tasks = [load_task(t, seed=config.seed) for t in config.tasks]
    atomic_write_json(run_dir.task_summaries, [
        {"name": t.name, "type": t.type, "metric": t.metric, "labels": t.labels, "notes": t.notes,
         "sizes": {"train": len(t.train), "dev": len(t.dev), "test": len(t.test)},
         "unseen_labels": t.unseen_labels, "invalid_utf8": t.invalid_utf8} for t in tasks])
    for t in tasks:
        atomic_write_json(run_dir.gold(t.name), t.gold("test"))
    if not run_dir.distance.exists():
        atomic_write_json(run_dir.distance, task_distances(config, tasks))
    models, failures, skipped = available_models(config, run_dir)
    grid = config.evaluate.learning_rates
    jobs = [Job(m, t, lr, s) for m in models for t in tasks for lr in m.rates(grid)
            for s in config.evaluate.seeds]
    curve = config.evaluate.learning_curve
    samples = {t.name: [x for seed in curve.seeds for x in curve_samples(t, curve.sizes, seed)]
               for t in tasks} if curve else {}
    curve_jobs = [Job(job.entry, subsampled(job.task, x), job.lr, job.seed, (x.size, x.seed))
                  for job in jobs for x in samples.get(job.task.name, [])]
    outcomes = compute(jobs + curve_jobs, config, run_dir)  # the full-data runs first
    done, broken = collect(jobs, outcomes, run_dir, failures, skipped)
    rows, selection = select_runs({key: runs for key, runs in done.items() if key[0] not in broken})
    atomic_write_json(run_dir.selection, selection)
    if curve:
        curve_rows, curve_selection = curve_results(curve_jobs, outcomes, run_dir, failures)
        rows += curve_rows
        atomic_write_json(run_dir.learning_curve, {
            "tasks": {t.name: {"per_class": per_class(t.target), "unit": size_unit(t.target), "train": len(t.train), "dev": len(t.dev),
                               "samples": [x.record() for x in samples[t.name]]} for t in tasks},
            "selection": curve_selection})
    if config.evaluate.active_learning:
        from domainlm.evaluate.active import active_learning

        rows += active_learning(config, models, tasks, selection, broken, skipped, failures)
    keep_best_encoder(done, selection, run_dir)
    atomic_write_jsonl(run_dir.results, rows)
    atomic_write_json(run_dir.failures, {"failed": failures, "skipped": skipped})
    if any(m.kind == "distilled" for m in models):
        distilled = distillation_summary(done, selection, tasks)
        atomic_write_json(run_dir.distillation, distilled)
        for d in distilled:
            student, teacher = d["student"], d["teacher"]
            log.info("evaluate: %s on %s: student %s %.2f (%d parameters, %.0f examples/s), teacher %s %.2f (%d, %.0f/s)",
                     d["model"], d["task"], student["name"], 100 * student["score"], student["parameters"],
                     student["test_examples_per_second"], teacher["name"], 100 * teacher["score"],
                     teacher["parameters"], teacher["test_examples_per_second"])
    full_data = [r for r in rows if "size" not in r and "round" not in r]
    for s in summarize(full_data, [{"name": t.name, "metric": t.metric} for t in tasks]):
        log.info("evaluate: %-24s %-20s %s %6.2f ± %5.2f (n=%d)", s["task"], s["model"], s["metric"],
                 100 * s["mean"], 100 * s["std"], s["n"])
    return {"rows": len(rows), "failed": len(failures), "skipped": len(skipped)}

"""Pool-based active learning (Settles 2009, "Active Learning Literature Survey"; for transformer
text classifiers, Schröder & Niekler 2020, "A Survey of Active Learning for Text Classification
using Deep Neural Networks"; Ein-Dor et al. 2020 for BERT).

Per model, task, strategy and AL seed: `start` training examples are drawn at random and labelled,
the rest of the training split is the unlabelled pool. Each round fine-tunes the model afresh on
the labelled set (the ordinary `finetune` run: same epochs, early stopping on the full dev split,
the learning rate selected for the model on the full data), tests it, scores the pool and moves
the `batch` highest-scoring examples into the labelled set; `rounds` queries, so `rounds + 1`
tested models per run. Scores (higher: queried first):

- entropy: -sum_c p_c log p_c of the predicted distribution (Settles 2009, 3.1);
- margin: 1 - (p_first - p_second), the smallest gap between the two most probable classes
  (Scheffer et al. 2001; "breaking ties" in small-text);
- random: a seeded uniform draw, the baseline every strategy must beat.

Token tasks score a sentence by the mean of its words' scores (each word's distribution over the
tags at its first piece), as Shen et al. 2017 normalise by length. Multiple choice uses the
distribution over the choices. Multi-label and regression have no single predictive distribution
and are skipped with a reason.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import numpy as np

from domainlm.config import ModelEntry, RunConfig
from domainlm.errors import UnsupportedTask
from domainlm.evaluate.heads import HEADS
from domainlm.io import atomic_write_json, read_json
from domainlm.layout import RunLayout
from domainlm.tasks.load import Task

NEURAL = ("domain", "random-init", "hf")  # the kinds `finetune` trains
log = logging.getLogger(__name__)


def entropy_scores(rows: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) of each row of probabilities: (N, C) -> (N,)."""
    p = np.clip(rows, 1e-12, 1.0)
    return -(rows * np.log(p)).sum(-1)


def margin_scores(rows: np.ndarray) -> np.ndarray:
    """1 - (largest - second largest probability) of each row: (N, C) -> (N,); 0 when one class has
    all the probability, 1 at a tie."""
    top = np.sort(rows, axis=-1)[:, ::-1]
    second = top[:, 1] if rows.shape[1] > 1 else np.zeros(len(rows))
    return 1.0 - (top[:, 0] - second)


SCORES = {"entropy": entropy_scores, "margin": margin_scores}


def uncertainty(probabilities: list, strategy: str, rng: random.Random, per_word: bool = False) -> list[float]:
    """One score per pool example, higher = queried first. `probabilities`: per example a list over
    the classes (or choices), or with `per_word` (token tasks) a list of such rows, one per word,
    whose scores are averaged (a sentence without words scores 0). random: `rng.random()` per example."""
    if strategy == "random":
        return [rng.random() for _ in probabilities]
    score = SCORES[strategy]
    if not per_word:
        return score(np.asarray(probabilities, dtype=float).reshape(len(probabilities), -1)).tolist()
    return [float(score(np.asarray(p, dtype=float)).mean()) if len(p) else 0.0 for p in probabilities]


def query(scores: list[float], batch: int) -> list[int]:
    """Positions of the `batch` highest scores, highest first (ties: the earlier position)."""
    return sorted(range(len(scores)), key=lambda k: (-scores[k], k))[:batch]


def check_supported(entry: ModelEntry, task: Task) -> None:
    if task.ranks or HEADS[task.target].uncertainty is None:  # retrieval has no head
        raise UnsupportedTask(f"active learning needs one predictive distribution per example; {task.type} "
                              f"(task '{task.name}') has none")
    if entry.kind not in NEURAL:
        raise UnsupportedTask(f"active learning fine-tunes domain, random-init and hf models, not {entry.kind}")


def active_learning_run(entry: ModelEntry, task: Task, strategy: str, seed: int, lr: float,
                        config: RunConfig) -> dict:
    """One AL run (see the module docstring). Returns {"strategy", "seed", "lr", "rounds": per
    round {"round", "labels" (labelled examples), "queried" (training-split indices added after
    this round's test, in query order), "metrics", "dev_score", "predictions"}, "labelled" (the
    training-split indices in the order they were labelled)}."""
    from domainlm.evaluate import model_location
    from domainlm.evaluate.finetune import encode, finetune, soft_targets

    check_supported(entry, task)
    settings = config.evaluate.active_learning
    rng = random.Random(seed)
    labelled = rng.sample(range(len(task.train)), min(settings.start, len(task.train)))
    path, pretrained = model_location(entry, RunLayout(config.directory))
    max_length = task.max_length or config.evaluate.max_length
    rounds = []
    for number in range(settings.rounds + 1):
        chosen = set(labelled)
        pool = [i for i in range(len(task.train)) if i not in chosen]
        last = number == settings.rounds or not pool
        part = dataclasses.replace(task, train=[task.train[i] for i in labelled])  # classes (head) as they were
        result = finetune(path, pretrained, part, seed, lr, config.evaluate, keep_model=not last)
        queried = []
        if not last:
            model, tokenizer = result.pop("model"), result.pop("tokenizer")
            if strategy == "random":
                scores = uncertainty(pool, strategy, rng)
            else:
                examples = [task.train[i] for i in pool]
                data = encode(tokenizer, task, examples, max_length)
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                probabilities = soft_targets(model, data, task, examples, 1.0, config.evaluate.batch_size, pad,
                                             next(model.parameters()).device)
                scores = uncertainty(probabilities, strategy, rng, per_word=HEADS[task.target].uncertainty == "words")
            del model
            queried = [pool[k] for k in query(scores, settings.batch)]
        rounds.append({"round": number, "labels": len(labelled), "queried": queried, "metrics": result["metrics"],
                       "dev_score": result["dev_score"], "predictions": result["predictions"]})
        if last:
            break
        labelled += queried
    return {"strategy": strategy, "seed": seed, "lr": lr, "rounds": rounds, "labelled": labelled}


def active_learning(config: RunConfig, models: list[ModelEntry], tasks: list[Task], selection: dict,
                    broken: dict, skipped: list[dict], failures: list[dict]) -> list[dict]:
    """Every AL run of the recipe not yet saved (`RunLayout.active_run_file`), one at a time in this
    process, at the learning rate `selection` chose for the model and task on the full data (the
    grid's first without one); the result rows: per round and metric {"model", "task", "seed",
    "metric", "value", "strategy", "round", "labels"}. A model that failed on the full data, or a
    (model, task) that does not apply there, is left out; an AL run that fails is appended to
    `failures`, one that cannot apply to `skipped`."""
    settings = config.evaluate.active_learning
    run_dir = RunLayout(config.directory)
    wanted = settings.models or [m.name for m in models if m.kind in NEURAL]
    rows = []
    for entry in (m for m in models if m.name in wanted and m.name not in broken):
        for task in tasks:
            if (entry.name, task.name) in broken:
                continue
            try:
                check_supported(entry, task)
            except UnsupportedTask as err:
                skipped.append({"model": entry.name, "task": task.name, "reason": str(err)})
                continue
            lr = selection.get(entry.name, {}).get(task.name, {}).get("lr", config.evaluate.learning_rates[0])
            for strategy in settings.strategies:
                for seed in settings.seeds:
                    target = run_dir.active_run_file(entry.name, task.name, strategy, seed)
                    if not target.exists():
                        try:
                            atomic_write_json(target, active_learning_run(entry, task, strategy, seed, lr, config))
                        except Exception as err:  # noqa: BLE001 - one broken run must not stop the others
                            failures.append({"model": entry.name, "task": task.name,
                                             "error": f"active learning ({strategy}, seed {seed}): "
                                                      f"{type(err).__name__}: {err}"})
                            log.warning("evaluate: active learning of %s on %s failed: %s", entry.name, task.name, err)
                            continue
                    rows += active_rows(entry.name, task.name, read_json(target))
    return rows


def active_rows(model: str, task: str, run: dict) -> list[dict]:
    """A saved AL run's result rows: one per round and metric."""
    return [{"model": model, "task": task, "seed": run["seed"], "metric": metric, "value": value,
             "strategy": run["strategy"], "round": r["round"], "labels": r["labels"]}
            for r in run["rounds"] for metric, value in r["metrics"].items()]

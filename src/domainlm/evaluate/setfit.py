"""SetFit (Tunstall et al. 2022, "Efficient Few-Shot Learning Without Prompts"): a sentence encoder
fine-tuned contrastively on pairs of the labelled examples, then a logistic regression on its
embeddings.

Step 1 (`contrastive_pairs`, `fit_encoder`): for `pair_iterations` rounds, every training example
is paired once with an example of its own class (target cosine similarity 1) and once with an
example of another class (target 0); the encoder (mean pooling, or the [CLS] vector when its
sentence-transformers `1_Pooling/config.json` says so) learns one epoch over the pairs with
SetFit's default CosineSimilarityLoss: the squared error between the pair's cosine similarity and
its target. Step 2: scikit-learn's logistic regression on the fine-tuned embeddings of the
training examples predicts the classes.

Written here with torch, transformers and scikit-learn rather than through the `setfit` package:
its trainer needs `accelerate` and `evaluate` (and their HTTP stack) beside the pinned
transformers / sentence-transformers, and the two steps are short. The run's result has the keys
of `finetune.finetune`'s (metrics, dev score, test predictions), plus the test probabilities.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from domainlm.config import EvaluateConfig
from domainlm.errors import ModelError, UnsupportedTask
from domainlm.evaluate.heads import HEADS
from domainlm.optim import lr_schedule, parameter_groups, seed_everything
from domainlm.tasks.load import Task
from domainlm.tasks.metrics import task_metrics
from domainlm.tasks.types import TASK_TYPES

SUPPORTED = tuple(name for name, kind in TASK_TYPES.items()  # one label per example
                  if not kind.ranks and HEADS[kind.target].problem_type == "single_label_classification")


def check_supported(model: str, task: Task) -> None:
    """UnsupportedTask naming the model, the task and the types SetFit runs on (one class per example)."""
    if task.type not in SUPPORTED:
        raise UnsupportedTask(f"setfit model '{model}' cannot run task '{task.name}' of type {task.type}: it "
                              f"predicts one class per example ({', '.join(SUPPORTED)})")


def contrastive_pairs(labels: list[str], iterations: int, seed: int) -> list[tuple[int, int, float]]:
    """SetFit's pairs: per iteration, each example i with one other example of its class (target
    1.0) and one example of another class (target 0.0), drawn with `seed`. Returns (i, j, target)
    in the order drawn: 2 x iterations x len(labels) pairs, fewer when a class has one example (no
    positive for it) or there is only one class (no negatives)."""
    rng = random.Random(seed)
    members: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    place = {i: k for same in members.values() for k, i in enumerate(same)}  # i's position in its class
    pairs = []
    for _ in range(iterations):
        for i, label in enumerate(labels):
            same = members[label]
            if len(same) > 1:
                k = rng.randrange(len(same) - 1)
                pairs.append((i, same[k if k < place[i] else k + 1], 1.0))  # any of its class but itself
            if len(same) < len(labels):
                j = rng.randrange(len(labels))
                while labels[j] == label:  # rejection: few tries unless one class is nearly everything
                    j = rng.randrange(len(labels))
                pairs.append((i, j, 0.0))
    return pairs


def pooling_mode(path: Path) -> str:
    """"cls" when a sentence-transformers directory pools with the [CLS] vector, else "mean"."""
    config = Path(path) / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def _inputs(tokenizer, examples: list[dict], max_length: int, device) -> dict[str, torch.Tensor]:
    firsts = [x["text"] for x in examples]
    seconds = [x["text_pair"] for x in examples] if "text_pair" in examples[0] else None
    batch = tokenizer(firsts, seconds, truncation="longest_first" if seconds else True, max_length=max_length,
                      padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def embed(encoder, tokenizer, examples: list[dict], max_length: int, pooling: str, device) -> torch.Tensor:
    """Sentence embeddings of `examples` (their text, or text and text_pair as one input): (N, hidden)."""
    inputs = _inputs(tokenizer, examples, max_length, device)
    hidden = encoder(**inputs).last_hidden_state  # (N, T, hidden)
    if pooling == "cls":
        return hidden[:, 0]
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def embed_all(encoder, tokenizer, examples: list[dict], max_length: int, pooling: str, device,
              batch_size: int) -> np.ndarray:
    """`embed` in batches, without gradients: (N, hidden) float32 on the CPU."""
    encoder.eval()
    parts = [embed(encoder, tokenizer, examples[i : i + batch_size], max_length, pooling, device).float().cpu()
             for i in range(0, len(examples), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, encoder.config.hidden_size), np.float32)


def fit_encoder(encoder, tokenizer, examples: list[dict], pairs: list[tuple[int, int, float]], lr: float,
                config: EvaluateConfig, max_length: int, pooling: str, device, seed: int) -> float:
    """One epoch over the shuffled pairs, `config.batch_size` pairs per step: AdamW with linear
    warmup and decay, loss = mean (cos(u, v) - target)^2 (CosineSimilarityLoss). The mean loss."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    steps = -(-len(order) // config.batch_size)
    optimizer = torch.optim.AdamW(parameter_groups(encoder, config.weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule("linear", int(config.warmup_fraction * steps), steps))
    encoder.train()
    total = torch.zeros((), device=device)
    for start in range(0, len(order), config.batch_size):
        chunk = order[start : start + config.batch_size]
        u = embed(encoder, tokenizer, [examples[i] for i, _, _ in chunk], max_length, pooling, device)  # (B, H)
        v = embed(encoder, tokenizer, [examples[j] for _, j, _ in chunk], max_length, pooling, device)
        target = torch.tensor([t for _, _, t in chunk], device=device)
        loss = torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(u, v), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
    return float(total) / max(steps, 1)


def fit_head(features: np.ndarray, labels: list[str], classes: list[str], seed: int):
    """A function (N, hidden) -> (N, len(classes)) probabilities: logistic regression on the
    embeddings (SetFit's default head); with one class in training, that class with probability 1."""
    from sklearn.linear_model import LogisticRegression

    seen = sorted(set(labels))
    if len(seen) == 1:
        column = classes.index(seen[0])
        return lambda x: np.eye(len(classes))[np.full(len(x), column)]
    head = LogisticRegression(max_iter=1000, random_state=seed).fit(features, labels)
    columns = [classes.index(c) for c in head.classes_]  # scikit-learn's class order -> the task's

    def probabilities(x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), len(classes)))
        out[:, columns] = head.predict_proba(x)
        return out

    return probabilities


def load_encoder(path: Path, task: Task):
    """(encoder without a head, tokenizer with the task's extra tokens) from a transformers or
    sentence-transformers directory; ModelError naming the directory when either will not load."""
    from transformers import AutoModel

    from domainlm.evaluate.finetune import task_tokenizer

    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    tokenizer = task_tokenizer(path, task)
    try:
        encoder = AutoModel.from_pretrained(str(path), use_safetensors=True)  # never pickles
    except Exception as err:  # noqa: BLE001 - whatever breaks loading, the message names the directory
        raise ModelError(f"{path}: weights cannot be loaded ({type(err).__name__}: {str(err)[:300]})") from None
    if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:
        encoder.resize_token_embeddings(len(tokenizer))  # relation markers added to the tokenizer
    return encoder, tokenizer


def setfit_run(name: str, path: Path, task: Task, seed: int, lr: float, config: EvaluateConfig,
               pair_iterations: int = 20) -> dict:
    """One SetFit run (model entry `name` at `path`, one seed and learning rate): the encoder
    fine-tuned on `contrastive_pairs` of the training split, logistic regression on its
    embeddings; dev scored once (`dev_score`, for the learning-rate grid), test predicted.
    Returns `finetune`'s keys plus `probabilities` (test, one row over `task.labels` per example),
    `pairs` and `pair_loss`. UnsupportedTask for tasks without one class per example."""
    check_supported(name, task)
    from domainlm.evaluate.finetune import quiet_transformers

    quiet_transformers()
    started = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    max_length = task.max_length or config.max_length
    seed_everything(seed)
    encoder, tokenizer = load_encoder(path, task)
    encoder.to(device)
    pooling = pooling_mode(path)
    labels = [x["label"] for x in task.train]
    pairs = contrastive_pairs(labels, pair_iterations, seed)
    pair_loss = fit_encoder(encoder, tokenizer, task.train, pairs, lr, config, max_length, pooling, device, seed)
    features = {split: embed_all(encoder, tokenizer, getattr(task, split), max_length, pooling, device,
                                 2 * config.batch_size) for split in ("train", "dev")}
    head = fit_head(features["train"], labels, task.labels, seed)
    dev = [task.labels[k] for k in head(features["dev"]).argmax(1)]
    dev_score = task_metrics(task.type, task.gold("dev"), dev, task.labels)[task.metric]
    tested = time.perf_counter()
    probabilities = head(embed_all(encoder, tokenizer, task.test, max_length, pooling, device, 2 * config.batch_size))
    tested = time.perf_counter() - tested
    predictions = [task.labels[k] for k in probabilities.argmax(1)]
    return {
        "metrics": task_metrics(task.type, task.gold("test"), predictions, task.labels),
        "dev_score": dev_score, "dev_scores": [dev_score], "best_epoch": 1, "lr": lr,
        "predictions": predictions, "probabilities": np.round(probabilities, 6).tolist(),
        "pairs": len(pairs), "pair_loss": pair_loss, "pooling": pooling,
        "seconds": round(time.time() - started, 2), "parameters": sum(p.numel() for p in encoder.parameters()),
        "test_examples_per_second": round(len(task.test) / max(tested, 1e-9), 1),
    }

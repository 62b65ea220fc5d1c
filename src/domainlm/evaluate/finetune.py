"""One fine-tuning loop for every neural model and task type (the heads differ, the loop does not).

Each (model, task, seed) run: load the encoder (pretrained weights, or the same architecture
randomly initialised) with a task head, train for `epochs` with AdamW and linear warmup/decay,
score the dev split after every epoch, and test the epoch that scored best on dev.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from domainlm.config import EvaluateConfig
from domainlm.evaluate.metrics import task_metrics
from domainlm.evaluate.tasks import Task
from domainlm.pretrain.trainer import lr_schedule, parameter_groups


@dataclass
class Encoded:
    input_ids: list[list[int]]
    labels: list  # int per example, or list[int] per token (-100 where not scored)
    word_index: list[list[int | None]] | None  # token -> word, for token classification
    truncated: int  # examples that lost text to max_length


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_model(path: Path, task: Task, pretrained: bool):
    """A `transformers` model with the task's head. `pretrained=False` keeps only the architecture
    (config) and initialises every weight afresh from the current torch seed."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if task.type == "token-classification" else AutoModelForSequenceClassification
    labels = {"num_labels": len(task.labels), "id2label": dict(enumerate(task.labels)),
              "label2id": {label: i for i, label in enumerate(task.labels)}}
    if pretrained:
        return auto.from_pretrained(str(path), **labels)
    return auto.from_config(AutoConfig.from_pretrained(str(path), **labels))


def encode(tokenizer, task: Task, examples: list, max_length: int) -> Encoded:
    label_id = {label: i for i, label in enumerate(task.labels)}
    if task.type == "classification":
        full = tokenizer([text for text, _ in examples], truncation=False)["input_ids"]
        ids = [x[: max_length - 1] + [x[-1]] if len(x) > max_length else x for x in full]  # keep [SEP]
        labels = [label_id.get(label, -100) for _, label in examples]
        return Encoded(ids, labels, None, sum(len(x) > max_length for x in full))
    batch = tokenizer([words for words, _ in examples], is_split_into_words=True, truncation=True,
                      max_length=max_length)
    ids, labels, word_index, truncated = [], [], [], 0
    for i, (words, tags) in enumerate(examples):
        words_of_tokens = batch.word_ids(i)
        previous, token_labels = None, []
        for w in words_of_tokens:
            # Score each word once, on its first sub-word token.
            token_labels.append(label_id.get(tags[w], label_id["O"]) if w is not None and w != previous else -100)
            previous = w
        seen = {w for w in words_of_tokens if w is not None}
        truncated += len(seen) < len(words)
        ids.append(batch["input_ids"][i])
        labels.append(token_labels)
        word_index.append(words_of_tokens)
    return Encoded(ids, labels, word_index, truncated)


def batches(lengths: list[int], batch_size: int, rng: random.Random | None = None) -> list[list[int]]:
    """Index batches of similar length (little padding). With `rng`: shuffle, sort within pools of
    16 batches, then shuffle the batches; without: simply in order of length."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    pool = batch_size * 16
    out = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def collate(data: Encoded, indices: list[int], pad_id: int, token_task: bool) -> dict[str, torch.Tensor]:
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(indices), width), dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long) if token_task else torch.zeros(len(indices), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        attention[row, :n] = 1
        if token_task:
            labels[row, :n] = torch.tensor(data.labels[i])
        else:
            labels[row] = data.labels[i]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


@torch.no_grad()
def predict(model, data: Encoded, task: Task, examples: list, batch_size: int, pad_id: int, device) -> list:
    """Predicted labels (classification) or tag sequences, one per example, in input order."""
    model.eval()
    token_task = task.type == "token-classification"
    out: list = [None] * len(examples)
    for indices in batches([len(x) for x in data.input_ids], batch_size * 2):
        batch = collate(data, indices, pad_id, token_task)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        best = logits.argmax(-1).cpu()
        for row, i in enumerate(indices):
            if not token_task:
                out[i] = task.labels[int(best[row])]
                continue
            words = examples[i][0]
            tags = ["O"] * len(words)  # words cut off by max_length are predicted O
            previous = None
            for position, w in enumerate(data.word_index[i]):
                if w is not None and w != previous:
                    tags[w] = task.labels[int(best[row, position])]
                previous = w
            out[i] = tags
    return out


def finetune(model_path: Path, pretrained: bool, task: Task, seed: int, config: EvaluateConfig) -> dict:
    """Fine-tune one model on one task with one seed; return metrics and test predictions."""
    from transformers import AutoTokenizer

    quiet_transformers()
    started = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train, dev, test = (encode(tokenizer, task, split, config.max_length) for split in (task.train, task.dev, task.test))
    seed_everything(seed)
    model = load_model(model_path, task, pretrained).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, fused=True)
    rng = random.Random(seed)
    steps_per_epoch = -(-len(train.input_ids) // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule("linear", int(config.warmup_fraction * total), total))
    token_task = task.type == "token-classification"
    best_score, best_state, best_epoch, dev_scores = -1.0, None, 0, []
    for epoch in range(config.epochs):
        model.train()
        for indices in batches([len(x) for x in train.input_ids], config.batch_size, rng):
            batch = {k: v.to(device) for k, v in collate(train, indices, pad_id, token_task).items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        dev_predictions = predict(model, dev, task, task.dev, config.batch_size, pad_id, device)
        score = task_metrics(task.type, [target for _, target in task.dev], dev_predictions)[task.metric]
        dev_scores.append(score)
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test_predictions = predict(model, test, task, task.test, config.batch_size, pad_id, device)
    return {
        "metrics": task_metrics(task.type, [target for _, target in task.test], test_predictions),
        "dev_scores": dev_scores,
        "best_epoch": best_epoch,
        "predictions": test_predictions,
        "truncated": {"train": train.truncated, "dev": dev.truncated, "test": test.truncated},
        "seconds": round(time.time() - started, 2),
    }

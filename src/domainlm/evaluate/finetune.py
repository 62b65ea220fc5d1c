"""One fine-tuning loop for every neural model and task type (the heads differ, the loop does not).

A run (model, task, learning rate, seed): load the encoder with the task's head (pretrained
weights from safetensors, or the same architecture randomly initialised), train with AdamW and
linear warmup/decay for at most `epochs`, score dev after every epoch, stop after `patience`
epochs without improvement, and test the epoch that scored best on dev.

Heads: sequence classification (single-label, multi-label with sigmoid outputs, regression with
one output), token classification (the first sub-word of each word is scored; inputs longer than
`max_length` are cut into overlapping windows, each word predicted from the window where it sits
most centrally), multiple choice (one score per (text, choice) pair). What differs between them is
the task target's row of `evaluate.heads.HEADS`; nothing here asks which target a task has.

Knowledge distillation (Hinton et al. 2015, "Distilling the knowledge in a neural network"; the
task-specific stage of DistilBERT / TinyBERT students) goes through the same loop: a teacher's
probabilities at a temperature (`soft_targets`) ride on the encoded items, and `_train_epoch`
scores them with `distillation_loss` instead of the head's own loss.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domainlm.config import EvaluateConfig
from domainlm.errors import ModelError
from domainlm.evaluate.heads import HEADS, Encoded
from domainlm.evaluate.heads import encode_tokens as encode_tokens  # importable from here, as before
from domainlm.optim import lr_schedule, parameter_groups, seed_everything
from domainlm.progress import Curves
from domainlm.tasks.load import Task
from domainlm.tasks.metrics import task_metrics
from domainlm.vocabulary import vocabulary_casing

log = logging.getLogger(__name__)


@dataclass
class SoftTargets:
    """Distillation's first stage: unlabeled inputs (in the task's shape) with a teacher's
    probabilities, as `soft_targets` returns them."""
    examples: list[dict]
    targets: list
    temperature: float
    epochs: int


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _auto_class(task: Task):
    import transformers

    return getattr(transformers, HEADS[task.target].auto_class)


def head_config(task: Task) -> dict:
    """The head's settings for transformers' config: how many outputs, their names, which loss."""
    head = HEADS[task.target]
    config = {"problem_type": head.problem_type} if head.problem_type else {}
    return config | head.outputs(task.labels)


def model_config(path: Path, task: Task):
    """The directory's transformers config with the task's head settings; `ModelError` naming the
    directory and the cause when it is missing, corrupt or of an architecture with no such head."""
    from transformers import AutoConfig

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
        config = AutoConfig.from_pretrained(str(path), **head_config(task))
    except (ValueError, KeyError, OSError) as err:
        raise ModelError(f"{path}: config.json cannot be read as a transformers config ({err})") from None
    auto = _auto_class(task)
    if type(config) not in auto._model_mapping:
        raise ModelError(f"{path}: architecture '{config.model_type}' has no {auto.__name__.removeprefix('AutoModelFor')}"
                         f" head in transformers (supported encoders: BERT, RoBERTa, ELECTRA, ModernBERT, MiniLM, ...)")
    return config


ROBERTA_NUMBERING = ("roberta", "xlm-roberta", "camembert")  # positions counted from pad_token_id + 1


def check_positions(config, path: Path, max_length: int, task: Task) -> None:
    """ModelError when inputs of `max_length` tokens need more positions than the model's learned
    position table has (RoBERTa-style tables lose pad_token_id + 1 rows), naming the fix, instead of
    an IndexError in the first batch. Rotary encoders (ModernBERT) have no table to outgrow."""
    table = getattr(config, "max_position_embeddings", None)
    if table is None or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return
    usable = table - ((config.pad_token_id or 0) + 1 if config.model_type in ROBERTA_NUMBERING else 0)
    if max_length > usable:
        key = f"task '{task.name}' max_length" if task.max_length else "evaluate.max_length"
        raise ModelError(f"{path}: {key} {max_length} exceeds the {usable} positions this model has: set it to "
                         f"{usable} or less")


def load_model(path: Path, task: Task, pretrained: bool, vocab_size: int | None = None):
    """The encoder with the task's head (`model_config` checks the directory first).
    `pretrained=False` keeps only the architecture and initialises every weight afresh."""
    config = model_config(path, task)
    auto = _auto_class(task)
    try:
        if pretrained:
            model = auto.from_pretrained(str(path), config=config, use_safetensors=True)  # never pickles
        else:
            model = auto.from_config(config)
    except Exception as err:  # noqa: BLE001 - whatever breaks loading, the message names the directory
        raise ModelError(f"{path}: weights cannot be loaded ({type(err).__name__}: {str(err)[:300]})") from None
    if vocab_size and vocab_size > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size)  # relation markers added to the tokenizer
    return model


def task_tokenizer(path: Path, task: Task):
    """The model directory's transformers tokenizer, with the task's extra tokens (relation markers)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{path}: tokenizer cannot be loaded ({type(err).__name__}: {str(err)[:300]})") from None
    if task.extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": task.extra_tokens})
    return tokenizer


# A vocabulary is cased when this share of its entries with a cased letter hold an upper-case one
# (cased biomedical vocabularies trained here: 15-23%), uncased below the second (uncased ones: 0).
CASED_VOCABULARY, UNCASED_VOCABULARY = 0.05, 0.005


def lowercases(tokenizer) -> bool:
    """Whether a transformers tokenizer lower-cases text before looking it up in its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.normalizer is not None and backend.normalizer.normalize_str("EGFR") == "egfr"
    return bool(getattr(tokenizer, "do_lower_case", False))  # a slow tokenizer


def tokenizer_casing(tokenizer) -> dict:
    """Whether a tokenizer's casing fits its vocabulary (`vocabulary.vocabulary_casing` of its
    entries as its decoder spells them, added tokens and single characters left out). Returns
    {"lowercases", "cased_entries", "upper_entries", "upper_share", "mismatch": None or one line
    saying what goes wrong}.

    Two mismatches matter: text lower-cased for a cased vocabulary leaves its upper-case entries
    unused (a cased checkpoint whose tokenizer files do not say `do_lower_case: false` is loaded
    lower-casing by BERT's tokenizer classes), and text kept cased for an uncased vocabulary turns
    capitalised words into [UNK] or rare pieces.
    """
    added = set(tokenizer.get_added_vocab())
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    # Entries as text (a byte-level BPE entry's characters stand for bytes: `Ã` is half of `é`), the
    # alphabet left out (a byte-level BPE holds every byte, capitals too, whatever its casing).
    spell = (lambda token: decoder.decode([token]).strip()) if decoder is not None else (lambda token: token)
    entries = (spell(token) for token in tokenizer.get_vocab() if token not in added)
    casing = vocabulary_casing(entry for entry in entries if len(entry) > 1)
    lower, share = lowercases(tokenizer), casing["upper_share"]
    mismatch = None
    if lower and share >= CASED_VOCABULARY:
        mismatch = (f"the tokenizer lower-cases text, but {casing['upper_entries']} vocabulary entries ({share:.0%} of "
                    "those with letters) are upper-case and can never be used: a cased vocabulary read as uncased "
                    "(its tokenizer_config.json should say do_lower_case: false)")
    elif not lower and casing["cased_entries"] and share < UNCASED_VOCABULARY:
        mismatch = (f"the tokenizer keeps case, but {casing['upper_entries']} of its {casing['cased_entries']} "
                    "vocabulary entries with letters are upper-case: capitalised words become [UNK] or rare pieces "
                    "(an uncased vocabulary, or one trained on text without capitals, read as cased)")
    return {"lowercases": lower, **casing, "mismatch": mismatch}


# ------------------------------------------------------------------------------------ encoding
def encode(tokenizer, task: Task, examples: list[dict], max_length: int) -> Encoded:
    """Token ids (and token types) of each example, cut to `max_length`, with its training label:
    a pair is cut from its longer side first (the context, for question + context); each choice
    of a multiple-choice example is a (text, choice) pair; token tasks go through `encode_tokens`
    (the task target's `encode` in `evaluate.heads`)."""
    return HEADS[task.target].encode(tokenizer, task, examples, max_length)


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


def _length(item: dict) -> int:
    ids = item["input_ids"]
    return max(len(x) for x in ids) if ids and isinstance(ids[0], list) else len(ids)


def collate(items: list[dict], task: Task, pad_id: int) -> dict[str, torch.Tensor]:
    """Padded tensors, (batch, length) or, multiple choice, (batch, choices, length); `labels`,
    and `soft_targets` when the items carry a teacher's probabilities: (batch, classes), token
    tasks (batch, length, classes)."""
    layout = HEADS[task.target].layout
    batch = layout.inputs(items, pad_id)
    width = batch["input_ids"].shape[-1]
    batch["labels"] = layout.stack([it["label"] for it in items], width, -100)
    if "soft" in items[0]:
        batch["soft_targets"] = layout.stack([it["soft"] for it in items], width, 0.0)
    return batch


@torch.no_grad()
def _outputs(model, data: Encoded, task: Task, batch_size: int, pad_id: int, device):
    """(item, its logits on the CPU) for every encoded item, in batches of similar length."""
    model.eval()
    for indices in batches([_length(it) for it in data.items], batch_size * 2):
        items = [data.items[i] for i in indices]
        batch = {k: v.to(device) for k, v in collate(items, task, pad_id).items() if k not in ("labels", "soft_targets")}
        yield from zip(items, model(**batch).logits.float().cpu(), strict=True)


def predict(model, data: Encoded, task: Task, examples: list[dict], batch_size: int, pad_id: int,
            device) -> tuple[list, list[float]]:
    """(predictions, confidences), one per example in input order: a label, a list of labels
    (multi-label), a number (regression), a choice index, or the word tags (token tasks, in the
    task's tagging scheme). Confidence: the predicted class's probability (token tasks: the
    lowest over the words; regression: 1)."""
    head = HEADS[task.target]
    out = [head.layout.blank(x, "O") for x in examples]  # token tasks: a word no window reaches stays O
    confidence = [1.0] * len(examples)
    for it, logits in _outputs(model, data, task, batch_size, pad_id, device):
        head.layout.fill(out, confidence, it, head.probabilities(logits), lambda row: head.decide(row, task.labels))
    return out, confidence


# ------------------------------------------------------------------------------ distillation
def soft_targets(model, data: Encoded, task: Task, examples: list[dict], temperature: float, batch_size: int,
                 pad_id: int, device) -> list:
    """A teacher's probabilities at `temperature`, one entry per example in input order: a list
    over the classes (or choices), one sigmoid probability per class (multi-label), or per word a
    list over the tags (token tasks: from the word's first piece, in the window that owns it, as
    `predict` reads it; a word no window reaches gets O). ValueError for regression."""
    head = HEADS[task.target]
    if head.soft_loss is None:
        raise ValueError(f"no soft targets for {task.type} (target {task.target})")
    outside = [float(label == "O") for label in task.labels]  # token tasks: a word no window reaches
    out = [head.layout.blank(x, outside) for x in examples]
    unused = [1.0] * len(examples)  # `fill` also keeps confidences, which soft targets do not need
    for it, logits in _outputs(model, data, task, batch_size, pad_id, device):
        head.layout.fill(out, unused, it, head.probabilities(logits / temperature), lambda row: (row.tolist(), 1.0))
    return out


def with_soft_targets(data: Encoded, targets: list, task: Task) -> Encoded:
    """`data` with each item carrying its example's teacher probabilities (`soft`); token tasks:
    its word's at each word's first piece, zeros elsewhere (where the label is -100). The
    student's own tokenizer may split words differently from the teacher's."""
    layout, zeros = HEADS[task.target].layout, [0.0] * len(task.labels)
    return Encoded([it | {"soft": layout.soft(it, targets[it["example"]], zeros)} for it in data.items],
                   data.truncated)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, target: str, temperature: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al.'s soft-target loss, times T^2 (so its gradients keep their size whatever T).

    logits: the student's, (B, C), or (B, L, C) for token tasks; targets: the teacher's
    probabilities at T, the same shape; mask (B, L): the positions that count (each word's first
    piece). Softmax targets (class, choice, tags): KL(teacher || student at T), summed over the
    classes and averaged over examples (token tasks: over the masked positions). Multi-label:
    binary cross-entropy against the soft probabilities minus their own entropy (the binary KL:
    the same gradients), averaged over examples and classes as the head's BCE is. Zero when the
    student's probabilities at T equal the targets."""
    return HEADS[target].soft_loss(logits.float() / temperature, targets.float(), mask) * temperature**2


def _train_epoch(model, data: Encoded, task: Task, pad_id: int, device, optimizer, scheduler, batch_size: int,
                 rng: random.Random, temperature: float = 1.0) -> float:
    """One pass over `data` in length-bucketed batches; the mean training loss: the head's loss on
    the labels, or `distillation_loss` at `temperature` when the items carry soft targets."""
    model.train()
    total, steps = torch.zeros((), device=device), 0
    for indices in batches([_length(it) for it in data.items], batch_size, rng):
        batch = {k: v.to(device) for k, v in collate([data.items[i] for i in indices], task, pad_id).items()}
        soft = batch.pop("soft_targets", None)
        if soft is None:
            loss = model(**batch).loss
        else:
            labels = batch.pop("labels")  # placeholders on unlabeled text: only where they are -100 is read
            mask = HEADS[task.target].layout.mask(labels)
            loss = distillation_loss(model(**batch).logits, soft, task.target, temperature, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
        steps += 1
    return float(total) / max(steps, 1)  # one wait for the device per epoch


def fine_tuning_optimizer(model, lr: float, config: EvaluateConfig, items: int, epochs: int):
    """AdamW and its schedule for `epochs` passes over `items` items: linear warmup over
    `warmup_fraction` of the steps, then linear decay to zero."""
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=lr, fused=True)
    total = -(-items // config.batch_size) * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule("linear", int(config.warmup_fraction * total), total))
    return optimizer, scheduler


def _fit(model, train: Encoded, dev: Encoded, task: Task, pad_id: int, device, lr: float, config: EvaluateConfig,
         rng: random.Random, curves: Curves) -> tuple[float, int, list[float]]:
    """AdamW with linear warmup and decay for at most `epochs`, scoring dev after each; stops after
    `patience` epochs without a better dev score and leaves the best epoch's weights in `model`.
    Returns (best dev score, best epoch, dev score of every epoch run)."""
    optimizer, scheduler = fine_tuning_optimizer(model, lr, config, len(train.items), config.epochs)
    best_score, best_state, best_epoch, dev_scores = -float("inf"), None, 0, []
    for epoch in range(config.epochs):
        loss = _train_epoch(model, train, task, pad_id, device, optimizer, scheduler, config.batch_size, rng)
        predictions, _ = predict(model, dev, task, task.dev, config.batch_size, pad_id, device)
        score = task_metrics(task.type, task.gold("dev"), predictions, task.labels)[task.metric]
        dev_scores.append(score)
        curves.add(epoch + 1, **{"finetune/train_loss": loss, "finetune/lr": scheduler.get_last_lr()[0],
                                 f"finetune/dev_{task.metric}": score})
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        elif config.patience and epoch + 1 - best_epoch >= config.patience:
            break  # early stopping: no better dev score for `patience` epochs
    model.load_state_dict(best_state)
    return best_score, best_epoch, dev_scores


@dataclass(frozen=True)
class Tuning:
    """How a model is put to a task: with a new head (`HEAD`, the default) or through its masked-LM
    head (`evaluate.prompt.prompt_tuning`); `finetune` trains and scores either the same way."""
    check: Callable[[Path, Task, int], None]
    """(model directory, task, max_length) -> None, or ModelError naming the directory, before any work."""
    encode: Callable[[Any, Task, list[dict], int], Encoded]
    """(tokenizer, task, examples, max_length) -> items with their training labels."""
    load: Callable[[Path, Task, bool, Any, Encoded, torch.device], torch.nn.Module]
    """(directory, task, pretrained, tokenizer, encoded train split, device) -> the model to train,
    on `device`, whose outputs' logits are what the task target's row of `HEADS` reads."""
    details: Callable[[torch.nn.Module], dict] = field(default=lambda model: {})
    """The trained model -> fields added to the run's result (prompt: its template and label words)."""


HEAD = Tuning(
    check=lambda path, task, max_length: check_positions(model_config(path, task), path, max_length, task),
    encode=encode,
    load=lambda path, task, pretrained, tokenizer, train, device: load_model(path, task, pretrained,
                                                                            len(tokenizer)).to(device))


def _distil(model, data: Encoded, task: Task, pad_id: int, device, lr: float, config: EvaluateConfig,
            rng: random.Random, temperature: float, epochs: int) -> list[float]:
    """`epochs` passes over soft targets with AdamW and the fine-tuning's warmup and linear decay
    (over these epochs' steps); the mean loss of each epoch."""
    optimizer, scheduler = fine_tuning_optimizer(model, lr, config, len(data.items), epochs)
    return [_train_epoch(model, data, task, pad_id, device, optimizer, scheduler, config.batch_size, rng, temperature)
            for _ in range(epochs)]


def finetune(model_path: Path, pretrained: bool, task: Task, seed: int, lr: float, config: EvaluateConfig,
             pseudo: list[dict] | None = None, soft: SoftTargets | None = None, keep_model: bool = False,
             log_dir: Path | None = None, tuning: Tuning = HEAD) -> dict:
    """Fine-tune one model on one task with one seed and learning rate; return metrics, test
    predictions, the dev curve, the model's parameter count and its test-set speed (examples per
    second through the model, encoding excluded). `pseudo`: pseudo-labelled examples trained on for
    one epoch first (self-training's student). `soft`: a teacher's soft targets learnt first, for
    `soft.epochs` (distillation's student; their losses are returned as `distill_losses`).
    `keep_model`: also return the model and tokenizer. `log_dir`: where the per-epoch curves go as
    TensorBoard files (when installed). `tuning`: with a new head (default) or through the masked-LM
    head (`evaluate.prompt`)."""
    quiet_transformers()
    started = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    max_length = task.max_length or config.max_length
    tuning.check(model_path, task, max_length)  # fails here, by name
    tokenizer = task_tokenizer(model_path, task)
    casing = tokenizer_casing(tokenizer)
    if seed == 0 and casing["mismatch"]:
        log.warning("finetune: %s: %s", model_path, casing["mismatch"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train, dev, test = (tuning.encode(tokenizer, task, getattr(task, s), max_length) for s in ("train", "dev", "test"))
    if seed == 0 and (train.truncated or test.truncated):
        cut = HEADS[task.target].layout.cut
        log.info("finetune: %s: %d train and %d test inputs longer than %d tokens were %s (%s)", task.name,
                 train.truncated, test.truncated, max_length, cut, Path(model_path).name)
    seed_everything(seed)
    model = tuning.load(model_path, task, pretrained, tokenizer, train, device)
    rng = random.Random(seed)
    if pseudo:
        warm = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=lr, fused=True)
        _train_epoch(model, encode(tokenizer, task, pseudo, max_length), task, pad_id, device, warm, None,
                     config.batch_size, rng)
    distill_losses = []
    if soft and soft.examples:
        data = with_soft_targets(encode(tokenizer, task, soft.examples, max_length), soft.targets, task)
        distill_losses = _distil(model, data, task, pad_id, device, lr, config, rng, soft.temperature, soft.epochs)
    curves = Curves(log_dir, enabled=log_dir is not None)
    best_score, best_epoch, dev_scores = _fit(model, train, dev, task, pad_id, device, lr, config, rng, curves)
    curves.close()
    tested = time.perf_counter()
    test_predictions, _ = predict(model, test, task, task.test, config.batch_size, pad_id, device)
    tested = time.perf_counter() - tested
    result = {
        "metrics": task_metrics(task.type, task.gold("test"), test_predictions, task.labels),
        "dev_score": best_score,
        "dev_scores": dev_scores,
        "best_epoch": best_epoch,
        "lr": lr,
        "predictions": test_predictions,
        "truncated": {"train": train.truncated, "dev": dev.truncated, "test": test.truncated},
        "tokenizer_casing": casing,
        "seconds": round(time.time() - started, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_examples_per_second": round(len(task.test) / max(tested, 1e-9), 1),
    }
    result |= tuning.details(model)
    if soft:
        result["distill_losses"] = distill_losses
    if keep_model:
        result["model"], result["tokenizer"] = model, tokenizer
    return result

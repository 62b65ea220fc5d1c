"""What fine-tuning and the TF-IDF baseline do for each target, as one table: `HEADS`.

`tasks.types` says what each task type reads, predicts (its `target`: a class, a set of classes, a
number, word tags, a choice) and is scored by; it is a base module that config, task loading and
the report read without torch. What a target means to a model needs torch (and scikit-learn for
the baseline), so it is a row here, keyed by target: the transformers head and its loss, how
examples become inputs and training labels, how a batch is stacked, how outputs become
predictions and a teacher's soft targets, the distillation loss, unlabeled text in the task's
shape, and the TF-IDF baseline. Task types with the same target share a row (eight types, five
rows), so `evaluate.finetune` is one loop that looks its row up and never asks for a target by
name; a new target is a row here (`tests/test_heads.py` fails until every target of the type
table has a complete one). Metrics stay in `tasks.metrics`, which the report reads too.

A row's `layout` says how encoded items line up with examples, the part that three heads share:
one input per example (`TEXT`), one input per (text, choice) pair (`CHOICES`), or windows of words
with an output per position (`WORDS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from domainlm.errors import ModelError
from domainlm.evaluate import baselines
from domainlm.tasks.load import Task
from domainlm.tasks.tagging import to_scheme

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass
class Encoded:
    items: list[dict]
    """One per input: input_ids (a list, or a list per choice), token_type_ids (or None), label,
    example (its index); token tasks add `words` (the word of each position, None elsewhere) and
    `owned` (positions whose prediction counts)."""
    truncated: int  # examples that lost text to max_length (token tasks: were split into windows)


# ------------------------------------------------------------------------------------ encoding
def _class_index(x: dict, index: dict[str, int], names: list[str]) -> int:
    return index.get(x["label"], -100)  # a class unseen in train is not learnt


def _class_set(x: dict, index: dict[str, int], names: list[str]) -> list[float]:
    return [float(name in x["label"]) for name in names]


def _number(x: dict, index: dict[str, int], names: list[str]) -> float:
    return float(x["label"])


def _tokenize(tokenizer, firsts: list[str], seconds: list[str] | None, max_length: int):
    """(token ids cut to `max_length`, their token types or None, whether each lost text); a pair
    is cut from its longer side first (the context, for question + context)."""
    full = tokenizer(firsts, seconds, truncation=False)["input_ids"]
    cut = tokenizer(firsts, seconds, truncation="longest_first" if seconds else True, max_length=max_length)
    return cut["input_ids"], cut.get("token_type_ids"), [len(ids) > max_length for ids in full]


def encode_texts(tokenizer, task: Task, examples: list[dict], max_length: int, label: Callable) -> Encoded:
    """One input per example: its text, or its (text, text_pair); `label(example, class -> index,
    class names)` is its training label (an int, or floats)."""
    firsts = [x["text"] for x in examples]
    seconds = [x["text_pair"] for x in examples] if "text_pair" in examples[0] else None
    ids, types, cut = _tokenize(tokenizer, firsts, seconds, max_length)
    index = {name: i for i, name in enumerate(task.labels)}
    items = [{"input_ids": ids[i], "token_type_ids": types[i] if types else None,
              "label": label(x, index, task.labels), "example": i} for i, x in enumerate(examples)]
    return Encoded(items, sum(cut))


def encode_choices(tokenizer, task: Task, examples: list[dict], max_length: int) -> Encoded:
    """One (text, choice) pair per choice; an item holds its example's pairs and the right one's index."""
    firsts = [x["text"] for x in examples for _ in x["choices"]]
    seconds = [c for x in examples for c in x["choices"]]
    ids, types, cut = _tokenize(tokenizer, firsts, seconds, max_length)
    items, truncated, row = [], 0, 0
    for i, x in enumerate(examples):
        rows = range(row, row + len(x["choices"]))
        row = rows.stop
        truncated += any(cut[r] for r in rows)
        items.append({"input_ids": [ids[r] for r in rows], "token_type_ids": [types[r] for r in rows] if types else None,
                      "label": int(x["label"]), "example": i})
    return Encoded(items, truncated)


def _windows(n: int, width: int) -> list[tuple[int, int]]:
    """Overlapping [start, end) windows of `width` covering n positions (stride width // 2)."""
    if n <= width:
        return [(0, n)]
    stride = max(1, width // 2)
    starts = list(range(0, n - width, stride)) + [n - width]
    return [(s, s + width) for s in starts]


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one text ([CLS] / [SEP], <s> / </s>)."""
    plain = tokenizer("domain", add_special_tokens=False)["input_ids"]
    framed = tokenizer("domain")["input_ids"]
    for lead in range(len(framed) - len(plain) + 1):
        if framed[lead : lead + len(plain)] == plain:
            return framed[:lead], framed[lead + len(plain) :]
    raise ModelError(f"tokenizer {type(tokenizer).__name__} does not keep the text between its special tokens")


def encode_tokens(tokenizer, task: Task, examples: list[dict], max_length: int) -> Encoded:
    """Words to pieces, in overlapping windows when a sentence is longer than `max_length`; the
    first piece of each word carries its tag (in the task's scheme), the other positions -100."""
    label_id = {label: i for i, label in enumerate(task.labels)}
    batch = tokenizer([x["tokens"] for x in examples], is_split_into_words=True, add_special_tokens=False)
    before, after = special_frame(tokenizer)
    items, split = [], 0
    for i, x in enumerate(examples):
        ids, words = batch["input_ids"][i], batch.word_ids(i)
        tags = to_scheme(x["tags"], task.tagging)
        firsts = [p for p, w in enumerate(words) if w is not None and (p == 0 or words[p - 1] != w)]
        spans = _windows(len(ids), max_length - 2)
        split += len(spans) > 1
        # Each word's first piece is owned by the window where it sits farthest from an edge.
        owner = {p: max(range(len(spans)), key=lambda k: min(p - spans[k][0], spans[k][1] - 1 - p))
                 for p in firsts}
        for k, (start, end) in enumerate(spans):
            full, lead = before + ids[start:end] + after, len(before)
            position_words = [None] * len(full)
            labels = [-100] * len(full)
            owned = []
            for p in range(start, end):
                if p in owner:
                    q = lead + p - start
                    position_words[q] = words[p]
                    labels[q] = label_id.get(tags[words[p]], label_id["O"])
                    if owner[p] == k:
                        owned.append(q)
            items.append({"input_ids": full, "token_type_ids": None, "label": labels, "example": i,
                          "words": position_words, "owned": owned})
    return Encoded(items, split)


# ------------------------------------------------------------------------------------- batches
def _padded(sequences: list[list[int]], type_rows: list[list[int]] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (and token_type_ids), (rows, longest row)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    types = torch.zeros((len(sequences), width), dtype=torch.long) if type_rows else None
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        if types is not None:
            types[r, : len(s)] = torch.tensor(type_rows[r])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def _one_row_each(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """(batch, length)."""
    types = [it["token_type_ids"] for it in items] if items[0]["token_type_ids"] is not None else None
    return _padded([it["input_ids"] for it in items], types, pad_id)


def _row_per_choice(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """(batch, choices, length): each (text, choice) pair is a row of its example."""
    types = [s for it in items for s in it["token_type_ids"]] if items[0]["token_type_ids"] is not None else None
    batch = _padded([s for it in items for s in it["input_ids"]], types, pad_id)
    return {k: v.view(len(items), -1, v.shape[-1]) for k, v in batch.items()}


def _per_example(values: list, width: int, fill: float) -> torch.Tensor:
    """(batch, ...): ints (class indices) become long, floats float32, as torch infers them."""
    return torch.tensor(values)


def _per_position(values: list[list], width: int, fill: float) -> torch.Tensor:
    """(batch, width, ...): each item's values along its positions, `fill` after its end."""
    first = torch.tensor(values[0])
    out = torch.full((len(values), width, *first.shape[1:]), fill, dtype=first.dtype)
    for r, value in enumerate(values):
        out[r, : len(value)] = torch.tensor(value)
    return out


# ------------------------------------------------------------------------------------ outputs
def _fill_example(out: list, confidence: list[float], item: dict, probs: torch.Tensor, decide: Callable) -> None:
    """The item's output row is its example's."""
    out[item["example"]], confidence[item["example"]] = decide(probs)


def _fill_words(out: list, confidence: list[float], item: dict, probs: torch.Tensor, decide: Callable) -> None:
    """Each word's value from its first piece, in the window that owns it; the example's
    confidence is its least confident word's."""
    i = item["example"]
    for q in item["owned"]:
        out[i][item["words"][q]], sure = decide(probs[q])
        confidence[i] = min(confidence[i], sure)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1)


def _sigmoid(logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid()


def _decide_class(probs: torch.Tensor, names: list[str]) -> tuple[str, float]:
    best = int(probs.argmax())
    return names[best], float(probs[best])


def _decide_choice(probs: torch.Tensor, names: list[str]) -> tuple[str, float]:
    best = int(probs.argmax())  # one probability per choice
    return str(best), float(probs[best])


def _decide_classes(probs: torch.Tensor, names: list[str]) -> tuple[list[str], float]:
    # each class on its own; confidence: the least certain decision
    return [names[k] for k in range(len(names)) if probs[k] > 0.5], float(torch.where(probs > 0.5, probs, 1 - probs).min())


def _decide_number(output: torch.Tensor, names: list[str]) -> tuple[float, float]:
    return float(output[0]), 1.0


def _kl(z: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher p || student softmax(z)), summed over the classes and averaged over examples
    (token tasks: over the positions of `mask`)."""
    kl = (torch.special.xlogy(p, p) - p * z.log_softmax(-1)).sum(-1)  # (B,) or (B, L)
    if mask is not None:
        return (kl * mask).sum() / mask.sum().clamp_min(1)
    return kl.mean()


def _binary_kl(z: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Binary cross-entropy against the soft probabilities minus their own entropy (the binary KL:
    the same gradients), averaged over examples and classes as the head's BCE is."""
    entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, p, reduction="none") - entropy
    return loss.mean()


# ----------------------------------------------------------------------------- head settings
def _one_per_class(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)}}


def _one_output(names: list[str]) -> dict:
    return {"num_labels": 1}


def _one_per_pair(names: list[str]) -> dict:
    return {}  # transformers' multiple-choice head scores each (text, choice) pair with one output


def _unlabeled_words(sentence: str) -> dict | None:
    words = _WORDS.findall(sentence)[:128]
    return {"tokens": words, "tags": ["O"] * len(words)} if words else None


# --------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Layout:
    """How encoded items line up with examples and model outputs."""
    gold: str
    """The example's role that holds its gold: `label`, or `tags` (one per word)."""
    cut: str
    """What happens to an input longer than max_length, for the log."""
    inputs: Callable[[list[dict], int], dict[str, torch.Tensor]]
    """(items, pad id) -> padded input_ids, attention_mask (and token_type_ids)."""
    stack: Callable[[list, int, float], torch.Tensor]
    """(each item's labels or soft targets, the batch's width, the fill after an item's end) -> a tensor."""
    blank: Callable[[dict, Any], Any]
    """(example, the value of a word no window reaches) -> its output before any item is read."""
    fill: Callable[[list, list[float], dict, torch.Tensor, Callable], None]
    """(outputs, confidences, item, its probabilities, decide) -> writes the item's example's
    output and confidence, `decide` mapping a probability row to (value, confidence)."""
    soft: Callable[[dict, list, list[float]], list]
    """(item, its example's soft targets, zeros of one position) -> the item's soft targets."""
    mask: Callable[[torch.Tensor], torch.Tensor | None]
    """labels -> the positions a distillation loss counts (None: every example once)."""
    pieces: Callable[[str], list[str]]
    """A document of unlabeled text -> its inputs (itself, or its sentences)."""


TEXT = Layout(gold="label", cut="truncated", inputs=_one_row_each, stack=_per_example,
              blank=lambda x, unreached: None, fill=_fill_example, soft=lambda it, targets, zeros: targets,
              mask=lambda labels: None, pieces=lambda text: [text])
CHOICES = replace(TEXT, inputs=_row_per_choice)  # as TEXT, but an item's rows are its (text, choice) pairs
WORDS = Layout(gold="tags", cut="split into windows", inputs=_one_row_each, stack=_per_position,
               blank=lambda x, unreached: [unreached] * len(x["tokens"]), fill=_fill_words,
               soft=lambda it, targets, zeros: [zeros if w is None else targets[w] for w in it["words"]],
               mask=lambda labels: labels != -100, pieces=_SENTENCE.split)


@dataclass(frozen=True)
class Head:
    """Everything fine-tuning and the baseline do differently for one target."""
    layout: Layout
    auto_class: str
    """The transformers class (all exist for BERT, RoBERTa, ELECTRA and ModernBERT)."""
    problem_type: str | None
    """transformers' `problem_type`: which loss the head uses (None: the class's only one)."""
    outputs: Callable[[list[str]], dict]
    """The task's class names -> the head's output settings for transformers' config."""
    encode: Callable[..., Encoded]
    """(tokenizer, task, examples, max_length) -> items with their training labels."""
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    """Logits (at a temperature) -> probabilities (regression: the output itself)."""
    decide: Callable[[torch.Tensor, list[str]], tuple[Any, float]]
    """(one example's or word's probabilities, class names) -> (prediction, confidence)."""
    soft_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None
    """(student logits / T, teacher probabilities, mask) -> distillation loss before the T^2
    (None: no soft targets, as for regression)."""
    unlabeled: Callable[[str], dict | None] | None
    """One piece of unlabeled text -> an example in the task's shape with a placeholder gold, or
    None when it has no words (None: unlabeled text cannot be put in this shape)."""
    baseline: Callable[[Task, int], tuple[list, list]]
    """(task, seed) -> TF-IDF baseline predictions on (dev, test)."""
    uncertainty: str | None = None
    """How active learning reads a prediction's uncertainty: "example" (one distribution per
    example), "words" (one per word, averaged per sentence), None (no single distribution)."""


HEADS: dict[str, Head] = {
    "class": Head(
        layout=TEXT, auto_class="AutoModelForSequenceClassification", problem_type="single_label_classification",
        outputs=_one_per_class, encode=partial(encode_texts, label=_class_index), probabilities=_softmax,
        decide=_decide_class, soft_loss=_kl, unlabeled=lambda text: {"text": text, "label": ""},
        baseline=baselines.tfidf_labels, uncertainty="example"),
    "classes": Head(
        layout=TEXT, auto_class="AutoModelForSequenceClassification", problem_type="multi_label_classification",
        outputs=_one_per_class, encode=partial(encode_texts, label=_class_set), probabilities=_sigmoid,
        decide=_decide_classes, soft_loss=_binary_kl, unlabeled=lambda text: {"text": text, "label": []},
        baseline=baselines.tfidf_label_sets),
    "number": Head(
        layout=TEXT, auto_class="AutoModelForSequenceClassification", problem_type="regression",
        outputs=_one_output, encode=partial(encode_texts, label=_number), probabilities=lambda output: output,
        decide=_decide_number, soft_loss=None, unlabeled=None, baseline=baselines.tfidf_numbers),
    "tags": Head(
        layout=WORDS, auto_class="AutoModelForTokenClassification", problem_type=None,
        outputs=_one_per_class, encode=encode_tokens, probabilities=_softmax, decide=_decide_class,
        soft_loss=_kl, unlabeled=_unlabeled_words, baseline=baselines.tfidf_words, uncertainty="words"),
    "choice": Head(
        layout=CHOICES, auto_class="AutoModelForMultipleChoice", problem_type=None,
        outputs=_one_per_pair, encode=encode_choices, probabilities=_softmax, decide=_decide_choice,
        soft_loss=_kl, unlabeled=None, baseline=baselines.tfidf_choices, uncertainty="example"),
}

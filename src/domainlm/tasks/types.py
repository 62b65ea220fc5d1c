"""The task types, as one table: what each reads, what it predicts, how it is scored.

Everything that differs between task types is a column here; config, task loading, metrics,
fine-tuning and the TF-IDF baseline look a type up instead of branching on its name. What a type
predicts per example (its `target`) decides most of it; what fine-tuning and the TF-IDF baseline
do for a target (head, loss, encoding, batches, decoding, soft targets) is that target's row of
`domainlm.evaluate.heads.HEADS`, kept there because it needs torch and this table must not. A type
whose gold is one class may also carry a prompt `template` (prompt-based fine-tuning,
`domainlm.evaluate.prompt`):

| target    | gold of one example           | transformers head                 | statistics (metrics) |
|-----------|-------------------------------|-----------------------------------|----------------------|
| `class`   | one label                     | sequence classification (softmax) | per-class tp/fp/fn   |
| `classes` | a set of labels               | sequence classification (sigmoid) | per-class tp/fp/fn   |
| `number`  | a real number                 | sequence regression (1 output)    | sums for Pearson     |
| `tags`    | one tag per word (IO/BIO/...) | token classification              | entity tp/fp/fn      |
| `choice`  | the index of the right choice | multiple choice                   | per-class tp/fp/fn   |
| `ranking` | a query's relevant documents  | none: a bi-encoder or reranker    | per-query nDCG, RR, recall |

A `ranking` task (retrieval) also carries a document collection (`Task.documents`); its examples
are queries, and a prediction is a ranked list of document ids (`domainlm.evaluate.retrieval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TaskType:
    name: str
    target: Literal["class", "classes", "number", "tags", "choice", "ranking"]
    """What one example's gold is (see the module docstring)."""
    headline: str
    """The default headline metric (micro F1, entity F1, Pearson, accuracy, nDCG@10)."""
    text_pair: Literal["no", "yes", "optional"] = "no"
    """Whether an example has a second text (a sentence pair, a question's context)."""
    entity_markers: bool = False
    """Whether the text carries two marked entities (relation classification)."""
    self_training: bool = False
    """Whether unlabeled in-domain text can be pseudo-labelled for it (single-text tasks)."""
    ranks: bool = False
    """Whether its models rank a document collection per query (retrieval: BM25, bi-encoders,
    cross-encoders in `domainlm.evaluate.retrieval`) instead of predicting through a fine-tuning
    head (`domainlm.evaluate.heads.HEADS`)."""
    template: str | None = None
    """The default prompt of prompt-based fine-tuning (`evaluate.prompt`; None: it does not apply):
    `{text}`, `{text_pair}` and `{mask}` (the model's mask token, where the label word goes)."""


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("classification", "class", "micro_f1", self_training=True,              # text -> label
             template="{text} It was {mask}."),                                      # LM-BFF's SST-2 prompt
    TaskType("multi-label", "classes", "micro_f1", self_training=True),              # text -> labels
    TaskType("pair-classification", "class", "micro_f1", text_pair="yes",           # text, text_pair -> label
             template="{text} ? {mask} , {text_pair}"),                              # LM-BFF's MNLI / RTE prompt
    TaskType("regression", "number", "pearson", text_pair="optional"),               # text[, text_pair] -> number
    TaskType("token-classification", "tags", "entity_f1", self_training=True),       # tokens -> tags
    TaskType("relation", "class", "micro_f1", entity_markers=True,                   # marked text -> label
             template="{text} Relation: {mask}."),
    TaskType("multiple-choice", "choice", "accuracy"),                               # text + choices -> index
    TaskType("yes-no-qa", "class", "accuracy", text_pair="yes",                     # question, context -> answer
             template="{text_pair} Question: {text} Answer: {mask}."),               # PET's BoolQ prompt
    TaskType("retrieval", "ranking", "ndcg@10", text_pair="yes", ranks=True),                    # query -> ranked documents
)}

def task_type(name: str) -> TaskType:
    """The table entry of a task type; ValueError naming the known types for anything else."""
    if name not in TASK_TYPES:
        raise ValueError(f"unknown task type {name!r}; expected one of {', '.join(TASK_TYPES)}")
    return TASK_TYPES[name]

"""How far a task's text sits from general text, measured before any training.

Two views: how badly a general tokenizer fragments the task's words (fertility, share of words
split), and how different the word distributions are (Jensen-Shannon divergence of unigrams). Both
are candidates for predicting where a domain model gains most over a general one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from domainlm.vocabulary import vocabulary_fit

_WORD = re.compile(r"\w+")


def _unigram_counts(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_WORD.findall(text.lower()))
    return counts


def unigram_divergence(texts: Iterable[str], reference_texts: Iterable[str]) -> float:
    """Jensen-Shannon divergence, base 2 (0 for the same distribution, 1 for disjoint vocabularies),
    between the lower-cased word (`\\w+`) unigram distributions of two text collections; nan when
    either has no words."""
    counts, reference = _unigram_counts(texts), _unigram_counts(reference_texts)
    if not counts or not reference:
        return float("nan")
    vocabulary = list(counts.keys() | reference.keys())
    p = np.array([counts[w] for w in vocabulary], dtype=float)
    q = np.array([reference[w] for w in vocabulary], dtype=float)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl_to_m(d: np.ndarray) -> float:
        present = d > 0  # 0 log 0 = 0; m > 0 wherever d > 0
        return float(np.sum(d[present] * np.log2(d[present] / m[present])))

    return float(np.clip((kl_to_m(p) + kl_to_m(q)) / 2, 0.0, 1.0))


def domain_distance(
    texts: Iterable[str],
    general_tokenizer: Tokenizer,
    general_texts: Iterable[str] | None = None,
    max_texts: int = 2000,
) -> dict[str, Any]:
    """How foreign a task's text is to a general model.

    `texts`: the task's text (e.g. training inputs); `general_tokenizer`: the general model's
    `tokenizers.Tokenizer`; `general_texts`: a sample of general-domain text for the unigram
    divergence (skipped when None). Only the first `max_texts` texts of each collection are used.

    Returns {"fertility": pieces per known word, "split_share": share of words not kept as one known
    piece, "unknown_share": share of words the general vocabulary cannot spell (its unknown token),
    "js_divergence": `unigram_divergence` or None, "words": words counted} (`vocabulary_fit`).
    """
    sample = list(islice(texts, max_texts))
    fit = vocabulary_fit(general_tokenizer, sample)
    divergence = None
    if general_texts is not None:
        divergence = unigram_divergence(sample, islice(general_texts, max_texts))
    return {
        "fertility": fit["fertility"],
        "split_share": fit["split_share"],
        "unknown_share": fit["unknown_share"],
        "js_divergence": divergence,
        "words": fit["words"],
    }

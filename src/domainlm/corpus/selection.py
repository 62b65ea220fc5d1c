"""Domain selection: keep the documents of a general pool that read like a seed of domain text.

A linear classifier on hashed, lower-cased word 1- and 2-grams — the fastText-style quality and
domain classifiers of data-filtering work (DCLM's fastText filter; the linear baselines of "Data
Filtering Networks") — is trained on the seed (label 1) against negatives (label 0: by default a
sample of the pool itself, which is mostly off-domain), with balanced class weights. Every
document is then scored per work unit (so it runs wherever the unit runs: the process pool or
Ray) and one below the threshold is dropped as `off_domain`, with its score.

The classifier is a weight vector over `FEATURES` hashed n-grams, saved as .npz (scikit-learn's
`HashingVectorizer` is stateless, so nothing else travels to the workers).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

FEATURES = 2**18
"""Hashed n-gram features (1 MiB of float32 weights)."""
BINS = 10
"""Score histogram bins over [0, 1] kept in the corpus stats."""


def _vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=FEATURES, ngram_range=(1, 2), alternate_sign=False, norm="l2",
                             token_pattern=r"(?u)\b\w+\b")


def reservoir(texts: Iterable[str], size: int, seed: int = 0) -> list[str]:
    """A uniform sample of `size` texts from a stream read once (Vitter's algorithm R), seeded."""
    rng, sample = random.Random(seed), []
    for n, text in enumerate(texts):
        if n < size:
            sample.append(text)
        elif (j := rng.randrange(n + 1)) < size:
            sample[j] = text
    return sample


def train_classifier(domain: list[str], negatives: list[str], out: Path) -> dict:
    """Fit the domain classifier (logistic regression, balanced classes) and save its weights to
    `out` (.npz). Returns what it was trained on and its accuracy on a fifth of each class held
    out (a first check that the seed is separable from the negatives at all). ValueError when a
    class is empty."""
    from sklearn.linear_model import LogisticRegression

    if not domain or not negatives:
        raise ValueError(f"domain selection needs seed and negative texts (got {len(domain)} and {len(negatives)})")
    texts, labels = domain + negatives, np.r_[np.ones(len(domain)), np.zeros(len(negatives))]
    held = np.random.default_rng(0).random(len(texts)) < 0.2
    features = _vectorizer().transform(texts)
    model = LogisticRegression(class_weight="balanced", max_iter=1000)
    accuracy = None
    if held.any() and len(set(labels[~held])) == 2:
        accuracy = float(model.fit(features[~held], labels[~held]).score(features[held], labels[held]))
    model.fit(features, labels)
    np.savez(out, weights=model.coef_[0].astype(np.float32), bias=np.float32(model.intercept_[0]))
    return {"seed_texts": len(domain), "negative_texts": len(negatives), "held_out_accuracy": accuracy}


def quantile_threshold(path: Path, sample: list[str], keep_fraction: float) -> float:
    """The score that `keep_fraction` of `sample` (texts not trained on) reaches: the threshold
    that keeps about that share of the corpus the sample was drawn from."""
    score = domain_scorer(str(path))
    return float(np.quantile([score(text) for text in sample], 1 - keep_fraction))


def domain_scorer(path: str) -> Callable[[str], float]:
    """The probability that a text is in-domain, by the classifier saved at `path` (loaded once
    per process and version of the file: a rerun that retrains it in the same place is read anew)."""
    stat = os.stat(path)
    return _scorer(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _scorer(path: str, *version) -> Callable[[str], float]:
    with np.load(path) as saved:
        weights, bias = saved["weights"], float(saved["bias"])
    vectorizer = _vectorizer()

    def score(text: str) -> float:
        logit = float((vectorizer.transform([text]) @ weights)[0]) + bias
        return 1.0 / (1.0 + np.exp(-logit))

    return score

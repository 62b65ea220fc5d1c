"""The classic baseline: TF-IDF features with a linear model, for every task type. It needs no
pretraining and shows how much of a task can be read off its surface words.

- text tasks: word 1-2-gram TF-IDF of the text (a pair's two texts get separate vocabularies),
  logistic regression (one-vs-rest for multi-label; ridge for regression);
- token tasks: the word, its affixes and shape, and the words around it;
- multiple choice: a logistic regression scores each (text, choice) pair; the best choice wins.

Which model a target gets is its row's `baseline` in `evaluate.heads.HEADS`.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import hstack
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from domainlm.tasks.load import Task
from domainlm.tasks.tagging import to_scheme


def _word_features(words: list[str], i: int) -> dict[str, float]:
    word = words[i]
    features = {
        "w=" + word.lower(): 1.0, "suffix3=" + word[-3:].lower(): 1.0, "prefix3=" + word[:3].lower(): 1.0,
        "is_title": float(word.istitle()), "is_upper": float(word.isupper()), "is_digit": float(word.isdigit()),
        "bias": 1.0,
    }
    for offset in (-2, -1, 1, 2):
        j = i + offset
        other = words[j].lower() if 0 <= j < len(words) else ("<s>" if j < 0 else "</s>")
        features[f"w[{offset}]={other}"] = 1.0
    return features


class _TextFeatures:
    """TF-IDF of the text, and of the second text when the task has one."""

    def __init__(self, paired: bool):
        self.parts = [TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))] + \
            ([TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))] if paired else [])

    def fit_transform(self, columns: list[list[str]]):
        return hstack([v.fit_transform(c) for v, c in zip(self.parts, columns, strict=False)]).tocsr()

    def transform(self, columns: list[list[str]]):
        return hstack([v.transform(c) for v, c in zip(self.parts, columns, strict=False)]).tocsr()


def _columns(examples: list[dict]) -> list[list[str]]:
    return [[x["text"] for x in examples]] + ([[x["text_pair"] for x in examples]] if "text_pair" in examples[0] else [])


def tfidf_words(task: Task, seed: int) -> tuple[list, list]:
    """Token tasks: a logistic regression tags each word from its features (dev, test predictions)."""
    model = DictVectorizer()
    tags = [t for x in task.train for t in to_scheme(x["tags"], task.tagging)]
    classifier = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    if len(set(tags)) == 1:  # a few sentences (a learning curve's sample) may hold one tag only: it is predicted
        classifier = DummyClassifier(strategy="most_frequent")
    features = [_word_features(x["tokens"], i) for x in task.train for i in range(len(x["tokens"]))]
    classifier.fit(model.fit_transform(features), tags)

    def predict(split: list[dict]) -> list[list[str]]:
        flat = list(classifier.predict(model.transform(
            [_word_features(x["tokens"], i) for x in split for i in range(len(x["tokens"]))])))
        out, start = [], 0
        for x in split:
            out.append([str(t) for t in flat[start : start + len(x["tokens"])]])
            start += len(x["tokens"])
        return out

    return predict(task.dev), predict(task.test)


def tfidf_choices(task: Task, seed: int) -> tuple[list, list]:
    """Multiple choice: a logistic regression scores each (text, choice) pair; the best one wins."""
    features = _TextFeatures(paired=True)

    def pairs(split):
        return [[x["text"] for x in split for _ in x["choices"]], [c for x in split for c in x["choices"]]]

    targets = [int(k == int(x["label"])) for x in task.train for k in range(len(x["choices"]))]
    classifier = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    classifier.fit(features.fit_transform(pairs(task.train)), targets)

    def predict(split: list[dict]) -> list[str]:
        scores = classifier.predict_proba(features.transform(pairs(split)))[:, 1]
        out, start = [], 0
        for x in split:
            out.append(str(int(np.argmax(scores[start : start + len(x["choices"])]))))
            start += len(x["choices"])
        return out

    return predict(task.dev), predict(task.test)


def _text_model(task: Task, fit, predict) -> tuple[list, list]:
    """TF-IDF of the text (and of its pair); `fit(X, train examples)` returns a model that
    `predict(model, X)` maps to one prediction per example."""
    features = _TextFeatures(paired="text_pair" in task.train[0])
    model = fit(features.fit_transform(_columns(task.train)), task.train)
    return tuple(predict(model, features.transform(_columns(split))) for split in (task.dev, task.test))


def tfidf_labels(task: Task, seed: int) -> tuple[list, list]:
    """One label per text: logistic regression on TF-IDF (dev, test predictions)."""
    def fit(X, train):
        return LogisticRegression(max_iter=2000, C=10.0, random_state=seed).fit(X, [x["label"] for x in train])

    return _text_model(task, fit, lambda model, X: [str(v) for v in model.predict(X)])


def tfidf_label_sets(task: Task, seed: int) -> tuple[list, list]:
    """A set of labels per text: one-vs-rest logistic regression on TF-IDF."""
    binarizer = MultiLabelBinarizer(classes=task.labels)

    def fit(X, train):
        model = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=10.0, random_state=seed))
        return model.fit(X, binarizer.fit_transform([x["label"] for x in train]))

    return _text_model(task, fit, lambda model, X: [sorted(row) for row in binarizer.inverse_transform(model.predict(X))])


def tfidf_numbers(task: Task, seed: int) -> tuple[list, list]:
    """A number per text: ridge regression on TF-IDF."""
    def fit(X, train):
        return Ridge(alpha=1.0).fit(X, [x["label"] for x in train])

    return _text_model(task, fit, lambda model, X: [float(v) for v in model.predict(X)])


def tfidf_predict(task: Task, seed: int) -> tuple[list, list]:
    """Fit on train, predict dev and test with the model of the task's target (its `baseline` in
    `evaluate.heads.HEADS`). Returns (dev predictions, test predictions)."""
    from domainlm.evaluate.heads import HEADS  # imported here: the table imports this module's models

    return HEADS[task.target].baseline(task, seed)

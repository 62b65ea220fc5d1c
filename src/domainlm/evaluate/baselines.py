"""The classic baseline: TF-IDF (classification) or word-window features (token classification)
with logistic regression. It needs no pretraining and shows how much a task's labels can be read
off its surface words."""

from __future__ import annotations

from sklearn.feature_extraction import DictVectorizer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from domainlm.evaluate.tasks import Task


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


def tfidf_predict(task: Task, seed: int) -> tuple[list, list]:
    """Fit on train, predict dev and test. Returns (dev predictions, test predictions)."""
    classifier = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    if task.type == "classification":
        model = make_pipeline(TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1), classifier)
        model.fit([t for t, _ in task.train], [y for _, y in task.train])
        return tuple(list(model.predict([t for t, _ in split])) for split in (task.dev, task.test))
    model = make_pipeline(DictVectorizer(), classifier)
    model.fit([_word_features(w, i) for w, _ in task.train for i in range(len(w))],
              [tag for _, tags in task.train for tag in tags])

    def predict(split: list) -> list[list[str]]:
        flat = list(model.predict([_word_features(w, i) for w, _ in split for i in range(len(w))]))
        out, start = [], 0
        for words, _ in split:
            out.append(flat[start : start + len(words)])
            start += len(words)
        return out

    return predict(task.dev), predict(task.test)

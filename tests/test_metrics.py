import numpy as np
import pytest
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics import precision_score as seqeval_precision
from seqeval.metrics import recall_score as seqeval_recall
from sklearn.metrics import f1_score as sklearn_f1
from sklearn.preprocessing import MultiLabelBinarizer

from domainlm.tasks.metrics import class_labels, example_stats, metrics_from_stats, task_metrics
from domainlm.tasks.tagging import spans, to_scheme
from domainlm.tasks.types import TASK_TYPES


def random_bio(rng, length, types=("X", "Y")):
    """Random BIO tags, including ill-formed ones (I- after O, I- of another type)."""
    tags = []
    for prefix in rng.choice(["O", "O", "B", "I"], size=length):
        tags.append("O" if prefix == "O" else f"{prefix}-{rng.choice(types)}")
    return tags


def valid_iob2(rng, length, types=("X", "Y")):
    """Random well-formed IOB2 tags: every entity starts with B-."""
    tags, previous_type = [], None
    for _ in range(length):
        choice = rng.choice(["O", "B", "I"])
        if choice == "I" and previous_type is not None:
            tags.append(f"I-{previous_type}")
        elif choice == "O":
            tags.append("O")
            previous_type = None
        else:
            previous_type = str(rng.choice(types))
            tags.append(f"B-{previous_type}")
    return tags


# --- spans and schemes --------------------------------------------------------------------------

def test_spans_lenient_iob1_and_other_schemes():
    # IOB1: I- after O starts an entity; B- only separates adjacent same-type entities; type changes split
    assert spans(["O", "I-X", "I-X", "B-X", "O", "I-Y", "I-X"]) == [(1, 3, "X"), (3, 4, "X"), (5, 6, "Y"), (6, 7, "X")]
    assert spans(["B-X", "E-X", "I-X", "S-Y", "E-Y"]) == [(0, 2, "X"), (2, 3, "X"), (3, 4, "Y"), (4, 5, "Y")]
    assert spans(["U-X", "B-Y", "L-Y", "O"]) == [(0, 1, "X"), (1, 3, "Y")]  # BILOU
    assert spans(["B", "I", "O", "I", "B"]) == [(0, 2, ""), (3, 4, ""), (4, 5, "")]  # typeless tags
    assert spans(["Disease", "Disease", "O", "Gene"]) == [(0, 2, "Disease"), (3, 4, "Gene")]  # bare IO types
    assert spans(["I-X", "I-X"]) == [(0, 2, "X")]  # an IO run is one entity
    assert spans([]) == []


def test_to_scheme_encodings_and_round_trip():
    tags = ["B-D", "I-D", "B-D", "O", "B-C"]
    assert to_scheme(tags, "bioes") == ["B-D", "E-D", "S-D", "O", "S-C"]
    assert to_scheme(tags, "io") == ["I-D", "I-D", "I-D", "O", "I-C"]
    # IO cannot mark the boundary between the two adjacent D entities
    assert to_scheme(to_scheme(tags, "io"), "bio") == ["B-D", "I-D", "I-D", "O", "B-C"]
    assert to_scheme(["O", "I-X", "I-X"], "BIO") == ["O", "B-X", "I-X"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        iob2 = valid_iob2(rng, int(rng.integers(0, 12)))
        assert to_scheme(to_scheme(iob2, "bioes"), "bio") == iob2
        assert to_scheme(iob2, "bio") == iob2
    with pytest.raises(ValueError, match="iobes2"):
        to_scheme(tags, "iobes2")


def test_entity_scores_differ_by_scheme():
    gold = ["B-D", "I-D", "B-D", "O", "B-C"]  # D(0-2), D(2), C(4)
    predicted = ["B-D", "I-D", "I-D", "O", "B-C"]  # D(0-3), C(4): the boundary between the Ds is missed
    for scheme, expected in (("bio", (1 / 2, 1 / 3)), ("bioes", (1 / 2, 1 / 3)), ("io", (1.0, 1.0))):
        m = task_metrics("token-classification", [to_scheme(gold, scheme)], [to_scheme(predicted, scheme)])
        precision, recall = expected
        assert m["entity_precision"] == pytest.approx(precision), scheme
        assert m["entity_recall"] == pytest.approx(recall), scheme
        assert m["entity_f1"] == pytest.approx(2 * precision * recall / (precision + recall)), scheme
    # IO merges the two gold Ds, so under IO the boundary error is invisible
    assert spans(to_scheme(gold, "io")) == [(0, 3, "D"), (4, 5, "C")]


def test_entity_f1_by_hand_across_sentences():
    gold = [["B-D", "I-D", "O", "B-D"], ["O", "B-C"]]
    predicted = [["B-D", "I-D", "O", "O"], ["O", "B-D"]]
    # gold entities: D(0-2), D(3), C(1); predicted: D(0-2), D(1) -> 1 of 2 predicted right, 1 of 3 gold found
    np.testing.assert_array_equal(example_stats("token-classification", gold, predicted), [[1, 1, 2], [0, 1, 1]])
    m = task_metrics("token-classification", gold, predicted)
    assert m["entity_precision"] == pytest.approx(1 / 2)
    assert m["entity_recall"] == pytest.approx(1 / 3)
    assert m["entity_f1"] == pytest.approx(0.4)
    assert task_metrics("token-classification", [["O", "O"]], [["O", "O"]]) == {
        "entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


def test_entity_scores_match_seqeval_on_random_bio():
    rng = np.random.default_rng(1)
    gold = [random_bio(rng, int(rng.integers(1, 15))) for _ in range(300)]
    predicted = [[g if rng.random() < 0.7 else t for g, t in zip(sentence, random_bio(rng, len(sentence)), strict=True)]
                 for sentence in gold]
    m = task_metrics("token-classification", gold, predicted)
    assert m["entity_f1"] > 0.3  # the random predictions overlap gold, so the comparison is not all zeros
    assert m["entity_precision"] == pytest.approx(seqeval_precision(gold, predicted))
    assert m["entity_recall"] == pytest.approx(seqeval_recall(gold, predicted))
    assert m["entity_f1"] == pytest.approx(seqeval_f1(gold, predicted))


# --- label metrics ------------------------------------------------------------------------------

def test_micro_and_macro_f1_by_hand():
    gold = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "c", "c"]
    # a: tp 2, fn 1 -> F1 4/5; b: tp 1, fp 1, fn 1 -> 1/2; c: tp 1, fp 1 -> 2/3
    m = task_metrics("classification", gold, predicted)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["micro_f1"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx(sklearn_f1(gold, predicted, average="macro"))
    # a listed class that never occurs does not count towards macro F1
    assert task_metrics("classification", gold, predicted, labels=["d", "a", "b", "c"]) == m


def test_macro_f1_counts_classes_seen_only_in_predictions():
    gold, predicted = ["a", "a", "b"], ["a", "c", "b"]
    # "c" is missing from the label list, predicted once, never gold: F1 0 and it counts
    assert class_labels("classification", gold, predicted, ["b", "a"]) == ["b", "a", "c"]
    m = task_metrics("relation", gold, predicted, labels=["b", "a"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["macro_f1"] == pytest.approx(sklearn_f1(gold, predicted, average="macro"))
    assert task_metrics("classification", gold, predicted)["accuracy"] == pytest.approx(2 / 3)


def test_multiple_choice_indices_are_labels():
    m = task_metrics("multiple-choice", [0, 1, 2, 3], ["0", 1, 3, 3])
    assert m["accuracy"] == pytest.approx(3 / 4)


def test_multi_label_by_hand():
    gold = [["a", "b"], ["a"], ["c"]]
    predicted = [["a"], ["a", "c"], ["c"]]
    # a: tp 2 -> F1 1; b: fn 1 -> 0; c: tp 1, fp 1 -> 2/3; micro: tp 3, fp 1, fn 1 -> 6/8
    m = task_metrics("multi-label", gold, predicted)
    assert m["micro_f1"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    binarizer = MultiLabelBinarizer().fit(gold + predicted)
    y_true, y_pred = binarizer.transform(gold), binarizer.transform(predicted)
    assert m["micro_f1"] == pytest.approx(sklearn_f1(y_true, y_pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(sklearn_f1(y_true, y_pred, average="macro"))


def test_pearson_and_mse_match_numpy():
    rng = np.random.default_rng(2)
    gold = 1e6 + rng.normal(size=200)  # a large offset: sums of squares would lose precision uncentred
    predicted = gold + rng.normal(scale=0.5, size=200)
    m = task_metrics("regression", list(gold), list(predicted))
    assert m["pearson"] == pytest.approx(np.corrcoef(gold, predicted)[0, 1], abs=1e-9)
    assert m["mse"] == pytest.approx(np.mean((gold - predicted) ** 2))
    constant = task_metrics("regression", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert constant["pearson"] == 0.0
    assert constant["mse"] == pytest.approx(2 / 3)


# --- statistics in batches ----------------------------------------------------------------------

def _random_task(task_type, rng, n=40):
    if task_type == "token-classification":
        gold = [random_bio(rng, 6) for _ in range(n)]
        return gold, [random_bio(rng, 6) for _ in range(n)]
    if task_type == "regression":
        return list(rng.normal(size=n)), list(rng.normal(size=n))
    if task_type == "retrieval":  # judged documents per query; rankings of 12 of 20 documents
        documents = [f"d{i}" for i in range(20)]
        return ([{d: int(rng.integers(1, 3)) for d in rng.choice(documents, size=3, replace=False)} for _ in range(n)],
                [list(rng.choice(documents, size=12, replace=False)) for _ in range(n)])
    if task_type == "multi-label":
        def draw():
            return [label for label in "abcd" if rng.random() < 0.4]
        return [draw() for _ in range(n)], [draw() for _ in range(n)]
    return list(rng.choice(list("abcd"), size=n)), list(rng.choice(list("abcde"), size=n))


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_batch_of_totals_equals_looping(task_type):
    rng = np.random.default_rng(3)
    gold, predicted = _random_task(task_type, rng)
    labels = class_labels(task_type, gold, predicted)
    stats = example_stats(task_type, gold, predicted, labels)
    assert stats.shape[0] == len(gold) and stats.dtype == np.float64
    weights = rng.multinomial(len(gold), np.full(len(gold), 1 / len(gold)), size=6)  # 6 resamples
    batch = metrics_from_stats(task_type, weights @ stats, labels or None)
    assert TASK_TYPES[task_type].headline in batch
    for b, row in enumerate(weights @ stats):
        single = metrics_from_stats(task_type, row, labels or None)
        assert set(single) == set(batch)
        for name, value in single.items():
            assert isinstance(value, float)
            assert batch[name].shape == (6,)
            assert batch[name][b] == pytest.approx(value)
    # the full-set totals reproduce task_metrics
    assert metrics_from_stats(task_type, stats.sum(axis=0), labels or None) == pytest.approx(
        task_metrics(task_type, gold, predicted))


def test_metrics_from_stats_checks_labels_and_types():
    stats = example_stats("classification", ["a", "b"], ["a", "c"])
    with pytest.raises(ValueError, match="class_labels"):
        metrics_from_stats("classification", stats.sum(axis=0), ["a", "b"])
    with pytest.raises(ValueError, match="unknown task type"):
        task_metrics("ranking", ["a"], ["a"])

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from tokenizers import Tokenizer, models, pre_tokenizers

from domainlm.evaluate.distance import domain_distance, unigram_divergence
from domainlm.report.stats import paired_bootstrap, rank_correlation, suite_score
from domainlm.tasks.metrics import task_metrics


def simulated_predictions(rng, gold, accuracy, seeds):
    """One prediction list per seed from a binary classifier right with probability `accuracy`."""
    flipped = {"yes": "no", "no": "yes"}
    return [[g if right else flipped[g] for g, right in zip(gold, rng.random(len(gold)) < accuracy, strict=True)]
            for _ in range(seeds)]


# --- paired bootstrap ---------------------------------------------------------------------------

def test_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    covered, simulations = 0, 100
    for simulation in range(simulations):
        gold = ["yes" if coin else "no" for coin in rng.random(1000) < 0.5]  # a fresh test set each time
        a = simulated_predictions(rng, gold, 0.80, seeds=3)
        b = simulated_predictions(rng, gold, 0.75, seeds=3)
        result = paired_bootstrap("classification", gold, a, b, "accuracy", samples=500, seed=simulation)
        covered += result["low"] <= 0.05 <= result["high"]
    assert covered >= 88  # nominal 95; 88 is ~3.5 binomial standard deviations below it


def test_bootstrap_separates_a_clear_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    gold = list(rng.choice(["yes", "no"], size=500))
    strong, weak = simulated_predictions(rng, gold, 0.9, 3), simulated_predictions(rng, gold, 0.7, 2)
    clear = paired_bootstrap("classification", gold, strong, weak, "accuracy", samples=500)
    assert clear["low"] > 0.1 and clear["high"] < 0.3
    assert clear["p_value"] < 0.01
    expected = np.mean([task_metrics("classification", gold, p)["accuracy"] for p in strong]) - np.mean(
        [task_metrics("classification", gold, p)["accuracy"] for p in weak])
    assert clear["difference"] == pytest.approx(expected)
    assert clear["samples"] == 500

    same = simulated_predictions(rng, gold, 0.8, 3)
    other_run = simulated_predictions(rng, gold, 0.8, 3)  # the same classifier, other seeds
    null = paired_bootstrap("classification", gold, same, other_run, "micro_f1", samples=500)
    assert null["low"] < 0 < null["high"]
    assert null["p_value"] > 0.05
    # A model against itself: no difference, but its seeds' spread shows (another run could differ) ...
    identical = paired_bootstrap("classification", gold, same, same, "macro_f1", samples=200)
    assert identical["difference"] == 0.0 and identical["low"] < 0 < identical["high"]
    assert identical["p_value"] > 0.5 and identical["seeds"] == [3, 3]
    # ... and with one seed each, nothing varies: no seed variance was measured.
    single = paired_bootstrap("classification", gold, same[:1], same[:1], "macro_f1", samples=200)
    assert single["low"] == single["high"] == 0.0 and single["p_value"] == 1.0


def test_the_interval_widens_with_the_seeds_spread():
    rng = np.random.default_rng(3)
    gold = list(rng.choice(["yes", "no"], size=400))
    steady = simulated_predictions(rng, gold, 0.8, 1) * 3  # three seeds that agree
    shaky = [simulated_predictions(rng, gold, accuracy, 1)[0] for accuracy in (0.65, 0.8, 0.95)]  # seeds that don't
    reference = simulated_predictions(rng, gold, 0.8, 1)
    calm = paired_bootstrap("classification", gold, steady, reference, "accuracy", samples=400)
    wide = paired_bootstrap("classification", gold, shaky, reference, "accuracy", samples=400)
    assert (wide["high"] - wide["low"]) > 2 * (calm["high"] - calm["low"])


def test_bootstrap_is_deterministic_and_handles_entities():
    gold = [["B-X", "I-X", "O"], ["O", "B-Y"], ["B-X", "O", "B-X"], ["O", "O"]] * 10
    a = [gold, [["O"] * len(s) for s in gold]]
    b = [[["B-X"] + ["O"] * (len(s) - 1) for s in gold]]
    first = paired_bootstrap("token-classification", gold, a, b, "entity_f1", samples=300, seed=5)
    assert first == paired_bootstrap("token-classification", gold, a, b, "entity_f1", samples=300, seed=5)
    # model a: its seeds score 1.0 and 0.0; model b predicts X(0-1) everywhere, right only in the
    # third sentence of each four: tp 10 of 40 predicted and 40 gold -> F1 0.25
    assert task_metrics("token-classification", gold, b[0])["entity_f1"] == pytest.approx(0.25)
    assert first["difference"] == pytest.approx(0.5 - 0.25)
    with pytest.raises(ValueError, match="predictions for 40 test examples"):
        paired_bootstrap("token-classification", gold, a, [gold[:-1]], "entity_f1")
    with pytest.raises(ValueError, match="no metric 'accuracy'"):
        paired_bootstrap("token-classification", gold, a, b, "accuracy")


# --- suite score and rank correlation -----------------------------------------------------------

def test_suite_score_averages_within_then_across_types():
    types = {"ner-a": "token-classification", "ner-b": "token-classification", "topic": "classification"}
    assert suite_score({"ner-a": 0.8, "ner-b": 0.6, "topic": 0.9}, types) == pytest.approx(((0.8 + 0.6) / 2 + 0.9) / 2)
    assert suite_score({"ner-a": 0.8, "ner-b": float("nan"), "topic": 0.9}, types) == pytest.approx(0.85)
    assert suite_score({"ner-b": 0.6}, types) == pytest.approx(0.6)
    assert math.isnan(suite_score({}, types))
    with pytest.raises(ValueError, match="relations"):
        suite_score({"relations": 0.5}, types)


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert rank_correlation([1, 2, None, 4, 5], [1, 3, 7, 2, 4]) == pytest.approx(0.8)  # the None pair is dropped
    assert rank_correlation([1, 2], [2, 1]) is None
    assert rank_correlation([1, 2, 3], [5, 5, 5]) is None


# --- domain distance ----------------------------------------------------------------------------

def test_unigram_divergence():
    assert unigram_divergence(["The cat sat", "on the mat"], ["the CAT sat on", "the mat"]) == pytest.approx(0.0)
    assert unigram_divergence(["alpha beta"], ["gamma delta"]) == pytest.approx(1.0)
    # p = (1/2, 1/2), q = (1, 0) over (a, b)
    expected = jensenshannon([0.5, 0.5], [1.0, 0.0], base=2) ** 2
    assert unigram_divergence(["a b"], ["a a"]) == pytest.approx(expected)
    assert expected == pytest.approx(0.3113, abs=1e-4)
    assert math.isnan(unigram_divergence(["..."], ["a"]))


def small_wordpiece():
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["the", "cat", "sat", "on", "mat"]
    vocab = ["[UNK]", *words, *letters, *(f"##{c}" for c in letters)]
    tokenizer = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def test_domain_distance_fertility():
    tokenizer = small_wordpiece()
    general = domain_distance(["the cat sat", "on the mat"], tokenizer, general_texts=["the cat sat on the mat"])
    assert general == {"fertility": 1.0, "split_share": 0.0, "unknown_share": 0.0, "js_divergence": pytest.approx(0.0),
                       "words": 6}
    # "zebra" -> z ##e ##b ##r ##a, "cat" whole, "kinase" -> 6 pieces
    domain = domain_distance(["zebra cat kinase"], tokenizer, general_texts=["the cat sat on the mat"])
    assert domain["fertility"] == pytest.approx((5 + 1 + 6) / 3)
    assert domain["split_share"] == pytest.approx(2 / 3)
    assert domain["js_divergence"] > 0.5
    assert domain_distance(["cat"] + ["zebra"] * 5, tokenizer, max_texts=1)["fertility"] == 1.0
    assert domain_distance(["cat"], tokenizer)["js_divergence"] is None
    unknown = domain_distance(["cat Ωmega"], tokenizer)  # no piece spells Ω: the whole word is [UNK]
    assert (unknown["unknown_share"], unknown["split_share"], unknown["fertility"]) == (0.5, 0.5, 1.0)


def test_score_interval_is_the_mean_over_runs_with_examples_and_runs_resampled():
    from domainlm.report.stats import score_interval

    gold = ["a", "b"] * 20
    right = score_interval("classification", gold, [gold, gold], "accuracy", samples=200)
    assert (right["mean"], right["low"], right["high"], right["runs"]) == (1.0, 1.0, 1.0, 2)
    wrong = ["b", "a"] * 20
    split = score_interval("classification", gold, [gold, wrong], "accuracy", samples=400, seed=1)
    assert split["mean"] == 0.5 and (split["low"], split["high"]) == (0.0, 1.0)  # two runs drawn: both wrong, both right
    with pytest.raises(ValueError, match="40 predictions"):
        score_interval("classification", gold, [gold[:3]], "accuracy")

"""The sentences that open a report: which model to use per task, whether domain pretraining
paid and at what cost, what to try next."""

from domainlm.report.comparison import decision, still_falling


def _pick(task, use, best=None, score=0.8, best_score=None):
    return {"task": task, "metric": "f1", "use": use, "best": best or use, "use_score": score,
            "best_score": best_score or score, "parameters": 0, "level": [use]}


def test_the_loss_is_still_falling_when_its_last_tenth_is_clearly_below_the_one_before():
    assert still_falling({"loss": [10 - 0.05 * i for i in range(100)]}) > 0.02
    assert abs(still_falling({"loss": [3.0] * 100})) < 1e-9
    assert still_falling({"loss": [3.0] * 10}) is None and still_falling(None) is None


def test_a_domain_model_that_wins_is_the_one_to_use_and_pretraining_paid():
    chosen = [_pick("ner", "domain", score=0.71), _pick("cls", "domain", score=0.9)]
    intervals = [{"task": "ner", "model": "domain", "reference": "minilm", "low": 0.01, "high": 0.05},
                 {"task": "cls", "model": "domain", "reference": "minilm", "low": -0.02, "high": 0.03}]
    costs = {"domain": {"seconds": 1800.0, "device": "cpu", "tokens": 10}}
    said = decision(chosen, ["domain"], ["minilm"], intervals, costs, falling=0.05)
    assert said.startswith("Use **domain** for all 2 tasks (the best on each).")
    assert "Domain pretraining paid here (0.50 hours of pretraining)" in said and "above minilm on ner" in said
    assert "Next: a larger pretraining budget" in said and "5.0% lower" in said


def test_when_the_general_model_wins_it_says_so_and_what_next():
    chosen = [_pick("ner", "minilm"), _pick("cls", "tfidf", best="minilm", score=0.80, best_score=0.81)]
    intervals = [{"task": t, "model": "domain", "reference": "minilm", "low": -0.1, "high": -0.01} for t in ("ner", "cls")]
    said = decision(chosen, ["domain"], ["minilm"], intervals, {}, falling=0.0)
    assert said.startswith("Use **minilm** for ner (80.0, the best); **tfidf** for cls (80.0, not measurably below "
                           "minilm's 81.0 with fewer parameters).")
    assert "Domain pretraining did not pay here: no model pretrained here is measurably better than minilm" in said
    assert said.endswith("Next: use the general model, or try where domain models gain most — fewer labels, or tasks "
                         "far from general text.")
    assert decision([], ["domain"], ["minilm"], [], {}, None) == ""


def test_a_win_where_a_model_did_not_learn_is_no_win_and_a_win_that_is_not_used_does_not_pay():
    # the demo: domain far above random-init on a task both failed (far below TF-IDF), TF-IDF used there
    chosen = [_pick("module", "tfidf", score=0.685), _pick("params", "minilm", score=0.579)]
    intervals = [{"task": "module", "model": "domain", "reference": "random-init", "low": 0.08, "high": 0.18},
                 {"task": "params", "model": "domain", "reference": "random-init", "low": -0.02, "high": 0.05}]
    failed = {"module": {"domain": "32 points below TF-IDF", "random-init": "45 points below TF-IDF"}}
    said = decision(chosen, ["domain"], ["random-init"], intervals, {}, 0.0, failed)
    assert "no model pretrained here is measurably better than random-init on any task" in said
    assert said.endswith("Next: use the general model, or try where domain models gain most — fewer labels, or tasks "
                         "far from general text.")
    said = decision(chosen, ["domain"], ["random-init"], intervals, {}, 0.0)  # both learned module: a real win
    assert "did not pay here: a model pretrained here is measurably above random-init on module, but not the " \
           "one to use on any task." in said and "Next: use the general model" in said

import pytest

from domainlm.config import EvaluateConfig, TaskConfig
from domainlm.evaluate.baselines import tfidf_predict
from domainlm.evaluate.metrics import classification_metrics, token_metrics
from domainlm.evaluate.tasks import Task, load_task, read_conll


def test_classification_metrics_by_hand():
    gold = ["a", "a", "b", "c"]
    predicted = ["a", "b", "b", "b"]
    m = classification_metrics(gold, predicted)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["micro_f1"] == pytest.approx(0.5)
    # per class F1: a = 2*1*0.5/1.5 = 2/3, b = 2*(1/3)*1/(4/3) = 0.5, c = 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)


def test_entity_f1_by_hand():
    gold = [["B-D", "I-D", "O", "B-D"], ["O", "B-C"]]
    predicted = [["B-D", "I-D", "O", "O"], ["O", "B-D"]]
    # gold entities: D(0-1), D(3), C(1); predicted: D(0-1), D(1 of sentence 2) -> 1 correct
    m = token_metrics(gold, predicted)
    assert m["entity_precision"] == pytest.approx(1 / 2)
    assert m["entity_recall"] == pytest.approx(1 / 3)
    assert m["entity_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_read_conll(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("Aspirin\tB-CHEM\nworks\tO\n\n\nIt\tO\nhelps\tO\n")
    assert read_conll(str(path)) == [(["Aspirin", "works"], ["B-CHEM", "O"]), (["It", "helps"], ["O", "O"])]


def test_tasks_load_and_subsample_deterministically(tiny_recipe):
    config = TaskConfig(**tiny_recipe["tasks"][0], max_train_examples=10)
    a, b = load_task(config, seed=3), load_task(config, seed=3)
    assert a.train == b.train and len(a.train) == 10
    assert a.labels == ["onc", "other"] and a.metric == "micro_f1"
    ner = load_task(TaskConfig(**tiny_recipe["tasks"][1]))
    assert ner.labels == ["B-CHEM", "O"] and ner.metric == "entity_f1"


def test_tfidf_baseline_learns_separable_tasks():
    texts = [("red apple fruit", "fruit"), ("green pear fruit", "fruit"), ("blue car engine", "car"),
             ("fast car wheel", "car")] * 5
    task = Task("t", "classification", texts, texts[:4], texts[:4], ["car", "fruit"])
    _, test = tfidf_predict(task, seed=0)
    assert test == [label for _, label in texts[:4]]
    sentences = [(["take", "aspirin", "daily"], ["O", "B-CHEM", "O"]), (["no", "ibuprofen", "today"], ["O", "B-CHEM", "O"])] * 5
    ner = Task("n", "token-classification", sentences, sentences[:2], sentences[:2], ["B-CHEM", "O"])
    _, tags = tfidf_predict(ner, seed=0)
    assert tags == [t for _, t in sentences[:2]]


@pytest.mark.slow
def test_finetune_both_task_types_on_a_tiny_model(tiny_recipe, tmp_path):
    """A tiny random BERT fine-tunes on both task types and its predictions have the right shape."""
    from transformers import BertConfig, BertForMaskedLM

    from conftest import synthetic_texts
    from domainlm.config import TokenizerConfig
    from domainlm.evaluate.finetune import finetune
    from domainlm.tokenizer import save_for_transformers, train_wordpiece

    model_dir = tmp_path / "model"
    tokenizer = train_wordpiece(synthetic_texts(200), TokenizerConfig(vocab_size=150, min_frequency=1))
    save_for_transformers(tokenizer, model_dir)
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64)).save_pretrained(model_dir)
    config = EvaluateConfig(epochs=2, batch_size=8, max_length=16, lr=1e-3)
    for task_config in tiny_recipe["tasks"]:
        task = load_task(TaskConfig(**task_config))
        result = finetune(model_dir, pretrained=False, task=task, seed=0, config=config)
        assert len(result["predictions"]) == len(task.test)
        assert len(result["dev_scores"]) == 2 and 1 <= result["best_epoch"] <= 2
        assert 0.0 <= result["metrics"][task.metric] <= 1.0
        if task.type == "token-classification":
            assert [len(p) for p in result["predictions"]] == [len(w) for w, _ in task.test]
            assert result["truncated"]["test"] > 0  # max_length 16 cuts the longer sentences


def test_summarize_mean_and_std_over_seeds():
    from domainlm.evaluate.metrics import summarize

    rows = [{"model": "m", "task": "t", "seed": s, "metric": "f1", "value": v} for s, v in enumerate([0.5, 0.7, 0.9])]
    rows.append({"model": "m", "task": "t", "seed": 0, "metric": "other", "value": 0.0})
    (entry,) = summarize(rows, [{"name": "t", "metric": "f1"}])
    assert entry["n"] == 3 and entry["mean"] == pytest.approx(0.7) and entry["std"] == pytest.approx(0.2)

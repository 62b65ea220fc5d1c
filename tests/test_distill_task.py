"""Task-level knowledge distillation (evaluate kind `distilled`): the soft-target loss, soft targets
carried across tokenizers, the config's checks, and a tiny end-to-end run."""

import json

import pytest
import torch
from pydantic import ValidationError

from domainlm.config import EvaluateConfig, TaskConfig
from domainlm.evaluate.finetune import (
    collate,
    distillation_loss,
    encode,
    load_model,
    soft_targets,
    task_tokenizer,
    with_soft_targets,
)
from domainlm.tasks.load import load_task
from test_evaluate import _run_config, task_entries, tiny_model, tiny_modernbert  # noqa: F401 - fixtures

TEMPERATURE = 2.0


@pytest.fixture
def small_student(tmp_path, tiny_model):  # noqa: F811
    """A narrower BERT (hidden 16) with the tiny model's vocabulary."""
    import shutil

    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, folder / name)
    vocab_size = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    BertForMaskedLM(BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("target", ["class", "tags", "classes"])
def test_loss_is_zero_on_the_models_own_probabilities_and_positive_elsewhere(target):
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 5) if target == "tags" else torch.randn(4, 5)
    own = logits.sigmoid() if target == "classes" else logits.softmax(-1)  # T = 1 ...
    hot = torch.nn.functional.softmax(logits / TEMPERATURE, -1) if target != "classes" else (logits / TEMPERATURE).sigmoid()
    mask = torch.rand(4, 7) > 0.3 if target == "tags" else None
    assert float(distillation_loss(logits, own, target, 1.0, mask)) == pytest.approx(0, abs=1e-6)
    assert float(distillation_loss(logits, hot, target, TEMPERATURE, mask)) == pytest.approx(0, abs=1e-6)
    other = torch.randn_like(logits)
    assert float(distillation_loss(other, hot, target, TEMPERATURE, mask)) > 1e-3


@pytest.mark.parametrize("kind", ["classification", "token-classification", "multi-label"])
def test_a_student_with_the_teachers_weights_has_zero_loss_on_its_soft_targets(kind, task_entries, tiny_model):  # noqa: F811
    """The whole soft path (teacher probabilities at T per example or per word -> items -> batch)
    against the same weights' own logits."""
    task = load_task(TaskConfig(**task_entries[kind]))
    tokenizer = task_tokenizer(tiny_model, task)
    torch.manual_seed(0)
    model = load_model(tiny_model, task, pretrained=True, vocab_size=len(tokenizer)).eval()
    examples = task.train[:10]
    data = encode(tokenizer, task, examples, max_length=64)
    targets = soft_targets(model, data, task, examples, TEMPERATURE, 4, tokenizer.pad_token_id, "cpu")
    batch = collate(with_soft_targets(data, targets, task).items, task, tokenizer.pad_token_id)
    soft, labels = batch.pop("soft_targets"), batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    mask = labels != -100 if task.target == "tags" else None
    assert float(distillation_loss(logits, soft, task.target, TEMPERATURE, mask)) == pytest.approx(0, abs=1e-5)


def test_word_soft_targets_reach_the_first_piece_of_each_word_under_another_tokenizer(task_entries, tiny_model,  # noqa: F811
                                                                                      tiny_modernbert):  # noqa: F811
    """A teacher with a byte-level BPE vocabulary, a student with WordPiece: each word's
    probabilities land on the student's first piece of that word."""
    task = load_task(TaskConfig(**task_entries["token-classification"]))
    examples = task.train[:6]
    teacher_tokenizer = task_tokenizer(tiny_modernbert, task)
    teacher = load_model(tiny_modernbert, task, pretrained=True, vocab_size=len(teacher_tokenizer))
    targets = soft_targets(teacher, encode(teacher_tokenizer, task, examples, 64), task, examples, TEMPERATURE, 4,
                           teacher_tokenizer.pad_token_id, "cpu")
    assert [len(t) for t in targets] == [len(x["tokens"]) for x in examples]
    student = with_soft_targets(encode(task_tokenizer(tiny_model, task), task, examples, 16), targets, task)
    for item in student.items:
        for position, word in enumerate(item["words"]):
            expected = [0.0] * len(task.labels) if word is None else targets[item["example"]][word]
            assert item["soft"][position] == expected
            assert (word is None) == (item["label"][position] == -100)


# ----------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(("entry", "message"), [
    ({"teacher": "big"}, "needs a `student`"),
    ({"student": "small"}, "needs a `teacher`"),
    ({"teacher": "big", "student": "tfidf"}, "student 'tfidf' is a tfidf model"),
    ({"teacher": "tfidf", "student": "small"}, "teacher 'tfidf' is a tfidf model"),
    ({"teacher": "big", "student": "nobody"}, "student 'nobody' is not a model name"),
    ({"teacher": "nobody", "student": "small"}, "teacher 'nobody' is not a model name"),
    ({"teacher": "big", "student": "st"}, "student 'st' is a self-training model"),
    ({"teacher": "big", "student": "small", "temperature": 0}, r"models.4.temperature\n.*greater than 0"),
])
def test_config_names_the_distilled_entry_and_what_is_wrong(entry, message):
    models = [{"name": "big", "kind": "domain"}, {"name": "small", "kind": "random-init"},
              {"name": "tfidf", "kind": "tfidf"}, {"name": "st", "kind": "self-training", "teacher": "big"},
              {"name": "kd", "kind": "distilled", **entry}]
    with pytest.raises(ValidationError, match=message) as caught:
        EvaluateConfig(models=models)
    assert "'kd'" in str(caught.value) or "models.4" in str(caught.value)  # the entry, by name or place


def test_config_accepts_a_distilled_entry():
    config = EvaluateConfig(models=[{"name": "big", "kind": "domain"}, {"name": "small", "kind": "random-init"},
                                    {"name": "kd", "kind": "distilled", "teacher": "big", "student": "small"}])
    kd = config.models[-1]
    assert (kd.temperature, kd.distill_epochs, kd.unlabeled, kd.reads_unlabeled) == (2.0, 1, "corpus", True)


# ------------------------------------------------------------------------------------ end to end
def test_distilled_row_records_teacher_and_student_size_speed_and_score(tmp_path, task_entries, tiny_model,  # noqa: F811
                                                                        small_student):
    from domainlm.evaluate import run
    from domainlm.io import read_json

    models = [{"name": "tiny", "kind": "hf", "path": str(tiny_model)},
              {"name": "small", "kind": "hf", "path": str(small_student)},
              {"name": "small-kd", "kind": "distilled", "teacher": "tiny", "student": "small",
               "unlabeled": str(tmp_path / "unlabeled.txt"), "max_unlabeled": 30, "distill_epochs": 2}]
    config = _run_config(tmp_path, task_entries, models, seeds=[0], lr=1e-3,
                         kinds=("classification", "token-classification", "pair-classification"))
    out = config.directory / "evaluate"
    run(config, out)
    for task in ("classification", "token-classification"):
        result = read_json(out / "runs" / "small-kd" / task / "lr-0.001" / "seed-0.json")
        plain = read_json(out / "runs" / "small" / task / "lr-0.001" / "seed-0.json")
        teacher = read_json(out / "runs" / "tiny" / task / "lr-0.001" / "seed-0.json")
        assert (result["teacher"], result["student"], result["unlabeled"]) == ("tiny", "small", 30)
        assert set(result["teacher_metrics"]) == set(teacher["metrics"])
        assert result["parameters"] == plain["parameters"] < result["teacher_parameters"] == teacher["parameters"]
        assert result["test_examples_per_second"] > 0 and result["teacher_test_examples_per_second"] > 0
        assert len(result["distill_losses"]) == 2 and all(loss >= 0 for loss in result["distill_losses"])
        assert len(result["predictions"]) == len(load_task(TaskConfig(**task_entries[task])).test)
    summary = {s["task"]: s for s in read_json(out / "distillation.json")}
    assert set(summary) == {"classification", "token-classification"}
    assert summary["token-classification"]["metric"] == "entity_f1"
    assert summary["classification"]["student"]["name"] == "small"
    assert summary["classification"]["teacher"]["parameters"] > summary["classification"]["student"]["parameters"]
    skipped = read_json(out / "failures.json")["skipped"]
    assert [(s["model"], s["task"]) for s in skipped] == [("small-kd", "pair-classification")]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows if r["model"] == "small-kd"} == {"classification", "token-classification"}

"""The evaluation suite: task readers on small fixtures, every task type end to end on a tiny model,
TF-IDF on every type, the learning-rate grid, self-training, and broken model directories."""

import importlib.util
import json
import random

import pytest

from conftest import tiny_family_model
from domainlm.config import EvaluateConfig, RunConfig, TaskConfig
from domainlm.errors import InputError
from domainlm.evaluate.baselines import tfidf_predict
from domainlm.tasks.load import load_task, mark_entities
from domainlm.tasks.metrics import task_metrics
from domainlm.tasks.readers import read_conll

WORDS = "protein kinase binds receptor cell gene tumor patient therapy dose enzyme inhibitor pathway".split()


def _sentence(rng: random.Random, n: int = 8) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def write_task_files(folder) -> dict[str, dict]:
    """One small task of every type (train 32 / dev 12 / test 12), as recipe task entries."""
    rng = random.Random(0)
    entries = {}

    def jsonl(name, make):
        for split, n in (("train", 32), ("dev", 12), ("test", 12)):
            with open(folder / f"{name}-{split}.jsonl", "w") as handle:
                for _ in range(n):
                    handle.write(json.dumps(make()) + "\n")
        return {s: str(folder / f"{name}-{s}.jsonl") for s in ("train", "dev", "test")}

    def cls():
        words = _sentence(rng)
        return {"text": " ".join(words), "label": "onc" if "tumor" in words else "other"}

    def multi():
        words = _sentence(rng)
        return {"text": " ".join(words), "label": [t for t in ("tumor", "gene") if t in words]}

    def pair():
        a, b = _sentence(rng, 4), _sentence(rng, 4)
        return {"text": " ".join(a), "text_pair": " ".join(b), "label": "same" if a[0] == b[0] else "diff"}

    def regression():
        words = _sentence(rng)
        return {"text": " ".join(words), "label": words.count("tumor") / 4}

    def relation():
        words = _sentence(rng)
        words[1], words[5] = f"<< {words[1]} >>", f"[[ {words[5]} ]]"
        return {"text": " ".join(words), "label": "binds" if "binds" in words else "none"}

    def choice():
        options = rng.sample(WORDS, 3)
        return {"question": f"which is {options[1]}", "options": options, "answer": 1}

    def qa():
        words = _sentence(rng)
        return {"q": "is there a tumor", "ctx": [" ".join(words[:4]), " ".join(words[4:])],
                "decision": "yes" if "tumor" in words else "no"}

    entries["classification"] = {"type": "classification", **jsonl("cls", cls)}
    entries["multi-label"] = {"type": "multi-label", **jsonl("multi", multi)}
    entries["pair-classification"] = {"type": "pair-classification", **jsonl("pair", pair)}
    entries["regression"] = {"type": "regression", **jsonl("reg", regression)}
    entries["relation"] = {"type": "relation", "entity_markers": ["<<", ">>", "[[", "]]"], **jsonl("rel", relation)}
    entries["multiple-choice"] = {"type": "multiple-choice", "fields": {"text": "question", "choices": "options",
                                                                       "label": "answer"}, **jsonl("mc", choice)}
    entries["yes-no-qa"] = {"type": "yes-no-qa", "fields": {"text": "q", "text_pair": "ctx", "label": "decision"},
                            **jsonl("qa", qa)}
    for split, n in (("train", 32), ("dev", 12), ("test", 12)):
        with open(folder / f"ner-{split}.tsv", "w") as handle:
            for _ in range(n):
                for word in _sentence(rng, rng.randint(4, 30)):
                    handle.write(f"{word}\tPOS\tCHUNK\t{'B-CHEM' if word in ('inhibitor', 'enzyme') else 'O'}\n")
                handle.write("\n")
    entries["token-classification"] = {"type": "token-classification", "format": "conll", "tagging": "io",
                                       **{s: str(folder / f"ner-{s}.tsv") for s in ("train", "dev", "test")}}
    return {kind: {"name": kind, **entry} for kind, entry in entries.items()}


@pytest.fixture
def task_entries(tmp_path):
    return write_task_files(tmp_path)


@pytest.fixture
def tiny_model(tmp_path):
    """A 1-layer random BERT with a WordPiece vocabulary over the fixture words."""
    from transformers import BertConfig, BertForMaskedLM

    from domainlm.config import TokenizerConfig
    from domainlm.tokenizer import save_for_transformers, train_wordpiece

    folder = tmp_path / "model"
    texts = [" ".join(_sentence(random.Random(i))) for i in range(200)] + ["same diff onc other which is there a"]
    tokenizer = train_wordpiece(texts, TokenizerConfig(vocab_size=150, min_frequency=1))
    save_for_transformers(tokenizer, folder)
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_modernbert(tmp_path):
    """A 2-layer random ModernBERT (one global, one local layer) with a byte-level BPE vocabulary."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from domainlm.config import TokenizerConfig
    from domainlm.tokenizer import save_for_transformers, train_tokenizer

    folder = tmp_path / "modernbert"
    texts = [" ".join(_sentence(random.Random(i))) for i in range(200)] + ["same diff onc other which is there a"]
    tokenizer = train_tokenizer(texts, TokenizerConfig(model="bpe", vocab_size=300, min_frequency=1))
    save_for_transformers(tokenizer, folder, model_max_length=64)
    ModernBertForMaskedLM(ModernBertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=64, local_attention=8, global_attn_every_n_layers=2,
        pad_token_id=tokenizer.token_to_id("<pad>"), bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"), cls_token_id=tokenizer.token_to_id("<s>"),
        sep_token_id=tokenizer.token_to_id("</s>"))).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------- readers
def test_conll_reader_takes_2_or_4_columns(tmp_path):
    two, four = tmp_path / "two.tsv", tmp_path / "four.txt"
    two.write_text("Aspirin\tB-CHEM\nworks\tO\n\n\nIt\tO\n")
    four.write_text("-DOCSTART- -X- -X- O\n\nAspirin NN B-NP B-CHEM\nworks VB B-VP O\n")
    assert [(r["tokens"], r["tags"]) for r in read_conll(two.read_text(), str(two))] == [
        (["Aspirin", "works"], ["B-CHEM", "O"]), (["It"], ["O"])]
    assert [(r["tokens"], r["tags"]) for r in read_conll(four.read_text(), str(four))] == [
        (["Aspirin", "works"], ["B-CHEM", "O"])]
    chunks = load_task(TaskConfig(name="chunks", type="token-classification", format="conll", fields={"tags": 2},
                                  train=str(four), dev=str(four), test=str(four)))
    assert chunks.train == [{"tokens": ["Aspirin", "works"], "tags": ["B-NP", "B-VP"]}]
    bad = tmp_path / "bad.tsv"
    bad.write_text("Aspirin\tB-CHEM\nlonely\n")
    with pytest.raises(InputError, match=r"bad.tsv:2"):
        read_conll(bad.read_text(), str(bad))


def test_tsv_with_comments_csv_with_header_and_json_object_with_id_filter(tmp_path):
    tsv = tmp_path / "roles.txt"
    tsv.write_text("###123\nbackground\tFirst sentence .\noutcome\tSecond one .\n###456\nother\tThird .\n")
    task = TaskConfig(name="roles", type="classification", format="tsv", columns=["label", "text"],
                      comment_prefix="###", train=str(tsv), dev=str(tsv), test=str(tsv))
    loaded = load_task(task)
    assert [x["label"] for x in loaded.train] == ["background", "outcome", "other"]
    assert loaded.train[2]["text"] == "Third ."

    broken = tmp_path / "broken.txt"
    broken.write_text("###1\nbackground\tFine .\n###2\nno tab here\n")
    with pytest.raises(InputError, match=r"broken.txt:4: expected 2 columns \(label, text\), got 1"):
        load_task(TaskConfig(**{**task.model_dump(), "train": str(broken)}))

    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('premise,hypothesis,score\n"a, b",c,0.5\nd,e,1\n')
    reg = load_task(TaskConfig(name="sts", type="regression", format="csv", train=str(csv_file), dev=str(csv_file),
                               test=str(csv_file), fields={"text": "premise", "text_pair": "hypothesis",
                                                           "label": "score"}))
    assert reg.train[0] == {"text": "a, b", "text_pair": "c", "label": 0.5}

    records = tmp_path / "qa.json"
    records.write_text(json.dumps({str(i): {"Q": f"q{i}", "C": ["x", "y"], "A": "yes" if i % 2 else "no"}
                                   for i in range(30)}))
    test_ids = tmp_path / "test_ids.json"
    test_ids.write_text(json.dumps({str(i): "?" for i in range(10)}))
    qa = load_task(TaskConfig(name="qa", type="yes-no-qa", format="json", fields={"text": "Q", "text_pair": "C",
                                                                                   "label": "A"},
                              train={"path": str(records), "exclude_ids": str(test_ids)},
                              test={"path": str(records), "ids": str(test_ids)}, dev_size=5))
    assert (len(qa.train), len(qa.dev), len(qa.test)) == (15, 5, 10)  # dev held out of train, seeded
    assert qa.test[0] == {"text": "q0", "text_pair": "x y", "label": "no"}
    assert any("split_seed 0" in note for note in qa.notes)
    again = load_task(TaskConfig(**{**qa_config_dump(qa, records, test_ids)}))
    assert again.dev == qa.dev


def qa_config_dump(qa, records, test_ids) -> dict:
    return {"name": "qa", "type": "yes-no-qa", "format": "json", "fields": {"text": "Q", "text_pair": "C", "label": "A"},
            "train": {"path": str(records), "exclude_ids": str(test_ids)},
            "test": {"path": str(records), "ids": str(test_ids)}, "dev_size": 5}


def test_hf_dataset_reader_maps_class_label_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X", "I-X"]))})
    data = datasets.Dataset.from_dict({"tokens": [["a", "b"], ["c"]], "ner": [[1, 2], [0]]}, features=features)
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "hf"))
    task = load_task(TaskConfig(name="hf", type="token-classification", format="hf", fields={"tags": "ner"},
                                train={"path": str(tmp_path / "hf"), "split": "train"},
                                test={"path": str(tmp_path / "hf"), "split": "test"}, dev_size=1))
    assert task.test[0] == {"tokens": ["a", "b"], "tags": ["B-X", "I-X"]}


def test_missing_field_names_the_file_line_and_role(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a", "label": "b"}\n{"txt": "a", "label": "b"}\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: missing field 'text' \(the task's `text`\)"):
        load_task(TaskConfig(name="x", type="classification", train=str(path), dev=str(path), test=str(path)))


def test_entity_markers_marked_or_replaced():
    text = "<< aspirin >> inhibits [[ COX-2 ]] strongly"
    markers = ["<<", ">>", "[[", "]]"]
    assert mark_entities(text, markers, "mark") == "[E1] aspirin [/E1] inhibits [E2] COX-2 [/E2] strongly"
    assert mark_entities(text, markers, "replace") == "[E1] inhibits [E2] strongly"
    assert mark_entities(text, markers, "text") == text


# ------------------------------------------------------------------------------ every type
@pytest.mark.parametrize("model", ["tiny_model", "tiny_modernbert"], ids=["bert", "modernbert"])
def test_every_task_type_fine_tunes_and_scores_on_a_tiny_model(task_entries, model, request):
    from domainlm.evaluate.finetune import finetune

    tiny_model = request.getfixturevalue(model)

    config = EvaluateConfig(epochs=2, patience=1, batch_size=8, max_length=16, lr=1e-3)
    for kind, entry in task_entries.items():
        task = load_task(TaskConfig(**entry))
        result = finetune(tiny_model, pretrained=True, task=task, seed=0, lr=1e-3, config=config)
        predictions = result["predictions"]
        assert len(predictions) == len(task.test), kind
        assert 1 <= result["best_epoch"] <= len(result["dev_scores"]) <= 2, kind
        assert task.metric in result["metrics"], kind
        if kind == "token-classification":
            assert [len(p) for p in predictions] == [len(x["tokens"]) for x in task.test]
            assert result["truncated"]["train"] > 0  # 30-word sentences need windows at max_length 16
        elif kind == "multiple-choice":
            assert set(predictions) <= {"0", "1", "2"}
        elif kind == "regression":
            assert all(isinstance(p, float) for p in predictions)
        elif kind == "multi-label":
            assert all(set(p) <= set(task.labels) for p in predictions)
        else:
            assert set(predictions) <= set(task.labels)
        dev_predictions, test_predictions = tfidf_predict(task, seed=0)
        assert len(test_predictions) == len(task.test) and len(dev_predictions) == len(task.dev)
        assert task.metric in task_metrics(task.type, task.gold("test"), test_predictions, task.labels)


def test_long_sentences_are_predicted_through_windows(task_entries, tiny_model):
    """Every word of a sentence longer than max_length gets a prediction from some window."""
    from domainlm.evaluate.finetune import encode, task_tokenizer

    task = load_task(TaskConfig(**task_entries["token-classification"]))
    tokenizer = task_tokenizer(tiny_model, task)
    data = encode(tokenizer, task, task.test, max_length=10)
    for i, x in enumerate(task.test):
        owned = sorted(it["words"][q] for it in data.items if it["example"] == i for q in it["owned"])
        assert owned == list(range(len(x["tokens"])))  # each word owned by exactly one window
    assert all(len(it["input_ids"]) <= 10 for it in data.items)


def test_tfidf_learns_a_separable_task(task_entries):
    task = load_task(TaskConfig(**task_entries["classification"]))
    _, test = tfidf_predict(task, seed=0)
    assert task_metrics(task.type, task.gold("test"), test)["accuracy"] >= 0.9


# ---------------------------------------------------------------------------- the stage
def _run_config(tmp_path, task_entries, models, kinds=("classification",), run="run", resources=None,
                **evaluate) -> RunConfig:
    corpus = tmp_path / "unlabeled.txt"
    corpus.write_text("\n".join(" ".join(_sentence(random.Random(i))) for i in range(60)) + "\n")
    return RunConfig(name="t", run_dir=str(tmp_path / run), corpus={"sources": [{"path": str(corpus)}]},
                     tasks=[task_entries[k] for k in kinds], resources=resources or {},
                     evaluate={"seeds": [0, 1], "epochs": 1, "batch_size": 8, "max_length": 16, "models": models,
                               **evaluate})


def test_grid_selects_by_dev_and_broken_models_do_not_stop_the_others(tmp_path, task_entries, tiny_model):
    from domainlm.evaluate import run
    from domainlm.io import read_json

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    unsupported = tmp_path / "vit"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "vit"}))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_model / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_weights / name).write_text((tiny_model / name).read_text())
    models = [{"name": "tiny", "kind": "hf", "path": str(tiny_model)},
              {"name": "corrupt", "kind": "hf", "path": str(corrupt)},
              {"name": "vit", "kind": "hf", "path": str(unsupported)},
              {"name": "no-weights", "kind": "hf", "path": str(no_weights)},
              {"name": "tfidf", "kind": "tfidf"}]
    config = _run_config(tmp_path, task_entries, models, lr=[1e-3, 1e-5])
    out = config.directory / "evaluate"
    run(config, out)
    failures = {f["model"]: f["error"] for f in read_json(out / "failures.json")["failed"]}
    assert set(failures) == {"corrupt", "vit", "no-weights"}
    assert "config.json" in failures["corrupt"] and str(corrupt) in failures["corrupt"]
    assert "'vit' has no SequenceClassification head" in failures["vit"]
    assert "weights cannot be loaded" in failures["no-weights"]
    selection = read_json(out / "selection.json")
    grid = selection["tiny"]["classification"]["grid"]
    assert set(grid) == {"0.001", "1e-05"}
    assert selection["tiny"]["classification"]["lr"] == float(max(grid, key=grid.get))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"tiny", "tfidf"}
    assert sorted({r["seed"] for r in rows if r["model"] == "tiny"}) == [0, 1]
    assert read_json(out / "gold" / "classification.json") == [x["label"] for x in
                                                               load_task(TaskConfig(**task_entries["classification"])).test]
    if importlib.util.find_spec("tensorboard"):  # the `tensorboard` extra (installed with `dev`)
        from test_progress import scalars

        curves = scalars(out / "tensorboard" / "tiny" / "classification" / "lr-0.001" / "seed-0")
        assert set(curves) == {"finetune/train_loss", "finetune/lr", "finetune/dev_micro_f1"}
        assert [step for step, _ in curves["finetune/dev_micro_f1"]] == [1]  # one epoch


def test_self_training_row(tmp_path, task_entries, tiny_model):
    from domainlm.evaluate import run
    from domainlm.io import read_json

    models = [{"name": "tiny", "kind": "hf", "path": str(tiny_model)},
              {"name": "tiny-st", "kind": "self-training", "teacher": "tiny", "unlabeled": str(tmp_path / "unlabeled.txt"),
               "max_unlabeled": 40, "confidence": 0.0}]
    config = _run_config(tmp_path, task_entries, models, kinds=("classification", "pair-classification"), lr=1e-3)
    out = config.directory / "evaluate"
    run(config, out)
    result = read_json(out / "runs" / "tiny-st" / "classification" / "lr-0.001" / "seed-0.json")
    assert result["unlabeled"] == 40 and result["pseudo_labeled"] == 40  # confidence 0 keeps every label
    assert "teacher_metrics" in result
    skipped = read_json(out / "failures.json")["skipped"]
    assert [(s["model"], s["task"]) for s in skipped] == [("tiny-st", "pair-classification")]


@pytest.mark.parametrize("family", ["roberta", "electra", "modernbert"])
def test_other_encoder_families_fine_tune(family, task_entries, tiny_model, tmp_path):
    """RoBERTa, ELECTRA and ModernBERT directories load with each head and train (BERT and MiniLM
    are covered above and by the real-data recipe)."""


    from domainlm.evaluate.finetune import finetune

    folder = tiny_family_model(family, tiny_model, tmp_path / family)
    config = EvaluateConfig(epochs=1, batch_size=8, max_length=16)
    for kind in ("classification", "token-classification"):
        task = load_task(TaskConfig(**task_entries[kind]))
        result = finetune(folder, pretrained=True, task=task, seed=0, lr=1e-3, config=config)
        assert len(result["predictions"]) == len(task.test)


@pytest.mark.slow  # the evaluate stage twice, once with a process pool
def test_parallel_workers_give_the_same_runs(tmp_path, task_entries, tiny_model):
    from domainlm.evaluate import run
    from domainlm.io import read_json

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    models = [{"name": "tiny", "kind": "hf", "path": str(tiny_model)}, {"name": "corrupt", "kind": "hf", "path": str(corrupt)},
              {"name": "tfidf", "kind": "tfidf"}]
    outputs = {}
    for workers in (1, 2):
        config = _run_config(tmp_path, task_entries, models, lr=1e-3, run=f"run-{workers}",
                             resources={"evaluate_workers": workers, "evaluate_threads": 1})
        out = config.directory / "evaluate"
        run(config, out)
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        failed = [(f["model"], f["task"]) for f in read_json(out / "failures.json")["failed"]]
        predictions = read_json(out / "runs" / "tiny" / "classification" / "lr-0.001" / "seed-1.json")["predictions"]
        outputs[workers] = ({(r["model"], r["seed"], r["metric"]) for r in rows}, failed, predictions)
    assert outputs[1] == outputs[2]
    assert outputs[2][1] == [("corrupt", "classification")]


@pytest.mark.parametrize("model", ["wordpiece", "bpe", "unigram"])
def test_word_tags_land_on_the_first_piece_of_each_word_whatever_the_vocabulary(model, tmp_path):
    from transformers import AutoTokenizer

    from domainlm.config import TokenizerConfig
    from domainlm.evaluate.finetune import encode_tokens
    from domainlm.tokenizer import save_for_transformers, train_tokenizer

    texts = ["aspirin inhibits the enzyme in the liver"] * 20
    save_for_transformers(train_tokenizer(texts, TokenizerConfig(model=model, vocab_size=300, min_frequency=1)),
                          tmp_path / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    (tmp_path / "ner.tsv").write_text("Aspirin\tB-CHEM\ninhibits\tO\nenzymes\tB-CHEM\n\n")
    task = load_task(TaskConfig(name="ner", type="token-classification", format="conll",
                                **{s: str(tmp_path / "ner.tsv") for s in ("train", "dev", "test")}))
    item = encode_tokens(tokenizer, task, task.train, max_length=64).items[0]
    tokens = tokenizer.convert_ids_to_tokens(item["input_ids"])
    assert (tokens[0], tokens[-1]) == (tokenizer.cls_token, tokenizer.sep_token)
    assert [w for w in item["words"] if w is not None] == [0, 1, 2]  # one labelled piece per word, the first
    labels = [task.labels[label] for label in item["label"] if label != -100]
    assert labels == ["B-CHEM", "O", "B-CHEM"]
    starts = [p for p, w in enumerate(item["words"]) if w is not None] + [len(tokens) - 1]
    words = [tokenizer.decode(item["input_ids"][p:q]).strip() for p, q in zip(starts, starts[1:], strict=False)]
    assert words == ["aspirin", "inhibits", "enzymes"]  # each labelled piece starts its word

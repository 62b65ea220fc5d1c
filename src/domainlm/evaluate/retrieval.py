"""Retrieval runs: BM25, encoders zero-shot, bi-encoders and cross-encoders fine-tuned on a task's
training queries; every run ranks the task's documents for each dev and test query.

- BM25 (Robertson & Zaragoza 2009) with `bm25s` (Lucene's scoring, k1 1.2, b 0.75, English
  stopwords and Snowball stemming; titles a field of their own as in BEIR's Elasticsearch
  baseline): the lexical baseline, standing where TF-IDF stands for other task types.
- A bi-encoder (Reimers & Gurevych 2019; DPR, Karpukhin et al. 2020): query and document embedded
  apart (mean pooling unless the directory says otherwise), ranked by cosine similarity. Zero-shot
  (`finetuning: none`) it is scored as it ships; fine-tuned (`finetuning: head`) it learns the
  training (query, relevant document) pairs with in-batch negatives (multiple-negatives ranking
  loss, Henderson et al. 2017), optionally with `hard_negatives` mined by BM25 per query.
- Unsupervised SimCSE (Gao et al. 2021) adapts an encoder to a domain's text without labels
  before it is used as a bi-encoder: each text is its own positive under two dropout masks, the
  batch's other texts its negatives (the same ranking loss), one pass at lr 3e-5 over texts cut
  to 64 tokens.
- A cross-encoder (Nogueira & Cho 2019, monoBERT; `finetuning: cross-encoder`): query and document
  read together, one relevance logit, trained with binary cross-entropy on each relevant document
  and BM25's non-relevant top documents, reranking BM25's top `rerank_depth`.

sentence-transformers supplies the models and losses; the loop is ours (a few hundred steps on a
CPU do not need its trainer). Each epoch is scored on dev (nDCG@10), the best epoch's weights are
tested, as for every other fine-tuning run. A run returns `finetune`'s keys: `metrics`,
`dev_score`, `predictions` (per test query, its top 100 document ids, best first).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from pathlib import Path

import numpy as np

from domainlm.errors import UnsupportedTask
from domainlm.tasks.load import Task
from domainlm.tasks.metrics import task_metrics

TOP_K = 100
"""Documents kept per query: what recall@100 needs."""
RETRIEVED = TOP_K + 1
"""Documents retrieved per query: one more, as a query's own id is left out of its ranking."""


# --------------------------------------------------------------------------------------- BM25
TIE_BREAKER = 0.5
"""Weight of the weaker field's score: a document's score is its better field's plus this times
the other's (Elasticsearch's `best_fields` multi-match, the query BEIR's BM25 baseline runs)."""


class BM25:
    """A BM25 index of a task's documents (`bm25s`; Lucene's variant, English stopwords, Snowball
    stemming when PyStemmer is installed). Where documents have titles, title and text are two
    fields, each with its own statistics over the documents that have it, combined as BEIR's
    Elasticsearch baseline does (`TIE_BREAKER`); else the text is the one field."""

    def __init__(self, task: Task):
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # one line per index built otherwise

        self.ids = list(task.documents)
        self.stemmer = _stemmer()
        self.fields = []  # (positions of the documents that have the field, index)
        # a document holds its title, a space, then its text
        columns = [[task.documents[d][len(task.titles[d]) + 1:] if d in task.titles else task.documents[d]
                    for d in self.ids]]
        if task.titles:
            columns.append([task.titles.get(d, "") for d in self.ids])
        for column in columns:
            present = np.array([j for j, text in enumerate(column) if text], dtype=np.int64)
            if not len(present):
                continue
            index = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
            index.index(self._tokens([column[j] for j in present]), show_progress=False)
            self.fields.append((present, index))

    def _tokens(self, texts: list[str], return_ids: bool = True):
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, return_ids=return_ids, show_progress=False)

    def scores(self, query: list[str]) -> np.ndarray:
        """(documents,) BM25 score of every document for one tokenised query (0: no shared word)."""
        fields = np.zeros((len(self.fields), len(self.ids)), dtype=np.float32)
        for row, (present, index) in zip(fields, self.fields, strict=True):
            if known := index.get_tokens_ids(query):
                row[present] = index.get_scores(known)
        best = fields.max(axis=0)
        return best + TIE_BREAKER * (fields.sum(axis=0) - best)

    def rank(self, queries: list[str], k: int = RETRIEVED) -> list[list[str]]:
        """Per query, up to `k` document ids, best first (documents sharing no word with it left out)."""
        k = min(k, len(self.ids))
        if len(self.fields) == 1 and len(self.fields[0][0]) == len(self.ids):
            found, scores = self.fields[0][1].retrieve(self._tokens(queries), k=k, show_progress=False, n_threads=1)
        else:
            rows = [self.scores(query) for query in self._tokens(queries, return_ids=False)]
            found = [_top(row, k) for row in rows]
            scores = [row[top] for row, top in zip(rows, found, strict=True)]
        return [[self.ids[j] for j, s in zip(row, score_row, strict=True) if s > 0] for row, score_row in zip(found, scores,
                                                                                                              strict=True)]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` highest scores, best first (ties: the earlier document)."""
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]


def _stemmer():
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords


def bm25_run(task: Task) -> dict:
    """BM25 over the task's documents: dev and test queries ranked, no training."""
    started = time.time()
    index = BM25(task)
    dev = index.rank([x["text"] for x in task.dev]) if task.dev else []
    tested = time.perf_counter()
    test = index.rank([x["text"] for x in task.test])
    return _result(task, dev, test, started, time.perf_counter() - tested)


def final_ranking(queries: list[dict], ranked: list[list[str]]) -> list[list[str]]:
    """Per query, its top `TOP_K` document ids with the query's own id left out: where queries
    are also documents of the collection (BEIR's Quora, ArguAna, CQADupStack), a query finding
    itself is not a result (BEIR's evaluation, `ignore_identical_ids`)."""
    return [[d for d in found if d != x["id"]][:TOP_K] for x, found in zip(queries, ranked, strict=True)]


def _dev_score(task: Task, ranked: list[list[str]]) -> float:
    if not task.dev:
        return 0.0
    return task_metrics(task.type, task.gold("dev"), final_ranking(task.dev, ranked))[task.metric]


def _result(task: Task, dev: list[list[str]], test: list[list[str]], started: float, tested: float, **extra) -> dict:
    dev_score, test = _dev_score(task, dev), final_ranking(task.test, test)
    return {"metrics": task_metrics(task.type, task.gold("test"), test), "dev_score": dev_score,
            "predictions": test, "seconds": round(time.time() - started, 2),
            "test_examples_per_second": round(len(task.test) / max(tested, 1e-9), 1)} | extra


# --------------------------------------------------------------------------------- bi-encoders
def load_bi_encoder(path: Path, max_length: int, device: str, config_kwargs: dict | None = None):
    """A sentence-transformers model of a directory: its own modules when it is a
    sentence-transformers export, else the transformers encoder with mean pooling (`config_kwargs`
    override its transformers config)."""
    from sentence_transformers import SentenceTransformer

    from domainlm.evaluate.finetune import quiet_transformers

    quiet_transformers()
    model = SentenceTransformer(str(path), device=device, local_files_only=True,
                                model_kwargs={"use_safetensors": True}, config_kwargs=config_kwargs)
    model.max_seq_length = max_length
    return model


def embed(model, texts: list[str], batch_size: int):
    """(n, dim) L2-normalised embeddings, float32 tensor on the model's device."""
    return model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                        show_progress_bar=False)


def dense_rank(model, task: Task, queries: list[dict], batch_size: int, documents=None) -> list[list[str]]:
    """Per query, the top `RETRIEVED` document ids by cosine similarity (`documents`: the collection's
    embeddings, computed when not given)."""
    import torch

    if not queries:
        return []
    ids = list(task.documents)
    if documents is None:
        documents = embed(model, list(task.documents.values()), batch_size)
    with torch.no_grad():
        scores = embed(model, [x["text"] for x in queries], batch_size) @ documents.T
        top = scores.topk(min(RETRIEVED, len(ids)), dim=1).indices.cpu().tolist()
    return [[ids[j] for j in row] for row in top]


def training_pairs(task: Task, hard_negatives: int, seed: int) -> list[tuple[str, ...]]:
    """(query, relevant document[, a hard negative]) per training judgement.
    Hard negatives: BM25's top documents for the query that are not judged relevant, one drawn per
    pair from its query's first `hard_negatives`."""
    rng = random.Random(seed)
    negatives = {}
    if hard_negatives:
        ranked = BM25(task).rank([x["text"] for x in task.train], k=hard_negatives + 50)
        for x, found in zip(task.train, ranked, strict=True):
            negatives[x["id"]] = [d for d in found if d not in x["relevant"] and d != x["id"]][:hard_negatives]
    pairs = []
    for x in task.train:
        for document in x["relevant"]:
            pair = (x["text"], task.documents[document])
            if hard_negatives and negatives.get(x["id"]):
                pair += (task.documents[rng.choice(negatives[x["id"]])],)
            elif hard_negatives:
                continue  # BM25 found no non-relevant document: a triplet batch needs all three
            pairs.append(pair)
    return pairs


def _batches(items: list, size: int, rng: random.Random, distinct: bool = False) -> list[list]:
    """`items` shuffled into batches of `size` (the last may be smaller). `distinct`: no text twice
    in a batch — with in-batch negatives a second copy of a positive (a document relevant to two
    queries, a query with two relevant documents) would be scored as a negative; an item that would
    repeat one waits for a later batch (as sentence-transformers' no-duplicates batch sampler)."""
    order = list(range(len(items)))
    rng.shuffle(order)
    pending = [items[i] for i in order]
    if not distinct:
        return [pending[start:start + size] for start in range(0, len(pending), size)]
    batches = []
    while pending:
        batch, seen, waiting = [], set(), []
        for at, item in enumerate(pending):
            texts = item if isinstance(item, tuple) else (item,)
            if seen.isdisjoint(texts):
                batch.append(item)
                seen.update(texts)
                if len(batch) == size:
                    waiting += pending[at + 1:]
                    break
            else:
                waiting.append(item)
        batches.append(batch)
        pending = waiting
    return batches


def _fit(optimizer, scheduler, batch: list[tuple], step) -> float:
    """One optimizer step on a batch of (text, ...) tuples (`step(batch)`: the loss; gradients
    clipped to norm 1 as in every other fine-tuning loop here); the loss value."""
    import torch

    loss_value = step(batch)
    loss_value.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss_value.item()


def _train_epochs(model, items: list, lr: float, config, seed: int, step, score_dev, distinct: bool = False) -> dict:
    """Epochs over `items` with `step(batch)` giving the loss (AdamW, the fine-tuning's warmup and
    linear decay), dev scored after each (`score_dev()`), early stopping after `patience` epochs
    without a better score; the best epoch's weights stay in `model`. Returns the bookkeeping: dev
    scores per epoch, the best epoch, mean loss per epoch."""
    import torch

    from domainlm.evaluate.finetune import fine_tuning_optimizer

    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer, scheduler = fine_tuning_optimizer(model, lr, config, len(items), config.epochs)
    best, best_state, dev_scores, losses, waited = -1.0, None, [], [], 0
    for _ in range(config.epochs):
        model.train()
        losses.append(float(np.mean([_fit(optimizer, scheduler, batch, step)
                                     for batch in _batches(items, config.batch_size, rng, distinct)])))
        model.eval()
        dev_scores.append(score_dev())
        if dev_scores[-1] > best:
            best, best_state, waited = dev_scores[-1], copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if config.patience and waited >= config.patience:
                break
    model.load_state_dict(best_state)
    return {"dev_scores": dev_scores, "best_epoch": dev_scores.index(best) + 1, "train_loss": losses}


def bi_encoder_run(path: Path, task: Task, seed: int, lr: float, config, fine_tune: bool,
                   hard_negatives: int = 0, export: Path | None = None) -> dict:
    """A bi-encoder zero-shot (`fine_tune` False: the model as it ships) or fine-tuned on the
    training pairs with in-batch (and BM25 hard) negatives; dev and test ranked. `export`: where
    the fine-tuned model is saved as a sentence-transformers directory."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import batch_to_device

    from domainlm.optim import seed_everything

    started = time.time()
    seed_everything(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_bi_encoder(path, task.max_length or config.max_length, device)
    batch_size = 2 * config.batch_size
    extra = {"parameters": sum(p.numel() for p in model.parameters())}
    last = {}  # the collection's embeddings at the last dev scoring, reused when that epoch is kept
    if fine_tune:
        if not task.train:
            raise UnsupportedTask("no training queries: fine-tuning needs them (finetuning: none scores zero-shot)")
        pairs = training_pairs(task, hard_negatives, seed)
        loss = MultipleNegativesRankingLoss(model)

        def step(batch):
            columns = [model.preprocess(list(column)) for column in zip(*batch, strict=True)]
            return loss([batch_to_device(c, device) for c in columns], None)

        def score_dev():
            last["documents"] = embed(model, list(task.documents.values()), batch_size)
            return _dev_score(task, dense_rank(model, task, task.dev, batch_size, last["documents"]))

        extra |= _train_epochs(model, pairs, lr, config, seed, step, score_dev, distinct=True)
        extra |= {"pairs": len(pairs), "hard_negatives": hard_negatives}
        if extra["best_epoch"] < len(extra["dev_scores"]):  # an earlier epoch's weights were restored
            last.clear()
    model.eval()
    documents = last.get("documents")
    if documents is None:
        documents = embed(model, list(task.documents.values()), batch_size)
    dev = dense_rank(model, task, task.dev, batch_size, documents)
    tested = time.perf_counter()
    test = dense_rank(model, task, task.test, batch_size, documents)
    tested = time.perf_counter() - tested
    if export is not None:
        model.save(str(export))
    return _result(task, dev, test, started, tested, **extra)


# ------------------------------------------------------------------------------ cross-encoders
def cross_encoder_run(path: Path, task: Task, seed: int, lr: float, config, depth: int, negatives: int = 4) -> dict:
    """A cross-encoder (one relevance logit over query and document read together) trained with
    binary cross-entropy on each training judgement (label 1) and `negatives` of BM25's top
    non-relevant documents per query (label 0); it reranks BM25's top `depth` of each dev and test
    query (the rest of BM25's ranking follows unchanged)."""
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from domainlm.evaluate.finetune import quiet_transformers
    from domainlm.optim import seed_everything

    if not task.train:
        raise UnsupportedTask("no training queries: a cross-encoder needs them")
    started = time.time()
    quiet_transformers()
    seed_everything(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CrossEncoder(str(path), num_labels=1, max_length=task.max_length or config.max_length, device=device,
                         local_files_only=True, model_kwargs={"use_safetensors": True})
    index = BM25(task)
    ranked_train = index.rank([x["text"] for x in task.train], k=negatives + 50)
    items = []
    for x, found in zip(task.train, ranked_train, strict=True):
        items += [(x["text"], task.documents[d], 1.0) for d in x["relevant"]]
        items += [(x["text"], task.documents[d], 0.0) for d in [d for d in found if d not in x["relevant"] and d != x["id"]][:negatives]]
    loss = BinaryCrossEntropyLoss(model)

    def step(batch):
        queries, documents, labels = zip(*batch, strict=True)
        return loss([list(queries), list(documents)], torch.tensor(labels, device=device))

    first = {split: index.rank([x["text"] for x in getattr(task, split)]) for split in ("dev", "test")}

    def rerank(split: str) -> list[list[str]]:
        out = []
        for x, found in zip(getattr(task, split), first[split], strict=True):
            head = found[:depth]
            scores = model.predict([(x["text"], task.documents[d]) for d in head], batch_size=2 * config.batch_size,
                                   show_progress_bar=False) if head else []
            out.append([head[j] for j in np.argsort(-np.asarray(scores), kind="stable")] + found[depth:])
        return out

    extra = _train_epochs(model, items, lr, config, seed, step, lambda: _dev_score(task, rerank("dev")))
    model.eval()
    tested = time.perf_counter()
    test = rerank("test")
    tested = time.perf_counter() - tested
    return _result(task, rerank("dev"), test, started, tested, **extra, rerank_depth=depth, training_pairs=len(items),
                   parameters=sum(p.numel() for p in model.parameters()))


# ------------------------------------------------------------------------------ SimCSE
SIMCSE_LR = 3e-5
"""Unsupervised SimCSE's learning rate for BERT-base (Gao et al. 2021)."""
SIMCSE_LENGTH = 64
"""Tokens of each text SimCSE reads (the paper's sentences: 32)."""
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "mlp_dropout",
                "embedding_dropout")  # BERT / RoBERTa / ELECTRA and ModernBERT names


def _with_dropout(path: Path, rate: float = 0.1) -> dict:
    """Config overrides giving dropout `rate` where the model's config sets it to 0 (a model
    pretrained without dropout): SimCSE's two views of a text differ only by dropout."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True).to_dict()
    return {key: rate for key in DROPOUT_KEYS if config.get(key) == 0}


def simcse_adapt(path: Path, texts: list[str], seed: int, config, out: Path) -> dict:
    """One pass of unsupervised SimCSE over `texts` (batches of `config.batch_size`, dropout on),
    the adapted encoder saved to `out` as a sentence-transformers directory (written beside it,
    then renamed: a killed run leaves no half model). Returns the steps and mean loss."""
    import shutil

    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import batch_to_device

    from domainlm.evaluate.finetune import fine_tuning_optimizer
    from domainlm.optim import seed_everything

    seed_everything(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_bi_encoder(path, SIMCSE_LENGTH, device, _with_dropout(path))
    loss = MultipleNegativesRankingLoss(model)
    batches = _batches(texts, config.batch_size, random.Random(seed), distinct=True)  # a copy is no negative
    optimizer, scheduler = fine_tuning_optimizer(model, SIMCSE_LR, config, len(texts), 1)
    model.train()  # two forward passes of one text differ only by dropout: SimCSE's augmentation

    def step(batch):
        features = model.preprocess(batch)
        return loss([batch_to_device(features, device), batch_to_device(model.preprocess(batch), device)], None)

    losses = [_fit(optimizer, scheduler, batch, step) for batch in batches if len(batch) > 1]
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    partial.rename(out)
    return {"steps": len(losses), "loss": float(np.mean(losses)) if losses else None}

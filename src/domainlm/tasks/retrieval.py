"""Retrieval tasks: queries, a document collection and relevance judgements, as examples.

Two layouts. BEIR's (Thakur et al. 2021): `corpus.jsonl` ({"_id", "title", "text"}),
`queries.jsonl` ({"_id", "text"}) and one qrels TSV per split (query-id, corpus-id, graded
score; a header line or none; TREC's 4-column `qid 0 docid score` too). Or plain pairs: a split
file of (query, relevant document) records read by the generic readers, the documents of every
split forming the collection (with `documents` adding more candidates).

A query is one example, {"id", "text", "relevant": {document id: grade > 0}}; splits are by query.
A judgement naming a query or document the files do not hold is skipped, counted and reported in
the task's notes with the place of the first one; a query left without a relevant document (all
its judgements 0 or skipped) is dropped and counted the same way. A malformed line is refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from domainlm.config import TaskConfig
from domainlm.errors import InputError
from domainlm.io import iter_jsonl, read_text

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass
class Collection:
    """A retrieval task's documents."""

    texts: dict[str, str] = field(default_factory=dict)
    """id -> the title joined before the text (what encoders read, as BEIR's models do)."""
    titles: dict[str, str] = field(default_factory=dict)
    """id -> title, for the documents that have one (BM25 scores it as its own field)."""


def _record_text(record: dict, where: str, key: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} is {type(value).__name__}; expected text")
    return value


def read_collection(path: str, kind: str) -> tuple[Collection, int]:
    """(the entries, invalid UTF-8 characters replaced) of a JSONL file of {"_id" (or "id"),
    "title" (optional), "text"} records, or of a text file with one entry per line (ids
    `line-<n>`). InputError naming the file and line for a record without an id or text, or an id
    given twice."""
    text, invalid = read_text(path)
    if not Path(path).name.removesuffix(".gz").removesuffix(".zst").endswith((".jsonl", ".json")):
        lines = [line.strip() for line in text.split("\n")]
        return Collection({f"line-{n}": line for n, line in enumerate(lines, start=1) if line}), invalid
    out = Collection()
    for number, record in iter_jsonl(path, text.split("\n")):
        where = f"{path}:{number}"
        key = record.get("_id", record.get("id"))
        if key is None or isinstance(key, bool | dict | list):
            raise InputError(f"{where}: a {kind} needs an `_id` (or `id`), got {sorted(record)}")
        title = _record_text(record, where, "title").strip()
        body = " ".join(part for part in (title, _record_text(record, where, "text").strip()) if part)
        if not body:
            raise InputError(f"{where}: {kind} {key!r} has no text")
        if str(key) in out.texts:
            raise InputError(f"{where}: {kind} id {key!r} appears twice in {path}")
        out.texts[str(key)] = body
        if title:
            out.titles[str(key)] = title
    return out, invalid


def _qrel_columns(line: str, where: str) -> tuple[str, str, str] | None:
    """(query id, document id, score) of one qrels line: 3 columns (BEIR) or 4 (TREC: qid, iteration,
    docid, score); None for BEIR's header line."""
    columns = line.split("\t") if "\t" in line else line.split()
    if len(columns) == 4:
        columns = [columns[0], columns[2], columns[3]]
    if len(columns) != 3:
        raise InputError(f"{where}: expected 'query-id<TAB>corpus-id<TAB>score' (or TREC's 4 columns), got {line!r}")
    return tuple(c.strip() for c in columns)


def read_qrels(path: str, queries: dict[str, str], documents: dict[str, str]) -> tuple[list[dict], list[str]]:
    """(query examples in first-judged order, notes on judgements and queries left out) of one
    qrels file; InputError naming file and line for a malformed line or a score that is not an
    integer."""
    text, _ = read_text(path)
    relevant: dict[str, dict[str, int]] = {}
    skipped, first, header = Counter(), {}, True
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        query, document, score = _qrel_columns(line, where)
        try:
            grade = int(score)
        except ValueError:
            if header:  # BEIR's "query-id corpus-id score" line
                header = False
                continue
            raise InputError(f"{where}: score {score!r} is not an integer relevance grade") from None
        header = False
        problem = "query" if query not in queries else "document" if document not in documents else None
        if problem:
            skipped[problem] += 1
            first.setdefault(problem, f"{where} {query if problem == 'query' else document!r}")
            continue
        judged = relevant.setdefault(query, {})
        if grade > 0:
            judged[document] = grade
    notes = [f"{n} judgement{'s' * (n != 1)} skipped: {'query' if problem == 'query' else 'document'} unknown "
             f"(first: {first[problem]})" for problem, n in skipped.items()]
    unjudged = [q for q, judged in relevant.items() if not judged]
    if unjudged:
        notes.append(f"{len(unjudged)} quer{'ies' if len(unjudged) != 1 else 'y'} without a relevant document left "
                     f"out (first: {unjudged[0]!r})")
    for note in notes:
        log.warning("%s: %s", path, note)
    return [{"id": q, "text": queries[q], "relevant": judged} for q, judged in relevant.items() if judged], notes


def pair_queries(examples: list[dict], documents: dict[str, str], ids: dict[str, str]) -> list[dict]:
    """Query examples of (query, relevant document) pairs ({"text", "text_pair"}): one per distinct
    query text, every document paired with it relevant (grade 1). New documents are added to
    `documents`, under `ids` (text -> id), as `pair-<n>`."""
    queries: dict[str, dict] = {}
    for x in examples:
        document = x["text_pair"]
        if document not in ids:
            ids[document] = f"pair-{len(ids)}"
            documents[ids[document]] = document
        query = queries.setdefault(x["text"], {"id": f"q{len(queries)}", "text": x["text"], "relevant": {}})
        query["relevant"][ids[document]] = 1
    return list(queries.values())


def read_retrieval(config: TaskConfig, read_pairs) -> tuple[dict, dict[str, int], Collection, list[str]]:
    """(each split's query examples, one group per query — None for a split to be held out of
    train; invalid UTF-8 characters replaced per file; the document collection; notes).
    `read_pairs(spec)` reads one split of a pairs layout: ({"text", "text_pair"} examples, invalid
    UTF-8 characters replaced)."""
    collection, invalid, notes = Collection(), {}, []
    if config.documents:
        collection, invalid[config.documents] = read_collection(config.documents, "document")
    documents = collection.texts
    splits = {}
    if config.queries:
        queries, invalid[config.queries] = read_collection(config.queries, "query")
        queries = queries.texts
        for split in SPLITS:
            spec = config.split_config(split)
            if spec is None:  # held out of train, or empty with no train (test queries only: zero-shot)
                splits[split] = None if config.train else []
                continue
            examples, found = read_qrels(spec.path, queries, documents)
            splits[split] = [[x] for x in examples]
            notes += [f"{split}: {note}" for note in found]
    else:
        ids = {text: key for key, text in documents.items()}
        for split in SPLITS:
            spec = config.split_config(split)
            if spec is None:
                splits[split] = None
                continue
            examples, invalid[spec.path] = read_pairs(spec)
            splits[split] = [[x] for x in pair_queries(examples, documents, ids)]
    return splits, invalid, collection, notes

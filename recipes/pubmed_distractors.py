"""Distractor abstracts for recipes/biomed-retrieval-cpu.yaml: PubMed abstracts from the shared
biomedical corpus that a PubMedQA question must be told apart from.

A retrieval collection of the task's own 1,000 abstracts is too easy (every row scores ~98
nDCG@10); BEIR-style collections hold many documents per query. A distractor must not be a copy,
or a partial copy, of any of the 1,000 PubMedQA abstracts, or a question's own abstract would be
judged non-relevant twice over: every abstract sharing a 13-word run with any item's question or
context is left out (domainlm's decontamination index, the same test the corpus stage applies).
Only lines of at least `--min-words` words are taken (whole abstracts, not the corpus's single
sentences), `--count` of them drawn with a fixed seed, written as BEIR-style JSONL with the
corpus line number as `_id`:

    python recipes/pubmed_distractors.py            # -> runs/data/pubmed-distractors.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

from domainlm.corpus.dedup import ContaminationIndex, word_hashes
from domainlm.io import atomic_write_jsonl

DATA = Path("../shared/data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=DATA / "corpora/biomed_abstracts.txt.gz", type=Path)
    parser.add_argument("--task", default=DATA / "tasks/pubmedqa/ori_pqal.json", type=Path)
    parser.add_argument("--out", default=Path("runs/data/pubmed-distractors.jsonl"), type=Path)
    parser.add_argument("--count", default=4000, type=int)
    parser.add_argument("--min-words", default=100, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()

    items = json.loads(args.task.read_text())
    texts = [t for item in items.values() for t in [item["QUESTION"], " ".join(item["CONTEXTS"]), *item["CONTEXTS"]]]
    index = ContaminationIndex({"pubmedqa": texts}, n=13)
    with gzip.open(args.corpus, "rt", encoding="utf-8") as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, start=1)]
    long = [(n, line) for n, line in lines if len(line.split()) >= args.min_words]
    clean = [(n, line) for n, line in long if index.match(word_hashes(line)) is None]
    if len(clean) < args.count:
        raise SystemExit(f"{args.corpus}: only {len(clean)} abstracts qualify; asked for {args.count}")
    chosen = sorted(random.Random(args.seed).sample(clean, args.count))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(args.out, [{"_id": f"pubmed-{n}", "text": line} for n, line in chosen])
    print(f"{args.out}: {args.count} of {len(clean)} abstracts of >= {args.min_words} words "
          f"({len(long) - len(clean)} left out as copies of PubMedQA text)")


if __name__ == "__main__":
    main()

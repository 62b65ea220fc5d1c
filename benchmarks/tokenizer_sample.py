"""How far the tokenizer's fit on held-out text moves when it trains on a hash sample of the corpus.

`tokenizer.max_training_bytes` trains on such a sample (the texts whose hash falls below the
share); this trains a 30,522-entry WordPiece on 5% ... 100% of a curated corpus's training shards
and reports fertility and the share of split words on its held-out set, one JSON line per share:

    python benchmarks/tokenizer_sample.py runs/<run>      # a run directory whose corpus stage is done
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from domainlm.config import TokenizerConfig
from domainlm.layout import RunLayout
from domainlm.tokenizer import in_sample, train_tokenizer
from domainlm.vocabulary import vocabulary_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0])
    args = parser.parse_args()
    run = RunLayout(args.run)
    train, held_out = list(run.corpus_texts("train")), list(run.corpus_texts("heldout"))
    config = TokenizerConfig(vocab_size=args.vocab_size)
    for share in args.shares:
        texts = [t for t in train if share >= 1 or in_sample(t, share)]
        started = time.time()
        tokenizer = train_tokenizer(texts, config)
        seconds = time.time() - started
        fit = vocabulary_fit(tokenizer, held_out)
        print(json.dumps({"share": share, "mib": round(sum(len(t.encode()) for t in texts) / 2**20, 1),
                          "seconds": round(seconds, 1), "fertility": round(fit["fertility"], 4),
                          "split_share": round(fit["split_share"], 4)}), flush=True)


if __name__ == "__main__":
    main()

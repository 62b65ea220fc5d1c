"""Drop share per quality rule, and docs/s for clean_lines + quality_reason + mask_pii, on one core.

    python benchmarks/quality_filters.py [--lines 20000] [corpus.txt.gz ...]

Defaults to the corpora in ../shared/data/corpora; prints one JSON object per corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter
from itertools import islice
from pathlib import Path

from domainlm.config import QualityConfig
from domainlm.corpus.normalize import normalize_text
from domainlm.corpus.quality import clean_lines, mask_pii, quality_reason

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpora"


def measure(path: Path, lines: int) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        docs = [normalize_text(line) for line in islice(handle, lines)]
    config = QualityConfig()
    reasons: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    lines_removed = 0
    start = time.perf_counter()
    for doc in docs:
        text, removed = clean_lines(doc, config)
        lines_removed += removed
        reason = quality_reason(text, config)
        if reason:
            reasons[reason] += 1
            continue
        pii.update(mask_pii(text)[1])
    seconds = time.perf_counter() - start
    return {
        "corpus": path.name,
        "docs": len(docs),
        "docs_per_second": round(len(docs) / seconds),
        "dropped_share": round(sum(reasons.values()) / len(docs), 5),
        "drop_share_by_reason": {r: round(c / len(docs), 5) for r, c in reasons.most_common()},
        "lines_removed": lines_removed,
        "pii_masked": dict(pii),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="*", type=Path)
    parser.add_argument("--lines", type=int, default=20_000)
    args = parser.parse_args()
    for path in args.corpora or sorted(CORPORA.glob("*.txt.gz")):
        print(json.dumps(measure(path, args.lines)))


if __name__ == "__main__":
    main()

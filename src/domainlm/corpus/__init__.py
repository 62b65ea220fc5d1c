"""Corpus stage: read raw text, normalise, drop empty / too-short / duplicate documents, write shards.

Every document read is accounted for in `stats.json`: `read == kept + sum(dropped.values())`.
Kept documents are split (by a hash of their text) into training shards and a small held-out set
that the tokenizer stage uses to measure vocabulary fit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from domainlm.artifacts import atomic_write_json, atomic_write_text
from domainlm.config import CorpusConfig, RunConfig
from domainlm.corpus.filters import drop_reason, normalize_text
from domainlm.corpus.readers import read_documents


def heldout(text: str, fraction: float) -> bool:
    """Whether a document goes to the held-out set (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return bucket / 2**64 < fraction


def curate(config: CorpusConfig, out: Path) -> dict[str, Any]:
    """Stream every source through normalisation, filters and exact dedup into `out`."""
    stats: dict[str, Any] = {"read": 0, "kept": 0, "dropped": {}, "heldout": 0, "sources": {}}
    seen: set[bytes] = set()
    shard: list[str] = []
    shard_paths: list[str] = []
    heldout_lines: list[str] = []

    def flush() -> None:
        if shard:
            path = out / f"train-{len(shard_paths):05d}.jsonl"
            atomic_write_text(path, "".join(shard))
            shard_paths.append(path.name)
            shard.clear()

    progress = tqdm(desc="corpus", unit=" docs", mininterval=1.0)
    for source in config.sources:
        per_source = stats["sources"].setdefault(source_name(source), {"read": 0, "kept": 0})
        for doc in read_documents(source):
            progress.update()
            stats["read"] += 1
            per_source["read"] += 1
            text = normalize_text(doc["text"], config.normalization)
            reason = drop_reason(text, config)
            if reason is None:
                key = hashlib.blake2b(text.encode(), digest_size=16).digest()
                if key in seen:
                    reason = "duplicate"
                else:
                    seen.add(key)
            if reason is not None:
                stats["dropped"][reason] = stats["dropped"].get(reason, 0) + 1
                continue
            stats["kept"] += 1
            per_source["kept"] += 1
            line = json.dumps({"id": doc["id"], "text": text, "source": doc["source"]}, ensure_ascii=False) + "\n"
            if heldout(text, config.heldout_fraction):
                stats["heldout"] += 1
                heldout_lines.append(line)
            else:
                shard.append(line)
                if len(shard) >= config.shard_docs:
                    flush()
    progress.close()
    flush()
    atomic_write_text(out / "heldout.jsonl", "".join(heldout_lines))
    stats["shards"] = shard_paths
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())
    atomic_write_json(out / "stats.json", stats)
    return stats


def source_name(source) -> str:
    return source.name or (Path(source.path).name if source.path else source.format)


def iter_corpus_documents(corpus_dir: Path, split: str = "train"):
    """Yield the documents (`{"id", "text", "source"}`) of a curated corpus (`train` shards or the
    `heldout` set)."""
    files = sorted(corpus_dir.glob("train-*.jsonl")) if split == "train" else [corpus_dir / "heldout.jsonl"]
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def iter_corpus_texts(corpus_dir: Path, split: str = "train"):
    """Yield the texts of a curated corpus."""
    return (doc["text"] for doc in iter_corpus_documents(corpus_dir, split))


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    stats = curate(config.corpus, out)
    dropped = ", ".join(f"{k}={v}" for k, v in sorted(stats["dropped"].items())) or "none"
    print(f"corpus: read {stats['read']}, kept {stats['kept']} ({stats['heldout']} held out), dropped {dropped}")
    return {k: stats[k] for k in ("read", "kept", "heldout", "dropped")}

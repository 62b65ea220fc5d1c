"""Corpus-wide dedup as tasks (corpus/global_dedup.py): the same removals as deduplicating the
whole corpus in one process, however the corpus is cut into units and hash partitions, and a run
killed in any phase after the units resumes to the same corpus."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import prose_texts
from domainlm.config import CorpusConfig
from domainlm.corpus import curate, global_dedup
from domainlm.corpus.dedup import band_keys, lsh_bands, minhash, near_duplicates, word_hashes
from domainlm.corpus.normalize import normalize_text


def _families(seed: int) -> list[str]:
    """Documents of ~60 words in families: exact copies and one-word edits of a few originals,
    shuffled among unrelated ones, so duplicates cross unit boundaries."""
    rng = random.Random(seed)
    texts = [" ".join(prose_texts(4, seed=seed * 100 + i)) for i in range(300)]
    family = []
    for original in texts[:40]:
        words = original.split()
        for _ in range(rng.randint(1, 3)):
            edited = list(words)
            edited[rng.randrange(len(words))] = "changed"
            family.append(" ".join(edited) if rng.random() < 0.6 else original)
    lines = texts + family
    rng.shuffle(lines)
    return lines


def _config(path, **overrides) -> CorpusConfig:
    return CorpusConfig(**{"sources": [{"path": str(path)}], "min_words": 3, "heldout_fraction": 0.1,
                           "unit_bytes": 4096, "shard_docs": 37, "keep_dropped": True, **overrides})


def _outputs(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))}


def _one_process_removals(lines: list[str], config: CorpusConfig) -> dict[int, str]:
    """The removals by the definition: exact copies after the first, then MinHash LSH clusters
    over the rest of the whole corpus at once, each keeping its first member."""
    texts = [normalize_text(line, config.normalization) for line in lines]
    removed, first = {}, {}
    for i, text in enumerate(texts):
        if first.setdefault(text, i) != i:
            removed[i] = "duplicate"
    rest = [i for i in range(len(texts)) if i not in removed]
    signatures = np.stack([minhash(word_hashes(texts[i]), config.dedup.shingle_words, config.dedup.permutations)
                           for i in rest])
    keys = band_keys(signatures, *lsh_bands(config.dedup.threshold, config.dedup.permutations))
    near = near_duplicates(keys.T, lambda members: signatures[members], config.dedup.threshold)
    removed.update({rest[i]: "near_duplicate" for i in near})
    return removed


@pytest.mark.parametrize("partition_docs", [2**22, 50])
def test_the_removals_are_those_of_one_process_over_the_whole_corpus(tmp_path, monkeypatch, partition_docs):
    monkeypatch.setattr(global_dedup, "PARTITION_DOCS", partition_docs)  # 50: 9 hash partitions
    lines = _families(seed=1)
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    config = _config(tmp_path / "c.txt")
    stats = curate(config, tmp_path / "out", workers=1)
    expected = _one_process_removals(lines, config)
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert {int(d["id"].rsplit(":", 1)[1]) - 1: d["reason"] for d in dropped} == expected
    assert sorted(expected.values()).count("near_duplicate") >= 20 and "duplicate" in expected.values()
    assert stats["kept"] == len(lines) - len(expected) and len(stats["shards"]) > 5


def test_partitions_and_units_do_not_change_a_byte(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text("\n".join(_families(seed=2)) + "\n")
    whole = curate(_config(tmp_path / "c.txt", unit_bytes=2**30), tmp_path / "one-unit", workers=1)
    monkeypatch.setattr(global_dedup, "PARTITION_DOCS", 200)  # 7 partitions
    cut = curate(_config(tmp_path / "c.txt"), tmp_path / "cut", workers=1)
    assert whole["dropped"] == cut["dropped"] and whole["examples"] == cut["examples"]
    assert _outputs(tmp_path / "one-unit") == _outputs(tmp_path / "cut")


@pytest.mark.parametrize("phase", ["similar_pairs", "split_unit", "shard_rename", "part_deletion"])
def test_a_run_killed_after_the_units_resumes_to_the_same_corpus(tmp_path, monkeypatch, phase):
    """Killed at the third call of: a bucket task, a split task, a shard's rename (recorded whole,
    not yet renamed), a training part's deletion (its lines in a shard still being written)."""
    (tmp_path / "c.txt").write_text("\n".join(_families(seed=3)) + "\n")
    config = _config(tmp_path / "c.txt")
    expected = curate(config, tmp_path / "straight", workers=1)
    calls = []

    def dies_on_the_third_call(real, counts=lambda *args: True):
        def work(*args, **kwargs):
            calls.extend([1] if counts(*args) else [])
            if len(calls) == 3:
                raise KeyboardInterrupt  # as a kill: nothing after it runs
            return real(*args, **kwargs)
        return work

    if phase == "shard_rename":
        monkeypatch.setattr(global_dedup.PendingFile, "close", dies_on_the_third_call(
            global_dedup.PendingFile.close, lambda file: file.path.name.startswith("train-")))
    elif phase == "part_deletion":
        monkeypatch.setattr(Path, "unlink", dies_on_the_third_call(Path.unlink, lambda path, **_: path.name == "train.jsonl.zst"))
    else:
        monkeypatch.setattr(global_dedup, phase, dies_on_the_third_call(getattr(global_dedup, phase)))
    with pytest.raises(KeyboardInterrupt):
        curate(config, tmp_path / "killed", workers=1)
    monkeypatch.undo()
    work = tmp_path / "killed" / "work"
    if phase == "shard_rename":  # recorded as three whole shards, the third still under its temporary name
        assert json.loads((work / "shards.json").read_text())["shards"] == 3
        assert not (tmp_path / "killed" / "train-00002.jsonl").exists()
    if phase == "part_deletion":  # two parts deleted, their lines partly in the shard being written
        assert json.loads((work / "shards.json").read_text())["lines"] > 0
    resumed = curate(config, tmp_path / "killed", workers=1)
    assert {k: resumed[k] for k in ("read", "kept", "heldout", "dropped", "steps", "shards")} == \
        {k: expected[k] for k in ("read", "kept", "heldout", "dropped", "steps", "shards")}
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "straight")
    assert not work.exists()

"""Corpus sources and task files named by URL (`s3://`, `gs://`, `hf://`, `https://`, ...), read as
streams through fsspec; tested on fsspec's in-memory filesystem, which needs no network (the
tests run on one worker: a `memory://` store lives in one process)."""

import gzip
import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import prose_texts
from domainlm.config import ConfigError, CorpusConfig, config_from_dict
from domainlm.corpus import curate
from domainlm.io import input_signature
from domainlm.tasks.load import load_task


@pytest.fixture
def store(tmp_path):
    """Local files and a copy of each in a fresh in-memory store: (local folder, URL prefix)."""
    memory = fsspec.filesystem("memory")
    prefix = f"memory://{tmp_path.name}"
    lines = prose_texts(400, seed=3)
    lines += lines[:20]  # exact duplicates, so dedup has work
    with gzip.open(tmp_path / "abstracts.txt.gz", "wt") as handle:
        handle.write("\n".join(lines[:200]) + "\n")
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines[200:320]))
    pq.write_table(pa.table({"text": lines[320:]}), tmp_path / "pages.parquet", row_group_size=30)
    for name in ("abstracts.txt.gz", "notes.jsonl", "pages.parquet"):
        memory.pipe(f"{prefix}/{name}", (tmp_path / name).read_bytes())
    yield tmp_path, prefix
    memory.rm(prefix, recursive=True)


def _sources(folder) -> list[dict]:
    return [{"path": f"{folder}/{name}"} for name in ("abstracts.txt.gz", "notes.jsonl", "pages.parquet")]


def test_a_corpus_read_from_urls_equals_the_one_read_from_local_files(store, tmp_path):
    local, url = store
    config = {"min_words": 3, "heldout_fraction": 0.05, "unit_bytes": 4096}
    here = curate(CorpusConfig(sources=_sources(local), **config), tmp_path / "local", workers=1)
    there = curate(CorpusConfig(sources=_sources(url), **config), tmp_path / "remote", workers=1)
    assert here["read"] == 420 and here["dropped"].get("duplicate") == 20
    assert {k: there[k] for k in ("read", "kept", "heldout", "dropped", "sources")} == \
        {k: here[k] for k in ("read", "kept", "heldout", "dropped", "sources")}
    for name in ["heldout.jsonl", *here["shards"]]:  # the same documents with the same ids
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_a_task_read_from_urls_equals_the_one_read_from_local_files(tiny_recipe, tmp_path):
    memory, prefix = fsspec.filesystem("memory"), f"memory://task-{tmp_path.name}"
    remote = json.loads(json.dumps(tiny_recipe))
    for split in ("train", "dev", "test"):
        memory.pipe(f"{prefix}/cls-{split}.jsonl", Path(tiny_recipe["tasks"][0][split]).read_bytes())
        remote["tasks"][0][split] = f"{prefix}/cls-{split}.jsonl"
    local_task = load_task(config_from_dict(tiny_recipe).tasks[0])
    remote_task = load_task(config_from_dict(remote).tasks[0])
    assert (remote_task.train, remote_task.dev, remote_task.test, remote_task.labels) == \
        (local_task.train, local_task.dev, local_task.test, local_task.labels)
    assert len(remote_task.train) == 60
    memory.rm(prefix, recursive=True)


def test_a_missing_url_is_named_when_the_recipe_loads(tiny_recipe):
    tiny_recipe["corpus"]["sources"] = [{"path": "memory://nowhere/abstracts.txt"}]
    with pytest.raises(ConfigError, match=r"corpus.sources.0.*file not found: memory://nowhere/abstracts.txt"):
        config_from_dict(tiny_recipe)
    tiny_recipe["corpus"]["sources"] = [{"path": "nosuchstore://bucket/abstracts.txt"}]
    with pytest.raises(ConfigError, match=r"nosuchstore://bucket/abstracts.txt.*[Pp]rotocol"):
        config_from_dict(tiny_recipe)


def test_a_url_input_is_identified_by_its_store_metadata(store):
    _, url = store
    memory, path = fsspec.filesystem("memory"), f"{url}/notes.jsonl"
    before = input_signature(path)
    assert input_signature(path) == before
    memory.pipe(path, b'{"text": "another text"}\n')
    assert input_signature(path) != before


def test_the_corpus_stage_reruns_when_a_url_source_changes_and_only_then(tiny_recipe, tmp_path):
    from domainlm.pipeline import run_stage

    memory, url = fsspec.filesystem("memory"), f"memory://stage-{tmp_path.name}/corpus.txt.gz"
    memory.pipe(url, Path(tiny_recipe["corpus"]["sources"][0]["path"]).read_bytes())
    tiny_recipe["corpus"]["sources"] = [{"path": url}]
    tiny_recipe["resources"] = {"corpus_workers": 2}  # the pieces are cut here, so workers read local files
    config = config_from_dict(tiny_recipe)
    assert run_stage(config, "corpus") and not run_stage(config, "corpus")
    memory.pipe(url, gzip.compress(b"one more line of text than before\n" + gzip.decompress(memory.cat(url))))
    assert run_stage(config, "corpus")
    memory.rm(url)

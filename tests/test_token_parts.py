"""The pretraining data as its own step: each corpus shard tokenised into a part (a task on the
workers), the parts merged into the same bytes as one pass, resumable, runnable alone before
torchrun (`domainlm pretrain --data-only`)."""

import json

import pytest

from conftest import synthetic_texts
from domainlm.cli import main
from domainlm.config import config_from_dict
from domainlm.layout import RunLayout
from domainlm.pipeline import run_stage
from domainlm.pretrain import data as token_data
from domainlm.pretrain import prepare_data
from domainlm.pretrain.data import merge_token_parts, token_ids, write_token_part, write_token_shards
from domainlm.vocabulary import read_tokenizer


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_parts_merge_into_the_bytes_of_one_pass(tokenizer, tmp_path):
    docs = [(text, "trials" if i > 20 and i % 3 == 0 else ("notes", "abstracts")[i % 2])
            for i, text in enumerate(synthetic_texts(90, seed=4))]
    one = write_token_shards(tokenizer, docs, tmp_path / "one")
    special, dtype = token_ids(tokenizer)
    cuts = [0, 5, 5, 40, 90]  # one part empty; "trials" first appears in the third
    parts = [tmp_path / "parts" / str(i) for i in range(len(cuts) - 1)]
    for part, start, end in zip(parts, cuts[:-1], cuts[1:], strict=True):
        write_token_part(tokenizer, docs[start:end], part, dtype)
    merged = merge_token_parts(parts, tmp_path / "merged", special, dtype)
    assert _files(tmp_path / "merged") == _files(tmp_path / "one")
    assert merged.source_names == one.source_names == ["notes", "abstracts", "trials"]


def _prepared(tiny_recipe, tmp_path, **resources):
    tiny_recipe["corpus"]["shard_docs"] = 100  # several corpus shards, so several parts
    tiny_recipe["resources"] = {"corpus_workers": 1, **resources}
    config = config_from_dict(tiny_recipe)
    run_stage(config, "corpus")
    run_stage(config, "tokenizer")
    return config


def test_a_killed_tokenisation_redoes_only_the_parts_not_written(tiny_recipe, tmp_path, monkeypatch):
    config = _prepared(tiny_recipe, tmp_path)
    layout = RunLayout(config.directory)
    shards = layout.corpus_files.shards()
    assert len(shards) >= 4
    straight = write_token_shards(read_tokenizer(layout.tokenizer),
                                  ((d["text"], d["source"]) for d in layout.corpus_documents()), tmp_path / "straight")
    done, killed = [], []
    real = token_data.tokenize_corpus_shard

    def dies_on_the_third(*args):
        if len(done) == 2 and not killed:
            killed.append(args[1])
            raise KeyboardInterrupt  # as a kill: nothing after it runs
        real(*args)
        done.append(args[1])

    monkeypatch.setattr("domainlm.pretrain.tokenize_corpus_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(config, layout.tokenizer, {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]"})
    written = {p.name: p.stat().st_mtime_ns for p in layout.token_part("x").parent.iterdir()}
    assert len(written) == 2 and not layout.token_shards.exists()
    done.clear()
    shards_again = prepare_data(config, layout.tokenizer, {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]"})
    assert len(done) == len(shards) - 2  # the two parts written are not tokenised again
    assert _files(layout.token_shards) == _files(tmp_path / "straight")
    assert shards_again.num_docs == straight.num_docs and not layout.token_part("x").parent.exists()


@pytest.mark.slow
def test_data_only_prepares_and_the_stage_goes_on_from_there(tiny_recipe, tmp_path, capsys):
    config = _prepared(tiny_recipe, tmp_path, corpus_workers=2)  # the parts on a pool of two processes
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(tiny_recipe))
    assert main(["pretrain", str(recipe), "--data-only"]) == 0
    layout = RunLayout(config.directory)
    shards = layout.token_shards / "tokens.bin"
    assert shards.exists() and layout.in_progress("pretrain").exists() and not layout.manifest("pretrain").exists()
    before = shards.stat().st_mtime_ns
    assert run_stage(config, "pretrain")
    assert shards.stat().st_mtime_ns == before and layout.manifest("pretrain").exists()
    assert not layout.token_part("x").parent.exists()

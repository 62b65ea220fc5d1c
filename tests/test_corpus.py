import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import prose_texts as _prose
from domainlm.config import CorpusConfig
from domainlm.corpus import curate
from domainlm.corpus.normalize import normalize_text

SENTENCES = _prose(400, seed=11)


def _config(path, **overrides) -> CorpusConfig:
    return CorpusConfig(**{"sources": [{"path": str(path)}], "min_words": 3, "heldout_fraction": 0.0, **overrides})


def _curate(config: CorpusConfig, out, eval_texts=None, workers: int = 1, executor: str = "local") -> dict:
    return curate(config, out, eval_texts, workers=workers, executor=executor)


def iter_corpus_texts(folder):
    """The kept texts of a curated corpus folder, shard by shard."""
    return [json.loads(line)["text"] for path in sorted(folder.glob("train-*.jsonl"))
            for line in path.read_text().splitlines()]


def _check_accounting(stats: dict) -> None:
    assert stats["read"] == stats["kept"] + sum(stats["dropped"].values())
    previous = stats["read"]
    for step in stats["steps"].values():  # every step: in == out + dropped, out feeds the next step
        assert step["in"] == previous == step["out"] + sum(step["dropped"].values())
        previous = step["out"]
    assert previous == stats["kept"]


def test_normalize_text():
    assert normalize_text("ﬁne\u00a0 text\x07 here\r\n\r\n\r\n\nnext") == "fine text here\n\nnext"
    assert normalize_text("Å", "NFC") == "\u00c5"
    assert normalize_text("  \t ") == ""


def test_every_document_is_accounted_for(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("one two three four five\n\nshort\none two three four five\nsix seven eight nine ten\n")
    jsonl = tmp_path / "b.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        for text in ("alpha beta gamma delta epsilon", "", "alpha beta gamma delta epsilon", "zeta eta theta iota kappa"):
            handle.write(json.dumps({"body": text}) + "\n")
        handle.write("{not json\n")
        handle.write(json.dumps({"other": "no body field"}) + "\n")
    config = CorpusConfig(sources=[{"path": str(txt)}, {"path": str(jsonl), "text_field": "body"}],
                          min_words=3, heldout_fraction=0.0)
    stats = _curate(config, tmp_path / "out")
    assert stats["read"] == 11
    assert stats["kept"] == 4
    assert stats["dropped"] == {"empty": 2, "too_short": 1, "duplicate": 2, "invalid_json": 1, "missing_text": 1}
    _check_accounting(stats)
    assert sorted(iter_corpus_texts(tmp_path / "out")) == sorted([
        "one two three four five", "six seven eight nine ten",
        "alpha beta gamma delta epsilon", "zeta eta theta iota kappa"])
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["kept"] == 4
    assert stats["examples"]["invalid_json"][0]["id"].endswith(":5")  # names the file and line


def test_invalid_utf8_is_replaced_counted_not_fatal(tmp_path):
    path = tmp_path / "bytes.txt"
    path.write_bytes(b"valid words here and more\ninvalid \xff\xfe bytes in this line\n")
    stats = _curate(_config(path), tmp_path / "out")
    assert stats["kept"] == 2 and stats["invalid_bytes"] == 2
    assert any("\ufffd" in t for t in iter_corpus_texts(tmp_path / "out"))


def test_near_duplicates_leave_one_per_cluster_and_exact_copies_go(tmp_path):
    base = " ".join(SENTENCES[:6])  # ~100 words
    words = base.split()
    near = " ".join(["changed" if i == 40 else w for i, w in enumerate(words)])  # one word of ~100
    lines = [base, near, base, *SENTENCES[10:40]]
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n")
    stats = _curate(_config(tmp_path / "c.txt", keep_dropped=True), tmp_path / "out")
    assert stats["dropped"].get("duplicate") == 1 and stats["dropped"].get("near_duplicate") == 1
    kept = list(iter_corpus_texts(tmp_path / "out"))
    assert base in kept and near not in kept  # the first in corpus order is the one kept
    reasons = {json.loads(x)["reason"] for x in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()}
    assert reasons == {"duplicate", "near_duplicate"}
    _check_accounting(stats)
    # Unrelated documents that merely share vocabulary are not near-duplicates.
    assert stats["kept"] == 1 + len(set(SENTENCES[10:40])), stats["dropped"]


def test_decontamination_removes_documents_quoting_task_text(tmp_path):
    test_text = " ".join(SENTENCES[100:103])
    leak = SENTENCES[0] + " " + " ".join(test_text.split()[5:20]) + " " + SENTENCES[1]  # 15 words quoted
    short_overlap = SENTENCES[2] + " " + " ".join(test_text.split()[5:15])  # 10 words: below 13
    (tmp_path / "c.txt").write_text("\n".join([leak, short_overlap, SENTENCES[3]]) + "\n")
    stats = _curate(_config(tmp_path / "c.txt"), tmp_path / "out", {"ner": [test_text], "cls": ["unrelated words"]})
    assert stats["dropped"] == {"contaminated:ner": 1}
    assert stats["steps"]["decontaminate"]["dropped"] == {"contaminated:ner": 1}


@pytest.mark.slow  # kills a curation process and runs it again
def test_a_killed_run_resumes_without_redoing_finished_units(tmp_path, caplog):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(_prose(3000, seed=5)) + "\n")
    config = _config(corpus, unit_bytes=8192)  # ~30 units
    expected = _curate(config, tmp_path / "straight")
    script = ("import sys, json; from domainlm.config import CorpusConfig; from domainlm.corpus import curate; "
              "curate(CorpusConfig.model_validate_json(sys.argv[1]), __import__('pathlib').Path(sys.argv[2]), workers=1)")
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", script, config.model_dump_json(), str(out)])
    deadline = time.time() + 60
    while len(list((out / "work").glob("*/stats.json"))) < 5 and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "work").glob("*/stats.json")}
    assert 5 <= len(finished) < 30 and not (out / "stats.json").exists()
    finished_now = {p.parent.name for p in (out / "work").glob("*/stats.json")}  # a unit may finish as it dies
    with caplog.at_level("INFO", logger="domainlm.corpus"):
        resumed = _curate(config, out)
    from domainlm.corpus.readers import plan_units

    total = len(plan_units(config.sources, config.unit_bytes))
    assert f"corpus: {len(finished_now)} of {total} work units already done, resuming" in caplog.text
    assert {k: resumed[k] for k in ("read", "kept", "dropped", "steps")} == \
        {k: expected[k] for k in ("read", "kept", "dropped", "steps")}
    assert list(iter_corpus_texts(out)) == list(iter_corpus_texts(tmp_path / "straight"))
    assert not (out / "work").exists()  # the per-unit copies go once the outputs are written


@pytest.mark.slow
def test_process_pool_gives_the_single_process_result(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(_prose(2000, seed=6)) + "\n")
    one = _curate(_config(corpus, unit_bytes=16384), tmp_path / "one")
    two = _curate(_config(corpus, unit_bytes=16384), tmp_path / "two", workers=2)
    assert {k: one[k] for k in ("read", "kept", "dropped")} == {k: two[k] for k in ("read", "kept", "dropped")}
    assert list(iter_corpus_texts(tmp_path / "one")) == list(iter_corpus_texts(tmp_path / "two"))


@pytest.mark.parametrize("name, opener", [("c.txt.gz", gzip.open), ("c.jsonl.zst", None)])
def test_a_compressed_source_is_cut_into_units_that_curate_in_parallel_as_one(tmp_path, name, opener):
    """A .gz / .zst file is cut into plain pieces at planning (a compressed stream cannot seek), so
    its units run on every worker; the kept documents, their ids and every count are those of the
    file read as one unit, and neither the pieces nor work/ stay behind."""
    import zstandard

    from domainlm.corpus import plan_jobs

    lines = _prose(1500, seed=9)
    lines[3] = ""  # a blank line keeps its number
    if name.startswith("c.jsonl"):
        lines = [json.dumps({"text": line}) if line else "" for line in lines]
    path = tmp_path / name
    with (opener or zstandard.open)(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines))  # the last line without its newline
    whole = _curate(_config(path, unit_bytes=1 << 40), tmp_path / "whole")
    config = _config(path, unit_bytes=16384)
    jobs, _, _ = plan_jobs(config, tmp_path / "cut")
    assert len(jobs) >= 5 and all(Path(job[0].piece).is_file() for job in jobs)
    cut = _curate(config, tmp_path / "cut", workers=2)
    assert {k: cut[k] for k in ("read", "kept", "dropped", "steps")} == \
        {k: whole[k] for k in ("read", "kept", "dropped", "steps")}
    assert whole["read"] == 1500 - (name.startswith("c.jsonl"))  # JSON lines: the blank one holds no record
    assert [p.read_bytes() for p in sorted((tmp_path / "cut").glob("*.jsonl"))] == \
        [p.read_bytes() for p in sorted((tmp_path / "whole").glob("*.jsonl"))]
    assert not (tmp_path / "cut" / "work").exists() and not (tmp_path / "whole" / "work").exists()


GENERAL_WORDS = ("the weather was warm and the children played in a park near the river while their parents "
                 "talked about football music holidays recipes prices and the news of the town").split()


def _general_prose(count: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(GENERAL_WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(count)]


@pytest.mark.parametrize("negatives", ["pool", "file"])
def test_domain_selection_keeps_the_pools_domain_documents_and_counts_each_drop_with_its_score(tmp_path, negatives):
    """A pool of domain and general documents; a seed of other domain documents. The classifier
    (against the pool itself, or a file of general text) keeps the domain part, drops the rest as
    `off_domain` with scores, and gives the same corpus on 1 and 2 workers."""
    domain, general = _prose(150, seed=11), _general_prose(600, seed=12)  # a pool mostly off-domain
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(line for i, d in enumerate(domain) for line in [*general[4 * i:4 * i + 4], d]) + "\n")
    _curate(_config(pool), tmp_path / "all")
    unselected = set(iter_corpus_texts(tmp_path / "all"))
    (tmp_path / "seed.txt").write_text("\n".join(_prose(150, seed=13)) + "\n")
    (tmp_path / "general.txt").write_text("\n".join(_general_prose(150, seed=14)) + "\n")
    selection = {"seed": {"path": str(tmp_path / "seed.txt")}, "threshold": 0.5}
    if negatives == "file":
        selection["negatives"] = {"path": str(tmp_path / "general.txt")}
    config = _config(pool, unit_bytes=8192, keep_dropped=True, domain_selection=selection)
    one = _curate(config, tmp_path / "one")
    two = _curate(config, tmp_path / "two", workers=2)
    assert list(iter_corpus_texts(tmp_path / "one")) == list(iter_corpus_texts(tmp_path / "two"))
    assert one["dropped"] == two["dropped"]
    kept = set(iter_corpus_texts(tmp_path / "one"))
    kept_without = unselected & set(domain)  # what the other steps keep of the domain part
    assert len(kept & kept_without) >= 0.95 * len(kept_without) and not kept & set(general)
    off = one["steps"]["domain"]["dropped"]["off_domain"]
    assert off >= 0.95 * len(set(general)) and one["dropped"]["off_domain"] == off
    assert one["read"] == one["kept"] + sum(one["dropped"].values())
    record = one["domain_selection"]
    assert record["seed_texts"] == 150 and sum(record["score_histogram"]) == one["steps"]["domain"]["in"]
    assert record["negatives_from"] == ("the corpus" if negatives == "pool" else "negatives")
    dropped = [json.loads(line) for line in (tmp_path / "one" / "dropped.jsonl").read_text().splitlines()]
    scores = [d["score"] for d in dropped if d["reason"] == "off_domain"]
    assert len(scores) == off and max(scores) < 0.5
    assert list(one["steps"]) == ["read", "quality", "domain", "decontaminate", "exact_dedup", "near_dedup"]


def test_a_classifier_retrained_in_the_same_place_is_not_served_from_the_cache(tmp_path):
    """A rerun of the stage in one process writes its new classifier where the old one was."""
    import os

    from domainlm.corpus.selection import domain_scorer, train_classifier

    path, text = tmp_path / "classifier.npz", _prose(1, seed=20)[0]
    train_classifier(_prose(50, seed=21), _general_prose(50, seed=22), path)
    domain_like = domain_scorer(str(path))(text)
    train_classifier(_general_prose(50, seed=22), _prose(50, seed=21), path)  # the labels swapped
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))  # a later mtime even on a coarse clock
    assert domain_like > 0.5 > domain_scorer(str(path))(text)


def test_keep_fraction_keeps_about_that_share_of_the_pool_the_best_scoring(tmp_path):
    """The threshold is the pool's score quantile, from a held-out sample: ~20% of the scored
    documents pass, and they are the domain ones."""
    domain, general = _prose(150, seed=16), _general_prose(600, seed=17)
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(line for i, d in enumerate(domain) for line in [*general[4 * i:4 * i + 4], d]) + "\n")
    (tmp_path / "seed.txt").write_text("\n".join(_prose(100, seed=18)) + "\n")
    selection = {"seed": {"path": str(tmp_path / "seed.txt")}, "keep_fraction": 0.2, "max_negatives": 400}
    stats = _curate(_config(pool, domain_selection=selection), tmp_path / "out")
    step = stats["steps"]["domain"]
    assert abs(step["out"] / step["in"] - 0.2) < 0.05
    assert stats["domain_selection"]["calibration_texts"] == 100 and stats["domain_selection"]["keep_fraction"] == 0.2
    assert not set(iter_corpus_texts(tmp_path / "out")) & set(general)


def test_a_corpus_without_domain_selection_has_no_domain_step(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(_prose(50, seed=15)) + "\n")
    stats = _curate(_config(tmp_path / "c.txt"), tmp_path / "out")
    assert "domain" not in stats["steps"] and "domain_selection" not in stats


def test_the_stage_states_its_peak_disk_need_from_the_text_it_will_read(tmp_path, caplog):
    """Before the first unit: the bytes of text the units read (a compressed file counted as its
    decompressed pieces), times the measured peak factor, and the free disk."""
    from domainlm.corpus import PEAK_DISK, input_bytes, plan_jobs

    text = "\n".join(_prose(800, seed=19)) + "\n"
    (tmp_path / "plain.txt").write_text(text)
    with gzip.open(tmp_path / "packed.txt.gz", "wt") as handle:
        handle.write(text)
    for name in ("plain.txt", "packed.txt.gz"):
        jobs, _, _ = plan_jobs(_config(tmp_path / name, unit_bytes=8192), tmp_path / f"{name}-plan")
        assert len(jobs) > 3 and input_bytes([job[0] for job in jobs]) == len(text.encode())
    with caplog.at_level("INFO", logger="domainlm.corpus"):
        _curate(_config(tmp_path / "plain.txt", unit_bytes=8192), tmp_path / "out")
    mib = len(text.encode()) / 2**20
    assert f"{mib:.1f} MiB of text to curate; at its peak the stage needs about {PEAK_DISK * mib:.1f} MiB" in caplog.text


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of two worker processes, shared by the Ray tests (starting one takes seconds)."""
    ray = pytest.importorskip("ray", reason="ray comes with the dev extra (make setup)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _same_corpus(one: dict, two: dict, folder_one, folder_two) -> None:
    assert {k: one[k] for k in ("read", "kept", "dropped")} == {k: two[k] for k in ("read", "kept", "dropped")}
    assert list(iter_corpus_texts(folder_one)) == list(iter_corpus_texts(folder_two))
    assert [p.read_bytes() for p in sorted(folder_one.glob("*.jsonl"))] == \
        [p.read_bytes() for p in sorted(folder_two.glob("*.jsonl"))]


@pytest.mark.slow
def test_ray_executor_gives_the_local_result(tmp_path, ray_cluster):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(_prose(1000, seed=7)) + "\n")
    local = _curate(_config(corpus, unit_bytes=16384), tmp_path / "local")
    remote = _curate(_config(corpus, unit_bytes=16384), tmp_path / "ray", executor="ray")
    _same_corpus(local, remote, tmp_path / "local", tmp_path / "ray")


@pytest.mark.slow
def test_a_ray_worker_killed_mid_unit_is_rerun_losing_and_duplicating_nothing(tmp_path, ray_cluster):
    from domainlm.corpus import finish, plan_jobs
    from domainlm.executors import run_on_ray

    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(_prose(1000, seed=8)) + "\n")
    config = _config(corpus, unit_bytes=16384)
    local = _curate(config, tmp_path / "local")
    jobs, unit_dirs, _ = plan_jobs(config, tmp_path / "ray")
    assert len(jobs) >= 3
    victim, killed = jobs[1][4].name, tmp_path / "killed"

    def dies_once_mid_unit(*job):  # runs in a Ray worker: the process exits after 10 documents
        import os

        import domainlm.corpus as stage

        if job[4].name == victim and not killed.exists():
            killed.touch()
            read = stage.read_unit

            def dying(unit, source):
                for n, record in enumerate(read(unit, source)):
                    if n == 10:
                        os._exit(1)
                    yield record

            stage.read_unit = dying
        return stage.process_unit(*job)

    progress = type("Progress", (), {"update": lambda self, n=1: None})()
    run_on_ray(jobs, progress, work=dies_once_mid_unit)
    assert killed.exists()  # the worker did die on that unit
    _same_corpus(local, finish(config, tmp_path / "ray", unit_dirs), tmp_path / "local", tmp_path / "ray")


def test_a_leading_byte_order_mark_is_not_part_of_the_first_document(tmp_path):
    bom = "\ufeff"
    (tmp_path / "a.jsonl").write_text(bom + json.dumps({"text": "the first record of the file"}) + "\n"
                                      + json.dumps({"text": "the second record of the file"}) + "\n")
    (tmp_path / "b.txt").write_text(bom + "the same line is written twice\nthe same line is written twice\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "c.txt").write_text(bom + "a whole file is one document here")
    config = CorpusConfig(sources=[{"path": str(tmp_path / name)} for name in ("a.jsonl", "b.txt", "docs")],
                          min_words=3, heldout_fraction=0.0)
    stats = _curate(config, tmp_path / "out")
    assert stats["dropped"] == {"duplicate": 1} and stats["kept"] == 4  # the BOM hid neither record nor copy
    assert not any(bom in text for text in iter_corpus_texts(tmp_path / "out"))


def test_csv_rows_that_do_not_match_the_header_are_counted_with_their_lines(tmp_path):
    (tmp_path / "notes.csv").write_text('id,text\n1,"the first note, quoted, is read whole"\n'
                                        "2,the second note, unquoted, would be cut short\n"
                                        "3,the third note is an ordinary row\n")
    stats = _curate(_config(tmp_path / "notes.csv"), tmp_path / "out")
    assert stats["read"] == 3 and stats["kept"] == 2 and stats["dropped"] == {"invalid_csv": 1}
    _check_accounting(stats)
    assert stats["examples"]["invalid_csv"] == [{"id": "notes.csv:1", "text": (
        "notes.csv:3: 4 fields, but the header has 2 (id, text); an unquoted comma in a text? put such a field "
        "in double quotes")}]
    assert sorted(iter_corpus_texts(tmp_path / "out")) == ["the first note, quoted, is read whole",
                                                          "the third note is an ordinary row"]


def test_pii_counts_in_stats_are_only_the_real_addresses(tmp_path):
    lines = ["Trypsin (EC:3.4.21.4) and alcohol dehydrogenases (EC 1.1.1.1, 1.1.1.2) were assayed here.",
             "Statistics used SPSS version 25.0.0.1 on a 2.1.0.3 firmware instrument in this study.",
             "The server at 192.168.10.25 held the database; write to jane.doe@example.org for access."]
    (tmp_path / "pii.txt").write_text("\n".join(lines) + "\n")
    quality = {"c4_docs": False, "gopher_quality": False, "gopher_repetition": False, "fineweb": False}
    stats = _curate(_config(tmp_path / "pii.txt", quality=quality), tmp_path / "out")
    assert stats["pii"] == {"email": 1, "ip": 1, "phone": 0}
    assert sorted(iter_corpus_texts(tmp_path / "out")) == sorted(lines[:2] + [
        "The server at <IP> held the database; write to <EMAIL> for access."])


def test_sources_with_the_same_file_name_stay_apart(tmp_path):
    """Two `abstracts.txt` in different folders: two sources, each with its weight, and ids that
    name each file (they merged before: the second weight was lost, ids collided)."""
    for folder, words in (("pubmed", "kinase receptor"), ("pmc", "tumor therapy")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "abstracts.txt").write_text(f"the {words} binds the cell membrane here\n")
    config = _config(tmp_path, sources=[{"path": str(tmp_path / "pubmed" / "abstracts.txt")},
                                        {"path": str(tmp_path / "pmc" / "abstracts.txt"), "weight": 3.0}])
    assert config.source_names() == ["pubmed/abstracts.txt", "pmc/abstracts.txt"]
    stats = _curate(config, tmp_path / "out")
    assert stats["sources"] == {"pubmed/abstracts.txt": {"read": 1, "kept": 1, "weight": 1.0},
                                "pmc/abstracts.txt": {"read": 1, "kept": 1, "weight": 3.0}}
    docs = [json.loads(line) for line in (tmp_path / "out" / "train-00000.jsonl").read_text().splitlines()]
    assert [(d["id"], d["source"]) for d in docs] == [("pubmed/abstracts.txt:1", "pubmed/abstracts.txt"),
                                                      ("pmc/abstracts.txt:1", "pmc/abstracts.txt")]
    named = _config(tmp_path, sources=[{"path": str(tmp_path / "pubmed" / "abstracts.txt"), "name": "pubmed"},
                                       {"path": str(tmp_path / "pmc" / "abstracts.txt"), "name": "pmc"}])
    assert named.source_names() == ["pubmed", "pmc"]  # the recipe's names win; ids still name each file
    assert named.source_labels() == ["pubmed/abstracts.txt", "pmc/abstracts.txt"]


def test_two_sources_of_one_name_are_refused_naming_both(tmp_path):
    (tmp_path / "a.txt").write_text("one two three four five\n")
    with pytest.raises(ValueError, match=r"corpus.sources 0 \(.*a.txt\) and 1 \(.*a.txt\) are both named 'a.txt'"):
        _config(tmp_path, sources=[{"path": str(tmp_path / "a.txt")}, {"path": str(tmp_path / "a.txt")}])
    with pytest.raises(ValueError, match=r"are both named 'x'"):
        _config(tmp_path, sources=[{"path": str(tmp_path / "a.txt"), "name": "x"}, {"format": "python-docs", "name": "x"}])


@pytest.mark.slow
def test_a_long_list_every_ray_task_takes_is_stored_once(tmp_path, ray_cluster, monkeypatch):
    from domainlm.executors import run_on_ray

    def sum_into(values: list, index: int, folder: str) -> None:  # defined here: Ray ships it by value
        from pathlib import Path

        Path(folder, f"{index}.txt").write_text(str(sum(values)))

    units, puts = list(range(1000)), []
    real_put = ray_cluster.put
    monkeypatch.setattr(ray_cluster, "put", lambda value: puts.append(len(value)) or real_put(value))
    progress = type("Progress", (), {"update": lambda self, n=1: None})()
    run_on_ray([(units, i, str(tmp_path)) for i in range(6)], progress, work=sum_into)
    assert puts == [1000]  # one copy in the object store, passed by reference to all six tasks
    assert [Path(tmp_path, f"{i}.txt").read_text() for i in range(6)] == [str(sum(units))] * 6

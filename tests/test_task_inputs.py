"""Task files the way real files and real accidents look: every one read as meant, or refused in one
line naming the file:line, the field and the value (issue 12, task side). Each handed case
(`cases/inputs-1/NN-...`) is reproduced inline; the other tests try more inputs of the same class."""

import codecs
import json

import pytest

from domainlm.config import TaskConfig
from domainlm.errors import InputError
from domainlm.io import iter_jsonl, read_ids, read_text
from domainlm.tasks.load import load_task
from domainlm.tasks.tagging import spans, tag_problem

BOM = codecs.BOM_UTF8
NER = ("Patients\tO\nwith\tO\nrenal\tB-Disease\nfailure\tI-Disease\nreceived\tO\ndrugX\tO\n.\tO\n\n"
       "Chronic\tB-Disease\ngastritis\tI-Disease\nwas\tO\nabsent\tO\n.\tO\n\n"
       "No\tO\nfever\tB-Disease\nor\tO\ncough\tB-Disease\nreported\tO\n.\tO\n\n")
CLASSES = "pos\tthe compound reduced tumour size\nneg\tno effect on cell growth was seen\n" \
          "pos\tstrong inhibition of the kinase\nneg\tthe receptor was not affected\n"


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def task(path: str, type: str = "token-classification", format: str = "conll", **settings) -> TaskConfig:
    """A task whose three splits are the same file (unless `settings` name others)."""
    return TaskConfig(**{"name": "t", "type": type, "format": format, "train": path, "dev": path, "test": path,
                         **settings})


def sentences(loaded) -> list[tuple[list[str], list[str]]]:
    return [(x["tokens"], x["tags"]) for x in loaded.train]


def entities(loaded) -> list[list[tuple[int, int, str]]]:
    return [spans(x["tags"]) for x in loaded.train]


# ------------------------------------------------------------- class 1: labels and tags, validated
def test_tags_followed_by_a_space_or_a_tab_read_as_without(tmp_path):  # case 01
    plain = load_task(task(write(tmp_path, "lf.tsv", NER)))
    assert len(plain.train) == 3 and sum(map(len, entities(plain))) == 4
    for name, tail in (("space.tsv", " "), ("tab.tsv", "\t"), ("crlf.tsv", "\r"), ("both.tsv", " \t ")):
        text = "\n".join(line + tail if line else line for line in NER.split("\n"))
        loaded = load_task(task(write(tmp_path, name, text)))
        assert sentences(loaded) == sentences(plain), name
        assert entities(loaded) == entities(plain) == [[(2, 4, "Disease")], [(0, 2, "Disease")],
                                                       [(1, 2, "Disease"), (3, 4, "Disease")]]
        assert loaded.labels == ["B-Disease", "I-Disease", "O"]


def test_a_tag_without_a_scheme_prefix_is_refused_unless_the_task_declares_io(tmp_path):
    bare = write(tmp_path, "bare.tsv", "Chronic\tDisease\ngastritis\tDisease\nwas\tO\n")
    with pytest.raises(InputError, match=r"bare.tsv:1: tag 'Disease' \(the tag column\) is not O and has no scheme "
                                         r"prefix.*set `tagging: io`"):
        load_task(task(bare))
    assert entities(load_task(task(bare, tagging="io"))) == [[(0, 2, "Disease")]]
    for tag, problem in (("B-", "no entity type"), ("o", "no scheme prefix"), ("B_Disease", "no scheme prefix")):
        path = write(tmp_path, "odd.tsv", f"Chronic\tO\ngastritis\t{tag}\n")
        with pytest.raises(InputError, match=rf"odd.tsv:2: tag '{tag}' .*{problem}"):
            load_task(task(path))
    assert [tag_problem(t) for t in ("O", "B", "I-X", "L-X", "U-X", "S-X")] == [None] * 6


def test_empty_token_and_whitespace_only_tag_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"tok.tsv:2: empty token"):
        load_task(task(write(tmp_path, "tok.tsv", "a\tO\n\tO\n")))
    with pytest.raises(InputError, match=r"tags.jsonl:1 token 1: tag ' ' \(field 'tags'\) is empty"):
        load_task(task(write(tmp_path, "tags.jsonl", '{"tokens": ["a", "b"], "tags": ["O", " "]}\n'), format="jsonl"))


def _int_tag_dataset(folder, datasets, labelled_test: bool = True):
    rows = {"tokens": [["aspirin", "and", "ibuprofen", "sodium", "helped"]], "ner_tags": [[1, 0, 1, 2, 0]]}
    data = datasets.Dataset.from_dict(rows)  # plain int64 lists: no ClassLabel names
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(folder))
    return {"train": {"path": str(folder), "split": "train"}, "test": {"path": str(folder), "split": "test"},
            "dev": {"path": str(folder), "split": "test"}, "fields": {"tags": "ner_tags"}}


def test_hf_integer_tags_need_their_names(tmp_path):  # case 03
    datasets = pytest.importorskip("datasets")
    splits = _int_tag_dataset(tmp_path / "ds", datasets)
    with pytest.raises(InputError, match=r"ds\[train\]\[0\] token 0: field 'ner_tags' \(the task's `tags`\) is 1; "
                                         r"expected a tag name.*`label_names`"):
        load_task(TaskConfig(name="t", type="token-classification", format="hf", **splits))
    named = load_task(TaskConfig(name="t", type="token-classification", format="hf",
                                 label_names=["O", "B-Chemical", "I-Chemical"], **splits))
    assert named.test[0]["tags"] == ["B-Chemical", "O", "B-Chemical", "I-Chemical", "O"]
    assert entities(named) == [[(0, 1, "Chemical"), (2, 4, "Chemical")]]


def test_integer_ids_in_files_are_named_or_refused(tmp_path):
    path = write(tmp_path, "ids.jsonl", '{"tokens": ["a", "b"], "tags": [1, 0], "label": 2, "text": "x"}\n')
    assert load_task(task(path, format="jsonl", label_names=["O", "B-X"])).train[0]["tags"] == ["B-X", "O"]
    with pytest.raises(InputError, match=r"ids.jsonl:1 token 0: field 'tags' .* is 1; expected a tag name"):
        load_task(task(path, format="jsonl"))
    digits = write(tmp_path, "digits.tsv", "a\t1\nb\t0\n")
    with pytest.raises(InputError, match=r"digits.tsv:1: the task's `tags` is \"1\"; .*label_names"):
        load_task(task(digits))
    assert load_task(task(digits, label_names=["O", "B-X"])).train[0]["tags"] == ["B-X", "O"]
    assert load_task(task(path, type="classification", format="jsonl")).labels == ["2"]  # unnamed classes stay
    assert load_task(task(path, type="classification", format="jsonl", label_names=list("abc"))).labels == ["c"]
    with pytest.raises(InputError, match=r"ids.jsonl:1: field 'label' .* is 2; expected an id of `label_names` "
                                         r"\(0 to 1\)"):
        load_task(task(path, type="classification", format="jsonl", label_names=["a", "b"]))


def test_hf_unlabelled_marker_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    labelled = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features=features)
    unlabelled = datasets.Dataset.from_dict({"text": ["c", "d"], "label": [-1, -1]}, features=features)
    datasets.DatasetDict({"train": labelled, "test": unlabelled}).save_to_disk(str(tmp_path / "hf"))
    splits = {s: {"path": str(tmp_path / "hf"), "split": s} for s in ("train", "test")}
    with pytest.raises(InputError, match=r"hf\[test\]\[0\]: field 'label' holds class id -1 \(-1 marks an "
                                         r"unlabelled example"):
        load_task(TaskConfig(name="t", type="classification", format="hf", dev_size=1, **splits))


def test_null_text_and_null_label_are_refused_never_read_as_none(tmp_path):  # case 09
    good = [json.dumps({"text": f"text {i}", "label": "INHIBITOR"}) for i in range(30)]
    text_null = write(tmp_path, "text_null.jsonl", "\n".join(good + ['{"text": null, "label": "INHIBITOR"}']) + "\n")
    with pytest.raises(InputError, match=r"text_null.jsonl:31: field 'text' \(the task's `text`\) is null; "
                                         r"expected text"):
        load_task(task(text_null, type="classification", format="jsonl"))
    label_null = write(tmp_path, "label_null.jsonl", "\n".join(good + ['{"text": "t", "label": null}']) + "\n")
    with pytest.raises(InputError, match=r"label_null.jsonl:31: field 'label' \(the task's `label`\) is null; "
                                         r"expected one label"):
        load_task(task(label_null, type="classification", format="jsonl"))


@pytest.mark.parametrize("record, message", [
    ({"text": 12345, "label": "a"}, r"field 'text' \(the task's `text`\) is 12345; expected text"),
    ({"text": ["a", None], "label": "a"}, r"field 'text' .* is \[\"a\", null\]"),
    ({"text": "t", "label": ["a", "b"]}, r"field 'label' .* is \[\"a\", \"b\"\]; expected one label"),
    ({"text": "t", "label": {"name": "a"}}, r"field 'label' .* is \{\"name\": \"a\"\}"),
    ({"text": "t", "label": "  "}, r"field 'label' .* is \"  \"; expected a label, not an empty string"),
])
def test_non_text_and_non_scalar_values_are_refused(tmp_path, record, message):
    path = write(tmp_path, "x.jsonl", json.dumps({"text": "fine", "label": "a"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError, match=r"x.jsonl:2: " + message):
        load_task(task(path, type="classification", format="jsonl"))


def test_multi_label_regression_and_choice_sentinels_are_refused(tmp_path):
    cases = [("multi-label", {"text": "t", "label": ["a", None]}, r"field 'label' .* is null"),
             ("multi-label", {"text": "t", "label": None}, r".* is null; expected a list of labels"),
             ("regression", {"text": "t", "label": None}, r".* is null; expected a finite number"),
             ("regression", {"text": "t", "label": "nan"}, r".* is \"nan\"; expected a finite number"),
             ("multiple-choice", {"text": "t", "choices": ["a", "b"], "label": None}, r".* is null; expected an index")]
    for kind, record, message in cases:
        path = write(tmp_path, "x.jsonl", json.dumps(record) + "\n")
        with pytest.raises(InputError, match=r"x.jsonl:1: " + message):
            load_task(task(path, type=kind, format="jsonl"))
    ok = write(tmp_path, "ok.jsonl", json.dumps({"text": "t", "label": ["a", 3, " "]}) + "\n")
    assert load_task(task(ok, type="multi-label", format="jsonl")).train[0]["label"] == ["3", "a"]


def test_a_stray_extra_column_is_refused_naming_the_line_and_counts(tmp_path):  # case 10
    path = write(tmp_path, "three.tsv",
                 "Identification\tO\nof\tO\nadenomatous\tB-Disease\tEXTRA\npolyposis\tI-Disease\n")
    with pytest.raises(InputError, match=r"three.tsv:3: 3 columns, but the first token line \(line 1\) has 2"):
        load_task(task(path))
    four = write(tmp_path, "four.txt", "Aspirin NN B-NP B-CHEM\nworks VB B-VP O\n\nIt PRP O\n")
    with pytest.raises(InputError, match=r"four.txt:4: 3 columns, but the first token line \(line 1\) has 4"):
        load_task(task(four))


def test_labels_only_in_test_are_named_with_counts(tmp_path):  # case 11
    train = write(tmp_path, "train.jsonl", "".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n"
                                                   for i, lab in enumerate(["INHIBITOR", "AGONIST"] * 5)))
    test = write(tmp_path, "test.jsonl", "".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n" for i, lab in
                                                 enumerate(["NEVER-IN-TRAIN"] * 5 + ["INHIBITOR", "OTHER"])))
    loaded = load_task(task(train, type="classification", format="jsonl", test=test))
    assert loaded.unseen_labels == {"test": {"NEVER-IN-TRAIN": 5, "OTHER": 1}}
    assert "test: labels never seen in train: NEVER-IN-TRAIN (5 examples), OTHER (1 example)" in loaded.notes
    assert loaded.labels == ["AGONIST", "INHIBITOR"]
    ner_test = write(tmp_path, "ner_test.tsv", "Clustering\tB-Chemical\nof\tB-Chemical\nataxia\tB-Disease\n\n"
                                               "Ataxia\tB-Disease\n\n")
    ner = load_task(task(write(tmp_path, "ner.tsv", NER), test=ner_test, dev=ner_test))
    assert ner.unseen_labels == {"dev": {"Chemical": 1}, "test": {"Chemical": 1}}
    assert "test: entity types never seen in train: Chemical (1 example)" in ner.notes


def test_unseen_labels_reach_tasks_json_and_the_report(tmp_path):
    from domainlm.config import RunConfig
    from domainlm.evaluate import run
    from domainlm.io import read_json
    from domainlm.report.sections import tasks_section

    words = "kinase inhibitor tumour cell gene dose".split()

    def make(n: int, labels: list[str]) -> str:
        return "".join(json.dumps({"text": f"{words[i % 6]} {words[(i * 5) % 6]}", "label": labels[i % len(labels)]})
                       + "\n" for i in range(n))

    train = write(tmp_path, "train.jsonl", make(24, ["a", "b"]))
    test = write(tmp_path, "test.jsonl", make(6, ["a", "b", "new"]))
    corpus = write(tmp_path, "corpus.txt", "some unlabeled text\n")
    config = RunConfig(name="t", run_dir=str(tmp_path / "run"), corpus={"sources": [{"path": corpus}]},
                       tasks=[{"name": "cls", "type": "classification", "train": train, "dev": train, "test": test}],
                       evaluate={"seeds": [0], "models": [{"name": "tfidf", "kind": "tfidf"}]})
    run(config, config.directory / "evaluate")
    summary = read_json(config.directory / "evaluate" / "tasks.json")
    assert summary[0]["unseen_labels"] == {"test": {"new": 2}} and summary[0]["invalid_utf8"] == 0
    heading, text, header, rows = tasks_section({"tasks": summary})
    assert "Labels never seen in training" in text and "cls test: new (2)" in text
    assert "labels never seen in train: new (2 examples)" in rows[0][header.index("notes")]


# ------------------------------------------------------------ class 2: encodings and file dialects
def test_a_byte_order_mark_is_ignored_by_every_task_format(tmp_path):  # case 02
    ner_plain = load_task(task(write(tmp_path, "plain.tsv", NER)))
    for name, content in (("bom.tsv", BOM + NER.encode()),
                          ("docstart.tsv", BOM + b"-DOCSTART- -X- -X- O\n\n" + NER.encode())):
        assert sentences(load_task(task(write(tmp_path, name, content)))) == sentences(ner_plain), name
    cls = dict(type="classification", columns=["label", "text"])
    noheader = load_task(task(write(tmp_path, "noheader.tsv", BOM + CLASSES.encode()), format="tsv", **cls))
    assert noheader.labels == ["neg", "pos"] and noheader.train[0] == {"text": "the compound reduced tumour size",
                                                                        "label": "pos"}
    header = BOM + b"label,text\n" + CLASSES.replace("\t", ",").encode()
    assert load_task(task(write(tmp_path, "header.csv", header), type="classification", format="csv")).train \
        == noheader.train
    records = [{"text": "the compound reduced tumour size", "label": "pos"}, {"text": "no effect", "label": "neg"}]
    jsonl = BOM + "".join(json.dumps(r) + "\n" for r in records).encode()
    json_list = BOM + json.dumps(records, indent=1).encode()
    for name, content, fmt in (("r.jsonl", jsonl, "jsonl"), ("r.json", json_list, "json")):
        loaded = load_task(task(write(tmp_path, name, content), type="classification", format=fmt))
        assert loaded.train == records and loaded.labels == ["neg", "pos"]


def test_strict_readers_ignore_a_bom_and_refuse_utf16(tmp_path):
    assert list(iter_jsonl(write(tmp_path, "a.jsonl", BOM + b'{"text": "x"}\n'))) == [(1, {"text": "x"})]
    assert read_ids(write(tmp_path, "ids.txt", BOM + b"12\n34\n")) == {"12", "34"}
    assert read_ids(write(tmp_path, "ids.json", BOM + b'{"12": "yes", "34": "no"}')) == {"12", "34"}
    assert read_ids(write(tmp_path, "list.json", b'[12, "34"]')) == {"12", "34"}
    with pytest.raises(InputError, match=r"list2.json: the id list holds null"):
        read_ids(write(tmp_path, "list2.json", b'[12, null]'))
    assert read_text(write(tmp_path, "crlf.txt", BOM + b"a\r\nb\xff\rc")) == ("a\nb\ufffd\nc", 1)
    with pytest.raises(InputError, match=r"utf16.tsv: a UTF-16 file"):
        load_task(task(write(tmp_path, "utf16.tsv", "a\tO\n".encode("utf-16"))))


def test_comment_lines_only_before_a_sentence_hash_tokens_stay(tmp_path):  # case 04
    text = ("# doc 17\nPatient\tO\n#\tO\n4\tO\nhad\tO\nrenal\tB-Disease\nfailure\tI-Disease\n.\tO\n\n"
            "# doc 18\n#2\tO\nbiopsy\tO\nshowed\tO\ngastritis\tB-Disease\n.\tO\n")
    loaded = load_task(task(write(tmp_path, "hash.tsv", text), comment_prefix="#"))
    assert [len(tokens) for tokens, _ in sentences(loaded)] == [7, 5]
    assert loaded.train[0]["tokens"][:3] == ["Patient", "#", "4"] and loaded.train[1]["tokens"][0] == "#2"
    assert entities(loaded) == [[(4, 6, "Disease")], [(3, 4, "Disease")]]


def test_a_comment_inside_a_sentence_is_refused_and_comments_may_follow_docstart(tmp_path):
    inside = write(tmp_path, "inside.tsv", "###1\nPatient\tO\n### doc 2\nbiopsy\tO\n")
    with pytest.raises(InputError, match=r"inside.tsv:3: 3 columns, .*has 2.*comment line belongs before a sentence"):
        load_task(task(inside, comment_prefix="###"))
    space = "-DOCSTART- -X- -X- O\n\n###1\n### another note\nPatient O\n# O\n\n###2\nbiopsy O\n"
    loaded = load_task(task(write(tmp_path, "space.txt", space), comment_prefix="###"))
    assert sentences(loaded) == [(["Patient", "#"], ["O", "O"]), (["biopsy"], ["O"])]
    hashes = "# doc 1\nPatient O\n\n# doc 2\n# O\n#2 B-X\n\n# 3\nbiopsy O\n"  # space-separated
    loaded = load_task(task(write(tmp_path, "hashes.txt", hashes), comment_prefix="#"))
    assert sentences(loaded) == [(["Patient"], ["O"]), (["#", "#2"], ["O", "B-X"]), (["biopsy"], ["O"])]


def test_tsv_has_no_quoting_and_csv_comments_stop_at_quoted_fields(tmp_path):
    tsv = 'pos\tthe "new compound\nneg\tno effect"\npos\t"quoted"\n'
    loaded = load_task(task(write(tmp_path, "q.tsv", tsv), type="classification", format="tsv",
                            columns=["label", "text"]))
    assert [x["text"] for x in loaded.train] == ['the "new compound', 'no effect"', '"quoted"']
    csv_text = 'label,text\n# a comment\npos,"first line\n# not a comment\n\nlast line"\nneg,plain\n'
    rows = load_task(task(write(tmp_path, "q.csv", csv_text), type="classification", format="csv",
                          comment_prefix="#")).train
    assert rows == [{"text": "first line\n# not a comment\n\nlast line", "label": "pos"},
                    {"text": "plain", "label": "neg"}]


def test_invalid_utf8_in_task_files_is_counted_per_task(tmp_path):
    path = write(tmp_path, "bad.tsv", b"caf\xe9\tO\nna\xefve\xff\tB-X\n")
    loaded = load_task(task(path))
    assert loaded.invalid_utf8 == 3 and loaded.train[0]["tokens"] == ["caf\ufffd", "na\ufffdve\ufffd"]
    assert any(n.startswith("invalid UTF-8 replaced by U+FFFD: 3 characters in") for n in loaded.notes)
    clean = load_task(task(write(tmp_path, "good.tsv", "café\tO\n")))
    assert clean.invalid_utf8 == 0 and not clean.notes


@pytest.mark.parametrize("content, fmt, message", [
    ('{"text": "a b", "label": "x"}\n{"text": "c", "label": "y"}\n', "conll", "JSONL .*, not CoNLL"),
    ('{"text": "a b", "label": "x"}\n{"text": "c", "label": "y"}\n', "json", "JSONL .*, not JSON"),
    ('[\n {"text": "a", "label": "x"}\n]\n', "jsonl", r"JSON \(one document\), not JSONL"),
    ("label,text\npos,a b\n", "tsv", "CSV .*, not TSV"),
    ("label\ttext\npos\ta, b\n", "csv", "TSV .*, not CSV"),
    ("a\tO\nb\tO\n", "jsonl", "TSV .*, not JSONL"),
])
def test_a_file_in_another_format_says_what_it_looks_like(tmp_path, content, fmt, message):
    path = write(tmp_path, "file.data", content)
    with pytest.raises(InputError, match=r"file.data: this looks like " + message):
        load_task(task(path, type="classification", format=fmt))


def test_a_headerless_file_read_with_a_header_says_so(tmp_path):
    path = write(tmp_path, "noheader.tsv", CLASSES)
    with pytest.raises(InputError, match=r"noheader.tsv:1: the header line \['pos', 'the compound reduced tumour "
                                         r"size'\] has no column 'text'.*name the columns with `columns:`"):
        load_task(task(path, type="classification", format="tsv"))
    one_line_json = write(tmp_path, "one.jsonl", '{"text": "a", "label": "x"}\n')  # valid JSON and JSONL alike
    assert load_task(task(one_line_json, type="classification", format="jsonl")).labels == ["x"]


# ------------------------------------------------ sequential sentences, entity markers
def test_explode_gives_one_example_per_sentence_with_its_context(tmp_path):
    abstracts = [{"id": i, "sentences": [f"s{i}a", f"s{i}b", f"s{i}c"], "labels": ["BACKGROUND", "METHODS", "RESULTS"]}
                 for i in range(10)]
    path = write(tmp_path, "rct.jsonl", "".join(json.dumps(a) + "\n" for a in abstracts))
    mapping = dict(type="classification", format="jsonl", explode=["sentences", "labels"],
                   fields={"text": "sentences", "label": "labels"})
    loaded = load_task(task(path, context="neighbours", **mapping))
    assert loaded.labels == ["BACKGROUND", "METHODS", "RESULTS"] and len(loaded.train) == 30
    assert loaded.train[:3] == [{"text": "s0a", "text_pair": "s0b", "label": "BACKGROUND"},
                                {"text": "s0b", "text_pair": "s0a s0c", "label": "METHODS"},
                                {"text": "s0c", "text_pair": "s0b", "label": "RESULTS"}]
    assert load_task(task(path, context="all", **mapping)).train[1]["text_pair"] == "s0a s0b s0c"
    assert "text_pair" not in load_task(task(path, **mapping)).train[0]
    held = load_task(task(path, dev=None, test=None, dev_size=2, test_size=2, **mapping))
    assert [len(held.train), len(held.dev), len(held.test)] == [18, 6, 6]  # whole abstracts held out
    assert {x["text"][1] for x in held.dev}.isdisjoint({x["text"][1] for x in held.train})


def test_explode_refuses_unequal_or_non_list_fields(tmp_path):
    mapping = dict(type="classification", format="jsonl", explode=["sentences", "labels"],
                   fields={"text": "sentences", "label": "labels"})
    uneven = write(tmp_path, "uneven.jsonl", json.dumps({"sentences": ["a", "b"], "labels": ["X"]}) + "\n")
    with pytest.raises(InputError, match=r"uneven.jsonl:1: the `explode` lists differ in length "
                                         r"\(sentences 2, labels 1\)"):
        load_task(task(uneven, **mapping))
    scalar = write(tmp_path, "scalar.jsonl", json.dumps({"sentences": "a b", "labels": ["X"]}) + "\n")
    with pytest.raises(InputError, match=r"scalar.jsonl:1: field 'sentences' .* is \"a b\"; expected a list"):
        load_task(task(scalar, **mapping))
    null = write(tmp_path, "null.jsonl", json.dumps({"sentences": ["a", "b"], "labels": ["X", None]}) + "\n")
    with pytest.raises(InputError, match=r"null.jsonl:1 element 1: field 'labels' .* is null"):
        load_task(task(null, **mapping))
    with pytest.raises(ValueError, match=r"context: all needs the text field 'text' in `explode`"):
        task(uneven, type="classification", format="jsonl", context="all")


def test_entity_markers_that_mark_nothing_are_refused_and_partial_misses_counted(tmp_path):
    rows = [{"text": "<< aspirin >> inhibits [[ COX-2 ]]", "label": "INHIBITOR"},
            {"text": "no markers here", "label": "NONE"}, {"text": "<< only >> one", "label": "NONE"}]
    path = write(tmp_path, "rel.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_task(task(path, type="relation", format="jsonl", entity_markers=["<<", ">>", "[[", "]]"]))
    assert "train: 2 of 3 examples lack the entity markers << >> [[ ]]" in loaded.notes
    assert loaded.train[0]["text"] == "[E1] aspirin [/E1] inhibits [E2] COX-2 [/E2]"
    with pytest.raises(InputError, match=r"task 't': no train example \(.*rel.jsonl\) has both entities marked with "
                                         r"<e1> </e1> <e2> </e2>"):
        load_task(task(path, type="relation", format="jsonl", entity_markers=["<e1>", "</e1>", "<e2>", "</e2>"]))


# ------------------------------------------------ issue 20: CSV quoting that would change or merge rows
def test_csv_quotes_that_would_drop_text_or_merge_rows_are_refused(tmp_path):
    after = write(tmp_path, "after.csv", 'text,label\nplain text,pos\n"quoted" and more,neg\n')
    with pytest.raises(InputError, match=r"after.csv:3: not readable as CSV \(',' expected after '\"'\)"):
        load_task(task(after, type="classification", format="csv"))  # was read as "quoted and more"
    unclosed = write(tmp_path, "unclosed.csv", 'text,label\nfirst,"pos\nsecond,neg\n\nthird,pos\n')
    with pytest.raises(InputError, match=r"unclosed.csv:2: not readable as CSV \(unexpected end of data: a quoted "
                                         r"field opens on line 2 and never closes\)"):
        load_task(task(unclosed, type="classification", format="csv"))  # was one row, label "pos\nsecond,neg..."
    fine = write(tmp_path, "fine.csv", 'text,label\n"a ""quoted"" word, and a comma",pos\nsays "hi",neg\n')
    assert [(x["text"], x["label"]) for x in load_task(task(fine, type="classification", format="csv")).train] == [
        ('a "quoted" word, and a comma', "pos"), ('says "hi"', "neg")]


# --------------------------- decontamination looks for a task's text as a corpus holds it (issue 20)
MARKED = [  # ChemProt-style: entities in << >> and [[ ]], a sentence once per entity pair
    ("Androgen antagonistic effect of << estramustine phosphate >> (EMP) metabolites on wild-type and mutated "
     "[[ androgen receptor ]].", "ANTAGONIST"),
    ("Androgen antagonistic effect of estramustine phosphate (<< EMP >>) metabolites on wild-type and mutated "
     "[[ androgen receptor ]].", "ANTAGONIST"),
    ("Exposure of LNCaP cells to << estramustine >> for 24 hr caused transcriptional inhibition of [[ PSA ]] in a "
     "concentration-dependent manner.", "INHIBITOR"),
    ("Down-regulation of prostate-specific antigen (PSA) expression, an << AR >>-target gene, by [[ estramustine ]] "
     "and bicalutamide was accompanied by the blockade of the mutated androgen receptor.", "INDIRECT-DOWNREGULATOR"),
]
AS_WRITTEN = [  # the same sentences as a PubMed abstract holds them
    "Androgen antagonistic effect of estramustine phosphate (EMP) metabolites on wild-type and mutated androgen "
    "receptor.",
    "Exposure of LNCaP cells to estramustine for 24 hr caused transcriptional inhibition of PSA in a "
    "concentration-dependent manner.",
    "Down-regulation of prostate-specific antigen (PSA) expression, an AR-target gene, by estramustine and "
    "bicalutamide was accompanied by the blockade of the mutated androgen receptor.",
]
FILLER = ["Several of the heterogeneous clinical manifestations of systemic lupus erythematosus have been "
          "associated with specific autoantibodies in the patients we studied.",
          "Activity of the immunoglobulin heavy and kappa light chain gene enhancers depends on a complex "
          "interplay of ubiquitous and developmentally regulated proteins in the cell."]


def _relation_task(tmp_path, markers=("<<", ">>", "[[", "]]"), **settings) -> TaskConfig:
    rows = [(text.replace("<<", markers[0]).replace(">>", markers[1]).replace("[[", markers[2])
             .replace("]]", markers[3]), label) for text, label in MARKED]
    path = write(tmp_path, f"rel-{markers[0]}.jsonl", "".join(json.dumps({"text": t, "label": x}) + "\n"
                                                               for t, x in rows))
    return task(path, type="relation", format="jsonl", entity_markers=list(markers), **settings)


def _kept_after_decontamination(tmp_path, docs: list[str], configs: list[TaskConfig], **corpus) -> tuple[list, dict]:
    """(the corpus documents left after curation against the tasks' eval texts, stats.json)."""
    from domainlm.config import CorpusConfig
    from domainlm.corpus import curate
    from domainlm.tasks.load import task_eval_texts

    source = tmp_path / f"corpus-{len(list(tmp_path.glob('corpus-*')))}.txt"
    source.write_text("\n".join(docs) + "\n")
    out = tmp_path / f"out-{source.stem}"
    config = CorpusConfig(sources=[{"path": str(source)}], min_words=3, heldout_fraction=0.0,
                          dedup={"near": False}, **corpus)
    stats = curate(config, out, task_eval_texts(configs), workers=1)
    kept = [json.loads(line)["text"] for path in sorted(out.glob("train-*.jsonl")) for line in open(path)]
    return kept, stats


@pytest.mark.parametrize("mode", ["mark", "replace", "text"])
def test_pasted_relation_test_sentences_are_found_whatever_the_entity_mode(tmp_path, mode):  # case 08
    docs = [f"{FILLER[i % 2]} {sentence} {FILLER[(i + 1) % 2]}" for i, sentence in enumerate(AS_WRITTEN)]
    kept, stats = _kept_after_decontamination(tmp_path, docs + FILLER, [_relation_task(tmp_path, entity_mode=mode)])
    assert kept == FILLER
    assert stats["dropped"] == {"contaminated:t": 3}
    # What was looked for: the 3 distinct sentences (a sentence is one text whatever its entity pair).
    assert stats["decontamination"] == {"texts": 3, "ngram": 13, "whole": 0, "too_short": 0, "min_words": 8}


def test_looked_for_texts_are_the_same_for_every_entity_mode_and_marker_style(tmp_path):
    from domainlm.tasks.load import task_eval_texts

    expected = {"t": AS_WRITTEN}
    for markers in (("<<", ">>", "[[", "]]"), ("<e1>", "</e1>", "<e2>", "</e2>"), ("@", "$", "@@", "$$")):
        for mode in ("mark", "replace", "text"):
            assert task_eval_texts([_relation_task(tmp_path, markers, entity_mode=mode)]) == expected, (markers, mode)


def test_fine_tuning_settings_leave_the_corpus_stage_fingerprint_alone(tmp_path, tiny_recipe):
    from domainlm.config import config_from_dict
    from domainlm.corpus import eval_text_digests

    def digests(**settings) -> dict[str, str]:
        relation = _relation_task(tmp_path, **settings).model_dump(mode="json") | {"name": "rel"}
        return eval_text_digests(config_from_dict(tiny_recipe | {"tasks": tiny_recipe["tasks"] + [relation]}))

    mark = digests(entity_mode="mark")
    assert digests(entity_mode="replace") == digests(entity_mode="text") == digests(max_eval_examples=1) == mark
    assert digests(markers=("<e1>", "</e1>", "<e2>", "</e2>"), entity_mode="replace") == mark


def test_unmark_entities_keeps_the_mentions_and_drops_every_marker():
    from domainlm.tasks.load import unmark_entities

    markers = ["<<", ">>", "[[", "]]"]
    assert unmark_entities(MARKED[1][0], markers) == AS_WRITTEN[0]
    assert unmark_entities("an << AR >>-target gene", markers) == "an AR-target gene"
    assert unmark_entities("<< only >> one, and a stray ]] marker", markers) == "only one, and a stray marker"


def test_each_text_of_a_pair_or_a_question_is_looked_for_on_its_own(tmp_path):
    from domainlm.tasks.load import task_eval_texts

    question, context = "Does daily aspirin prevent recurrent migraine attacks in adults?", FILLER[0]
    pairs = write(tmp_path, "qa.jsonl", json.dumps({"text": question, "text_pair": context, "label": "yes"}) + "\n")
    assert task_eval_texts([task(pairs, type="yes-no-qa", format="jsonl")]) == {"t": [question, context]}
    # The question alone is in an abstract; joined to its context it was 13-grams no corpus holds.
    kept, stats = _kept_after_decontamination(tmp_path, [f"We asked: {question} {FILLER[1]}"],
                                              [task(pairs, type="yes-no-qa", format="jsonl")])
    assert kept == [] and stats["decontamination"]["whole"] == 1


def test_a_choice_question_is_looked_for_with_its_right_answer_never_the_options_joined(tmp_path):
    from domainlm.tasks.load import task_eval_texts

    record = {"text": "Which enzyme does aspirin inhibit irreversibly", "choices": ["lipoxygenase", "COX-1",
                                                                                     "thrombin"], "label": "B"}
    path = write(tmp_path, "mc.jsonl", json.dumps(record) + "\n")
    mc = task(path, type="multiple-choice", format="jsonl")
    assert task_eval_texts([mc]) == {"t": [record["text"], record["text"] + " COX-1"]}
    kept, stats = _kept_after_decontamination(tmp_path, [f"{FILLER[0]} Which enzyme does aspirin inhibit "
                                                         f"irreversibly? COX-1, as shown here.", FILLER[1]], [mc])
    assert kept == [FILLER[1]]
    assert stats["decontamination"] == {"texts": 2, "ngram": 13, "whole": 1, "too_short": 1, "min_words": 8}


def test_an_exploded_abstract_is_looked_for_whole_whatever_its_context_setting(tmp_path):
    from domainlm.tasks.load import task_eval_texts

    sentences = ["Aspirin was given daily.", "Migraine frequency fell by half.", "No bleeding was seen."]
    path = write(tmp_path, "rct.jsonl", json.dumps({"sentences": sentences, "labels": ["M", "R", "R"]}) + "\n")
    mapping = dict(type="classification", format="jsonl", explode=["sentences", "labels"],
                   fields={"text": "sentences", "label": "labels"})
    looked_for = {"t": [*sentences, " ".join(sentences)]}  # never a neighbours window ("s1 s3")
    for context in ("none", "all", "neighbours"):
        assert task_eval_texts([task(path, context=context, **mapping)]) == looked_for, context
    # Every sentence is under 8 words: only the abstract (13 words, one 13-gram) can be checked.
    kept, stats = _kept_after_decontamination(tmp_path, [f"{FILLER[0]} {' '.join(sentences)}", FILLER[1]],
                                              [task(path, context="neighbours", **mapping)])
    assert kept == [FILLER[1]]
    assert stats["decontamination"] == {"texts": 4, "ngram": 13, "whole": 0, "too_short": 3, "min_words": 8}


def test_tokenised_conll_sentences_are_found_in_running_text(tmp_path):
    tokens = "Androgen antagonistic effect of estramustine phosphate ( EMP ) metabolites on wild - type and " \
             "mutated androgen receptor .".split()
    path = write(tmp_path, "ner.tsv", "".join(f"{t}\t{'B-Chem' if t == 'EMP' else 'O'}\n" for t in tokens) + "\n")
    kept, stats = _kept_after_decontamination(tmp_path, [f"{FILLER[0]} {AS_WRITTEN[0]}", FILLER[1]], [task(path)])
    assert kept == [FILLER[1]] and stats["decontamination"]["texts"] == 1


# ------------------------------------------------ issue 20: HF datasets saved with zero rows, or in shards
def test_an_hf_split_saved_with_zero_rows_is_refused_naming_the_folder_and_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    data = datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(6)], "label": [0, 1] * 3}, features=features)
    empty = data.filter(lambda row: False).flatten_indices()  # save_to_disk writes no data file for it
    datasets.DatasetDict({"train": data, "dev": data, "test": empty}).save_to_disk(
        str(tmp_path / "dd"), num_shards={"train": 3, "dev": 2, "test": 1})
    empty.save_to_disk(str(tmp_path / "empty"))
    splits = {role: {"path": str(tmp_path / "dd"), "split": role} for role in ("train", "dev", "test")}
    with pytest.raises(InputError, match=r"task 't': no records in .*dd \(split 'test'\), the task's test split$"):
        load_task(TaskConfig(name="t", type="classification", format="hf", **splits))
    splits["test"] = {"path": str(tmp_path / "empty")}
    with pytest.raises(InputError, match=r"task 't': no records in .*empty, the task's test split$"):
        load_task(TaskConfig(name="t", type="classification", format="hf", **splits))
    splits["test"] = splits["dev"]  # the sharded splits read whole, in order; the empty one is never loaded
    loaded = load_task(TaskConfig(name="t", type="classification", format="hf", **splits))
    assert [x["text"] for x in loaded.train] == [f"text {i}" for i in range(6)]
    assert [x["label"] for x in loaded.test] == ["no", "yes"] * 3

import pytest

from domainlm import demo


@pytest.mark.slow  # reads and splits the Python documentation
def test_demo_tasks_are_built_and_split_cleanly():
    train, test = demo.module_task("train"), demo.module_task("test")
    assert len(train) > 1000 and len(test) > 100
    assert {x["label"] for x in train} == set(demo.MODULE_LABELS)
    # Package names are masked out of the text, so the label cannot be read off it.
    assert not any(x["label"] in x["text"].lower().split() for x in test)
    params = demo.params_task("dev")
    assert params and all(len(x["tokens"]) == len(x["tags"]) and "B-PARAM" in x["tags"] for x in params)


def test_demo_corpus_excludes_task_dev_and_test_docstrings():
    ids = {d["id"] for d in demo.corpus_documents()}
    held = [d.qualname for d in demo.stdlib_docstrings() if demo.split_of(d.qualname) != "train"]
    assert held and not ids.intersection(held)

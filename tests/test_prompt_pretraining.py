"""Prompt-based continued pretraining (PCP, `pretrain.prompt_tasks`): a task's training texts in
its prompt template join the pretraining data as a source of their own."""

import pytest

from domainlm.config import config_from_dict
from domainlm.errors import ConfigError
from domainlm.layout import RunLayout
from domainlm.pipeline import run_all
from domainlm.pretrain import prompt_documents, settings
from domainlm.pretrain.data import TokenShards
from domainlm.tasks.load import prompt_text


def test_a_template_takes_the_texts_and_the_mask_token_and_leaves_braces_in_a_text_alone():
    example = {"text": "Aspirin {mask} inhibits COX-1", "text_pair": "Does it?"}
    assert prompt_text("{text} It was {mask}.", example, "[MASK]") == "Aspirin {mask} inhibits COX-1 It was [MASK]."
    assert prompt_text("{text} ? {mask} , {text_pair}", example, "<mask>") == \
        "Aspirin {mask} inhibits COX-1 ? <mask> , Does it?"


def test_prompt_documents_wrap_every_training_example_of_the_named_tasks(tiny_recipe):
    config = config_from_dict(tiny_recipe | {"pretrain": tiny_recipe["pretrain"] | {"prompt_tasks": ["cls"]}})
    docs = list(prompt_documents(config, "[MASK]"))
    assert len(docs) == 60 and {source for _, source in docs} == {"prompt:cls"}
    assert all(text.endswith(" It was [MASK].") for text, _ in docs)
    plain = config_from_dict(tiny_recipe)
    assert list(prompt_documents(plain, "[MASK]")) == []
    assert "prompt_tasks" not in settings(plain) and settings(config)["prompt_tasks"][0]["name"] == "cls"


@pytest.mark.parametrize(("names", "message"), [
    (["nope"], r"pretrain.prompt_tasks: 'nope' is not one of tasks \(cls, ner\)"),
    (["ner"], r"pretrain.prompt_tasks: task 'ner' is a token-classification task, which has no prompt template"),
])
def test_prompt_tasks_must_be_tasks_with_a_template(tiny_recipe, names, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_recipe | {"pretrain": tiny_recipe["pretrain"] | {"prompt_tasks": names}})


@pytest.mark.slow
def test_the_pretrain_stage_trains_on_the_corpus_and_the_wrapped_task_texts(tiny_recipe):
    recipe = tiny_recipe | {"pretrain": tiny_recipe["pretrain"] | {"prompt_tasks": ["cls"]},
                            "evaluate": tiny_recipe["evaluate"] | {"models": [{"name": "domain", "kind": "domain"}]}}
    config = config_from_dict(recipe)
    run_all(config, stages=("corpus", "tokenizer", "pretrain"))
    shards = TokenShards.load(RunLayout(config.directory).token_shards)
    assert "prompt:cls" in shards.source_names
    prompt_docs = sum(1 for s in shards.sources if shards.source_names[s] == "prompt:cls")
    assert prompt_docs == 60

"""Prompt-based fine-tuning (PET / LM-BFF): templates, label words scored by the masked-LM head,
the automatic verbalizer, training on a toy task, refusals of models without a masked-LM head,
and the recipe's checks."""
# ruff: noqa: F811 - test_evaluate's fixtures are imported by name and taken as arguments

import json
import random
import shutil

import pytest
import torch

from conftest import tiny_family_model
from domainlm.config import EvaluateConfig, TaskConfig, config_from_dict
from domainlm.errors import ConfigError, ModelError
from domainlm.evaluate.finetune import finetune, task_tokenizer
from domainlm.evaluate.prompt import (
    PromptModel,
    Segment,
    encode_prompts,
    label_words,
    load_masked_lm,
    masked_lm_config,
    mean_log_probabilities,
    prompt_tuning,
    search_words,
    template_segments,
)
from domainlm.tasks.load import load_task
from test_evaluate import _run_config, task_entries, tiny_model, tiny_modernbert  # noqa: F401 - fixtures

PROMPT_TYPES = ("classification", "pair-classification", "relation", "yes-no-qa")


def test_a_template_becomes_segments_with_the_spaces_before_them():
    assert template_segments("{text} It was {mask}.") == [
        Segment("text"), Segment("literal", "It was", space=True), Segment("mask", space=True),
        Segment("literal", ".")]
    assert template_segments("{text} ? {mask} , {text_pair}") == [
        Segment("text"), Segment("literal", "?", True), Segment("mask", space=True), Segment("literal", ",", True),
        Segment("text_pair", space=True)]


def test_the_template_is_encoded_as_the_whole_string_would_be(task_entries, tiny_model):
    """WordPiece reads each piece as it would read the whole prompt with the mask token written in."""
    task = load_task(TaskConfig(**task_entries["pair-classification"]))
    tokenizer = task_tokenizer(tiny_model, task)
    data = encode_prompts(tokenizer, task, task.train, 64)
    for item, x in zip(data.items, task.train, strict=True):
        whole = tokenizer(f"{x['text']} ? {tokenizer.mask_token} , {x['text_pair']}")["input_ids"]
        assert item["input_ids"] == whole
        assert item["label"] == task.labels.index(x["label"])


@pytest.mark.parametrize("kind", PROMPT_TYPES)
def test_long_texts_are_cut_and_the_template_and_its_one_mask_kept(kind, task_entries, tiny_model):
    task = load_task(TaskConfig(**task_entries[kind]))
    tokenizer = task_tokenizer(tiny_model, task)
    empty = {"text": "", "text_pair": "", "label": task.labels[0]}
    length = len(encode_prompts(tokenizer, task, [empty], 64).items[0]["input_ids"]) + 6  # room for 6 text tokens
    data = encode_prompts(tokenizer, task, task.train, length)
    assert data.truncated > 0
    for item in data.items:
        assert len(item["input_ids"]) <= length
        assert item["input_ids"].count(tokenizer.mask_token_id) == 1
        assert item["input_ids"][0] == tokenizer.cls_token_id and item["input_ids"][-1] == tokenizer.sep_token_id


@pytest.mark.parametrize("model", ["tiny_model", "tiny_modernbert"], ids=["bert", "modernbert"])
def test_a_labels_logit_is_the_mean_of_its_words_logits_from_the_masked_lm_head(model, task_entries, request):
    folder = request.getfixturevalue(model)
    task = load_task(TaskConfig(**task_entries["classification"], prompt={
        "verbalizer": {"onc": "protein", "other": ["cell", "therapy"]}}))  # one token in both vocabularies
    tokenizer = task_tokenizer(folder, task)
    masked_lm = load_masked_lm(folder, pretrained=True, vocab_size=len(tokenizer)).eval()
    data = encode_prompts(tokenizer, task, task.test[:4], 48)
    words, source = label_words(masked_lm, tokenizer, task, data, 8, "cpu", str(folder))
    assert source == {"onc": "recipe", "other": "recipe"}
    assert [tokenizer.decode([t]).strip() for t in words["other"]] == ["cell", "therapy"]
    model = PromptModel(masked_lm, words, tokenizer.mask_token_id).eval()
    with torch.no_grad():
        for item in data.items:
            ids = torch.tensor([item["input_ids"]])
            scores = model(ids, torch.ones_like(ids)).logits[0]
            by_hand = masked_lm(input_ids=ids).logits[0, item["input_ids"].index(tokenizer.mask_token_id)]
            protein, cell, therapy = (by_hand[t] for t in (*words["onc"], *words["other"]))
            torch.testing.assert_close(scores, torch.stack([protein, (cell + therapy) / 2]))
            loss = model(ids, torch.ones_like(ids), labels=torch.tensor([1])).loss
            torch.testing.assert_close(loss, -torch.log_softmax(scores, -1)[1])


def _separable_task(folder, n=(48, 16, 20)) -> dict:
    """onc texts always hold 'tumor', the others never do: a task a tiny model learns in a few epochs."""
    rng = random.Random(3)
    words = [w for w in "protein kinase binds receptor cell gene patient therapy dose enzyme".split()]
    for split, count in zip(("train", "dev", "test"), n, strict=True):
        with open(folder / f"toy-{split}.jsonl", "w") as handle:
            for i in range(count):
                text = [rng.choice(words) for _ in range(6)]
                if i % 2:
                    text[rng.randrange(6)] = "tumor"
                handle.write(json.dumps({"text": " ".join(text), "label": "onc" if i % 2 else "other"}) + "\n")
    return {"name": "toy", "type": "classification", **{s: str(folder / f"toy-{s}.jsonl") for s in ("train", "dev", "test")}}


def _initialised_with(seed: int, tiny_model, tmp_path):
    """The tiny model's tokenizer with weights drawn under `seed` (the fixture's depend on the tests before it)."""
    import transformers

    folder = tmp_path / f"seeded-{seed}"
    shutil.copytree(tiny_model, folder)
    torch.manual_seed(seed)
    transformers.BertForMaskedLM(transformers.AutoConfig.from_pretrained(tiny_model)).save_pretrained(folder)
    return folder


def test_prompt_based_fine_tuning_learns_a_toy_task(tiny_model, tmp_path):
    task = load_task(TaskConfig(**_separable_task(tmp_path, n=(128, 16, 20)),
                                prompt={"verbalizer": {"onc": "tumor", "other": "gene"}}))
    config = EvaluateConfig(epochs=10, patience=None, batch_size=8, max_length=32, warmup_fraction=0.0)
    model = _initialised_with(0, tiny_model, tmp_path)  # learnt by epoch 5 from each of the inits 0-3
    result = finetune(model, True, task, seed=0, lr=1e-3, config=config, tuning=prompt_tuning(config))
    assert result["metrics"]["accuracy"] >= 0.9  # chance: 0.5 (10 of 20 test examples are onc)
    assert result["dev_score"] == 1.0 and result["dev_scores"][0] == 0.5  # learnt, not known from the start
    assert result["verbalizer"] == {"onc": ["tumor"], "other": ["gene"]} and result["finetuning"] == "prompt"
    assert result["template"] == "{text} It was {mask}."
    assert set(result["predictions"]) <= {"onc", "other"} and len(result["predictions"]) == 20


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_other_masked_lm_families_fine_tune_through_their_head(family, task_entries, tiny_model, tmp_path):

    folder = tiny_family_model(family, tiny_model, tmp_path / family)
    config = EvaluateConfig(epochs=1, batch_size=8, max_length=16)
    for kind in ("classification", "yes-no-qa"):
        task = load_task(TaskConfig(**task_entries[kind]))
        result = finetune(folder, True, task, seed=0, lr=1e-3, config=config, tuning=prompt_tuning(config))
        assert len(result["predictions"]) == len(task.test) and set(result["predictions"]) <= set(task.labels)


# ------------------------------------------------------------------------------- label words
def test_the_search_takes_the_word_most_favoured_for_a_label_over_all_examples(tiny_model, task_entries):
    task = load_task(TaskConfig(**task_entries["classification"]))
    tokenizer = task_tokenizer(tiny_model, task)
    vocab = tokenizer.get_vocab()
    scores = {-1: torch.zeros(len(tokenizer)), 0: torch.zeros(len(tokenizer)), 1: torch.zeros(len(tokenizer))}
    for key in scores:
        scores[key][vocab["the"] if "the" in vocab else vocab["is"]] = 5.0  # favoured for every input: never chosen
    scores[0][vocab["tumor"]], scores[-1][vocab["tumor"]] = 2.0, 1.0
    scores[1][vocab["##s"] if "##s" in vocab else vocab["tumor"]] = 9.0  # a word piece: not a word
    scores[1][vocab["tumor"]] = 3.0  # favoured here too, but taken by the first label
    scores[1][vocab["gene"]] = 1.5
    scores[1][tokenizer.sep_token_id] = 9.0  # a special token: never a label word
    found = search_words(tokenizer, scores, task, task.labels, space=True, taken=set())
    assert {label: tokenizer.convert_ids_to_tokens(t) for label, t in found.items()} == {
        task.labels[0]: ["tumor"], task.labels[1]: ["gene"]}


def test_a_label_without_training_examples_takes_the_slots_likeliest_free_word(tiny_model, task_entries):
    """A subsample (max_train_examples, a learning curve's sample) can leave a class without
    examples: it gets a word, not a failed model (found with ChemProt's 4-example class)."""
    task = load_task(TaskConfig(**task_entries["classification"]))
    tokenizer = task_tokenizer(tiny_model, task)
    vocab = tokenizer.get_vocab()
    scores = {-1: torch.zeros(len(tokenizer)), 0: torch.zeros(len(tokenizer))}  # label 1: no training example
    scores[-1][vocab["tumor"]], scores[-1][vocab["gene"]] = 3.0, 2.0
    scores[0][vocab["tumor"]] = 9.0  # the first label's word: taken
    found = search_words(tokenizer, scores, task, task.labels, space=True, taken=set())
    assert {label: tokenizer.convert_ids_to_tokens(t) for label, t in found.items()} == {
        task.labels[0]: ["tumor"], task.labels[1]: ["gene"]}


def test_the_automatic_verbalizer_takes_label_names_and_searches_the_others_with_the_models_scores(tiny_model,
                                                                                                  tmp_path):
    entry = _separable_task(tmp_path, n=(12, 4, 4))
    for split in ("train", "dev", "test"):  # class names that are no token: 'other-class' is searched for
        rows = [json.loads(line) for line in open(entry[split])]
        with open(entry[split], "w") as handle:
            handle.writelines(json.dumps(r | {"label": "tumor" if r["label"] == "onc" else "other-class"}) + "\n"
                              for r in rows)
    task = load_task(TaskConfig(**entry))
    tokenizer = task_tokenizer(tiny_model, task)
    masked_lm = load_masked_lm(tiny_model, pretrained=True, vocab_size=len(tokenizer)).eval()
    train = encode_prompts(tokenizer, task, task.train, 32)
    words, source = label_words(masked_lm, tokenizer, task, train, 5, "cpu", "tiny")
    assert source == {"other-class": "search", "tumor": "label name"}
    assert tokenizer.convert_ids_to_tokens(words["tumor"]) == ["tumor"]
    # By hand: one example at a time, the mean log-probability at the mask per label and over all.
    with torch.no_grad():
        rows = {label: [] for label in task.labels}
        for item, x in zip(train.items, task.train, strict=True):
            ids = torch.tensor([item["input_ids"]])
            rows[x["label"]].append(masked_lm(input_ids=ids).logits[0, item["input_ids"].index(tokenizer.mask_token_id)]
                                    .log_softmax(-1))
    everything = torch.stack([r for label in rows for r in rows[label]]).mean(0)
    ratio = torch.stack(rows["other-class"]).mean(0) - everything
    eligible = [t for t in range(len(tokenizer)) if t not in tokenizer.all_special_ids and t != words["tumor"][0]
                and tokenizer.decode([t]).strip().isalpha()]
    assert words["other-class"] == [max(eligible, key=lambda t: ratio[t])]
    scores = mean_log_probabilities(masked_lm, train, task, 5, 0, tokenizer.mask_token_id, "cpu")
    torch.testing.assert_close(scores[-1], everything)


# ------------------------------------------------------------------------------ refusals
@pytest.fixture
def electra_discriminator(tiny_model, tmp_path):
    """A tiny ELECTRA discriminator export (ElectraForPreTraining: no masked-LM head)."""
    import transformers

    folder = tmp_path / "electra"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    transformers.ElectraForPreTraining(transformers.ElectraConfig(
        embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=transformers.AutoConfig.from_pretrained(tiny_model).vocab_size)).save_pretrained(folder)
    return folder


def test_an_electra_discriminator_is_refused_when_the_recipe_is_read(electra_discriminator, task_entries, tmp_path,
                                                                     capsys):
    from domainlm.cli import main

    recipe = {"name": "t", "run_dir": str(tmp_path / "run"), "tasks": [task_entries["classification"]],
              "evaluate": {"models": [{"name": "electra", "kind": "hf", "path": str(electra_discriminator),
                                       "finetuning": "prompt"}]}}
    with pytest.raises(ConfigError, match="model 'electra' .* an ELECTRA discriminator, ElectraForPreTraining, without "
                                          "a masked-LM head"):
        config_from_dict(recipe)
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))
    assert main(["evaluate", str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("domainlm: error:") and "\n" not in err and "Traceback" not in err
    assert "ElectraForPreTraining" in err and "BertForMaskedLM" in err


def test_models_without_masked_lm_head_weights_are_refused_when_loaded(electra_discriminator, tiny_model, tmp_path):
    import transformers

    with pytest.raises(ModelError, match=f"{electra_discriminator}: it is an ELECTRA discriminator"):
        masked_lm_config(electra_discriminator)
    encoder = tmp_path / "encoder"  # a bare BertModel, its config not naming a class (as old exports do)
    shutil.copytree(tiny_model, encoder)
    config = transformers.AutoConfig.from_pretrained(tiny_model)
    transformers.BertModel(config).save_pretrained(encoder)
    settings = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "architectures"}))
    with pytest.raises(ModelError, match=r"has no weights for cls\.predictions"):
        load_masked_lm(encoder, pretrained=True, vocab_size=10)
    assert load_masked_lm(encoder, pretrained=False, vocab_size=10) is not None  # random init needs no weights


def test_an_electra_pretrained_domain_model_cannot_be_prompted(tiny_recipe):
    recipe = tiny_recipe | {"pretrain": tiny_recipe["pretrain"] | {"objective": "electra"}}
    recipe["evaluate"] = recipe["evaluate"] | {"models": [{"name": "domain", "kind": "domain", "finetuning": "prompt"}]}
    with pytest.raises(ConfigError, match="'domain': finetuning: prompt .* ELECTRA discriminator"):
        config_from_dict(recipe)


# ------------------------------------------------------------------------------ the recipe
def test_the_recipes_prompt_keys_are_checked(tiny_recipe, task_entries):
    def config(task_changes=None, models=None, task=0):
        recipe = json.loads(json.dumps(tiny_recipe))
        recipe["tasks"][task] |= task_changes or {}
        if models:
            recipe["evaluate"]["models"] = models
        return config_from_dict(recipe)

    with pytest.raises(ConfigError, match=r"key 'tasks\.0\.prompt\.template': a template needs `\{mask\}` exactly once"):
        config({"prompt": {"template": "{text} It was."}})
    with pytest.raises(ConfigError, match=r"tasks\.0\.prompt\.template.*unknown placeholder \{label\}"):
        config({"prompt": {"template": "{text} {label} {mask}"}})
    with pytest.raises(ConfigError, match=r"task 'ner': prompt: prompt-based fine-tuning applies to classification, "
                                          r"pair-classification, relation, yes-no-qa, not token-classification"):
        config({"prompt": {}}, task=1)
    with pytest.raises(ConfigError, match=r"tasks\.0\.prompt\.verbalizer.*label 'onc': give one or more single words"):
        config({"prompt": {"verbalizer": {"onc": "very good"}}})
    with pytest.raises(ConfigError, match="model 'tfidf': finetuning: prompt applies to domain, random-init and hf"):
        config(models=[{"name": "tfidf", "kind": "tfidf", "finetuning": "prompt"}])
    with pytest.raises(ConfigError, match="teacher 'domain' uses finetuning: prompt"):
        config(models=[{"name": "domain", "kind": "domain", "finetuning": "prompt"},
                       {"name": "st", "kind": "self-training", "teacher": "domain"}])
    pair = TaskConfig(**task_entries["pair-classification"], prompt={"template": "{text} {mask} {text_pair}"})
    with pytest.raises(ConfigError, match=r"tasks\.pair-classification\.prompt\.verbalizer: label 'maybe' is not a "
                                          r"class of the task's training split \(diff, same\)"):
        load_task(pair.model_copy(update={"prompt": pair.prompt.model_copy(update={"verbalizer": {"maybe": ["x"]}})}))
    assert config({"prompt": {"verbalizer": {"onc": "tumor"}}}).tasks[0].prompt.verbalizer == {"onc": ["tumor"]}


def test_pair_templates_hold_both_texts(task_entries):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"prompt\.template needs `\{text_pair\}`"):
        TaskConfig(**task_entries["pair-classification"], prompt={"template": "{text} {mask}"})


def test_the_stage_compares_head_and_prompt_and_skips_prompts_where_they_do_not_apply(tmp_path, task_entries,
                                                                                     tiny_model):
    from domainlm.evaluate import run
    from domainlm.io import read_json

    models = [{"name": "head", "kind": "hf", "path": str(tiny_model)},
              {"name": "prompt", "kind": "hf", "path": str(tiny_model), "finetuning": "prompt"}]
    config = _run_config(tmp_path, task_entries, models, kinds=("classification", "token-classification"),
                         lr=1e-3, seeds=[0])
    out = config.directory / "evaluate"
    run(config, out)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["model"], r["task"]) for r in rows} == {("head", "classification"), ("prompt", "classification"),
                                                       ("head", "token-classification")}
    skipped = read_json(out / "failures.json")["skipped"]
    assert [(s["model"], s["task"]) for s in skipped] == [("prompt", "token-classification")]
    assert "not token-classification" in skipped[0]["reason"]
    prompted = read_json(out / "runs" / "prompt" / "classification" / "lr-0.001" / "seed-0.json")
    assert prompted["finetuning"] == "prompt" and set(prompted["verbalizer"]) == {"onc", "other"}
    assert "finetuning" not in read_json(out / "runs" / "head" / "classification" / "lr-0.001" / "seed-0.json")

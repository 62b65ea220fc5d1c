"""What enters a stage's fingerprint: every key that changes a result, and nothing else.

Every field of every section is walked: set away from its value, it must change some stage's
fingerprint (an experiment arm's stages count), unless the section declares it bookkeeping, in
which case it must change none. A field this test cannot set is a failure too (add a value to
`VALUES`), so a new key is never left unexamined. The keys each section's fingerprint holds at its
defaults are pinned (tests/golden/fingerprint_keys.json): a key added without a `LATER` group
would change the fingerprint of every run made before it.
"""

import json
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import REPO
from domainlm.config import ResourcesConfig, RunConfig, Section, SourceConfig, config_from_dict
from domainlm.pipeline import STAGES, same_work, stage_module

GOLDEN = REPO / "tests" / "golden" / "fingerprint_keys.json"


def recipe_with_everything(tiny_recipe: dict, tmp_path: Path) -> dict:
    """The tiny recipe with an experiment of two arms and one model of each kind that takes keys."""
    for name in ("model", "model2"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.json").write_text("{}")
    return tiny_recipe | {
        "experiment": {"budget_tokens": 8 * 64 * 8, "arms": [{"name": "a"}, {"name": "b", "share": 0.5}]},
        "evaluate": tiny_recipe["evaluate"] | {"models": [
            {"name": "domain", "kind": "domain"}, {"name": "tfidf", "kind": "tfidf"},
            {"name": "general", "kind": "hf", "path": str(tmp_path / "model")},
            {"name": "st", "kind": "self-training", "teacher": "general"},
            {"name": "sf", "kind": "setfit", "path": str(tmp_path / "model")}],
            "learning_curve": {}, "active_learning": {}},
    }


def fingerprints(config: RunConfig) -> dict:
    """Every stage's fingerprinted settings, this run's and each experiment arm's."""
    out = {stage: stage_module(stage).settings(config) for stage in STAGES}
    for arm, arm_config in config.arm_configs().items():
        out |= {f"arm {arm} {stage}": stage_module(stage).settings(arm_config) for stage in ("corpus", "tokenizer",
                                                                                               "pretrain")}
    return json.loads(json.dumps(out, default=str))


def sections(value: BaseModel, path: tuple = ()):
    """(path in the recipe, section) for `value` and every section inside it."""
    yield path, value
    for name in type(value).model_fields:
        item = getattr(value, name)
        if isinstance(item, Section):
            yield from sections(item, path + (name,))
        elif isinstance(item, list):
            for index, element in enumerate(item):
                if isinstance(element, Section):
                    yield from sections(element, path + (name, index))


def generic_values(annotation, current) -> list:
    """Other values of a field's type to try (first the ones most likely to validate)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [v for arg in args if arg is not type(None) for v in generic_values(arg, current)]
    if typing.get_origin(annotation) is typing.Literal:
        return [a for a in args if a != current]
    if typing.get_origin(annotation) is typing.Annotated:
        return generic_values(args[0], current)
    if annotation is bool:
        return [not current]
    if annotation is int:
        return [current * 2, current + 1, current - 1] if isinstance(current, int) else [64, 2, 1]
    if annotation is float:
        return [current * 0.5, current + 0.05, current * 1.5] if isinstance(current, float | int) else [0.5, 2.0]
    return []


def values_to_try(section: Section, name: str, tmp_path: Path) -> list:
    """Values for field `name` of `section`: hand-picked ones (VALUES), then generic ones."""
    corpus = str(tmp_path / "corpus.txt.gz")
    model, model2 = str(tmp_path / "model"), str(tmp_path / "model2")
    chosen = {
        "SourceConfig.path": [str(tmp_path / "cls-train.jsonl")], "SourceConfig.name": ["pubmed"],
        "SourceConfig.text_field": ["abstract"], "SourceConfig.split": ["validation"],
        "QualityConfig.language_model": [corpus], "QualityConfig.languages": [["en"]],
        "QualityConfig.gopher_max_top_ngram": [{2: 0.5}], "QualityConfig.gopher_max_dup_ngram": [{5: 0.5}],
        "QualityConfig.steps": [["c4", "length"]],
        "TokenizerConfig.reference": [model],
        "DomainSelectionConfig.seed": [SourceConfig(path=corpus)], "DomainSelectionConfig.negatives": [SourceConfig(path=corpus)],
        "ModelConfig.init_from": [model], "ModelConfig.grow_from": [model], "ModelConfig.extend_vocab": [10],
        "PretrainConfig.teacher": [model], "PretrainConfig.difficulty_model": [model2],
        "PretrainConfig.lexicon": [corpus], "PretrainConfig.mixture": [{"corpus.txt.gz": 1.0}],
        "PretrainConfig.prompt_tasks": [["cls"]],
        "PretrainConfig.upsample_source": ["corpus.txt.gz"], "PretrainConfig.batch_size_start": [4],
        "PretrainConfig.short_seq_len": [32], "PretrainConfig.micro_batch_size": [4, "auto"],
        "PretrainConfig.objective": ["electra"], "PretrainConfig.compile_mode": ["max-autotune"],
        "PretrainConfig.attention": ["flex"], "PretrainConfig.dropout": [0.0],
        "TaskConfig.name": ["renamed"], "TaskConfig.fields": [{"text": "body"}], "TaskConfig.columns": [["a", "b"]],
        "TaskConfig.comment_prefix": ["#"], "TaskConfig.label_separator": ["|"], "TaskConfig.label_names": [["x"]],
        "TaskConfig.metric": ["accuracy"], "TaskConfig.explode": [["text"]], "TaskConfig.entity_markers":
            [["<", ">", "[", "]"]], "TaskConfig.train": [str(tmp_path / "cls-dev.jsonl")],
        "TaskConfig.prompt": [{"template": "{text} So: {mask}."}], "TaskConfig.documents": [corpus],
        "TaskConfig.queries": [corpus],
        "SplitConfig.path": [str(tmp_path / f"{task}-{split}.{ext}") for task, ext in (("cls", "jsonl"), ("ner", "tsv"))
                             for split in ("train", "test")], "SplitConfig.ids": [corpus],
        "SplitConfig.exclude_ids": [corpus], "SplitConfig.split": ["train"],
        "ModelEntry.name": ["renamed"], "ModelEntry.path": [model2], "ModelEntry.teacher": ["domain", "general"],
        "ModelEntry.student": ["general"], "ModelEntry.arm": ["a"], "ModelEntry.unlabeled": [corpus],
        "ModelEntry.kind": ["random-init"],
        "EvaluateConfig.lr": [[1e-3, 1e-4]], "EvaluateConfig.seeds": [[0]], "EvaluateConfig.general_corpus": [corpus],
        "EvaluateConfig.general_tokenizer": [model], "EvaluateConfig.models": [[{"name": "tfidf", "kind": "tfidf"}]],
        "LearningCurveConfig.sizes": [[2, 4]], "LearningCurveConfig.seeds": [[0]], "LearningCurveConfig.min_steps": [50],
        "ActiveLearningConfig.strategies": [["entropy"]], "ActiveLearningConfig.seeds": [[0]],
        "ActiveLearningConfig.models": [["general"]],
        "ReportConfig.title": ["t"], "ReportConfig.reference_model": ["tfidf"], "ReportConfig.domain_model": ["st"],
        "ArmConfig.name": ["c"], "ArmConfig.corpus": [{"heldout_fraction": 0.1}],
        "ArmConfig.tokenizer": [{"vocab_size": 300}], "ArmConfig.model": [{"dropout": 0.0}],
        "ArmConfig.pretrain": [{"lr": 1e-3}], "ArmConfig.seed": [7], "ExperimentConfig.arms": [[{"name": "a"}]],
        "RunConfig.name": ["renamed"], "RunConfig.run_dir": [str(tmp_path / "elsewhere")],
    }.get(f"{type(section).__name__}.{name}", [])
    current = getattr(section, name)
    candidates = chosen + generic_values(type(section).model_fields[name].annotation, current)
    return [value for value in candidates if value != current]


# Keys set (before and after) with a field that is only read beside them: a key left out of
# fingerprints while its `LATER` group's key is at its default, a key another one needs.
GATES = {"ModelConfig.architecture": {"architecture": "modernbert"}, "ModelConfig.grow_from": {"grow_from": "{model}"}}
NEEDS = {"PretrainConfig.difficulty_model": {"difficulty": "loss", "difficulty_model": "{model}"},
         "TaskConfig.context": {"explode": ["text"]}, "TaskConfig.documents": {"type": "retrieval"},
         "TaskConfig.queries": {"type": "retrieval", "format": "tsv", "documents": "{model}/config.json"}}


def companions(section: Section, name: str, tmp_path: Path) -> dict:
    kind = type(section)
    found = dict(NEEDS.get(f"{kind.__name__}.{name}", {}))
    for gate, keys in kind.LATER.items():
        if name in keys and name != gate:
            found |= GATES.get(f"{kind.__name__}.{gate}", {})
    return {k: v.format(model=tmp_path / "model") if isinstance(v, str) else v for k, v in found.items()}


def set_at(data: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def test_every_key_changes_a_fingerprint_unless_it_is_bookkeeping(tiny_recipe, tmp_path):
    base_data = config_from_dict(recipe_with_everything(tiny_recipe, tmp_path)).model_dump(mode="json")
    base_data["corpus"]["min_words"] = None  # its shorthand would overwrite quality.min_words
    base_data["experiment"]["arms"][0]["seed"] = None  # an arm's fields start at their defaults
    # Decontamination reads the task files: off, so that a task key whose files no longer read as
    # set (another format, other fields) still gives fingerprints (tests/test_task_inputs.py covers
    # what decontamination looks for).
    base_data["corpus"]["decontamination"]["enabled"] = False
    examined, unexamined, wrong = set(), {}, []
    for path, section in sections(config_from_dict(base_data)):
        kind = type(section)
        for name in kind.model_fields:
            value = getattr(section, name)
            if isinstance(value, Section) or (isinstance(value, list) and value and isinstance(value[0], Section)):
                continue  # a section, or a list of them: walked on its own
            if kind is ResourcesConfig or (path[:1] == ("resources",)):
                bookkeeping = True  # speed settings: never in a fingerprint
            else:
                bookkeeping = name in kind.BOOKKEEPING
            gate = companions(section, name, tmp_path)
            before_data = json.loads(json.dumps(base_data))
            for key, value in gate.items():
                set_at(before_data, path + (key,), value)
            try:
                before = fingerprints(config_from_dict(before_data))
            except Exception as err:  # noqa: BLE001 - reported below with the field
                unexamined[(kind.__name__, name)] = f"{'.'.join(map(str, path + (name,)))} (with {gate}: {err})"
                continue
            for value in values_to_try(section, name, tmp_path):
                data = json.loads(json.dumps(before_data))
                set_at(data, path + (name,), value)
                try:
                    after = fingerprints(config_from_dict(data))
                except Exception:  # noqa: BLE001 - an invalid value: try the next one
                    continue
                if (after == before) != bookkeeping:
                    wrong.append(f"{'.'.join(map(str, path + (name,)))} = {value!r}: "
                                 f"{'changes a fingerprint' if bookkeeping else 'changes no fingerprint'}")
                examined.add((kind.__name__, name))
                break
            else:
                unexamined[(kind.__name__, name)] = ".".join(map(str, path + (name,)))
    assert not wrong, "fingerprinted but declared bookkeeping, or the other way round: " + "; ".join(wrong)
    missed = [where for key, where in unexamined.items() if key not in examined]  # in no instance of its section
    assert not missed, "keys this test could not set (add a value to values_to_try): " + ", ".join(missed)
    assert {kind for kind, _ in examined} >= {"RunConfig", "SourceConfig", "QualityConfig", "DedupConfig", "ModelConfig",
                                              "PretrainConfig", "TaskConfig", "SplitConfig", "ModelEntry", "ArmConfig",
                                              "ExperimentConfig", "ResourcesConfig", "ReportConfig", "TokenizerConfig"}


def test_the_keys_fingerprints_hold_at_the_defaults_are_pinned(tiny_recipe, tmp_path):
    """A new key must come with a LATER group (or be bookkeeping): else every existing run reruns."""
    config = config_from_dict(recipe_with_everything(tiny_recipe, tmp_path))
    held = {}
    for _, section in sections(config):
        if isinstance(section, RunConfig | ResourcesConfig):
            continue
        default = type(section).model_construct(**{k: getattr(section, k) for k in type(section).model_fields
                                                   if type(section).model_fields[k].is_required()})
        held[type(section).__name__] = sorted(default.fingerprinted())
    assert held == json.loads(GOLDEN.read_text())


def test_a_learning_curve_left_off_leaves_the_evaluate_and_report_fingerprints_as_they_were(tiny_recipe):
    """`evaluate.learning_curve` came after runs existed: off, no fingerprint holds it; on, the
    evaluate stage's holds its sizes and seeds, and the report's the one key only it reads."""
    off = config_from_dict(tiny_recipe)
    assert set(stage_module("evaluate").settings(off)["evaluate"]) == set(
        json.loads(GOLDEN.read_text())["EvaluateConfig"]) - {"bootstrap_samples"}
    assert set(stage_module("report").settings(off)) == {"report", "bootstrap_samples"}
    on = config_from_dict(tiny_recipe | {"evaluate": tiny_recipe["evaluate"] | {"learning_curve": {"sizes": [4, 2]}}})
    assert stage_module("evaluate").settings(on)["evaluate"]["learning_curve"] == {"sizes": [2, 4], "seeds": [0, 1, 2]}
    assert stage_module("report").settings(on)["learning_curve_include_full"] is True
    without_full = on.model_copy(deep=True)
    without_full.evaluate.learning_curve.include_full = False  # the report's key: evaluate keeps its work
    assert stage_module("evaluate").settings(without_full) == stage_module("evaluate").settings(on)
    assert stage_module("report").settings(without_full) != stage_module("report").settings(on)


def test_a_manifest_written_before_keys_were_bookkeeping_is_still_the_same_work(tiny_recipe):
    from domainlm.io import fingerprint
    from domainlm.pipeline import _with_skipped

    config = config_from_dict(tiny_recipe)
    record = {"settings": stage_module("pretrain").settings(config), "inputs": {}, "upstream": {"corpus": "c"},
              "domainlm": "0.1.0"}
    old_settings = _with_skipped(record["settings"])  # as fingerprints held them: keep_checkpoints and all
    assert old_settings["pretrain"]["keep_checkpoints"] == 2 and "keep_checkpoints" not in record["settings"]["pretrain"]
    old = record | {"settings": old_settings}
    current = fingerprint(record)
    old_manifest = {"fingerprint": fingerprint(old), **old}
    assert same_work(old_manifest, current, record)
    assert same_work({"fingerprint": fingerprint(old)}, current, record)  # an old in-progress marker, unchanged
    changed = old | {"settings": {**old_settings, "pretrain": old_settings["pretrain"] | {"keep_checkpoints": 5}}}
    assert same_work({"fingerprint": fingerprint(changed), **changed}, current, record)  # bookkeeping changed too
    semantic = old | {"settings": {**old_settings, "pretrain": old_settings["pretrain"] | {"lr": 1.0}}}
    assert not same_work({"fingerprint": fingerprint(semantic), **semantic}, current, record)
    assert not same_work({"fingerprint": "x"}, current, record)


# ------------------------------------------------------------------ a killed run resumes, whatever bookkeeping changed
# A new value of every key declared bookkeeping (a test below keeps this list complete).
CHANGED = {("pretrain", "checkpoint_every"): 2, ("pretrain", "keep_checkpoints"): 1, ("pretrain", "log_every"): 5,
           ("pretrain", "memory_fraction"): 0.3, ("pretrain", "max_bad_steps"): 1, ("corpus", "shard_docs"): 7,
           ((), "name"): "renamed", ((), "run_dir"): "moved"}


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing is cleaned up."""


def test_every_bookkeeping_key_is_in_the_resume_test():
    from domainlm.config import CorpusConfig, PretrainConfig

    declared = {(("pretrain",), key) for key in PretrainConfig.BOOKKEEPING} | {
        (("corpus",), key) for key in CorpusConfig.BOOKKEEPING} | {((), key) for key in RunConfig.BOOKKEEPING}
    others = [kind for kind in Section.__subclasses__() if kind not in (PretrainConfig, CorpusConfig, RunConfig)]
    assert not [kind.__name__ for kind in others if kind.BOOKKEEPING]  # a section that declares some: add it here
    assert {((section,) if section else (), key) for section, key in CHANGED} == declared


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny recipe's corpus, tokenizer and 6 pretraining steps, run straight through."""
    import conftest
    from domainlm.pipeline import run_all

    folder = tmp_path_factory.mktemp("straight")
    recipe = conftest.tiny_recipe.__wrapped__(folder)
    config = config_from_dict(recipe)
    run_all(config, stages=("corpus", "tokenizer", "pretrain"))
    return recipe, json.loads((config.directory / "pretrain" / "history.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("key", list(CHANGED), ids=[".".join([*(k[0] and [k[0]]), k[1]]) for k in CHANGED])
def test_a_killed_run_changed_in_a_bookkeeping_key_resumes_bit_identically(key, uninterrupted, tmp_path,
                                                                           monkeypatch, caplog):
    import shutil

    from domainlm.pipeline import run_all
    from domainlm.pretrain.trainer import Trainer

    recipe, straight = uninterrupted
    recipe = json.loads(json.dumps(recipe)) | {"run_dir": str(tmp_path / "run")}
    config = config_from_dict(recipe)
    for stage in ("corpus", "tokenizer"):  # the same upstream outputs (manifests and all) as the straight run
        shutil.copytree(Path(uninterrupted[0]["run_dir"]) / stage, config.directory / stage)
    save = Trainer.save_checkpoint

    def killed_after_step_3(trainer):
        folder = save(trainer)
        if trainer.step == 3:
            raise Killed
        return folder

    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_step_3)
    with pytest.raises(Killed):
        run_all(config, stages=("corpus", "tokenizer", "pretrain"))
    monkeypatch.setattr(Trainer, "save_checkpoint", save)

    section, name = key
    value = CHANGED[key]
    if name == "run_dir":  # the run folder moved, and the recipe says where to
        shutil.move(config.directory, tmp_path / value)
        value = str(tmp_path / value)
    (recipe[section] if section else recipe)[name] = value
    caplog.set_level("INFO")
    changed = config_from_dict(recipe)
    assert run_all(changed, stages=("corpus", "tokenizer", "pretrain")) == ["pretrain"]  # corpus, tokenizer skipped
    assert "resumed from step-00000003" in caplog.text and "reruns from scratch" not in caplog.text
    history = json.loads((changed.directory / "pretrain" / "history.json").read_text())
    assert history["loss"] == straight["loss"] and history["lr"] == straight["lr"]  # bit-identical


@pytest.mark.slow
def test_a_stage_that_reruns_says_why_and_what_it_discards(uninterrupted, tmp_path, caplog):
    import shutil

    from domainlm.io import read_json
    from domainlm.pipeline import run_all

    recipe, _ = uninterrupted
    shutil.copytree(recipe["run_dir"], tmp_path / "run")
    recipe = json.loads(json.dumps(recipe)) | {"run_dir": str(tmp_path / "run")}
    recipe["pretrain"] |= {"lr": 1e-3, "max_steps": 4, "log_every": 1}  # two results change, one bookkeeping key
    caplog.set_level("INFO")
    config = config_from_dict(recipe)
    assert run_all(config, stages=("corpus", "tokenizer", "pretrain")) == ["pretrain"]
    line = next(r.getMessage() for r in caplog.records if "reruns from scratch" in r.getMessage())
    assert "pretrain.lr: 0.0005 -> 0.001" in line and "pretrain.max_steps: 6 -> 4" in line
    assert "log_every" not in line
    assert "Training restarts from step 0: the 6 steps its newest checkpoint holds are discarded" in line
    manifest = read_json(config.directory / "pretrain" / "manifest.json")
    assert manifest["reran_because"] == ["pretrain.lr: 0.0005 -> 0.001", "pretrain.max_steps: 6 -> 4"]


@pytest.mark.slow
def test_a_corpus_rerun_that_keeps_the_same_documents_leaves_pretraining_alone(uninterrupted, tmp_path):
    import shutil

    from domainlm.pipeline import run_all

    recipe, _ = uninterrupted
    shutil.copytree(recipe["run_dir"], tmp_path / "run")
    recipe = json.loads(json.dumps(recipe)) | {"run_dir": str(tmp_path / "run")}
    recipe["corpus"] |= {"keep_dropped": True, "unit_bytes": 4096}  # other files, other work units, same documents
    config = config_from_dict(recipe)
    assert run_all(config, stages=("corpus", "tokenizer", "pretrain")) == ["corpus"]
    assert (config.directory / "corpus" / "dropped.jsonl").exists()

"""One validated schema for a run, split by section: corpus, tokenizer, model, pretrain, tasks,
evaluate, report, experiment, resources.

Recipes are YAML files in `recipes/`. `load_config` reads one, applies `--set key=value`
overrides and validates the result; any unknown key, wrong type or missing input file raises
`ConfigError` naming the key (or path) and what was expected. Relative paths are relative to the
directory the command runs in. Every field carries a docstring (`docs/recipes.md` lists them).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from domainlm.config.base import (
    Fingerprinted,
    Section,
    existing_file,
    path_component,
    picked,
    resolve_path,
    unique_names,
)
from domainlm.config.corpus import (
    DEFAULT_QUALITY_STEPS,
    QUALITY_STEPS,
    CorpusConfig,
    DecontaminationConfig,
    DedupConfig,
    DomainSelectionConfig,
    QualityConfig,
    SourceConfig,
)
from domainlm.config.evaluate import (
    LEXICAL,
    ActiveLearningConfig,
    EvaluateConfig,
    LearningCurveConfig,
    ModelEntry,
    ReportConfig,
    masked_lm_problem,
)
from domainlm.config.experiment import ARM_SECTIONS, ArmConfig, ExperimentConfig, arm_steps, merge
from domainlm.config.model import PRESETS, ModelConfig
from domainlm.config.pretrain import PretrainConfig
from domainlm.config.resources import LEGACY_KEYS, ResourcesConfig
from domainlm.config.tasks import PromptConfig, SplitConfig, TaskConfig
from domainlm.config.tokenizer import TokenizerConfig
from domainlm.errors import ConfigError
from domainlm.io import is_url
from domainlm.layout import RunLayout
from domainlm.tasks.types import TASK_TYPES

__all__ = [
    "LEXICAL", "PRESETS", "ArmConfig", "ConfigError", "CorpusConfig", "DecontaminationConfig", "DomainSelectionConfig", "DedupConfig", "EvaluateConfig",
    "ActiveLearningConfig", "ExperimentConfig", "Fingerprinted", "LearningCurveConfig", "ModelConfig", "ModelEntry",
    "PretrainConfig", "PromptConfig", "QualityConfig", "ReportConfig",
    "ResourcesConfig", "RunConfig", "Section", "SourceConfig", "SplitConfig", "TaskConfig", "TokenizerConfig",
    "apply_override", "arm_steps", "masked_lm_problem", "config_from_dict", "existing_file", "load_config", "merge", "picked", "resolve_path",
    "unique_names", "DEFAULT_QUALITY_STEPS", "QUALITY_STEPS",
]
log = logging.getLogger(__name__)


class RunConfig(Section):
    # Where the run is written, not what it computes (every stage folder lives inside it).
    BOOKKEEPING = ("name", "run_dir")

    name: str
    """Names the run; its artifacts go to `runs/<name>/` unless `run_dir` says otherwise."""
    run_dir: str | None = None
    """Where the run's stage folders live (default `runs/<name>`)."""
    seed: int = 0
    """Seed of pretraining (initialisation, data order, masking) and of task subsampling."""
    corpus: CorpusConfig | None = None
    """The domain text and how it is curated; needed only when this run pretrains (a `domain` or
    `random-init` model of its own, an experiment, self-training on the corpus). Without it the run
    evaluates existing checkpoints and TF-IDF only: evaluate and report."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """The domain vocabulary."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The encoder's size, or the checkpoint to continue from."""
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    """How the encoder is pretrained."""
    tasks: list[TaskConfig] = Field(default_factory=list)
    """The labeled tasks the models are compared on."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """Which models are compared, and how each is fine-tuned."""
    report: ReportConfig = Field(default_factory=ReportConfig)
    """What the report compares against."""
    experiment: ExperimentConfig | None = None
    """Pretraining arms sharing one budget (see `domainlm.experiment`): each arm is pretrained as
    its own run, in place of this run's pretrain stage."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Processes and threads: how fast, never what is computed (no stage reruns when it changes)."""

    @property
    def directory(self) -> Path:
        """The run folder."""
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    @property
    def pretrains(self) -> bool:
        """Whether this run pretrains a model of its own (a `domain` or `random-init` model that is
        not an experiment arm's)."""
        return any(m.kind in ("domain", "random-init") and not m.arm for m in self.evaluate.models)

    @property
    def reads_corpus(self) -> bool:
        """Whether any stage of this run reads a curated corpus of its own."""
        return self.pretrains or self.experiment is not None or any(
            m.reads_unlabeled and m.unlabeled == "corpus" for m in self.evaluate.models)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        return path_component(name, "run name")

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        return unique_names(tasks, "task")

    def input_paths(self) -> list[str]:
        """Every file or folder the recipe reads (plain or `pkg://` paths)."""
        corpus = self.corpus
        paths = [s.path for s in corpus.sources if s.path and s.format != "hf-hub"] if corpus else []
        paths += [p for t in self.tasks for p in t.files()]
        paths += [self.model.init_from, self.model.grow_from, self.pretrain.lexicon, self.pretrain.teacher,
                  self.pretrain.difficulty_model, self.tokenizer.reference,
                  corpus.quality.language_model if corpus else None, self.evaluate.general_corpus,
                  self.evaluate.general_tokenizer]
        paths += [m.path for m in self.evaluate.models] + [m.unlabeled for m in self.evaluate.models
                                                            if m.reads_unlabeled and m.unlabeled != "corpus"]
        return [p for p in paths if p]

    @model_validator(mode="after")
    def _inputs_outside_the_run(self) -> RunConfig:
        """Stage folders are replaced when they rerun: no input may live inside the run directory."""
        run_dir = self.directory.resolve()
        for value in self.input_paths():
            if is_url(value):  # in a store, not in a folder of this machine
                continue
            try:
                path = resolve_path(value).resolve()
            except FileNotFoundError:  # an optional pkg:// path whose package is missing
                continue
            if path == run_dir or run_dir in path.parents:
                raise ValueError(f"input {value} lies inside the run directory {self.directory}, whose stage "
                                 f"folders are replaced when a stage reruns: move it, or set `run_dir` elsewhere")
            if path in run_dir.parents and path.is_dir():
                raise ValueError(f"the run directory {self.directory} lies inside the input folder {value}: the run "
                                 f"would read its own outputs; set `run_dir` elsewhere")
        return self

    @model_validator(mode="after")
    def _corpus_when_needed(self) -> RunConfig:
        if self.corpus is None and self.reads_corpus:
            raise ValueError("missing key 'corpus': this run pretrains (a domain or random-init model of its own, "
                             "an experiment, or self-training or distillation on the corpus); without a corpus it can only "
                             "evaluate existing checkpoints and TF-IDF")
        return self

    @model_validator(mode="after")
    def _rows_fit_the_position_table(self) -> RunConfig:
        """A packed row needs a position for each of its tokens (a continued checkpoint's table is
        checked when it is loaded, as is the table a grown model keeps from its source)."""
        if self.model.init_from or self.model.grow_from:
            return self
        if self.pretrain.seq_len > self.model.max_position:
            raise ValueError(f"pretrain.seq_len {self.pretrain.seq_len} exceeds model.max_position "
                             f"{self.model.max_position} (the rows of the position table): set pretrain.seq_len "
                             f"<= {self.model.max_position} or model.max_position >= {self.pretrain.seq_len}")
        if self.pretrains:
            lengths = {"evaluate.max_length": self.evaluate.max_length}
            lengths |= {f"tasks.{i}.max_length": t.max_length for i, t in enumerate(self.tasks) if t.max_length}
            for key, length in lengths.items():
                if length > self.model.max_position:
                    raise ValueError(f"{key} {length} exceeds model.max_position {self.model.max_position}, the "
                                     f"longest input this run's model can take: set {key} <= "
                                     f"{self.model.max_position}")
        return self

    @model_validator(mode="after")
    def _model_layout(self) -> RunConfig:
        """The layout keys fit the architecture; ELECTRA trains the BERT layout only."""
        problem = self.model.layout_problem()
        if problem:
            raise ValueError(problem)
        self.model.resolved()  # sizes that do not fit together (hidden_size and num_heads)
        if self.model.architecture != "bert" and self.pretrain.objective == "electra":
            raise ValueError(f"pretrain.objective electra trains the bert layout (its generator and discriminator "
                             f"are BERTs), but model.architecture is '{self.model.architecture}': set "
                             "pretrain.objective: mlm, or model.architecture: bert")
        return self

    @model_validator(mode="after")
    def _extension_pieces_are_wordpiece(self) -> RunConfig:
        """Vocabulary extension spells each new domain entry in the checkpoint's WordPiece pieces."""
        if self.model.extend_vocab and self.tokenizer.model != "wordpiece":
            raise ValueError(f"model.extend_vocab {self.model.extend_vocab} adds WordPiece entries to a WordPiece "
                             f"checkpoint, but tokenizer.model is '{self.tokenizer.model}': set tokenizer.model: "
                             "wordpiece, or model.extend_vocab: 0")
        return self

    @model_validator(mode="after")
    def _one_starting_point(self) -> RunConfig:
        """A grown model starts from its source's weights and vocabulary, as they are."""
        if not self.model.grow_from:
            return self
        if self.model.init_from:
            raise ValueError("model.init_from and model.grow_from are both set: continue a checkpoint at its own "
                             "size (init_from) or grow a smaller one into this section's size (grow_from), not both")
        if self.model.extend_vocab:
            raise ValueError(f"model.extend_vocab {self.model.extend_vocab} extends an init_from checkpoint's "
                             "vocabulary; model.grow_from keeps its source's: set model.extend_vocab: 0")
        if self.pretrain.objective == "electra":
            raise ValueError("model.grow_from continues masked-language-model pretraining on the grown model; "
                             "pretrain.objective electra starts from scratch: set pretrain.objective: mlm")
        return self

    @model_validator(mode="after")
    def _electra_from_scratch(self) -> RunConfig:
        if self.model.init_from and self.pretrain.objective == "electra":
            raise ValueError("model.init_from continues masked-language-model pretraining; pretrain.objective "
                             "electra starts from scratch (a generator and a discriminator): set pretrain.objective: "
                             "mlm, or remove model.init_from")
        return self

    @model_validator(mode="after")
    def _mixture_names_sources(self) -> RunConfig:
        """`pretrain.mixture` and `upsample_source` name corpus sources (by `corpus.source_names`)."""
        if self.corpus is None:
            return self
        names = self.corpus.source_names()
        for key, named in (("pretrain.mixture", list(self.pretrain.mixture)),
                           ("pretrain.upsample_source", [self.pretrain.upsample_source or names[0]])):
            unknown = [name for name in named if name not in names]
            if unknown:
                raise ValueError(f"{key} names {', '.join(repr(n) for n in unknown)}, not a corpus source; the sources "
                                 f"are {', '.join(repr(n) for n in names)} (a source's `name`, else its file name)")
        return self

    @model_validator(mode="after")
    def _prompts_score_with_a_masked_lm(self) -> RunConfig:
        """`finetuning: prompt` on this run's (or an arm's) pretrained model needs it exported with
        its masked-LM head: ELECTRA exports its discriminator, which has none."""
        arms = {a.name: a for a in self.experiment.arms} if self.experiment else {}
        for m in self.evaluate.models:
            if m.finetuning == "prompt" and m.kind == "domain":
                objective = (arms[m.arm].pretrain if m.arm in arms else {}).get("objective", self.pretrain.objective)
                if objective == "electra":
                    raise ValueError(f"evaluate.models '{m.name}': finetuning: prompt scores label words with a "
                                     "masked-LM head, but pretrain.objective electra exports the ELECTRA "
                                     "discriminator (ElectraForPreTraining), which has none: use finetuning: head")
        return self

    @model_validator(mode="after")
    def _arms_named(self) -> RunConfig:
        arms = {a.name for a in self.experiment.arms} if self.experiment else set()
        for m in self.evaluate.models:
            if m.arm and m.arm not in arms:
                raise ValueError(f"evaluate.models '{m.name}': arm '{m.arm}' is not one of experiment.arms "
                                 f"{sorted(arms) or '(no experiment)'}")
        return self

    @model_validator(mode="after")
    def _prompt_tasks_named(self) -> RunConfig:
        """Each `pretrain.prompt_tasks` entry is a task of this recipe whose type has a template."""
        tasks = {t.name: t for t in self.tasks}
        for name in self.pretrain.prompt_tasks:
            if name not in tasks:
                raise ValueError(f"pretrain.prompt_tasks: '{name}' is not one of tasks ({', '.join(tasks) or 'none'})")
            if TASK_TYPES[tasks[name].type].template is None and not (tasks[name].prompt and tasks[name].prompt.template):
                raise ValueError(f"pretrain.prompt_tasks: task '{name}' is a {tasks[name].type} task, which has no prompt "
                                 "template (classification, pair-classification, relation, yes-no-qa have one)")
        return self

    @model_validator(mode="after")
    def _report_names_models(self) -> RunConfig:
        """A reference or domain model the recipe names must be one of evaluate.models (the
        defaults, `random-init` and `domain`, may be absent: the report then says so)."""
        names = [m.name for m in self.evaluate.models]
        for key in ("reference_model", "domain_model"):
            value = getattr(self.report, key)
            default = type(self.report).model_fields[key].default
            if value != default and value not in names:  # a dumped recipe repeats the defaults
                raise ValueError(f"report.{key} '{value}' is not one of evaluate.models ({', '.join(names)})")
        return self

    @model_validator(mode="after")
    def _arms_valid(self) -> RunConfig:
        """Every arm validated with its keys applied, now rather than when its turn comes: an
        earlier arm's export that an `arm:<name>` path names counts as there."""
        self.arm_configs()
        return self

    def arm_configs(self) -> dict[str, RunConfig]:
        """Every experiment arm's run configuration (`arm_config`), by arm name, validated as at
        load: an earlier arm's export that an `arm:<name>` path names counts as there."""
        if self.experiment is None or self.corpus is None:
            return {}
        configs, produced = {}, set()
        for arm in self.experiment.arms:
            configs[arm.name] = self.arm_config(arm, produced=produced)
            produced.add(str(RunLayout(self.directory).arm(arm.name).export))
        return configs

    def arm_config(self, arm: ArmConfig, produced: set[str] | None = None) -> RunConfig:
        """The run configuration of one experiment arm: this recipe's corpus, tokenizer, model and
        pretrain sections with the arm's keys put over them (nested mappings merged, lists
        replaced), an `arm:<name>` path read as that arm's export, `max_steps` the arm's share of
        the budget, and its own run folder. ConfigError naming the arm and the key. `produced`:
        paths earlier arms will write, accepted where a file must exist (validation at load)."""
        data = self.model_dump(mode="json", exclude={"experiment", "report"})
        # An arm only pretrains its own model; the evaluation's lengths stay, checked against its positions.
        data["evaluate"]["models"] = [{"name": "domain", "kind": "domain"}]
        for section in ARM_SECTIONS:
            data[section] = merge(data[section], getattr(arm, section))
        arm_folder = RunLayout(self.directory).arm
        for key, name in arm.arm_references().items():  # `arm:<name>`: that (earlier) arm's export
            section, field = key.split(".")
            data[section][field] = str(arm_folder(name).export)
        pretrain = data["pretrain"]
        pretrain["max_steps"] = arm_steps(self.experiment, pretrain, arm.share)
        if isinstance(pretrain.get("checkpoint_every"), int):
            pretrain["checkpoint_every"] = min(pretrain["checkpoint_every"], pretrain["max_steps"])
        data.update(name=f"{self.name}-{arm.name}", run_dir=str(arm_folder(arm.name).root))
        if arm.seed is not None:
            data["seed"] = arm.seed
        return config_from_dict(data, origin=f"experiment arm '{arm.name}'", context={"produced": produced or set()})


# ------------------------------------------------------------------------------------ load / save
def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; list items are addressed by index
    (`tasks.0.max_train_examples=100`). The value is parsed as YAML (`3`, `1e-4`, `true`, `[0,1]`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: '{where}' is not an index into a list of {len(node)}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {key}: '{where}' is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: '{last}' is not an index into a list of {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = schema
        for part in error["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if isinstance(part, str) else None
            annotation = getattr(field, "annotation", None) if field else None
            inner = getattr(annotation, "__args__", (annotation,))[0] if annotation else None
            parent = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else parent
        allowed, typed = list(parent.model_fields), str(error["loc"][-1])
        close = difflib.get_close_matches(typed, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key '{key}' ({hint}expected one of: {', '.join(allowed)})"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("missing",):
        return f"missing key '{key}'"
    if key:
        return f"key '{key}': {message} (got {error.get('input')!r})"
    return message


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe, apply `key=value` overrides, validate; raise ConfigError on problems."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for assignment in overrides or []:
        apply_override(data, assignment)
    return config_from_dict(data, origin=str(path))


def moved_legacy_keys(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """`data` with speed settings from their old places (`corpus.workers`, `pretrain.threads`, ...)
    moved into `resources` (a copy; the caller's dict is left as it was)."""
    data = dict(data)
    for (section, key), new in LEGACY_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section] = dict(data[section])
            data["resources"] = dict(data.get("resources") or {})
            data["resources"].setdefault(new, data[section].pop(key))
            log.warning("%s: `%s.%s` is now `resources.%s` (read as that)", origin, section, key, new)
    return data


def config_from_dict(data: dict[str, Any], origin: str = "config", context: dict[str, Any] | None = None) -> RunConfig:
    """Validate a recipe's mapping; ConfigError naming each problem's key and what was expected.
    `context`: pydantic's validation context (`produced`: see `RunConfig.arm_config`)."""
    try:
        return RunConfig.model_validate(moved_legacy_keys(data, origin), context=context)
    except ValidationError as err:
        problems = [_describe(e, RunConfig) for e in err.errors()]
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None

"""The run folder's layout is the writers' contract too: the corpus, tokenizer, evaluate and report
stages write only files `domainlm.layout` names, and no stage spells a file name of its own (but
the modules that own a format inside a folder the layout names: a checkpoint, token shards)."""

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO
from domainlm.config import config_from_dict
from domainlm.corpus.dedup import lsh_bands
from domainlm.io import read_json
from domainlm.layout import CorpusUnitFiles, ReportFiles, RunLayout
from domainlm.pipeline import partial_report, required_stages, run_all
from domainlm.tokenizer import save_for_transformers
from domainlm.vocabulary import read_tokenizer

WRITERS = ("corpus", "tokenizer", "evaluate", "report", "pretrain")
FILE_NAME = re.compile(r"[\w.*-]+\.(?:json|jsonl|bin|png|md|html|txt|safetensors|pt)\b")
# Names of files outside the run folder, which the layout has no say over.
INPUT_FILES = {("corpus/quality.py", "lid.176.bin"),  # a fastText model, in a message
               ("evaluate/finetune.py", "config.json"),  # a model directory's
               ("evaluate/finetune.py", "tokenizer_config.json"),
               ("evaluate/prompt.py", "config.json"), ("evaluate/setfit.py", "config.json")}  # the model's
# A transformers model or tokenizer directory's own files (read from a checkpoint, copied into an export).
INPUT_FILES |= {(f"pretrain/{module}", name) for module, names in {
    "__init__.py": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"),
    "difficulty.py": ("tokenizer.json",), "vocab_extension.py": ("tokenizer_config.json",),
    "hf_checkpoint.py": ("config.json", "model.safetensors", "model.safetensors.index.json")}.items() for name in names}
# The files inside a checkpoint folder (`layout.checkpoints`), token shards (`layout.token_shards`)
# and their parts (`layout.token_part`): their formats are the modules' own, one module each.
INPUT_FILES |= {("pretrain/checkpoint.py", name) for name in ("model.safetensors", "optimizer.pt", "rng.safetensors",
                                                             "extras.safetensors", "state.json")}
INPUT_FILES |= {("pretrain/data.py", "meta.json"), ("pretrain/data.py", "tokens.bin"), ("pretrain/data.py", "names.json")}


def test_the_writing_stages_spell_no_file_name_of_the_run_folder():
    found = set()
    for stage in WRITERS:
        for path in sorted((REPO / "src" / "domainlm" / stage).glob("*.py")):
            tree = ast.parse(path.read_text())
            docstrings = {id(node.value) for node in ast.walk(tree)
                          if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                    found |= {(f"{stage}/{path.name}", name, node.lineno) for name in FILE_NAME.findall(node.value)}
    assert not [f for f in found if f[:2] not in INPUT_FILES], "file names spelled outside domainlm/layout.py"


def transformers_tokenizer_files(folder: Path, scratch: Path) -> set[Path]:
    """The files of the transformers tokenizer directory `folder` (transformers names them): what
    saving its tokenizer into an empty folder writes."""
    save_for_transformers(read_tokenizer(folder), scratch)
    return {folder / path.name for path in scratch.iterdir()}


def named_by_layout(config, stats: dict, scratch: Path) -> tuple[set[Path], list[Path]]:
    """(every file the layout names for this run, the folders whose files TensorBoard names)."""
    layout = RunLayout(config.directory)
    files = {layout.lock_file} | {layout.manifest(stage) for stage in required_stages(config)}
    corpus = layout.corpus_files
    files |= {corpus.stats, corpus.heldout, corpus.dropped, *map(corpus.shard, range(len(stats["shards"])))}
    bands, _ = lsh_bands(config.corpus.dedup.threshold, config.corpus.dedup.permutations)
    for folder in corpus.finished_units():
        unit = CorpusUnitFiles(folder)
        files |= {unit.docs, unit.dropped, unit.exact, unit.signatures, unit.stats, *map(unit.band, range(bands))}
    files |= {layout.tokenizer_fit, *transformers_tokenizer_files(layout.tokenizer, scratch)}
    files |= {layout.task_summaries, layout.distance, layout.selection, layout.results, layout.failures,
              layout.distillation, *(layout.gold(t.name) for t in config.tasks)}
    runs = [(m.name, t.name, lr, seed) for m in config.evaluate.models for t in config.tasks
            for lr in ([0.0] if m.kind == "tfidf" else config.evaluate.learning_rates) for seed in config.evaluate.seeds]
    files |= {layout.run_file(*run) for run in runs}
    for report in (layout.report_files, ReportFiles(layout.partial_report)):
        files |= {report.markdown, report.html, report.results, *map(report.plot, ReportFiles.PLOTS)}
    return files, [layout.curves(*run) for run in runs]


@pytest.mark.slow
def test_every_file_the_stages_write_is_one_the_layout_names(tiny_recipe, tmp_path):
    tiny_recipe["corpus"]["keep_dropped"] = True
    tiny_recipe["evaluate"]["models"] = [{"name": "tfidf", "kind": "tfidf"}]  # no pretraining: corpus .. report
    config = config_from_dict(tiny_recipe)
    assert run_all(config) == ["corpus", "tokenizer", "evaluate", "report"]
    partial_report(config)
    layout = RunLayout(config.directory)
    (tmp_path / "scratch").mkdir()
    named, event_folders = named_by_layout(config, read_json(layout.corpus_stats), tmp_path / "scratch")
    written = {path for path in config.directory.rglob("*") if path.is_file()}
    assert layout.corpus_files.dropped in written and not layout.corpus_files.work.exists()  # removed when done
    assert layout.report_files.plot("results") in written
    unnamed = sorted(str(path.relative_to(config.directory)) for path in written - named
                     if not any(folder in path.parents for folder in event_folders))
    assert not unnamed, "written, but named nowhere in domainlm/layout.py"

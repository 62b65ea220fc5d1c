"""The run folder as a contract: where every artifact lives, and how to read it.

A run lives in one folder (`runs/<name>/`), one sub-folder per stage, each finished by a
`manifest.json`. A stage writes only into its own folder and reads what other stages wrote only
through this module, never through their code, so the paths below are the whole interface
between stages. The corpus, tokenizer, evaluate and report stages also write through it, and their
code spells none of the file names (tests/test_layout.py): `RunLayout` for a run's folders,
`CorpusFiles` and `ReportFiles` for the folder a corpus or a report is written into, wherever that is.

    corpus/      train-NNNNN.jsonl shards, heldout.jsonl, stats.json, dropped.jsonl; while it runs work/<unit>/
                 (docs.jsonl.zst, dropped.jsonl, exact.bin, signatures.bin, band-NN.bin, stats.json, then
                 train.jsonl.zst, heldout.jsonl, dedup-dropped.jsonl, split.json), work/dedup/, work/pieces/
    tokenizer/   a transformers tokenizer directory (tokenizer.json, tokenizer_config.json, ...), fit.json
    pretrain/    data/ (token shards; data-parts/ while they are written), checkpoints/, history.json, summary.json, tensorboard/,
                 tokenizer/ (continued pretraining), export/ (a Hugging Face model directory)
    arms/<arm>/  an experiment's arm: a run folder of its own (corpus, tokenizer, pretrain)
    experiment/  arms.json (each arm's status, cost, failure), summary.json, history.json
    evaluate/    tasks.json (each task's type, classes, sizes, notes, labels never seen in training,
                 invalid UTF-8 replaced), gold/<task>.json, distance.json, selection.json, results.jsonl,
                 failures.json, distillation.json, runs/<model>/<task>/lr-<lr>/seed-<n>.json, tensorboard/;
                 with a learning curve also learning_curve.json and
                 curve-runs/<model>/<task>/size-<k>/sample-<s>/lr-<lr>/seed-<n>.json, curve-tensorboard/;
                 with active learning active-runs/<model>/<task>/<strategy>/seed-<n>.json
    report/      report.md, report.html, results.json, results.png, distance.png, loss.png, tokenizer_fit.png,
                 learning_curves.png, active_learning.png
    partial-report/  the same, from the fine-tuning runs finished so far (`domainlm report --partial`)
    plan/        plan.json, plan.md (`domainlm plan`: the forecast before the run)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from domainlm.io import read_json, read_jsonl


# ------------------------------------------------------------------ folders a stage writes into
@dataclass(frozen=True)
class CorpusFiles:
    """The corpus stage's folder: a run's `corpus/`, or wherever `corpus.curate` is told to write."""

    folder: Path

    @property
    def stats(self) -> Path:
        """`read`, `kept`, `dropped` per reason, per step and per source (see the corpus stage)."""
        return self.folder / "stats.json"

    def shard(self, index: int) -> Path:
        """The `index`-th shard of kept training documents (`{"id", "text", "source"}` per line)."""
        return self.folder / f"train-{index:05d}.jsonl"

    def shards(self) -> list[Path]:
        """The training shards written, in order."""
        return sorted(self.folder.glob("train-*.jsonl"))

    @property
    def heldout(self) -> Path:
        """The kept documents set aside to measure the tokenizer's fit."""
        return self.folder / "heldout.jsonl"

    @property
    def dropped(self) -> Path:
        """With `keep_dropped`: every dropped document with its reason."""
        return self.folder / "dropped.jsonl"

    @property
    def work(self) -> Path:
        """The work units' folders, so a killed run redoes only the unfinished units; removed
        once the stage's outputs are written."""
        return self.folder / "work"

    @property
    def domain_classifier(self) -> Path:
        """`corpus.domain_selection`'s classifier: its weights (.npz)."""
        return self.work / "domain-classifier.npz"

    @property
    def domain_classifier_record(self) -> Path:
        """What the classifier was trained on, written after its weights (the completion marker)."""
        return self.work / "domain-classifier.json"

    @property
    def pieces(self) -> Path:
        """Compressed sources cut into plain files, one per work unit (each removed once its unit is done)."""
        return self.work / "pieces"

    @property
    def dedup(self) -> DedupFiles:
        """Corpus-wide dedup's intermediate arrays."""
        return DedupFiles(self.work / "dedup")

    @property
    def shard_progress(self) -> Path:
        """How far writing the shards got (shards written, the unit part and line to go on from)."""
        return self.work / "shards.json"

    def unit(self, key: str) -> Path:
        """One work unit's folder (its files: `CorpusUnitFiles`)."""
        return self.work / key

    def finished_units(self) -> list[Path]:
        """The work units' folders that hold their completion marker."""
        return [folder for folder in sorted(self.work.glob("*")) if CorpusUnitFiles(folder).stats.exists()]


@dataclass(frozen=True)
class CorpusPieces:
    """A compressed or remote source cut into zstd-compressed pieces, one per work unit
    (`readers.split_compressed`), and their listing, written last."""

    folder: Path

    @property
    def listing(self) -> Path:
        return self.folder / "pieces.json"

    def piece(self, index: int) -> Path:
        return self.folder / f"piece-{index:05d}.txt.zst"


@dataclass(frozen=True)
class DedupFiles:
    """Corpus-wide dedup's results, raw arrays of global document positions (uint64), each
    written whole: the exact duplicates found in each hash partition, the confirmed near-duplicate
    pairs (first, other) of each LSH band and partition, and the near-duplicates removed."""

    folder: Path

    def exact(self, partition: int) -> Path:
        return self.folder / f"exact-{partition:05d}.bin"

    def pairs(self, band: int, partition: int) -> Path:
        return self.folder / f"pairs-{band:02d}-{partition:05d}.bin"

    @property
    def near(self) -> Path:
        return self.folder / "near.bin"


@dataclass(frozen=True)
class CorpusUnitFiles:
    """One corpus work unit's folder (or the temporary folder it is written in): its surviving
    documents (zstd-compressed), raw uint64 / uint32 arrays of their exact hashes, MinHash
    signatures and LSH band keys, its dropped documents, and stats.json, written last as the
    completion marker. After corpus-wide dedup: its kept documents split into a training and a
    held-out part, dedup's drops, and split.json (written last; the survivors and arrays go)."""

    folder: Path

    @property
    def docs(self) -> Path:
        return self.folder / "docs.jsonl.zst"

    @property
    def train(self) -> Path:
        return self.folder / "train.jsonl.zst"

    @property
    def heldout(self) -> Path:
        return self.folder / "heldout.jsonl"

    @property
    def dedup_dropped(self) -> Path:
        return self.folder / "dedup-dropped.jsonl"

    @property
    def split(self) -> Path:
        return self.folder / "split.json"

    @property
    def dropped(self) -> Path:
        return self.folder / "dropped.jsonl"

    @property
    def exact(self) -> Path:
        return self.folder / "exact.bin"

    @property
    def signatures(self) -> Path:
        return self.folder / "signatures.bin"

    def band(self, index: int) -> Path:
        """The LSH keys of one band, one uint64 per document (a file per band)."""
        return self.folder / f"band-{index:02d}.bin"

    @property
    def stats(self) -> Path:
        return self.folder / "stats.json"


@dataclass(frozen=True)
class ReportFiles:
    """The report's folder: a run's `report/`, or `partial-report/`."""

    folder: Path
    PLOTS: ClassVar[tuple[str, ...]] = ("results", "distance", "loss", "tokenizer_fit", "learning_curves",
                                        "active_learning")
    """The figures, each `<name>.png`, linked from report.md by file name and embedded in report.html."""

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"

    @property
    def html(self) -> Path:
        return self.folder / "report.html"

    @property
    def results(self) -> Path:
        """Every number the report shows, and the recipe, as JSON."""
        return self.folder / "results.json"

    @classmethod
    def plot_name(cls, name: str) -> str:
        """The file name of figure `name` (one of `PLOTS`), as report.md links it."""
        if name not in cls.PLOTS:
            raise KeyError(f"no report figure '{name}': the figures are {', '.join(cls.PLOTS)}")
        return f"{name}.png"

    def plot(self, name: str) -> Path:
        return self.folder / self.plot_name(name)


@dataclass(frozen=True)
class RunLayout:
    root: Path
    chosen: dict[str, Any] | None = None
    """A selection (model -> task -> lr, seeds) to read runs by instead of evaluate/selection.json:
    a partial report's, made from the runs finished so far."""

    # ------------------------------------------------------------------------------ any stage
    def stage(self, name: str) -> Path:
        return self.root / name

    def manifest(self, stage: str) -> Path:
        """The completion marker of a stage (resolved config, input hashes, timings, counts)."""
        return self.root / stage / "manifest.json"

    def in_progress(self, stage: str) -> Path:
        """Present while a stage runs: the fingerprint it is working for (resume only if unchanged)."""
        return self.root / stage / "in_progress.json"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the process working in this run folder; it holds that process's pid."""
        return self.root / ".lock"

    def stage_seconds(self, stage: str) -> float:
        return read_json(self.manifest(stage))["timings"]["seconds"]

    # --------------------------------------------------------------------------------- corpus
    @property
    def corpus_files(self) -> CorpusFiles:
        return CorpusFiles(self.root / "corpus")

    @property
    def corpus_stats(self) -> Path:
        """`read`, `kept`, `dropped` per reason, per step and per source (see the corpus stage)."""
        return self.corpus_files.stats

    def corpus_documents(self, split: str = "train") -> Iterator[dict]:
        """The curated documents (`{"id", "text", "source"}`): the `train` shards, or the `heldout` set."""
        corpus = self.corpus_files
        files = corpus.shards() if split == "train" else [corpus.heldout]
        for path in files:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    yield json.loads(line)

    def corpus_texts(self, split: str = "train") -> Iterator[str]:
        return (doc["text"] for doc in self.corpus_documents(split))

    def corpus_source_weights(self) -> dict[str, float]:
        """Each corpus source's `weight x repeat`, by source name."""
        sources = read_json(self.corpus_stats).get("sources", {})
        return {name: source.get("weight", 1.0) for name, source in sources.items()}

    # ------------------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self) -> Path:
        """The domain tokenizer: a transformers tokenizer directory (tokenizer.json inside)."""
        return self.root / "tokenizer"

    @property
    def tokenizer_fit(self) -> Path:
        return self.root / "tokenizer" / "fit.json"

    # ------------------------------------------------------------------------------- pretrain
    @property
    def export(self) -> Path:
        """The pretrained model as a Hugging Face directory (weights, config, tokenizer)."""
        return self.root / "pretrain" / "export"

    @property
    def checkpoints(self) -> Path:
        return self.root / "pretrain" / "checkpoints"

    @property
    def plan_json(self) -> Path:
        """`domainlm plan`'s forecast: data, compute, memory and time, as JSON."""
        return self.root / "plan" / "plan.json"

    @property
    def plan_markdown(self) -> Path:
        return self.root / "plan" / "plan.md"

    @property
    def token_shards(self) -> Path:
        return self.root / "pretrain" / "data"

    def token_part(self, name: str) -> Path:
        """One corpus shard (or the prompt documents) tokenised, before the parts are merged into
        the token shards (then removed)."""
        return self.root / "pretrain" / "data-parts" / name

    @property
    def pretrain_tokenizer(self) -> Path:
        """The tokenizer continued pretraining uses (the checkpoint's, maybe extended)."""
        return self.root / "pretrain" / "tokenizer"

    @property
    def pretrain_summary(self) -> Path:
        return self.root / "pretrain" / "summary.json"

    @property
    def pretrain_history(self) -> Path:
        return self.root / "pretrain" / "history.json"

    @property
    def pretrain_curves(self) -> Path:
        """TensorBoard event files of pretraining (written when tensorboard is installed)."""
        return self.root / "pretrain" / "tensorboard"

    # ----------------------------------------------------------------------------- experiment
    def arm(self, name: str) -> RunLayout:
        """The run folder of an experiment's arm."""
        return RunLayout(self.root / "arms" / name)

    @property
    def arms(self) -> Path:
        """Each arm's status, budget and cost, or why it failed."""
        return self.root / "experiment" / "arms.json"

    @property
    def experiment_summary(self) -> Path:
        return self.root / "experiment" / "summary.json"

    @property
    def experiment_history(self) -> Path:
        return self.root / "experiment" / "history.json"

    def arm_failure(self, arm: str) -> str:
        """Why an arm has no model: its recorded failure, or that it has not run."""
        for record in read_json(self.arms) if self.arms.exists() else []:
            if record["arm"] == arm and record["status"] == "failed":
                return f"arm '{arm}' failed: {record['reason']}"
        return f"arm '{arm}' has no exported model (not run yet?)"

    # ------------------------------------------------------------------------------- evaluate
    @property
    def task_summaries(self) -> Path:
        """Each task's type, metric, classes, split sizes and notes."""
        return self.root / "evaluate" / "tasks.json"

    def gold(self, task: str) -> Path:
        """The test split's gold values of a task (what predictions are scored against)."""
        return self.root / "evaluate" / "gold" / f"{task}.json"

    @property
    def distance(self) -> Path:
        return self.root / "evaluate" / "distance.json"

    @property
    def selection(self) -> Path:
        """Per model and task: the learning rate chosen on dev, and the seeds run with it."""
        return self.root / "evaluate" / "selection.json"

    @property
    def results(self) -> Path:
        """One JSON row per (model, task, seed, metric) of the selected learning rate; with a
        learning curve also one per (model, task, size, subsample seed, seed, metric), which holds
        `size`, `subsample_seed` and `train_examples` besides."""
        return self.root / "evaluate" / "results.jsonl"

    @property
    def learning_curve(self) -> Path:
        """With a learning curve: per task its unit (per class, or examples) and each sample's
        counts (`tasks.subsample.CurveSample.record`), and per (model, task, size, subsample seed)
        the learning rate chosen on that sample's dev (`selection`)."""
        return self.root / "evaluate" / "learning_curve.json"

    @property
    def failures(self) -> Path:
        return self.root / "evaluate" / "failures.json"

    @property
    def distillation(self) -> Path:
        """Per distilled (model, task): the student's and the teacher's score, speed and size."""
        return self.root / "evaluate" / "distillation.json"

    def run_file(self, model: str, task: str, lr: float, seed: int) -> Path:
        """One fine-tuning run's metrics, dev curve and test predictions."""
        return self.root / "evaluate" / "runs" / model / task / f"lr-{lr:g}" / f"seed-{seed}.json"

    def encoder_dir(self, model: str, task: str, lr: float, seed: int) -> Path:
        """A fine-tuned bi-encoder of one retrieval run, kept until the best is chosen (`embedding_model`)."""
        return self.root / "evaluate" / "encoders" / model / task / f"lr-{lr:g}" / f"seed-{seed}"

    @property
    def embedding_model(self) -> Path:
        """The run's best fine-tuned bi-encoder (highest dev score over retrieval tasks), a
        sentence-transformers directory; `embedding_model.json` beside it says which run it is."""
        return self.root / "evaluate" / "embedding-model"

    def adapted_encoder(self, key: str, seed: int) -> Path:
        """An encoder adapted without labels (unsupervised SimCSE) for evaluation, shared by every
        entry that adapts alike (`key`: a fingerprint of what it was adapted from and on)."""
        return self.root / "evaluate" / "adapted" / key / f"seed-{seed}"

    def adaptation_record(self, key: str, seed: int) -> Path:
        """Steps, loss and seconds of one adaptation, written when its encoder is."""
        return self.root / "evaluate" / "adapted" / key / f"seed-{seed}.json"

    def curves(self, model: str, task: str, lr: float, seed: int) -> Path:
        """TensorBoard event files of one fine-tuning run (written when tensorboard is installed)."""
        return self.root / "evaluate" / "tensorboard" / model / task / f"lr-{lr:g}" / f"seed-{seed}"

    def curve_run_file(self, model: str, task: str, size: int, sample: int, lr: float, seed: int) -> Path:
        """One learning-curve fine-tuning run: on the `size` sample of subsample seed `sample`."""
        return (self.root / "evaluate" / "curve-runs" / model / task / f"size-{size}" / f"sample-{sample}"
                / f"lr-{lr:g}" / f"seed-{seed}.json")

    def curve_curves(self, model: str, task: str, size: int, sample: int, lr: float, seed: int) -> Path:
        """TensorBoard event files of one learning-curve fine-tuning run."""
        return (self.root / "evaluate" / "curve-tensorboard" / model / task / f"size-{size}" / f"sample-{sample}"
                / f"lr-{lr:g}" / f"seed-{seed}")

    def curve_point_runs(self, model: str, task: str, size: int) -> list[dict[str, Any]]:
        """The saved runs of one curve point, at the learning rate chosen for each subsample seed:
        every (subsample seed, seed) run."""
        chosen = [c for c in read_json(self.learning_curve)["selection"]
                  if (c["model"], c["task"], c["size"]) == (model, task, size)]
        return [read_json(self.curve_run_file(model, task, size, c["subsample_seed"], c["lr"], seed))
                for c in chosen for seed in c["seeds"]]

    def active_run_file(self, model: str, task: str, strategy: str, seed: int) -> Path:
        """One active-learning run: every round's labels, queries, metrics and test predictions."""
        return self.root / "evaluate" / "active-runs" / model / task / strategy / f"seed-{seed}.json"

    def active_runs(self, model: str, task: str, strategy: str) -> list[dict[str, Any]]:
        """The saved active-learning runs of one (model, task, strategy), one per AL seed."""
        return [read_json(path) for path in sorted((self.root / "evaluate" / "active-runs" / model / task / strategy)
                                                   .glob("seed-*.json"))]

    def finished_runs(self) -> Iterator[tuple[str, str, float, int, dict[str, Any]]]:
        """Every fine-tuning run saved so far: (model, task, lr, seed, run), finished or not the stage."""
        for path in sorted((self.root / "evaluate" / "runs").glob("*/*/lr-*/seed-*.json")):
            model, task, lr = path.parts[-4], path.parts[-3], float(path.parts[-2].removeprefix("lr-"))
            yield model, task, lr, int(path.stem.removeprefix("seed-")), read_json(path)

    def selected_runs(self, model: str, task: str) -> list[dict[str, Any]]:
        """The saved runs (one per seed) of the learning rate selected for one (model, task)."""
        chosen = (self.chosen or read_json(self.selection))[model][task]
        return [read_json(self.run_file(model, task, chosen["lr"], seed)) for seed in chosen["seeds"]]

    def predictions(self, model: str, task: str) -> list[list]:
        """The selected learning rate's test predictions of one (model, task), one list per seed."""
        return [run["predictions"] for run in self.selected_runs(model, task)]

    def result_rows(self) -> list[dict[str, Any]]:
        """The full-data rows of results.jsonl (a learning curve's rows are `curve_rows`, active
        learning's `active_rows`)."""
        return [row for row in read_jsonl(self.results) if "size" not in row and "round" not in row]

    def curve_rows(self) -> list[dict[str, Any]]:
        """The learning curve's rows of results.jsonl (those with a `size`)."""
        return [row for row in read_jsonl(self.results) if "size" in row]

    def active_rows(self) -> list[dict[str, Any]]:
        """Active learning's rows of results.jsonl (those with a `round`, `labels` and `strategy`)."""
        return [row for row in read_jsonl(self.results) if "round" in row]

    # --------------------------------------------------------------------------------- report
    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_files(self) -> ReportFiles:
        return ReportFiles(self.report)

    @property
    def partial_report(self) -> Path:
        """`domainlm report --partial`: a report from the fine-tuning runs finished so far (never
        a stage's folder, so it can be written while evaluate runs)."""
        return self.root / "partial-report"

"""Experiments: several pretraining arms at equal compute, compared by one evaluation.

A recipe with an `experiment` section declares arms — each the recipe's corpus / tokenizer / model
/ pretrain sections with some keys replaced (another corpus, a general vocabulary, `init_from` a
general checkpoint, `extend_vocab`, ...). Each arm is a run of its own (`runs/<name>/arms/<arm>/`,
its corpus, tokenizer and pretrain stages cached like any run's, so a re-run skips finished arms)
for the same number of steps of the same shape: `budget_tokens` split equally. An arm that fails is
recorded with its reason and the others go on. `evaluate.models` then names arms
(`{kind: domain, arm: <name>}`), next to general checkpoints, random-init and TF-IDF.

The experiment sits above the pipeline: it runs the pipeline for each arm, records the arms in
`runs/<name>/experiment/` (arms.json, summary.json, history.json), then runs this run's own
corpus, tokenizer, evaluate and report stages. The pipeline and the stages know nothing of it.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from typing import Any

from domainlm.config import ArmConfig, RunConfig
from domainlm.io import atomic_write_json, read_json
from domainlm.layout import RunLayout
from domainlm.pipeline import check_stages, run_all, run_lock, run_stage, stage_fingerprint

ARM_STAGES = ("corpus", "tokenizer", "pretrain")
log = logging.getLogger(__name__)


def reuse_stages(config: RunConfig, settings: RunConfig) -> list[str]:
    """Copy this run's finished corpus and tokenizer into an arm that has not run them and whose
    same stages would compute the same thing (equal fingerprints: the same corpus section, tasks
    and vocabulary settings), instead of computing them again. The copy's manifest says where it
    came from and counts no seconds, so the arm's cost is not counted twice. Returns the stages copied."""
    ours, theirs = RunLayout(config.directory), RunLayout(settings.directory)
    copied = []
    for stage in ("corpus", "tokenizer") if config.corpus is not None else ():
        if not ours.manifest(stage).exists() or theirs.stage(stage).exists():
            break
        manifest = read_json(ours.manifest(stage))
        if stage_fingerprint(settings, stage)[0] != manifest["fingerprint"]:
            break
        staging = theirs.stage(stage).with_name(f".{stage}.copying")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(ours.stage(stage), staging)
        manifest["timings"] |= {"seconds": 0.0}
        atomic_write_json(staging / "manifest.json", manifest | {"reused_from": str(ours.stage(stage))})
        staging.rename(theirs.stage(stage))  # whole, or not at all
        copied.append(stage)
    if copied:
        log.info("experiment: %s: %s copied from this run (the same settings)", settings.name, " and ".join(copied))
    return copied


def run_arm(config: RunConfig, arm: ArmConfig) -> dict[str, Any]:
    """Pretrain one arm (its corpus, tokenizer and pretrain stages); its budget and cost."""
    settings = config.arm_config(arm)  # now an `arm:<name>` path must exist: that arm has run
    reuse_stages(config, settings)
    run_all(settings, stages=ARM_STAGES)
    run_dir = RunLayout(settings.directory)
    summary = read_json(run_dir.pretrain_summary)
    seconds = {s: run_dir.stage_seconds(s) for s in ARM_STAGES}
    p = settings.pretrain
    return {"steps": p.max_steps, "positions": p.max_steps * p.batch_size * p.seq_len,
            "real_tokens": summary["real_tokens_seen"], "final_loss": summary["final_loss"],
            "train_seconds": summary["train_seconds"], "stage_seconds": seconds, "device": summary["device"],
            "parameters": summary["parameters"], "real_tokens_per_s": summary["real_tokens_per_s"],
            "export_max_abs_logit_diff": summary["export_max_abs_logit_diff"], "init": summary.get("init"),
            "vocab_size": summary.get("vocab_size"), "non_embedding_parameters": summary.get("non_embedding_parameters"),
            "flops": summary.get("flops"), "flops_dense_equivalent": summary.get("flops_dense_equivalent"),
            "share": arm.share, "heldout_mlm_loss": summary.get("heldout_mlm_loss"),
            "wall_seconds": round(sum(seconds.values()), 2)}


def run_arms(config: RunConfig) -> dict[str, Any]:
    """Every arm in turn; `arms.json` records each one's budget, cost and status. `summary.json`
    and `history.json` hold the totals and every arm's loss curve (what the report reads). What
    they hold depends only on the arms' stage folders, so a re-run that skips every arm rewrites
    them unchanged."""
    run_dir = RunLayout(config.directory)
    records = []
    for number, arm in enumerate(config.experiment.arms, start=1):
        log.info("experiment: arm %s (%d of %d)", arm.name, number, len(config.experiment.arms))
        try:
            record = {"arm": arm.name, "status": "done"} | run_arm(config, arm)
        except Exception as err:  # noqa: BLE001 - one failing arm must not stop the others
            record = {"arm": arm.name, "status": "failed", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=4)}
            log.warning("experiment: arm %s failed: %s", arm.name, record["reason"])
        records.append(record)
        atomic_write_json(run_dir.arms, records)
    done = [r for r in records if r["status"] == "done"]
    histories = {r["arm"]: read_json(run_dir.arm(r["arm"]).pretrain_history) for r in done}
    atomic_write_json(run_dir.experiment_history, {"arms": {arm: h["loss"] for arm, h in histories.items()}})
    atomic_write_json(run_dir.experiment_summary, {
        "arms": records, "steps": sum(r["steps"] for r in done), "train_seconds": sum(r["train_seconds"] for r in done),
        "real_tokens_seen": sum(r["real_tokens"] for r in done),
        "device": done[0]["device"] if done else "none", "budget_tokens": config.experiment.budget_tokens,
    })
    return {"arms": len(records), "failed": len(records) - len(done)}


def run(config: RunConfig, verb: str = "run", force: bool = False) -> list[str]:
    """A recipe with arms. `run`: this run's corpus and tokenizer, every arm, then evaluate and
    report; `pretrain`: the arms alone; any other stage: that stage of this run. Returns the
    stages of this run that ran (`pretrain` for the arms)."""
    with run_lock(config):
        if verb in ("run", "pretrain"):  # every arm's recipe and checkpoints, before the first stage
            for arm_config in config.arm_configs().values():
                check_stages(arm_config, ARM_STAGES)
        if verb == "pretrain":
            run_arms(config)
            return ["pretrain"]
        if verb != "run":
            return [verb] if run_stage(config, verb, force=force) else []
        ran = run_all(config, force, stages=("corpus", "tokenizer"))
        run_arms(config)
        return ran + ["pretrain"] + run_all(config, force, stages=("evaluate", "report"))

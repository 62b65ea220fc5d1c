"""Experiments: several pretraining arms at equal compute, compared by one evaluation.

A recipe with an `experiment` section declares arms — each the recipe's corpus / tokenizer / model
/ pretrain sections with some keys replaced (another corpus, a general vocabulary, `init_from` a
general checkpoint, `extend_vocab`, ...). The pretrain stage runs every arm as its own small run
(`runs/<name>/arms/<arm>/`, with its own stage cache, so a re-run skips finished arms) for the
same number of steps of the same shape: `budget_tokens` split equally. An arm that fails is
recorded with its reason and the others go on. `evaluate.models` then names arms
(`{kind: domain, arm: <name>}`), next to general checkpoints, random-init and TF-IDF.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any

from domainlm.artifacts import atomic_write_json, read_json
from domainlm.config import ArmConfig, RunConfig, config_from_dict

ARM_STAGES = ("corpus", "tokenizer", "pretrain")


def merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: nested mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def arm_steps(config: RunConfig, pretrain: dict) -> int:
    """Steps that spend one arm's share of the budget with this arm's batch shape."""
    share = config.experiment.budget_tokens // len(config.experiment.arms)
    return max(1, math.floor(share / (pretrain["batch_size"] * pretrain["seq_len"])))


def arm_config(config: RunConfig, arm: ArmConfig) -> RunConfig:
    """The run configuration of one arm (validated like a recipe)."""
    data = config.model_dump(mode="json", exclude={"experiment", "evaluate", "report"})  # an arm only pretrains
    for section in ("corpus", "tokenizer", "model", "pretrain"):
        data[section] = merge(data[section], getattr(arm, section))
    pretrain = data["pretrain"]
    pretrain["max_steps"] = arm_steps(config, pretrain)
    pretrain["checkpoint_every"] = min(pretrain["checkpoint_every"], pretrain["max_steps"])
    data.update(name=f"{config.name}-{arm.name}", run_dir=str(arm_dir(config, arm.name)))
    return config_from_dict(data, origin=f"experiment arm '{arm.name}'")


def arm_dir(config: RunConfig, arm: str) -> Path:
    return config.directory / "arms" / arm


def arm_failure(config: RunConfig, arm: str) -> str:
    """Why an arm has no model: its recorded failure, or that it has not run."""
    arms = config.directory / "pretrain" / "arms.json"
    for record in read_json(arms) if arms.exists() else []:
        if record["arm"] == arm and record["status"] == "failed":
            return f"arm '{arm}' failed: {record['reason']}"
    return f"arm '{arm}' has no exported model (not run yet?)"


def run_arm(config: RunConfig, arm: ArmConfig) -> dict[str, Any]:
    from domainlm.pipeline import run_stage

    settings = arm_config(config, arm)
    started = time.time()
    for stage in ARM_STAGES:
        run_stage(settings, stage)
    folder = settings.directory
    summary = read_json(folder / "pretrain" / "summary.json")
    seconds = {s: read_json(folder / s / "manifest.json")["timings"]["seconds"] for s in ARM_STAGES}
    p = settings.pretrain
    return {"steps": p.max_steps, "positions": p.max_steps * p.batch_size * p.seq_len,
            "real_tokens": summary["real_tokens_seen"], "final_loss": summary["final_loss"],
            "train_seconds": summary["train_seconds"], "stage_seconds": seconds, "device": summary["device"],
            "parameters": summary["parameters"], "real_tokens_per_s": summary["real_tokens_per_s"],
            "export_max_abs_logit_diff": summary["export_max_abs_logit_diff"], "init": summary.get("init"),
            "wall_seconds": round(time.time() - started, 2)}


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    """Every arm in turn; `arms.json` records each one's budget, cost and status. `summary.json`
    and `history.json` hold the totals and every arm's loss curve (what the report reads)."""
    records = []
    for arm in config.experiment.arms:
        print(f"experiment: arm {arm.name} ({len(records) + 1} of {len(config.experiment.arms)})")
        try:
            record = {"arm": arm.name, "status": "done"} | run_arm(config, arm)
        except Exception as err:  # noqa: BLE001 - one failing arm must not stop the others
            record = {"arm": arm.name, "status": "failed", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc(limit=4)}
            print(f"experiment: arm {arm.name} failed: {record['reason']}")
        records.append(record)
        atomic_write_json(out / "arms.json", records)
    done = [r for r in records if r["status"] == "done"]
    histories = {r["arm"]: read_json(arm_dir(config, r["arm"]) / "pretrain" / "history.json") for r in done}
    atomic_write_json(out / "history.json", {"arms": {arm: h["loss"] for arm, h in histories.items()}})
    seconds = sum(r["train_seconds"] for r in done)
    atomic_write_json(out / "summary.json", {
        "arms": records, "steps": sum(r["steps"] for r in done), "train_seconds": seconds,
        "real_tokens_seen": sum(r["real_tokens"] for r in done),
        "device": done[0]["device"] if done else "none", "budget_tokens": config.experiment.budget_tokens,
    })
    return {"arms": len(records), "failed": len(records) - len(done)}

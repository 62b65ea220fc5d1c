"""`domainlm plan RECIPE`: what a recipe will cost before it runs — its data, compute, memory and
time — so a user can decide whether the expensive part is worth it.

- data: documents, words and tokens per corpus source (the corpus stage's counts when it ran;
  otherwise the raw inputs, read once, before curation's filters and dedup), the tokens each
  pretraining arm reads and the passes that makes over each source (a warning above 4: repeating
  data beyond ~4 epochs buys little, Muennighoff et al. 2023), and the tokens per vocabulary entry;
- compute: parameters and training FLOPs per arm (the FLOP counter the pretrain stage reports,
  `pretrain.flops`), the wall time on this machine from a few timed training steps of the arm's own
  model at its batch and sequence length, and on named GPUs from their dense bf16 peak at a
  stated model-FLOPs utilisation (`--mfu`), the fine-tuning runs the evaluation will make;
- memory: weights, gradients and AdamW state (16 bytes per parameter with fp32 master weights)
  and activations per sequence (34 x seq_len x hidden bytes per layer in bf16 with fused
  attention, Korthikanti et al. 2022, plus the masked positions' logits), so whether a card of
  24 / 40 / 80 GiB holds it, and at which micro-batch, is answered;
- stage times: the corpus and tokenizer stages timed on samples of the inputs, pretraining from
  timed steps, fine-tuning from timed steps per model and task;
- with pilots (`--pilots`): each arm's final held-out MLM loss from a short pilot run (the
  annealing law of Tissue et al. 2024, or the reason there is no forecast), and an experimental
  outlook on where domain pretraining could pay (task distances and the pilot losses).

Tokens are counted with the domain tokenizer when it was trained, else the recipe's reference
(general) vocabulary, else 1.3 tokens per word; every estimate says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainlm.config import RunConfig
from domainlm.forecast.costs import (
    DEFAULT_MFU,
    GPUS,
    MAX_EPOCHS,
    TOKENS_PER_ENTRY,
    arm_model,
    arm_vocab_size,
    arms_of,
    corpus_counts,
    evaluation_runs,
    fine_tuning_time,
    measured_step,
    memory,
    raw_samples,
    reads,
    stage_times,
    training_flops,
)
from domainlm.forecast.loss import gain_outlook, pilot_forecasts
from domainlm.io import atomic_write_json, atomic_write_text
from domainlm.layout import RunLayout


def plan(config: RunConfig, mfu: float = DEFAULT_MFU, measure: bool = True,
         pilots: float | None = None) -> dict[str, Any]:
    """The whole forecast (see the module docstring) as one JSON-able mapping, with `warnings`;
    with `pilots` (a share of the steps), each arm's final held-out MLM loss forecast from a pilot
    run of that share (`pilot_forecasts`)."""
    found: dict[str, Any] = {"recipe": config.name, "warnings": [], "gpu_mfu": mfu, "arms": {}}
    fresh = config.corpus is not None and not RunLayout(config.directory).corpus_stats.exists()
    raw = raw_samples(config) if fresh else None  # the raw inputs, read once for counts and stage timings
    corpus = corpus_counts(config, raw) if config.corpus is not None else None
    found["corpus"] = corpus
    if corpus:
        total_tokens = sum(c["tokens"] for c in corpus["sources"].values())
        per_entry = total_tokens / max(1, config.tokenizer.vocab_size)
        found["tokens_per_vocabulary_entry"] = round(per_entry)
        if per_entry < TOKENS_PER_ENTRY:
            found["warnings"].append(
                f"tokenizer.vocab_size {config.tokenizer.vocab_size} against ~{total_tokens:,} corpus tokens: "
                f"{per_entry:.0f} tokens per entry (fewer than {TOKENS_PER_ENTRY}); many entries will be rare and "
                "poorly trained: a smaller vocabulary, or more text")
    if measure and corpus:  # first: the stages' timings include what they import (see stage_times)
        found["stages"] = stage_times(config, corpus, raw)
    for name, arm in arms_of(config).items():
        model = arm_model(arm, arm_vocab_size(arm))
        data = reads(arm, corpus) if corpus else {"positions": 0, "epochs": {}}
        for source, epochs in data["epochs"].items():
            if epochs > MAX_EPOCHS:
                found["warnings"].append(
                    f"arm {name}: {epochs:.1f} passes over source '{source}' (more than {MAX_EPOCHS}: repeated "
                    "data adds little beyond ~4 epochs, Muennighoff et al. 2023): more text or fewer steps")
        flops = training_flops(model, arm.pretrain.seq_len, data["positions"], arm.pretrain.mask_rate)
        entry = {"steps": arm.pretrain.max_steps, "batch_size": arm.pretrain.batch_size,
                 "seq_len": arm.pretrain.seq_len, **data, "flops": flops, "memory": memory(model, arm),
                 "gpu_hours": {gpu: flops / (peak * mfu) / 3600 for gpu, (peak, _) in GPUS.items()}}
        if measure:
            step = measured_step(arm, model.config, corpus)
            entry["this_machine"] = step | {
                "pretrain_seconds": step["seconds_per_step"] * arm.pretrain.max_steps,
                "flops_per_second": flops / arm.pretrain.max_steps / step["seconds_per_step"]}
        found["arms"][name] = entry
    if pilots and found["arms"]:
        for name, forecast in pilot_forecasts(config, pilots).items():
            entry = found["arms"][name]
            entry["loss_forecast"] = forecast
            if entry.get("this_machine") and forecast.get("pilot_seconds_per_step"):  # real data, many steps
                step = forecast["pilot_seconds_per_step"]
                entry["this_machine"] |= {"seconds_per_step": step, "pretrain_seconds": step * entry["steps"],
                                          "flops_per_second": entry["flops"] / entry["steps"] / step,
                                          "timed_on": "the pilot's training steps"}
    if pilots:
        found["gain_outlook"] = gain_outlook(config, found["arms"])
    found["evaluation"] = evaluation_runs(config)
    if measure and config.tasks:
        layouts = {name: arm_model(arm, arm_vocab_size(arm)).config for name, arm in arms_of(config).items()}
        found["evaluation"]["this_machine"] = fine_tuning_time(config, layouts)
    return found


def markdown(found: dict[str, Any]) -> str:
    """The plan as Markdown tables (what `domainlm plan` prints)."""
    lines = [f"# Plan: {found['recipe']}", ""]
    corpus = found.get("corpus")
    if corpus:
        lines += [f"Corpus, from {corpus['basis']}; tokens counted with {corpus['tokens_counted_with']}.", "",
                  "| source | documents | words | tokens | weight |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['documents']:,} | {c['words']:,} | {c['tokens']:,} | {c['weight']:g} |"
                  for name, c in corpus["sources"].items()]
        lines.append("")
    if found["arms"]:
        gpus = list(GPUS)
        lines += ["| arm | params | steps x batch x seq | tokens read | passes | FLOPs | this machine | "
                  + " | ".join(f"{g} h" for g in gpus) + " | fits (micro-batch x accumulation) |",
                  "|---|---:|---|---:|---|---:|---:|" + "---:|" * len(gpus) + "---|"]
        for name, arm in found["arms"].items():
            passes = ", ".join(f"{s} {e:.2f}" for s, e in arm["epochs"].items())
            here = arm.get("this_machine")
            here = f"{here['pretrain_seconds'] / 60:.1f} min" if here else "—"
            fits = ", ".join(f"{card}: {f['micro_batch']}x{f['accumulation']}" if f["micro_batch"] else f"{card}: no"
                             for card, f in arm["memory"]["cards"].items())
            lines.append(f"| {name} | {arm['memory']['parameters'] / 1e6:.1f} M | {arm['steps']} x {arm['batch_size']} x "
                         f"{arm['seq_len']} | {arm['positions']:,} | {passes} | {arm['flops']:.2e} | {here} | "
                         + " | ".join(f"{arm['gpu_hours'][g]:.3g}" for g in gpus) + f" | {fits} |")
        lines += ["", f"GPU hours at {found['gpu_mfu']:.0%} model-FLOPs utilisation of the dense bf16 peak."]
        for name, arm in found["arms"].items():
            if "loss_forecast" in arm:
                lines += ["", _loss_line(name, arm["loss_forecast"])]
    lines += [""] if found.get("stages") else []
    for stage, timed in found.get("stages", {}).items():
        lines.append(f"The {stage} stage: about {timed['seconds']:.0f} s on this machine ({timed['basis']}).")
    runs = found["evaluation"]
    lines += ["", f"Evaluation: {runs['runs']} fine-tuning runs ({len(runs['encoder_models'])} encoder models x "
                  f"{runs['tasks']} tasks x {runs['seeds']} seeds x {runs['learning_rates']} learning rates)"
              + (f", about {runs['this_machine']['seconds'] / 60:.1f} min on this machine" if "this_machine" in runs
                 else "") + "."]
    if runs.get("this_machine", {}).get("not_forecast"):
        lines.append(f"Not in that time: {', '.join(runs['this_machine']['not_forecast'])}.")
    outlook = found.get("gain_outlook")
    if outlook:
        tasks = ", ".join(f"{t['task']} ({t['split_share']:.0%} of words split)" for t in outlook["tasks_by_distance"])
        lines += ["", f"Downstream gain ({outlook['label']}): tasks from the farthest from general text: {tasks}."]
        lines += [f"- arm {name}: {text}." for name, text in outlook["arms"].items()]
    if found["warnings"]:
        lines += ["", "Warnings:", *[f"- {w}" for w in found["warnings"]]]
    return "\n".join(lines) + "\n"


def _loss_line(name: str, forecast: dict[str, Any]) -> str:
    pilot = f"a pilot of {forecast['pilot_steps']} steps ({forecast['pilot_fraction']:.1%} of the budget)"
    if forecast["forecast"] is None:
        return f"Final held-out MLM loss of arm {name}: no forecast from {pilot}: {forecast['reason']}."
    return (f"Final held-out MLM loss of arm {name}: at most about {forecast['forecast']:.2f} (95% interval "
            f"{forecast['low']:.2f}-{forecast['high']:.2f}, the fit's noise only), from {pilot}: the annealing law "
            f"of Tissue et al. 2024 fitted to its {forecast['points_fitted']} points below the unigram cross-entropy "
            f"{forecast['unigram_cross_entropy']:.2f}. An upper bound: a run that has just started to use context "
            "can fall much further than its pilot shows (docs/planning.md: +2.3% and +34% on the recipes checked).")


def write_plan(config: RunConfig, found: dict[str, Any]) -> Path:
    """plan.json and plan.md in the run folder; returns the Markdown file."""
    layout = RunLayout(config.directory)
    atomic_write_json(layout.plan_json, found)
    atomic_write_text(layout.plan_markdown, markdown(found))
    return layout.plan_markdown

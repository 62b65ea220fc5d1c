"""The final held-out MLM loss of a pretraining arm, forecast from a pilot run (the annealing law
of Tissue et al. 2024), and an experimental downstream outlook (see the package docstring)."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from domainlm.config import RunConfig
from domainlm.errors import ConfigError
from domainlm.forecast.costs import arms_of
from domainlm.layout import RunLayout
from domainlm.vocabulary import read_tokenizer

if TYPE_CHECKING:
    from domainlm.pretrain.data import TokenShards

# torch and the pretrain stage are imported where used (see costs.py).

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ loss from pilots
PILOT_FRACTION = 1 / 8
"""An arm's pilot: one run of this share of its steps, with its own warmup and decay (12.5% of the budget)."""
PILOT_POINTS = 16  # held-out loss measurements along a pilot, evenly spaced
MIN_POINTS = 5  # pilot points in the context regime needed for a fit
ANNEALING_DECAY = 0.999  # Tissue et al. 2024: the momentum of the annealing area
BOOTSTRAP = 200  # residual-bootstrap refits for the interval


def schedule_areas(multipliers: np.ndarray, decay: float = ANNEALING_DECAY) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after each step of a learning-rate schedule (multipliers of the peak rate, one per
    step), as in the annealing law of Tissue et al. 2024 ("Scaling Law with Learning Rate
    Annealing"): S1 the summed rates (the forward area), S2 the summed annealing momentum
    m_i = decay * m_(i-1) + (eta_(i-1) - eta_i) over the steps where the rate falls (warmup adds nothing)."""
    multipliers = np.asarray(multipliers, dtype=np.float64)
    falls = np.maximum(0.0, -np.diff(multipliers, prepend=multipliers[:1]))
    momentum = np.zeros_like(multipliers)
    carried = 0.0
    for i, fall in enumerate(falls):
        carried = decay * carried + fall
        momentum[i] = carried
    return np.cumsum(multipliers), np.cumsum(momentum)


def annealing_law(params: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Held-out loss L = L0 + A * S1^-alpha - C * S2 (Tissue et al. 2024): a power law in the
    forward area, lowered in proportion to the annealing area."""
    l0, a, alpha, c = params
    return l0 + a * np.power(s1, -alpha) - c * s2


def fit_annealing_law(s1: np.ndarray, s2: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Least-squares (L0, A, alpha, C) of `annealing_law` to points of loss curves (all >= 0)."""
    from scipy.optimize import least_squares

    start = np.array([float(loss.min()) * 0.8, float(loss.max() - loss.min()) + 1.0, 0.3, 1e-3])
    found = least_squares(lambda p: annealing_law(p, s1, s2) - loss, start,
                          bounds=([0.0, 0.0, 0.0, 0.0], [np.inf, np.inf, 4.0, np.inf]))
    return found.x


def unigram_cross_entropy(train: TokenShards, heldout: TokenShards, vocab_size: int) -> float:
    """Nats per held-out token of the best model that ignores context: the training tokens'
    frequencies (add-half smoothing). MLM losses above it mean the model is not using context yet
    (the plateau small encoders sit on before their loss starts its power-law descent)."""
    special = list(train.special.values())
    counts = np.bincount(np.asarray(train.tokens), minlength=vocab_size).astype(np.float64)
    seen = np.bincount(np.asarray(heldout.tokens), minlength=vocab_size).astype(np.float64)
    counts[special] = seen[special] = 0
    probabilities = (counts + 0.5) / (counts.sum() + 0.5 * vocab_size)
    return float(-(seen * np.log(probabilities)).sum() / max(1.0, seen.sum()))


def pilot_curve(arm: RunConfig, steps: int) -> dict[str, Any]:
    """Held-out MLM loss along a pilot run of the arm's own model and data for `steps` steps (its
    own warmup and decay), measured `PILOT_POINTS` times as the pretrain stage measures its final
    one; and the corpus's unigram cross-entropy. Needs the arm's prepared pretraining data
    (`domainlm pretrain --data-only`)."""
    import torch

    from domainlm.pretrain import heldout_shards, initial_model, prepare_data, training_configs
    from domainlm.pretrain.trainer import Trainer

    layout = RunLayout(arm.directory)
    model, tokenizer_dir, specials, _ = initial_model(arm, write=False)
    tokenizer = read_tokenizer(tokenizer_dir)
    data = prepare_data(arm, tokenizer_dir, specials)
    settings = arm.pretrain.model_copy(update={"max_steps": steps, "checkpoint_every": 10**9})
    _, train_config = training_configs(arm.model_copy(update={"pretrain": settings}), model, tokenizer, specials)
    if arm.resources.pretrain_threads:
        torch.set_num_threads(arm.resources.pretrain_threads)
    started, points, multipliers, measuring = time.perf_counter(), [], [], 0.0
    at = set(np.linspace(0, steps, PILOT_POINTS + 1).round().astype(int)[1:].tolist())
    with tempfile.TemporaryDirectory() as folder:
        heldout = heldout_shards(layout, tokenizer_dir, specials, Path(folder))
        if heldout is None:
            return {"steps": steps, "points": [], "reason": "the corpus holds no held-out documents"}
        trainer = Trainer(train_config, settings, data, tokenizer, Path(folder) / "checkpoints", seed=arm.seed,
                          model=model, mask_token=specials["mask"], source_weights=layout.corpus_source_weights())
        batches = trainer.batches.batches(0, steps)
        looping = time.perf_counter()
        try:
            for step in range(steps):
                multipliers.append(trainer.scheduler.get_last_lr()[0] / settings.lr)
                _, batch = next(batches)
                trainer.train_step(step, batch)
                trainer.record.step += 1
                if step + 1 in at:
                    trainer.record.flush()
                    paused = time.perf_counter()
                    points.append((step + 1, trainer.heldout_loss(heldout)["heldout_mlm_loss"]))
                    measuring += time.perf_counter() - paused
        finally:
            batches.close()
        training = time.perf_counter() - looping - measuring  # the steps alone, measurements left out
        unigram = unigram_cross_entropy(data, heldout, tokenizer.get_vocab_size())
    return {"steps": steps, "points": points, "multipliers": multipliers, "unigram_cross_entropy": unigram,
            "seconds": time.perf_counter() - started, "seconds_per_step": training / steps}


def full_schedule(arm: RunConfig) -> np.ndarray:
    """The arm's learning-rate multiplier at each of its steps (`optim.lr_schedule`)."""
    from domainlm.optim import lr_schedule

    p = arm.pretrain
    factor = lr_schedule(p.schedule, math.ceil(p.warmup_fraction * p.max_steps), p.max_steps, p.decay_fraction)
    return np.array([factor(step) for step in range(p.max_steps)])


def loss_forecast(arm: RunConfig, pilot: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The arm's final held-out MLM loss forecast from its pilot: `annealing_law` fitted to the
    pilot's points below the corpus's unigram cross-entropy (where the loss has started its
    power-law descent), evaluated at the full run's schedule; a 95% interval by refitting to the
    fitted curve plus resampled residuals (`BOOTSTRAP` times: the fit's noise, not the law's
    error). No forecast, with the reason, when fewer than `MIN_POINTS` points are below the
    unigram cross-entropy: a power law fitted before that point extrapolates the plateau's exit,
    not the descent (measured: docs/planning.md)."""
    points = pilot.get("points") or []
    found = {"pilot_steps": pilot["steps"], "pilot_fraction": pilot["steps"] / arm.pretrain.max_steps,
             "pilot_points": points, "unigram_cross_entropy": pilot.get("unigram_cross_entropy"),
             "pilot_seconds": pilot.get("seconds"), "pilot_seconds_per_step": pilot.get("seconds_per_step")}
    if not points:
        return found | {"forecast": None, "reason": pilot.get("reason", "no pilot points")}
    unigram = pilot["unigram_cross_entropy"]
    s1, s2 = schedule_areas(np.array(pilot["multipliers"]))
    used = [(s1[step - 1], s2[step - 1], loss) for step, loss in points if loss < unigram]
    if len(used) < MIN_POINTS:
        return found | {"forecast": None, "reason": (
            f"it ends at held-out loss {points[-1][1]:.3f}, with {len(used)} of its points below the corpus's unigram cross-entropy "
            f"{unigram:.3f}: the model has not yet started using context, and a curve fitted there forecasts the "
            "plateau's exit rather than the descent after it (a longer budget gives a pilot past it)")}
    x1, x2, loss = (np.array(column) for column in zip(*used, strict=True))
    params = fit_annealing_law(x1, x2, loss)
    f1, f2 = schedule_areas(full_schedule(arm))
    predict = lambda p: float(annealing_law(p, f1[-1:], f2[-1:])[0])  # noqa: E731
    fitted = annealing_law(params, x1, x2)
    residuals, rng = loss - fitted, np.random.default_rng(seed)
    draws = [predict(fit_annealing_law(x1, x2, fitted + rng.choice(residuals, len(residuals)))) for _ in range(BOOTSTRAP)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return found | {"forecast": predict(params), "low": float(low), "high": float(high), "points_fitted": len(used),
                    "law": dict(zip(("L0", "A", "alpha", "C"), map(float, params), strict=True)),
                    "fit_rmse": float(np.sqrt(np.mean(residuals ** 2)))}


def pilot_forecasts(config: RunConfig, fraction: float = PILOT_FRACTION) -> dict[str, dict[str, Any]]:
    """Per pretraining arm: its corpus, tokenizer and pretraining data prepared (stages the run then
    reuses), a pilot run of `fraction` of its steps, and the forecast of its final held-out MLM
    loss (`loss_forecast`). ConfigError for a fraction outside (0, 1)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--pilots {fraction}: a pilot runs a share of the budget, between 0 and 1 (e.g. 0.125)")
    from domainlm.pipeline import run_all, run_lock, run_stage

    found = {}
    for name, arm in arms_of(config).items():
        run_all(arm, stages=("corpus", "tokenizer"))
        steps = max(1, round(fraction * arm.pretrain.max_steps))
        with run_lock(arm):  # no run of the recipe changes the data under the pilot
            run_stage(arm, "pretrain", prepare_only=True)
            log.info("plan: arm %s: pilot of %d steps (%.1f%% of %d)", name, steps,
                     100 * steps / arm.pretrain.max_steps, arm.pretrain.max_steps)
            pilot = pilot_curve(arm, steps)
        found[name] = loss_forecast(arm, pilot)
    return found


# ------------------------------------------------------------------- downstream gain (experimental)
def gain_outlook(config: RunConfig, arms: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """An experimental outlook on where domain pretraining could pay, never a measurement: the
    tasks ranked by how far their text is from general text (the share of their words a general
    vocabulary splits, `evaluate.task_distances`; gains grow as overlap with general text falls,
    Gururangan et al. 2020), and per arm with a pilot forecast whether its model is expected to use
    context at all by the end of its budget (a forecast held-out loss below the corpus's unigram
    cross-entropy). An arm forecast not to is not expected to beat a pretrained general model on
    any task; one whose pilot is still on the plateau gets no outlook. None without tasks or a
    general vocabulary."""
    from domainlm.evaluate import task_distances
    from domainlm.tasks.load import load_task

    if not config.tasks:
        return None
    distances = task_distances(config, [load_task(t, seed=config.seed) for t in config.tasks]).get("tasks")
    if not distances:
        return None
    ranked = sorted(distances, key=lambda t: -distances[t]["split_share"])
    expectations = {}
    for name, arm in arms.items():
        forecast = arm.get("loss_forecast")
        if forecast is None or forecast.get("unigram_cross_entropy") is None:
            continue
        final, unigram = forecast["forecast"], forecast["unigram_cross_entropy"]
        if final is None:
            expectations[name] = (f"no outlook: its pilot ended on the unigram plateau (held-out loss above the "
                                  f"unigram cross-entropy {unigram:.2f}), so whether it learns to use context in "
                                  "the rest of its budget, and how much, is not forecast; a model that starts late "
                                  "has little budget left to gain with")
        elif final >= unigram:
            expectations[name] = (f"not expected to beat a pretrained general model on any task: by the end of its "
                                  f"budget its held-out loss is not forecast below the unigram cross-entropy "
                                  f"{unigram:.2f} (it will hardly use context)")
        else:
            expectations[name] = (f"may gain where the text is far from general text ({ranked[0]} first): its "
                                  f"forecast held-out loss {final:.2f} is {unigram - final:.2f} nats below the "
                                  f"unigram cross-entropy (it learns context)")
    return {"label": "experimental: an outlook from distances and pilot losses, not a measurement",
            "tasks_by_distance": [{"task": t, "split_share": distances[t]["split_share"],
                                   "js_divergence": distances[t]["js_divergence"]} for t in ranked],
            "arms": expectations}



"""How long recipes/biomed-question.yaml should take on one H200: counted from the recipe and the
shared data here on a CPU, timed with the rates measured on an H200 (docs/benchmarks.md), so that the
one device call can be sized before it is made. An estimate, printed with its inputs; the device
run replaces it with measurements.

Pretraining step time = max(compute, host): compute is the step's model FLOPs at the MFU the engine
reached at BERT-base (22.2%, 740 TFLOP/s peak measured in bf16); host is the eager step's host time
at BERT-base (~60 ms for 12 layers), scaled by the layer count (a compiled step launches fewer
kernels, so this is the slow side). Fine-tuning: optimizer steps over every run at a host-bound
`--finetune-step-ms` per step, spread over `resources.evaluate_workers` processes.

    python benchmarks/gpu/size_biomed_question.py [--recipe recipes/biomed-question.yaml]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domainlm.config import load_config  # noqa: E402
from domainlm.tasks.load import load_task  # noqa: E402
from pretrain_throughput import model_flops_per_token  # noqa: E402

MINILM = dict(num_layers=6, hidden_size=384, intermediate_size=1536)  # the continued arms' shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/biomed-question.yaml")
    parser.add_argument("--peak-tflops", type=float, default=740.0, help="bf16 matmul peak measured on the H200")
    parser.add_argument("--mfu", type=float, default=0.222, help="the engine's MFU at BERT-base on the H200")
    parser.add_argument("--host-ms-per-layer", type=float, default=5.0, help="eager host time per layer per step")
    parser.add_argument("--finetune-step-ms", type=float, default=15.0, help="one fine-tuning step (host-bound)")
    args = parser.parse_args()
    config = load_config(args.recipe)
    total = 0.0
    print("| arm | steps | positions (M) | GFLOP/step | compute ms | host ms | seconds |\n|---|---|---|---|---|---|---|")
    for arm in config.experiment.arms:
        settings = config.arm_config(arm)
        shape = MINILM if settings.model.init_from else settings.model.resolved()
        p = settings.pretrain
        flops = model_flops_per_token(shape["num_layers"], shape["hidden_size"], shape["intermediate_size"], p.seq_len)
        step_flops = flops * p.batch_size * p.seq_len
        compute_ms = step_flops / (args.peak_tflops * 1e12 * args.mfu) * 1e3
        host_ms = args.host_ms_per_layer * shape["num_layers"]
        seconds = p.max_steps * max(compute_ms, host_ms) / 1e3
        total += seconds
        print(f"| {arm.name} | {p.max_steps} | {p.max_steps * p.batch_size * p.seq_len / 1e6:.1f} | "
              f"{step_flops / 1e9:.0f} | {compute_ms:.0f} | {host_ms:.0f} | {seconds:.0f} |")
    e = config.evaluate
    neural = [m for m in e.models if m.kind != "tfidf"]
    steps = 0
    for task_config in config.tasks:
        task = load_task(task_config, config.seed)
        per_run = math.ceil(len(task.train) / e.batch_size) * e.epochs
        steps += per_run * len(neural) * len(e.seeds) * len(e.learning_rates)
        print(f"{task.name}: {len(task.train)} train examples, {per_run} steps per run (at most)")
    finetune = steps * args.finetune_step_ms / 1e3 / config.resources.evaluate_workers
    print(f"pretraining {total:.0f} s; fine-tuning {steps} steps over {len(neural)} models x {len(e.seeds)} seeds "
          f"x {len(config.tasks)} tasks, {finetune:.0f} s on {config.resources.evaluate_workers} workers; "
          f"estimated total {total + finetune:.0f} s plus corpus, tokenizer and start-up")


if __name__ == "__main__":
    main()

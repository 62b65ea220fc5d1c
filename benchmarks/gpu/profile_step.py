"""Where a domainlm training step spends its time on a GPU: wall time per step against the time
the GPU is busy running kernels, and the kernels that take the most. BERT-base, seq 512, bf16,
the throughput benchmark's data.

    PYTHONPATH=src python3 benchmarks/gpu/profile_step.py --attention varlen [--compile]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pretrain_throughput import documents, domainlm_trainer, sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attention", default="varlen")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--static", action="store_true", help="the static-shape step (with --compile: one graph)")
    parser.add_argument("--compile-mode", default="default", help="e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--architecture", default="bert", help="bert or modernbert")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--local-window", type=int, default=128, help="modernbert: the local layers' window")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    device = torch.device("cuda")
    docs = documents(2 * (args.warmup + args.steps) * args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as folder:
        trainer = domainlm_trainer(args, docs, args.attention, args.compile, Path(folder), args.static,
                                   args.compile_mode)
        batches = trainer.batches(0, args.warmup + args.steps)
        for _ in range(args.warmup):
            trainer.train_step(*next(batches))
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            for step, batch in batches:
                trainer.train_step(step, batch)
            sync(device)
            wall = (time.perf_counter() - started) / args.steps
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    gpu_per_step = gpu / 1e6 / args.steps
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / args.steps
    print(f"{args.attention}{' compiled' if args.compile else ''}: {wall * 1e3:.1f} ms per step (profiled), "
          f"GPU busy {gpu_per_step * 1e3:.1f} ms ({gpu_per_step / wall:.0%}), {kernels:.0f} kernels per step")
    print(events.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()

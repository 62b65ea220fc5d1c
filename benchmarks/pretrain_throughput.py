"""Pretraining throughput: the Hugging Face `run_mlm.py` ways vs domainlm, same device, model and data.

`--architecture` picks the layout: `bert` (`BertForMaskedLM`) or `modernbert`
(`ModernBertForMaskedLM`, its local window from `--local-window`); both sides build the model from
the same domainlm config (`to_hf`), so they train the same network.
Baselines (the stock masked LM, SDPA attention, `DataCollatorForLanguageModeling` at
15%, fused AdamW):
- hf-padded: `--line_by_line`, each document padded to the longest in its batch (the issue's (a));
- hf-packed: `group_texts`, documents concatenated and cut into full rows (attention crosses
  documents, nothing is padded);
- hf-packed-compiled: the same under `torch.compile`;
- hf-flattened: `DataCollatorWithFlattening`, documents concatenated without padding and kept
  apart by restarting position ids, which only transformers' flash-attention kernels honour
  (`attn_implementation="flash_attention_2"`: a GPU with the flash-attn package; elsewhere the
  variant reports that it is not available).
domainlm: its own `Trainer.train_step` (batch gather from token shards, whole-word masking,
packed rows with attention kept inside each document, vocabulary projection on masked positions
only), with the attention backend named in the variant (`domainlm` = sdpa) and optionally compiled.

Documents have log-normal lengths with median 60% of the maximum sequence length. Dropout is 0
everywhere (the varlen kernel has no attention dropout). Reported: real (non-padding) tokens/s, MFU
against a matmul peak measured in the same run, and peak memory (each variant in its own process).
Model FLOPs per real token: 6 x non-embedding parameters + 12 x hidden x the positions each layer
attends to (seq_len, or the local window on ModernBERT's local layers), summed over layers; no credit
for the vocabulary projection. The last line of output is one JSON object; `baseline` there is
hf-padded, `ratio` is domainlm's best over it, `ratio_vs_best_baseline` over the fastest baseline.

    python benchmarks/pretrain_throughput.py               # CPU, tiny preset, seq 128 (< 5 min)
    python benchmarks/pretrain_throughput.py --preset base --seq-len 512 --steps 30 --warmup 10   # a GPU
    python benchmarks/pretrain_throughput.py --architecture modernbert --local-window 64
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from domainlm.config.model import ARCHITECTURE_PRESETS  # noqa: E402
from domainlm.pretrain.architectures import ARCHITECTURES  # noqa: E402

VOCAB = 16_000
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def document_lengths(count: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """Log-normal lengths (tokens, without [CLS]/[SEP]) with median 60% of the row."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=np.log(0.6 * (seq_len - 2)), sigma=0.5, size=count)
    return np.clip(lengths.astype(int), 4, seq_len - 2)


def documents(count: int, seq_len: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(5, VOCAB, size=n) for n in document_lengths(count, seq_len)]


def model_flops_per_token(layers: int, hidden: int, intermediate: int, seq_len: int, mlp_matrices: int = 2,
                          attended: list[int] | None = None) -> float:
    """Training FLOPs per token: 6 x the non-embedding weights (attention 4 x hidden^2 per layer, the
    MLP `mlp_matrices` x hidden x intermediate: 2 for BERT's, 3 for a GeGLU) + 12 x hidden x the
    positions each layer attends to (`attended`, one per layer; default seq_len on every layer)."""
    non_embedding = layers * (4 * hidden * hidden + mlp_matrices * hidden * intermediate)
    return 6 * non_embedding + 12 * hidden * sum(attended or [seq_len] * layers)


def model_config(args):
    """The domainlm config of the benchmarked model: the architecture's preset, dropout 0."""
    extra = {"local_window": args.local_window} if args.architecture == "modernbert" else {}
    return ARCHITECTURES[args.architecture].config(vocab_size=VOCAB, max_position=args.seq_len, dropout=0.0,
                                                   **ARCHITECTURE_PRESETS[args.architecture][args.preset], **extra)


def flops_per_token(config, seq_len: int) -> float:
    """`model_flops_per_token` of a domainlm model config (BERT or ModernBERT layout)."""
    if not hasattr(config, "local_window"):  # the BERT layout
        return model_flops_per_token(config.num_layers, config.hidden_size, config.intermediate_size, seq_len)
    attended = [seq_len if config.is_global(layer) else min(seq_len, config.local_window + 1)
                for layer in range(config.num_layers)]
    return model_flops_per_token(config.num_layers, config.hidden_size, config.intermediate_size, seq_len,
                                 mlp_matrices=3, attended=attended)


def measure_peak(device: torch.device, dtype: torch.dtype, trials: int = 5) -> float:
    """FLOP/s of a large square matmul, best of `trials`: the practical peak of this device in
    this dtype (the best trial, because a shared machine only ever makes a trial slower)."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    repeats = 3 if device.type == "cpu" else 50
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def dispatches(run_step, device: torch.device) -> int:
    """What one step asks of the host: on a GPU the kernels it launches, on a CPU the ATen operator
    calls it dispatches (nested calls included), counted by the profiler over one more step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run_step()
        sync(device)
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def synthetic_tokenizer():
    """A word-level tokenizer over ids t0..t{VOCAB-1} with BERT's special tokens at 0..4."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(5, VOCAB)} | {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    return Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))


def run_baseline(args, docs, device, packed: bool, compiled: bool, flattened: bool = False) -> tuple[int, float, int]:
    from transformers import (
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        DataCollatorWithFlattening,
        PreTrainedTokenizerFast,
    )

    attention = "flash_attention_2" if flattened else "sdpa"
    model = AutoModelForMaskedLM.from_config(model_config(args).to_hf(), attn_implementation=attention).to(device)
    forward = torch.compile(model) if compiled else model
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=synthetic_tokenizer(), pad_token="[PAD]",
                                        mask_token="[MASK]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    if flattened:  # one row of concatenated documents, position ids restarting at each; masked at 15% as above
        flatten = DataCollatorWithFlattening(return_position_ids=True)
        def collator(examples, mask=collator):  # noqa: E306
            row = flatten(examples)
            masked = mask([{"input_ids": row["input_ids"][0].tolist()}])
            return {"input_ids": masked["input_ids"], "labels": masked["labels"], "position_ids": row["position_ids"],
                    "attention_mask": torch.ones_like(masked["input_ids"])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if packed:  # group_texts: [CLS] doc [SEP] concatenated, cut into rows of seq_len
        stream = np.concatenate([np.concatenate([[2], d, [3]]) for d in docs])
        rows = len(stream) // args.seq_len
        examples = [{"input_ids": stream[i * args.seq_len : (i + 1) * args.seq_len].tolist()} for i in range(rows)]
    else:
        examples = [{"input_ids": [2, *d.tolist(), 3]} for d in docs]
    def train_step(step: int) -> int:
        batch = collator(examples[step * args.batch_size : (step + 1) * args.batch_size])
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    real, started = 0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:  # the timed steps run back to back, as in training (no per-step wait)
            sync(device)
            started = time.perf_counter()
        tokens = train_step(step)
        real += tokens if step >= args.warmup else 0
    sync(device)
    elapsed = time.perf_counter() - started
    return real, elapsed, dispatches(lambda: train_step(args.warmup + args.steps), device)


def domainlm_trainer(args, docs, attention: str, compiled: bool, folder: Path, static: bool = False,
                     compile_mode: str = "default"):
    """domainlm's `Trainer` on the benchmark's documents (one source, synthetic vocabulary)."""
    from domainlm.config import PretrainConfig
    from domainlm.pretrain.data import TokenShards
    from domainlm.pretrain.trainer import Trainer

    tokens = np.concatenate(docs).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    shards = TokenShards(tokens, offsets, np.zeros(len(docs), np.int16), ["synthetic"],
                         {k: SPECIAL[k] for k in ("cls", "sep", "pad")})
    config = PretrainConfig(max_steps=args.warmup + args.steps + 1, batch_size=args.batch_size, seq_len=args.seq_len,
                            lr=1e-4, mask_rate=0.15, attention=attention, compile=compiled, static_shapes=static,
                            compile_mode=compile_mode)
    return Trainer(model_config(args), config, shards, synthetic_tokenizer(), folder)


def run_domainlm(args, docs, device, attention: str, compiled: bool, static: bool = False,
                 compile_mode: str = "default") -> tuple[int, float, int]:
    """Times domainlm's own `Trainer.train_step` (batch gather, masking, forward, backward, step)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        trainer = domainlm_trainer(args, docs, attention, compiled, Path(folder), static, compile_mode)
        before, started, elapsed = 0, 0.0, 0.0
        # `batches` is the training loop's: on a GPU the next batch is prepared on a thread, overlapped.
        for step, batch in trainer.batches.batches(0, args.warmup + args.steps + 1):
            if step == args.warmup:
                sync(device)
                before, started = trainer.record.real_tokens, time.perf_counter()
            if step == args.warmup + args.steps:  # the timed steps are done; one more, profiled
                sync(device)
                elapsed, real = time.perf_counter() - started, trainer.record.real_tokens - before
                count = dispatches(lambda s=step, b=batch: trainer.train_step(s, b), device)
                break
            trainer.train_step(step, batch)
        trainer.record.flush()
        return real, elapsed, count


VARIANTS = {
    "hf-padded": lambda a, d, dev: run_baseline(a, d, dev, packed=False, compiled=False),
    "hf-packed": lambda a, d, dev: run_baseline(a, d, dev, packed=True, compiled=False),
    "hf-packed-compiled": lambda a, d, dev: run_baseline(a, d, dev, packed=True, compiled=True),
    "hf-flattened": lambda a, d, dev: run_baseline(a, d, dev, packed=False, compiled=False, flattened=True),
    "domainlm": lambda a, d, dev: run_domainlm(a, d, dev, "sdpa", compiled=False),
    "domainlm-compiled": lambda a, d, dev: run_domainlm(a, d, dev, "sdpa", compiled=True),
    "domainlm-flex-compiled": lambda a, d, dev: run_domainlm(a, d, dev, "flex", compiled=True),
    "domainlm-varlen": lambda a, d, dev: run_domainlm(a, d, dev, "varlen", compiled=False),
    "domainlm-varlen-compiled": lambda a, d, dev: run_domainlm(a, d, dev, "varlen", compiled=True),
    "domainlm-static": lambda a, d, dev: run_domainlm(a, d, dev, "sdpa", compiled=False, static=True),
    "domainlm-static-compiled": lambda a, d, dev: run_domainlm(a, d, dev, "sdpa", compiled=True, static=True),
    "domainlm-static-graphs": lambda a, d, dev: run_domainlm(a, d, dev, "sdpa", compiled=True, static=True,
                                                             compile_mode="reduce-overhead"),
}
CPU_DEFAULT = "hf-padded,hf-packed,domainlm,domainlm-static,domainlm-static-compiled"
GPU_DEFAULT = ",".join(VARIANTS)


def worker(name: str, args, queue) -> None:
    try:
        torch.manual_seed(0)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Enough documents for every step of every variant (packed rows hold ~1.6 documents).
        docs = documents(2 * (args.warmup + args.steps) * args.batch_size, args.seq_len)
        real, elapsed, count = VARIANTS[name](args, docs, device)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
        queue.put({"real_tokens": real, "seconds": elapsed, "peak_memory_mib": peak, "dispatches_per_step": count})
    except BaseException as err:  # noqa: BLE001 - reported by the parent
        import traceback

        queue.put({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]})


def run_isolated(name: str, args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=worker, args=(name, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        print(result["traceback"], file=sys.stderr)
        raise RuntimeError(result["error"])
    return result


def fill_memory(name: str, args, budget_mib: float, flops: float, peak: float) -> dict:
    """The variant at the largest batch (doubling from --batch-size) whose peak memory stays within
    `budget_mib`; its rate and MFU, or the reason nothing fitted."""
    best, batch = {"error": f"batch {args.batch_size} does not fit {budget_mib:.0f} MiB"}, args.batch_size
    while True:
        try:
            result = run_isolated(name, argparse.Namespace(**{**vars(args), "batch_size": batch}))
        except Exception as err:  # noqa: BLE001 - out of memory, usually: the previous size is the answer
            print(f"{name:>24}: batch {batch}: {str(err)[:120]}")
            return best
        if result["peak_memory_mib"] > budget_mib:
            return best
        rate = result["real_tokens"] / result["seconds"]
        best = {"batch_size": batch, "real_tokens_per_s": rate, "mfu": rate * flops / peak,
                "peak_memory_mib": result["peak_memory_mib"], "dispatches_per_step": result["dispatches_per_step"]}
        print(f"{name:>24}: batch {batch}: {rate:10.0f} real tokens/s, MFU {100 * rate * flops / peak:5.1f}%, "
              f"peak memory {result['peak_memory_mib']:.0f} MiB", flush=True)
        batch *= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="bert", choices=sorted(ARCHITECTURES))
    parser.add_argument("--preset", default="tiny", help="a preset of the architecture (domainlm.config.model)")
    parser.add_argument("--local-window", type=int, default=128, help="modernbert: the local layers' window")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fill-memory", type=float, default=None, metavar="FRACTION",
                        help="also, per variant, double the batch (micro-batch = batch) while its peak memory stays "
                             "under FRACTION of the GPU's, and report the largest that fits (a GPU only)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: {CPU_DEFAULT} on a CPU, all on a GPU)")
    args = parser.parse_args()
    if args.preset not in ARCHITECTURE_PRESETS[args.architecture]:
        parser.error(f"--preset {args.preset}: {args.architecture} presets are {sorted(ARCHITECTURE_PRESETS[args.architecture])}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = (args.variants or (GPU_DEFAULT if device.type == "cuda" else CPU_DEFAULT)).split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = measure_peak(device, dtype)
    flops = flops_per_token(model_config(args), args.seq_len)
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "architecture": args.architecture, "preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "steps": args.steps, "peak_flops": peak, "model_flops_per_real_token": flops, "variants": {},
    }
    for name in names:
        try:
            result = run_isolated(name, args)
        except Exception as err:  # noqa: BLE001 - a variant the device cannot run is reported, not fatal
            print(f"{name:>24}: failed: {err}")
            summary["variants"][name] = {"error": str(err)}
            continue
        rate = result["real_tokens"] / result["seconds"]
        summary["variants"][name] = {"real_tokens_per_s": rate, "mfu": rate * flops / peak,
                                     "peak_memory_mib": result["peak_memory_mib"],
                                     "dispatches_per_step": result["dispatches_per_step"]}
        print(f"{name:>24}: {rate:10.0f} real tokens/s, MFU {100 * rate * flops / peak:5.1f}%, "
              f"peak memory {result['peak_memory_mib']:.0f} MiB, "
              f"{result['dispatches_per_step']} {'kernel launches' if device.type == 'cuda' else 'operator calls'}"
              f" per step", flush=True)
    if args.fill_memory and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        for name in names:
            summary["variants"].setdefault(name, {})["filled"] = fill_memory(name, args, args.fill_memory * total,
                                                                                flops, peak)
    rates = {n: v["real_tokens_per_s"] for n, v in summary["variants"].items() if "error" not in v}
    baselines = {n: r for n, r in rates.items() if n.startswith("hf-")}
    ours = {n: r for n, r in rates.items() if n.startswith("domainlm")}
    if baselines and ours:
        best = max(ours, key=ours.get)
        summary.update(
            baseline_real_tokens_per_s=rates.get("hf-padded"), best_baseline=max(baselines, key=baselines.get),
            domainlm_variant=best, domainlm_real_tokens_per_s=ours[best], domainlm_mfu=ours[best] * flops / peak,
            ratio=ours[best] / rates["hf-padded"] if "hf-padded" in rates else None,
            ratio_vs_best_baseline=ours[best] / max(baselines.values()),
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Pretraining throughput: the Hugging Face `run_mlm.py --line_by_line` way vs domainlm, same data.

(a) baseline: `transformers.BertForMaskedLM` (SDPA attention), each document padded to the longest
    in its batch, `DataCollatorForLanguageModeling` (15% MLM), AdamW.
(b) domainlm: its own `Trainer.train_step` — documents packed into full rows with attention kept
    inside each document, whole-word masking, vocabulary projection on masked positions only,
    fused AdamW.

Both see documents whose lengths follow a log-normal distribution with median 60% of the maximum
sequence length. Reported: real (non-padding) tokens/s, MFU against a matmul peak measured in the
same run, peak resident memory (each variant runs in its own process). Model FLOPs per real token
are 6 × non-embedding parameters + 12 × layers × hidden × seq_len (no credit for the vocabulary
projection). The last line of output is one JSON object.

    python benchmarks/pretrain_throughput.py               # CPU, tiny preset, seq 128 (< 5 min)
    python benchmarks/pretrain_throughput.py --preset base --seq-len 512 --steps 30   # a GPU
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

from domainlm.config import PRESETS  # noqa: E402

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


def model_flops_per_token(layers: int, hidden: int, intermediate: int, seq_len: int) -> float:
    non_embedding = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    return 6 * non_embedding + 12 * layers * hidden * seq_len


def measure_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul: the practical peak of this device in this dtype."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    repeats = 5 if device.type == "cpu" else 50
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_tokenizer():
    """A word-level tokenizer over ids t0..t{VOCAB-1} with BERT's special tokens at 0..4."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(5, VOCAB)} | {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    return Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))


def run_baseline(args, docs, device) -> tuple[int, float]:
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PreTrainedTokenizerFast,
    )

    sizes = PRESETS[args.preset]
    config = BertConfig(vocab_size=VOCAB, hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_layers"],
                        num_attention_heads=sizes["num_heads"], intermediate_size=sizes["intermediate_size"],
                        max_position_embeddings=args.seq_len, attn_implementation="sdpa")
    model = BertForMaskedLM(config).to(device)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=synthetic_tokenizer(), pad_token="[PAD]",
                                        mask_token="[MASK]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    examples = [{"input_ids": [2, *d.tolist(), 3]} for d in docs]
    real, elapsed = 0, 0.0
    for step in range(args.warmup + args.steps):
        batch = examples[step * args.batch_size : (step + 1) * args.batch_size]
        started = time.perf_counter()
        inputs = {k: v.to(device) for k, v in collator(batch).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            elapsed += time.perf_counter() - started
            real += int(inputs["attention_mask"].sum())
    return real, elapsed


def run_domainlm(args, docs, device) -> tuple[int, float]:
    """Times domainlm's own `Trainer.train_step` (batch assembly, masking, forward, backward, step)."""
    import tempfile

    from domainlm.config import PretrainConfig
    from domainlm.pretrain.data import PackedData, pack_documents
    from domainlm.pretrain.model import EncoderConfig
    from domainlm.pretrain.trainer import Trainer

    tokens = np.concatenate(docs).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    data = PackedData(*pack_documents(tokens, offsets, args.seq_len, SPECIAL["cls"], SPECIAL["sep"], SPECIAL["pad"]))
    config = PretrainConfig(max_steps=args.warmup + args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                            lr=1e-4, mask_rate=0.15)
    model_config = EncoderConfig(vocab_size=VOCAB, max_position=args.seq_len, dropout=0.1, **PRESETS[args.preset])
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model_config, config, data, synthetic_tokenizer(), Path(folder))
        real, elapsed = 0, 0.0
        for step in range(args.warmup + args.steps):
            before = trainer.real_tokens
            started = time.perf_counter()
            trainer.train_step(step)
            sync(device)
            if step >= args.warmup:
                elapsed += time.perf_counter() - started
                real += trainer.real_tokens - before
    return real, elapsed


def worker(name: str, args, queue) -> None:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Enough documents for every step of either variant (the baseline uses one per row).
    docs = documents((args.warmup + args.steps) * args.batch_size, args.seq_len)
    real, elapsed = (run_baseline if name == "baseline" else run_domainlm)(args, docs, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    queue.put({"real_tokens": real, "seconds": elapsed, "peak_memory_mib": peak})


def run_isolated(name: str, args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=worker, args=(name, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = measure_peak(device, dtype)
    sizes = PRESETS[args.preset]
    flops = model_flops_per_token(sizes["num_layers"], sizes["hidden_size"], sizes["intermediate_size"], args.seq_len)
    results = {name: run_isolated(name, args) for name in ("baseline", "domainlm")}
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
        "peak_flops": peak, "model_flops_per_real_token": flops,
    }
    for name, result in results.items():
        rate = result["real_tokens"] / result["seconds"]
        summary[f"{name}_real_tokens_per_s"] = rate
        summary[f"{name}_mfu"] = rate * flops / peak
        summary[f"{name}_peak_memory_mib"] = result["peak_memory_mib"]
        print(f"{name:>9}: {rate:10.0f} real tokens/s, MFU {100 * rate * flops / peak:5.1f}%, "
              f"peak memory {result['peak_memory_mib']:.0f} MiB")
    summary["ratio"] = summary["domainlm_real_tokens_per_s"] / summary["baseline_real_tokens_per_s"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

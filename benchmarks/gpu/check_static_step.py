"""GPU check of the static-shape step: the same per-step losses as the eager step (bf16 tolerance),
eager-static, compiled (inductor) and compiled as a replayed CUDA graph (`reduce-overhead`), one
graph over every step with no recompiles, and the micro-batch `auto` picks at BERT-base, seq 512."""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from domainlm.config import PretrainConfig  # noqa: E402
from domainlm.pretrain.bert import BertConfig  # noqa: E402
from domainlm.pretrain.data import TokenShards  # noqa: E402
from domainlm.pretrain.trainer import Trainer  # noqa: E402
from pretrain_throughput import SPECIAL, VOCAB, documents, synthetic_tokenizer  # noqa: E402

SMALL = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024}


def shards(seq_len: int) -> TokenShards:
    docs = documents(4000, seq_len)
    tokens = np.concatenate(docs).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return TokenShards(tokens, offsets, np.zeros(len(docs), np.int16), ["synthetic"],
                       {k: SPECIAL[k] for k in ("cls", "sep", "pad")})


def run(data: TokenShards, sizes: dict, steps: int, **settings) -> tuple[list[float], float, Trainer]:
    config = PretrainConfig(max_steps=steps, batch_size=32, seq_len=128, lr=5e-4, checkpoint_every=10**6,
                            log_every=5, attention="sdpa", **settings)
    model = BertConfig(vocab_size=VOCAB, max_position=512, dropout=0.0, **sizes)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(model, config, data, synthetic_tokenizer(), Path(folder))
        started = time.perf_counter()
        trainer.train()
        return trainer.losses, time.perf_counter() - started, trainer


def main() -> None:
    data = shards(128)
    eager, seconds, _ = run(data, SMALL, 30)
    print(f"eager sdpa: {seconds:.1f} s for 30 steps, last loss {eager[-1]:.4f}")
    for name, settings in (("static", {"static_shapes": True}),
                           ("static-compiled", {"static_shapes": True, "compile": True}),
                           ("static-graphs", {"static_shapes": True, "compile": True, "compile_mode": "reduce-overhead"})):
        torch._dynamo.reset()
        counters = torch._dynamo.utils.counters
        counters.clear()
        losses, seconds, trainer = run(data, SMALL, 30, **settings)
        worst = float(np.max(np.abs(np.array(losses) - np.array(eager)) / np.abs(eager)))
        graphs = counters["stats"]["unique_graphs"]
        print(f"{name}: {seconds:.1f} s for 30 steps, losses vs eager max rel. diff {worst:.2e}, {graphs} graph(s), "
              f"recompiles {dict(counters['recompiles'])}, overflow {trainer.masked_overflow}")
        assert worst < 3e-2, name  # bf16 autocast on both sides
        if settings.get("compile"):
            assert graphs == 1 and not counters["recompiles"], name
    base = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072}
    config = PretrainConfig(max_steps=1, batch_size=256, seq_len=512, micro_batch_size="auto", attention="sdpa",
                            static_shapes=True, checkpoint_every=10**6)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(BertConfig(vocab_size=VOCAB, max_position=512, dropout=0.0, **base), config, shards(512),
                          synthetic_tokenizer(), Path(folder))
        print(f"micro_batch_size auto at BERT-base, seq 512, 60% of memory: {trainer.micro.size(256)} rows")


if __name__ == "__main__":
    main()

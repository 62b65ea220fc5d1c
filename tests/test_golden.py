"""Golden numbers: the per-step losses of short seeded pretraining runs, kept in a file that CI compares.

A change that alters what pretraining computes (data order, masking, the model's arithmetic, the
optimizer) changes these losses; a refactoring must not. The tokenizer is a committed file
(WordPiece training is not bit-reproducible), the corpus is generated from a seed.

On the machine kind that wrote the file (same torch version and CPU instruction set) the losses must
match bit for bit; elsewhere within 1e-5 (other CPUs may sum in another order).
Regenerate, after a change meant to alter them: `python tests/test_golden.py --write`.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from conftest import synthetic_texts
from domainlm.config import PretrainConfig
from domainlm.pretrain.bert import BertConfig
from domainlm.pretrain.data import write_token_shards
from domainlm.pretrain.trainer import Trainer

GOLDEN = Path(__file__).with_name("golden")
MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position": 32,
         "dropout": 0.1}
RUNS = {
    "mlm": {"max_steps": 10, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "mask_rate": 0.3},
    "electra": {"max_steps": 6, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "objective": "electra"},
    "span-mixture": {"max_steps": 6, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "masking": "span",
                     "upsample_source": "domain", "schedule": "cosine"},
}


def machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def golden_losses(folder: Path) -> dict[str, list[float]]:
    """Each run's per-step losses (one CPU thread, fp32)."""
    tokenizer = Tokenizer.from_file(str(GOLDEN / "tokenizer.json"))
    texts = synthetic_texts(120, seed=1)
    docs = ((t, "domain" if i % 4 == 0 else "general") for i, t in enumerate(texts))
    shards = write_token_shards(tokenizer, docs, folder / "shards")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = {}
        for name, settings in RUNS.items():
            config = PretrainConfig(checkpoint_every=1000, log_every=1, **settings)
            model = BertConfig(vocab_size=tokenizer.get_vocab_size(), **MODEL)
            trainer = Trainer(model, config, shards, tokenizer, folder / name, seed=0)
            trainer.train()
            losses[name] = trainer.losses
        return losses
    finally:
        torch.set_num_threads(threads)


def test_pretraining_losses_match_the_golden_file(tmp_path):
    recorded = json.loads((GOLDEN / "pretrain_losses.json").read_text())
    losses = golden_losses(tmp_path)
    assert set(losses) == set(recorded["runs"])
    for name, values in losses.items():
        expected = [float.fromhex(v) for v in recorded["runs"][name]]
        if recorded["machine"] == machine():
            assert values == expected, f"{name}: {[v.hex() for v in values]}"  # bit for bit
        else:
            assert values == pytest.approx(expected, rel=1e-5), name


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: [v.hex() for v in values] for name, values in golden_losses(Path(tmp)).items()}
    (GOLDEN / "pretrain_losses.json").write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1) + "\n")

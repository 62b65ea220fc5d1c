"""Runs a small pretraining in a separate process, for the kill-and-resume and DDP tests.

usage: python pretrain_worker.py SPEC.json [RANK WORLD]
SPEC: {"tokenizer", "shards", "checkpoints", "out", "pretrain": {...}, "model": {...}, "kill_at": step | null}
With "init_from": a checkpoint directory, the model is that checkpoint (continued pretraining) and
"model" is not read.
"""

import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tokenizers import Tokenizer

from domainlm.config import PretrainConfig
from domainlm.pretrain.architectures import load_checkpoint
from domainlm.pretrain.bert import BertConfig
from domainlm.pretrain.data import TokenShards
from domainlm.pretrain.trainer import Trainer


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=logging.INFO)  # "resumed from ..." goes to stderr
    if len(sys.argv) > 2:
        rank, world = int(sys.argv[2]), int(sys.argv[3])
        dist.init_process_group("gloo", init_method=f"file://{spec['rendezvous']}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_file(spec["tokenizer"])
    model = None
    if spec.get("init_from"):
        model, _ = load_checkpoint(Path(spec["init_from"]))
        model_config = model.config
    else:
        model_config = BertConfig(vocab_size=tokenizer.get_vocab_size(), **spec["model"])
    trainer = Trainer(model_config, PretrainConfig(**spec["pretrain"]), TokenShards.load(Path(spec["shards"])),
                      tokenizer, Path(spec["checkpoints"]), seed=0, model=model)
    trainer.resume_if_possible()
    if spec.get("kill_at") is not None:
        original = trainer.train_step

        def step_or_die(step: int, *args) -> float:
            if step == spec["kill_at"]:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as `kill -9` would
            return original(step, *args)

        trainer.train_step = step_or_die
    trainer.train()
    if trainer.rank == 0:
        Path(spec["out"]).write_text(json.dumps({"losses": trainer.losses}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

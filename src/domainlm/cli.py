"""Command line: `domainlm run RECIPE` runs every stage; `domainlm <stage> RECIPE` runs one."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from domainlm.config import ConfigError, load_config
from domainlm.corpus.readers import InputError
from domainlm.pipeline import STAGES, StageError, run_all, run_stage

log = logging.getLogger("domainlm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="domainlm", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    helps = {
        "run": "run every stage in order (skipping those that are up to date)",
        "corpus": "read, normalise, filter and deduplicate the raw text",
        "tokenizer": "train the domain vocabulary and report its fit",
        "pretrain": "pretrain the encoder (resumes from its last checkpoint)",
        "evaluate": "fine-tune and test every model on every task over the seeds",
        "report": "write report.md, report.html and results.json from the saved artifacts",
    }
    for verb in ("run", *STAGES):
        sub = verbs.add_parser(verb, help=helps[verb])
        sub.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe value, e.g. --set pretrain.max_steps=200 (repeatable)")
        sub.add_argument("--force", action="store_true", help="rerun even if up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and args.verb != "pretrain":
        print(f"domainlm: error: under torchrun only `domainlm pretrain` runs (got `{args.verb}`); run the "
              "other stages with plain `domainlm`", file=sys.stderr)
        return 2
    try:
        config = load_config(args.recipe, args.overrides)
        if distributed:
            import torch
            import torch.distributed as dist

            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if args.verb == "run":
            run_all(config, force=args.force)
            log.info("report: %s", config.directory / "report" / "report.html")
        else:
            run_stage(config, args.verb, force=args.force)
    except (ConfigError, InputError, StageError, FileNotFoundError) as err:
        print(f"domainlm: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

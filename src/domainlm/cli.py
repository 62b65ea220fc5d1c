"""Command line: `domainlm run RECIPE` runs every stage; `domainlm <stage> RECIPE` runs one.

A recipe with `experiment:` runs through `domainlm.experiment` (its arms, then evaluate and
report); any other through the pipeline. Every `DomainlmError` (a recipe key, an input file, a
model directory) and every `OSError` (a full disk, a folder where a file should be, a missing
permission) is printed as one line naming the path and cause, and exits with code 2; `--debug`
adds the traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import traceback

from domainlm import distributed, experiment, forecast
from domainlm.config import load_config
from domainlm.errors import DomainlmError, StageError
from domainlm.forecast.costs import DEFAULT_MFU
from domainlm.forecast.loss import PILOT_FRACTION
from domainlm.layout import ReportFiles, RunLayout
from domainlm.pipeline import STAGES, partial_report, run_all, run_stage

log = logging.getLogger("domainlm")
HELP = {
    "run": "run every stage in order (skipping those that are up to date)",
    "corpus": "read, normalise, filter and deduplicate the raw text",
    "tokenizer": "train the domain vocabulary and report its fit",
    "pretrain": "pretrain the encoder (resumes from its last checkpoint)",
    "evaluate": "fine-tune and test every model on every task over the seeds",
    "report": "write report.md, report.html and results.json from the saved artifacts",
    "plan": "forecast the recipe's data, compute, memory and time before running it",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="domainlm", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in ("run", *STAGES, "plan"):
        sub = verbs.add_parser(verb, help=HELP[verb])
        sub.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe value, e.g. --set pretrain.max_steps=200 (repeatable)")
        if verb != "plan":  # a plan runs no stage: there is nothing to force
            sub.add_argument("--force", action="store_true", help="rerun even if up to date")
        sub.add_argument("--debug", action="store_true", help="debug logging, and tracebacks with errors")
    verbs.choices["pretrain"].add_argument(
        "--data-only", action="store_true",
        help="tokenise the corpus into the token shards (on resources.corpus_executor's workers) and stop; "
             "run it before `torchrun ... domainlm pretrain` so no rank waits for it")
    verbs.choices["plan"].add_argument("--mfu", type=float, default=DEFAULT_MFU,
                                       help=f"GPU model-FLOPs utilisation for the GPU hours (default {DEFAULT_MFU})")
    verbs.choices["plan"].add_argument("--no-measure", dest="measure", action="store_false",
                                       help="skip timing training steps and stages on this machine")
    verbs.choices["plan"].add_argument("--pilots", type=float, nargs="?", const=PILOT_FRACTION, default=None,
                                       metavar="FRACTION",
                                       help="forecast each arm's final held-out MLM loss from a pilot run of this share "
                                            "of its steps (default 1/8; prepares its corpus, tokenizer and "
                                            "pretraining data, which the run reuses)")
    verbs.choices["report"].add_argument(
        "--partial", action="store_true",
        help="report the fine-tuning runs finished so far (evaluate running or stopped) into partial-report/")
    return parser


def execute(verb: str, recipe: str, overrides: list[str], force: bool, partial: bool = False,
            data_only: bool = False, mfu: float = DEFAULT_MFU, measure: bool = True,
            pilots: float | None = None) -> None:
    """Load the recipe and run what `verb` asks for (raises DomainlmError on anything the user can fix)."""
    config = load_config(recipe, overrides)
    if partial:
        log.info("partial report: %s", ReportFiles(partial_report(config)).html)
        return
    if verb == "plan":
        found = forecast.plan(config, mfu=mfu, measure=measure, pilots=pilots)
        path = forecast.write_plan(config, found)
        print(forecast.markdown(found))
        log.info("plan: %s", path)
        return
    if data_only:
        if config.experiment or distributed.launched_by_torchrun():
            raise StageError("--data-only runs in one process on a recipe without `experiment` (run it with "
                             "plain `domainlm`, then launch torchrun)")
        run_stage(config, verb, force=force, prepare_only=True)
        return
    if distributed.launched_by_torchrun():
        distributed.init_process_group(config.resources.process_group_timeout_minutes)
    if config.experiment:
        experiment.run(config, verb, force)
    elif verb == "run":
        run_all(config, force=force)
    else:
        run_stage(config, verb, force=force)
    if verb == "run":
        log.info("report: %s", RunLayout(config.directory).report_files.html)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if distributed.launched_by_torchrun() and args.verb != "pretrain":
        print(f"domainlm: error: under torchrun only `domainlm pretrain` runs (got `{args.verb}`); run the "
              "other stages with plain `domainlm`", file=sys.stderr)
        return 2
    from tqdm.contrib.logging import logging_redirect_tqdm  # log lines print above the progress bars

    try:
        with logging_redirect_tqdm():
            execute(args.verb, args.recipe, args.overrides, getattr(args, "force", False),
                    getattr(args, "partial", False), getattr(args, "data_only", False),
                    **{k: getattr(args, k) for k in ("mfu", "measure", "pilots") if hasattr(args, k)})
    except (DomainlmError, OSError) as err:  # OSError: a full disk, a folder that is a file, no permission
        if args.debug:
            traceback.print_exc()
        print(f"domainlm: error: {describe(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # under torchrun: another rank died, or the network between them failed
        if not (distributed.launched_by_torchrun() and distributed.lost_peer(err)):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"domainlm: error: {distributed.describe_lost_peer(err)}; rerun the same torchrun command(s) to "
              f"resume from {_resume_point(args.recipe, args.overrides)}", file=sys.stderr)
        return 1
    return 0


def _resume_point(recipe: str, overrides: list[str]) -> str:
    from domainlm.pretrain import resume_point

    return resume_point(load_config(recipe, overrides))


def describe(err: Exception) -> str:
    """One line: a DomainlmError's message, or an OSError's path and cause."""
    if isinstance(err, OSError) and err.strerror:
        paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        name = errno.errorcode.get(err.errno or 0, "")
        message = f"{paths}: {err.strerror}" + (f" ({name})" if name else "") if paths else f"{err.strerror} ({name})"
    else:
        message = str(err)
    return " ".join(message.split())  # one line, whatever the message held


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a stage's independent tasks run: a local process pool, this process, or a Ray cluster.

A task is a module-level function and its picklable arguments; its output goes to files (written
atomically), so a task that dies can be run again. The corpus stage's work units and dedup tasks
and the pretraining data's tokenisation go through `task_runner`; Ray connects to `RAY_ADDRESS`
or starts a local cluster (docs/curation.md).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

from domainlm.progress import progress_bar

RAY_RETRIES = 3
"""Times Ray reruns a task whose worker died (a lost node, the OOM killer); Ray's default."""
SHARED_LIST = 64
"""A list argument longer than this is put in Ray's object store once and passed by reference (the
dedup tasks all take the units' list: without it, thousands of tasks would each carry a copy)."""


def _call(args: tuple) -> Any:
    work, job = args
    return work(*job)


@contextmanager
def task_runner(executor: str = "local", workers: int | None = None):
    """Yields `run(work, jobs, desc, done=0)`, which calls `work(*job)` for every job, with a
    progress bar: on Ray (`executor="ray"`), else on a local process pool of `workers` (default:
    every core; spawned at the first call and kept for the later ones), or in this process when
    `workers` is 1. Works and jobs must pickle (module-level functions)."""
    workers = max(1, workers or os.cpu_count() or 1)
    pool = None

    def run(work, jobs: list[tuple], desc: str, done: int = 0) -> None:
        nonlocal pool
        with progress_bar(total=done + len(jobs), initial=done, desc=desc, unit=" tasks") as progress:
            if not jobs:
                return
            if executor == "ray":
                run_on_ray(jobs, progress, work)
            elif workers == 1:
                for job in jobs:
                    work(*job)
                    progress.update()
            else:  # spawn: workers start clean (no inherited threads or locks)
                pool = pool or ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
                for _ in pool.map(_call, [(work, job) for job in jobs], chunksize=1):
                    progress.update()

    try:
        yield run
    finally:
        if pool is not None:
            pool.shutdown()


def run_on_ray(jobs: list[tuple], progress, work) -> None:
    """`work(*job)` for every job as Ray tasks. Each task's output must appear whole or not at all
    (an atomic folder or file), so a task whose worker dies is rerun from the start by Ray
    (`max_retries`), losing and duplicating nothing; a task that raises fails the stage here."""
    try:
        import ray
    except ImportError:
        raise ImportError("resources.corpus_executor is 'ray' but ray is not installed: pip install 'ray[default]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))  # the cluster, or a local Ray if unset
    task = ray.remote(max_retries=RAY_RETRIES)(work)
    shared: dict[int, Any] = {}  # a long list every job holds (the corpus's units) goes to the object store once

    def stored(argument):
        if not (isinstance(argument, list) and len(argument) > SHARED_LIST):
            return argument
        if id(argument) not in shared:
            shared[id(argument)] = ray.put(argument)
        return shared[id(argument)]

    pending = [task.remote(*map(stored, job)) for job in jobs]
    while pending:
        done, pending = ray.wait(pending)
        ray.get(done)  # raises a task's error here
        progress.update(len(done))

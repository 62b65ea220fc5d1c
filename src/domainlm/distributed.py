"""The process group under `torchrun`: which rank this process is, and waiting for the others.

Outside torchrun (or before the group is initialised) this is one process of rank 0 and the
barrier does nothing, so the same code runs on a laptop and on eight GPUs.
"""

from __future__ import annotations

import os
import sys


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by `torchrun` (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(timeout_minutes: float) -> None:
    """Join the group torchrun set up: NCCL on GPUs, gloo on CPUs; a collective that waits
    longer than `timeout_minutes` for a rank raises instead of hanging."""
    import datetime

    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_minutes))


def _initialised():
    """torch.distributed when a process group is up; never imports torch (a process that has not
    loaded it has no group)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    dist = _initialised()
    return dist.get_rank() if dist else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    dist = _initialised()
    return dist.get_world_size() if dist else 1


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for outside a process group)."""
    dist = _initialised()
    if dist:
        dist.barrier()


def lost_peer(err: BaseException) -> bool:
    """Whether an error is a collective failing because another rank is gone (it died, its node
    went away, the network between them failed, or it stopped answering within the timeout)."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(word in text for word in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout", "timed out",
        "NCCL communicator was aborted", "ProcessGroup", "gloo"))


def describe_lost_peer(err: BaseException) -> str:
    """One line: this rank, and the first line of the collective's error."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    first = first.split(". ")[0]  # gloo and NCCL go on with advice of their own
    return f"rank {os.environ.get('RANK', '?')} lost the other ranks (one died, its machine went away, or the " \
           f"network failed): {first[:200]}"

"""Showing long work as it goes: one progress bar per loop (tqdm: rate, ETA, and what the loop adds,
such as loss and tokens/s), and training curves as TensorBoard event files.

Messages go through `logging` (the CLI routes them around the bar, so neither breaks the other).
TensorBoard files are written only when the optional `tensorboard` extra is installed
(`pip install domainlm[tensorboard]`); without it `Curves` records nothing and costs nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def progress_bar(total: int | None = None, initial: int = 0, desc: str = "", unit: str = " it",
                 disable: bool = False):
    """A tqdm bar on stderr, redrawn at most once a second (cheap inside a hot loop)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0, disable=disable,
                dynamic_ncols=True)


class Curves:
    """Scalars per step (loss, learning rate, tokens/s, gradient norm, dev score) as TensorBoard
    event files in `folder` (`tensorboard --logdir runs/` shows every run), or nothing when the
    `tensorboard` package is missing or `enabled` is false (e.g. on ranks other than 0)."""

    def __init__(self, folder: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra is not installed
            log.debug("tensorboard not installed: no event files in %s", folder)
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def add(self, step: int, **scalars: float) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

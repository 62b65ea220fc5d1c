"""The `resources:` section: how fast a run goes, never what it computes.

Nothing here enters a stage's fingerprint, so changing it never reruns a stage (the same idea as
cramming's data cache, named by a hash of the data settings only).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from domainlm.config.base import Section

# Where these settings lived before they had a section of their own (older recipes still load).
LEGACY_KEYS = {
    ("corpus", "workers"): "corpus_workers",
    ("corpus", "executor"): "corpus_executor",
    ("pretrain", "threads"): "pretrain_threads",
    ("evaluate", "threads"): "evaluate_threads",
    ("evaluate", "workers"): "evaluate_workers",
}


class ResourcesConfig(Section):
    corpus_workers: int | None = Field(default=None, ge=1)
    """Processes for the corpus stage's per-unit work (default: the CPU count)."""
    corpus_executor: Literal["local", "ray"] = "local"
    """Where the corpus stage's per-unit work runs: a local process pool, or a Ray cluster (`ray`
    installed, `RAY_ADDRESS` set, the run directory on a filesystem every node shares)."""
    pretrain_threads: int | None = Field(default=None, ge=1)
    """CPU threads for torch while pretraining (default: torch's choice)."""
    evaluate_threads: int | None = Field(default=None, ge=1)
    """CPU threads for torch in each fine-tuning run (default: torch's choice)."""
    evaluate_workers: int = Field(default=1, ge=1)
    """Fine-tuning runs at once, each in its own process (for a GPU or a many-core CPU)."""
    process_group_timeout_minutes: float = Field(default=120, gt=0)
    """Under torchrun, how long a rank waits at a collective (a barrier, a gradient all-reduce)
    for the others before the job ends with an error. Rank 0 alone runs the corpus and tokenizer
    stages and writes the token shards while the others wait, so this must cover them (NCCL's own
    default is 10 minutes); a rank that died is noticed by torchrun's agent sooner."""

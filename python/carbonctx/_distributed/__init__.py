"""Distributed jobs: which rank this is, which GPUs it owns, where its files go, job totals.

A self-contained layer for the runtime to build on (see DESIGN.md, "Distributed jobs"). Pure
functions over an environment mapping; nothing here imports torch or mpi4py: the collectives use
them only when the program has already imported and initialised them.
"""

from __future__ import annotations

from carbonctx._distributed.collectives import (
    allreduce_sum,
    any_rank,
    engine,
    gather_objects,
    world,
)
from carbonctx._distributed.devices import Gpu, GpuOwnership, owned_gpus, visible_gpus
from carbonctx._distributed.paths import distinguishes_ranks, expand_path, placeholders
from carbonctx._distributed.ranks import RankInfo, detect_ranks, parse_slurm_tasks_per_node

__all__ = [
    "Gpu",
    "GpuOwnership",
    "RankInfo",
    "allreduce_sum",
    "any_rank",
    "detect_ranks",
    "distinguishes_ranks",
    "engine",
    "expand_path",
    "gather_objects",
    "owned_gpus",
    "parse_slurm_tasks_per_node",
    "placeholders",
    "visible_gpus",
    "world",
]

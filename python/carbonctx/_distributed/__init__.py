"""Distributed jobs: which rank this is, which GPUs it owns, where its files go, job totals.

A self-contained layer for the runtime to build on (see DESIGN.md, "Distributed jobs"). Pure
functions over an environment mapping; nothing here imports torch or mpi4py: the collectives use
them only when the program has already imported and initialised them.

How the runtime wires it in (``_measure.ranks``, ``_measure.runtime``, ``_runs.run``,
``_runs.jobs``, ``_runs.merge``; the node's sampler in shared memory is still to come):

- settings ``rank``, ``local_rank``, ``world_size``, ``local_world_size``, ``node``, ``job``
  (``CARBONCTX_RANK`` ... ``CARBONCTX_NODE``, ``CARBONCTX_JOB``) go to :func:`detect_ranks`,
  called once per process (again in a forked child), with ``proc_root`` from the settings;
- a ``gpus`` setting (``CARBONCTX_GPUS``: device numbers or UUIDs, empty for none) goes to
  :func:`owned_gpus` with the NVML devices as :class:`Gpu`, called lazily at the first region
  (torch may make its device current after carbonctx is imported); the rank samples and reports
  only ``GpuOwnership.indices``, and its rule and reason go into provenance;
- the ``output`` setting goes through :func:`expand_path` (check it with :func:`placeholders`
  when it is configured);
- ``epochs()`` and a ``job_total()`` call :func:`allreduce_sum` on each epoch's figures and
  :func:`any_rank` on the budget decision, on every rank, at every epoch boundary;
- ``RankInfo.job_key`` names the node's sampler (lock file and shared-memory segment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carbonctx._distributed.collectives import (
        Engine,
        allreduce_sum,
        any_rank,
        engine,
        failure,
        gather_objects,
        world,
    )
    from carbonctx._distributed.devices import Gpu, GpuOwnership, owned_gpus, visible_gpus
    from carbonctx._distributed.paths import distinguishes_ranks, expand_path, placeholders
    from carbonctx._distributed.ranks import RankInfo, detect_ranks, parse_slurm_tasks_per_node

# Each name from the module that defines it, on first use (PEP 562): a process that is no rank
# of a job needs only ``ranks`` at its first region, not the devices, paths and collectives.
_LAZY = {
    "Engine": "collectives",
    "allreduce_sum": "collectives",
    "any_rank": "collectives",
    "engine": "collectives",
    "failure": "collectives",
    "gather_objects": "collectives",
    "world": "collectives",
    "Gpu": "devices",
    "GpuOwnership": "devices",
    "owned_gpus": "devices",
    "visible_gpus": "devices",
    "distinguishes_ranks": "paths",
    "expand_path": "paths",
    "placeholders": "paths",
    "RankInfo": "ranks",
    "detect_ranks": "ranks",
    "parse_slurm_tasks_per_node": "ranks",
}

__all__ = [
    "Engine",
    "Gpu",
    "GpuOwnership",
    "RankInfo",
    "allreduce_sum",
    "any_rank",
    "detect_ranks",
    "distinguishes_ranks",
    "engine",
    "expand_path",
    "failure",
    "gather_objects",
    "owned_gpus",
    "parse_slurm_tasks_per_node",
    "placeholders",
    "visible_gpus",
    "world",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # A submodule (``from carbonctx._distributed import collectives``) is imported by the
        # import system when this says there is no such attribute.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

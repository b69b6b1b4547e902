"""Job totals and joint decisions over the engine the job already runs on.

The engine, first that applies:

1. ``torch.distributed`` when torch is already imported and its default process group is
   initialised: ``all_reduce`` on a float64 tensor, on the CPU for gloo, MPI and UCC, on the
   rank's current CUDA device for NCCL (NCCL reduces GPU tensors only; the caller must have made
   the rank's device current, as NCCL itself needs);
2. MPI through ``mpi4py`` when ``mpi4py.MPI`` is already imported and MPI is initialised and not
   finalised: ``Allreduce`` over ``COMM_WORLD`` on float64 buffers;
3. otherwise this process alone: the values come back unchanged.

Nothing here imports torch or mpi4py, starts a process group or initialises MPI.

**Every rank must call these functions at the same point, in the same order, with the same
number of values**, as with any collective: a rank that skips a call leaves the others waiting
at it (torch gives up after its process group's timeout; MPI waits for ever). That is why a
budget stop is decided with :func:`any_rank` at an epoch boundary that every rank reaches, and
why these functions never skip the collective for an empty or all-zero input.

**A collective that fails never raises into the caller's loop.** A peer that has died (gloo:
"connection reset") or never arrives (the user's process group's timeout passes; torch's default
is 30 minutes, set by ``init_process_group(timeout=...)``) makes the engine raise; then the
values come back unchanged (this rank's own), :func:`failure` says why, one
:class:`~carbonctx.CarbonctxWarning` says so, and every later call in this process is local
(``engine()`` is ``"local"``, ``world()`` is ``(0, 1)``): a job whose peers are gone is not
waited on again at every epoch end. (MPI has no such timeout: a rank that never arrives at an
``Allreduce`` is waited on for ever, as by the program's own MPI calls.)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

__all__ = [
    "Engine",
    "allreduce_sum",
    "any_rank",
    "engine",
    "failure",
    "gather_objects",
    "world",
]

Engine = Literal["torch", "mpi", "local"]
T = TypeVar("T")

_CPU_BACKENDS = ("gloo", "mpi", "ucc")

#: Why a collective failed in this process (then every later one is local); None while none has.
_FAILED: list[str] = []


def failure() -> str | None:
    """Why a collective failed in this process, or None: from then on the figures are this
    process's own, not the job's."""
    return _FAILED[0] if _FAILED else None


def _failed(e: BaseException) -> None:
    if _FAILED:
        return
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    _FAILED.append(f"{type(e).__name__}: {text[:200]}")
    from carbonctx.errors import warn

    warn(
        f"carbonctx: a collective over the job's ranks failed ({_FAILED[0]}): a peer rank has "
        "gone or did not arrive in time. From now on this process's figures are its own, not "
        "summed over the job, and budget decisions are not joint"
    )


def _torch_dist(modules: Mapping[str, Any]) -> Any | None:
    dist = modules.get("torch.distributed")
    if dist is None or _FAILED:
        return None
    try:
        if dist.is_available() and dist.is_initialized():
            return dist
    except Exception:
        return None
    return None


def _mpi(modules: Mapping[str, Any]) -> Any | None:
    mpi = modules.get("mpi4py.MPI")
    if mpi is None or _FAILED:
        return None
    try:
        if mpi.Is_initialized() and not mpi.Is_finalized():
            return mpi
    except Exception:
        return None
    return None


def engine(modules: Mapping[str, Any] = sys.modules) -> Engine:
    """Which engine the collectives use now."""
    if _torch_dist(modules) is not None:
        return "torch"
    if _mpi(modules) is not None:
        return "mpi"
    return "local"


def world(modules: Mapping[str, Any] = sys.modules) -> tuple[int, int]:
    """(rank, size) as the engine sees them; (0, 1) alone."""
    dist = _torch_dist(modules)
    if dist is not None:
        return int(dist.get_rank()), int(dist.get_world_size())
    mpi = _mpi(modules)
    if mpi is not None:
        return int(mpi.COMM_WORLD.Get_rank()), int(mpi.COMM_WORLD.Get_size())
    return 0, 1


def _torch_device(modules: Mapping[str, Any], dist: Any) -> Any:
    """Where the backend wants the tensor: the CPU for gloo/MPI/UCC, the current GPU for NCCL."""
    torch = modules["torch"]
    backend = str(dist.get_backend()).lower()
    # A combined backend such as "cpu:gloo,cuda:nccl" takes CPU tensors through gloo.
    parts = [p.split(":")[-1] for p in backend.split(",")]
    if any(p in _CPU_BACKENDS for p in parts):
        return torch.device("cpu")
    if "nccl" in parts:
        return torch.device("cuda", torch.cuda.current_device())
    # Another accelerator's backend: the process group's own default device.
    return torch.device("cpu")


def allreduce_sum(
    values: Sequence[float], *, modules: Mapping[str, Any] = sys.modules
) -> list[float]:
    """The sum over all ranks of each value, in float64; the same list on every rank."""
    data = [float(v) for v in values]
    try:
        dist = _torch_dist(modules)
        if dist is not None:
            torch = modules["torch"]
            t = torch.tensor(data, dtype=torch.float64, device=_torch_device(modules, dist))
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return [float(x) for x in t.cpu().tolist()]
        mpi = _mpi(modules)
        if mpi is not None:
            import numpy as np

            send = np.asarray(data, dtype=np.float64)
            recv = np.zeros_like(send)
            mpi.COMM_WORLD.Allreduce(send, recv, op=mpi.SUM)
            return [float(x) for x in recv]
    except Exception as e:  # a peer gone or late: never into the caller's loop
        _failed(e)
    return data


def any_rank(flag: bool, *, modules: Mapping[str, Any] = sys.modules) -> bool:
    """True on every rank when ``flag`` is true on at least one: a joint decision to stop."""
    (count,) = allreduce_sum([1.0 if flag else 0.0], modules=modules)
    return count > 0.5


def gather_objects(obj: T, *, modules: Mapping[str, Any] = sys.modules) -> list[T]:
    """Every rank's ``obj`` (small, picklable), in rank order, on every rank."""
    try:
        dist = _torch_dist(modules)
        if dist is not None:
            out: list[Any] = [None] * int(dist.get_world_size())
            dist.all_gather_object(out, obj)
            return out
        mpi = _mpi(modules)
        if mpi is not None:
            return list(mpi.COMM_WORLD.allgather(obj))
    except Exception as e:  # a peer gone or late: never into the caller's loop
        _failed(e)
    return [obj]

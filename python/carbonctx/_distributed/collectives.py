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

**With torch, these collectives run on a process group of their own**, not on the user's: a
gloo group over the same ranks (CPU tensors, whatever the user's backend), made by the first
collective here (every rank makes it at the same point, as it must) with the user's group's
timeout. A failure need not be seen by every rank alike: a rank may raise before it sends (then
the others' collective waits for it), and a gloo timeout closes the group's connections. On the
user's group, that would pair a later carbonctx collective on one rank with the user's own on
another (torch matches collectives by their order in a group: a silently wrong sum, or a hang)
or close the user's connections. On a group of its own, a failure stays in carbonctx: a peer
left waiting at a carbonctx collective fails after the timeout and goes local too, and the
user's collectives are never matched with carbonctx's. (Where no gloo group can be made, with
torch's MPI backend or without gloo, the user's default group is used, as MPI's
``COMM_WORLD`` is.)
"""

from __future__ import annotations

import atexit
import contextlib
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
#: carbonctx's own process group, and the user's default group it was made over.
_GROUP: list[tuple[Any, Any]] = []


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


def _user_timeout(modules: Mapping[str, Any], dist: Any) -> Any:
    """The user's default group's timeout (a ``timedelta``), or None (torch's default)."""
    torch = modules["torch"]
    world = dist.group.WORLD
    for kind in ("cpu", "cuda"):
        with contextlib.suppress(Exception):
            return world._get_backend(torch.device(kind)).options._timeout
    return None


def _own_group(modules: Mapping[str, Any], dist: Any) -> Any | None:
    """carbonctx's gloo group over the default group's ranks (made by the first collective
    here, on every rank alike), or None where the default group serves (see the module)."""
    world = getattr(getattr(dist, "group", None), "WORLD", None)
    if world is None or not callable(getattr(dist, "new_group", None)):
        return None
    if _GROUP and _GROUP[0][0] is world:
        return _GROUP[0][1]
    if not dist.is_gloo_available() or "mpi" in str(dist.get_backend()).lower():
        return None
    # A collective on the default group (every rank must make it); it may raise: a failure.
    group = dist.new_group(backend="gloo", timeout=_user_timeout(modules, dist))
    if not _GROUP:
        # Let go of it before the interpreter tears down: a gloo group torch has already
        # destroyed (`destroy_process_group()`) but still held here would be freed during the
        # teardown, where its threads abort the process.
        atexit.register(_GROUP.clear)
    _GROUP[:] = [(world, group)]
    return group


def allreduce_sum(
    values: Sequence[float], *, modules: Mapping[str, Any] = sys.modules
) -> list[float]:
    """The sum over all ranks of each value, in float64; the same list on every rank."""
    data = [float(v) for v in values]
    try:
        dist = _torch_dist(modules)
        if dist is not None:
            torch = modules["torch"]
            group = _own_group(modules, dist)
            if group is None:
                device = _torch_device(modules, dist)
                kw: dict[str, Any] = {}
            else:
                device, kw = torch.device("cpu"), {"group": group}
            t = torch.tensor(data, dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM, **kw)
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
            group = _own_group(modules, dist)
            out: list[Any] = [None] * int(dist.get_world_size())
            dist.all_gather_object(out, obj, **({} if group is None else {"group": group}))
            return out
        mpi = _mpi(modules)
        if mpi is not None:
            return list(mpi.COMM_WORLD.allgather(obj))
    except Exception as e:  # a peer gone or late: never into the caller's loop
        _failed(e)
    return [obj]

"""One report per MIG instance among the processes of a job on a node.

Several processes of one job may sit on one MIG instance (two ranks given the same ``MIG-``
entry, a rank and a second process started with its environment). Each would report the
instance's share of its GPU, so the job would count the instance once per process. The job's
processes on a node find each other the way they elect the node's sampler: through a lock file in
the node directory (``node_dir``, ``/dev/shm`` by default) named from the job key
(:attr:`RankInfo.job_key`: job, user, boot id, node) and, here, the instance. The process that
holds its ``flock`` reports the instance's share; the others report 0 for that GPU and say who
reports it (the holder writes its rank, local rank and pid into the file). The holder keeps the
lock until it exits (the kernel releases it then, SIGKILL included); a process that planned its
GPUs while the holder lived keeps reporting 0, which counts the instance once while the holder
runs and not at all after it has gone. The first process of the job to plan its GPUs holds it,
whichever its rank: exactly one reports, without waiting for the others.

A forked child does not inherit the claim: its copy of the descriptor is pointed at
``/dev/null``, as for the node sampler's lock. Lock files are never removed here (removing one
another process has open would let two hold "the" lock); they are a few bytes in a tmpfs, named
like the node sampler's files, which its clean-up removes once nobody holds them.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import attrs

from carbonctx._distributed.gpus import GpuOwnership
from carbonctx._distributed.ranks import RankInfo

__all__ = ["claim_instance", "one_report"]

#: This process's claims: lock file path -> descriptor (with the pid that opened it).
_HELD: dict[str, tuple[int, int]] = {}
_AT_FORK = False


def _forget_in_child() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd, _ in _HELD.values():
            os.dup2(devnull, fd)  # the number stays valid; the lock stays with the parent
    finally:
        os.close(devnull)
    _HELD.clear()


def _path(directory: str, job_key: str, instance: str) -> Path:
    h = hashlib.sha256(instance.encode()).hexdigest()[:16]
    return Path(directory) / f"carbonctx-{job_key}-mig-{h}.lock"


def _holder(fd: int) -> str:
    """What the holder wrote of itself: it writes just after taking the lock, so an empty file
    is read again for up to 0.2 s."""
    import time

    for _ in range(40):
        who = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if who:
            return who
        time.sleep(0.005)
    return ""


def claim_instance(
    job_key: str, instance: str, me: str, directory: str | None = None
) -> tuple[bool, str] | str:
    """Claim the job's one report of MIG ``instance`` on this node. ``me`` describes this
    process (written into the file for the others). Returns (True, me) when this process
    reports it, (False, who does) when another process of the job does, or why it cannot be
    known (the directory not writable): then the caller keeps its report and says so."""
    global _AT_FORK
    try:
        import fcntl
    except ImportError:
        return "this platform has no flock"
    where = directory or "/dev/shm"
    path = _path(where, job_key, instance)
    held = _HELD.get(str(path))
    if held is not None and held[1] == os.getpid():
        return True, me
    for _ in range(3):
        try:
            os.makedirs(where, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            return f"no lock file can be made in {where} ({e.strerror or e}); set node_dir"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                who = _holder(fd)
            finally:
                os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return f"the lock file {path} cannot be locked ({e.strerror or e})"
            return False, who or "another process of this job (it has not said which yet)"
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:
            # Removed by a clean-up between our open and our lock: try the new file.
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        _HELD[str(path)] = (fd, os.getpid())
        if not _AT_FORK and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_forget_in_child)
            _AT_FORK = True
        return True, me
    return f"the lock file {path} keeps being replaced"


def one_report(own: GpuOwnership, info: RankInfo, directory: str | None = None) -> GpuOwnership:
    """``own`` of a rank on a MIG instance (``own.mig_instance``), after the job's claim on it:
    unchanged but for its reason where this rank reports the instance; no GPU (0 for it) where
    another process of the job on this node does; with a warning where that cannot be known."""
    key = own.mig_instance
    if key is None or not info.distributed or not own.indices:
        return own
    gpu = own.indices[0]
    me = f"rank {info.rank} (local rank {info.local_rank}, pid {os.getpid()})"
    got = claim_instance(info.job_key, key, me, directory)
    if isinstance(got, str):
        why = (
            f"whether other processes of this job are on MIG instance {key} of GPU {gpu} cannot "
            f"be known ({got}), so each of them that is measured counts its share again"
        )
        return attrs.evolve(
            own, reason=f"{own.reason}; {why}", warning=own.warning or f"carbonctx: {why}."
        )
    mine, who = got
    if mine:
        note = (
            f"this rank reports MIG instance {key} for every process of its job on it on this "
            "node (it holds the job's claim on the instance; the others report 0 for it)"
        )
        share = own.mig_share
        return attrs.evolve(
            own,
            reason=f"{own.reason}; {note}",
            mig_share=None if share is None else (share[0], share[1], f"{share[2]}; {note}"),
        )
    return attrs.evolve(
        own,
        indices=(),
        ordinals=(),
        rule="mig-claimed",
        reason=f"{own.reason}; but {who} of this job is on the same MIG instance ({key}) and "
        f"reports it for every process of the job there: this rank reports 0 for GPU {gpu}",
        shared=True,
        mig_share=None,
    )

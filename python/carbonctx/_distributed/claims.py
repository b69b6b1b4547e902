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

A lock held by another open file is the job's holder only if it is still held after
:data:`WAIT_S` (0.2 s): the node sampler's clean-up takes each lock file's lock for a moment to
judge it (and removes the file if stale), and a claimant that met it then would report 0 with
nobody reporting the instance. A claim is one per process, whatever its threads; the holder's
name not written (a full ``/dev/shm``) leaves the claim its. A file of another user, or a link,
in the file's place (a shared ``/dev/shm``) decides nothing: the claim cannot be known, and the
caller warns and keeps its report.

A forked child does not inherit the claim: its copy of the descriptor is pointed at
``/dev/null``, as for the node sampler's lock (a fork waits for a claim under way, at most about
:data:`WAIT_S`). Lock files are never removed here (removing one another process has open would
let two hold "the" lock); they are a few bytes in a tmpfs, named like the node sampler's files,
which its clean-up removes once nobody holds them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import attrs

from carbonctx._distributed.gpus import GpuOwnership
from carbonctx._distributed.ranks import RankInfo

__all__ = ["claim_instance", "one_report"]

#: How long a claimant waits on a lock another open file holds before it takes that for the
#: job's holder: the node sampler's clean-up holds each lock file's lock for a moment to judge
#: it (a holder for good writes its name at once, and holds on).
WAIT_S = 0.2

#: This process's claims: lock file path -> descriptor (with the pid that opened it).
_HELD: dict[str, tuple[int, int]] = {}
#: Held while this process claims; a fork waits for it (at most about WAIT_S), so that no child
#: is forked between a claim's open and its entry in _HELD with a share of the lock. (A fork that
#: waits over a second, from a signal handler on the claiming thread, say, goes on without it.)
_LOCK = threading.Lock()
_FORK_HAS_LOCK = False


def _before_fork() -> None:
    global _FORK_HAS_LOCK
    _FORK_HAS_LOCK = _LOCK.acquire(timeout=1.0)


def _after_fork_in_parent() -> None:
    if _FORK_HAS_LOCK:
        _LOCK.release()


def _forget_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the parent's other threads do not exist here
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd, _ in _HELD.values():
            # The number stays valid; the lock stays with the parent.
            os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_forget_in_child,
    )


def _path(directory: str, job_key: str, instance: str) -> Path:
    h = hashlib.sha256(instance.encode()).hexdigest()[:16]
    return Path(directory) / f"carbonctx-{job_key}-mig-{h}.lock"


def _take(fd: int, deadline: float) -> bool:
    """Whether this open file takes the lock by ``deadline``: False when another keeps it."""
    import fcntl

    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def claim_instance(
    job_key: str, instance: str, me: str, directory: str | None = None
) -> tuple[bool, str] | str:
    """Claim the job's one report of MIG ``instance`` on this node. ``me`` describes this
    process (written into the file for the others). Returns (True, me) when this process
    reports it, (False, who does) when another process of the job does, or why it cannot be
    known (the directory not writable, the file not this user's): then the caller keeps its
    report and says so. Takes at most about WAIT_S (the lock held by another)."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return "this platform has no flock"
    where = directory or "/dev/shm"
    path = _path(where, job_key, instance)
    with _LOCK:
        held = _HELD.get(str(path))
        if held is not None and held[1] == os.getpid():
            return True, me
        return _claim(where, path, me)


def _claim(where: str, path: Path, me: str) -> tuple[bool, str] | str:
    deadline = time.monotonic() + WAIT_S
    for _ in range(3):
        try:
            os.makedirs(where, exist_ok=True)
            # Not through a link another user of a shared directory put in its place.
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            return f"no lock file can be made in {where} ({e.strerror or e}); set node_dir"
        try:
            if hasattr(os, "geteuid") and os.fstat(fd).st_uid != os.geteuid():
                os.close(fd)
                return (
                    f"the lock file {path} belongs to another user; set node_dir to a "
                    "directory of this user's"
                )
            taken = _take(fd, deadline)
            who = "" if taken else os.pread(fd, 512, 0).decode(errors="replace").strip()
        except OSError as e:
            os.close(fd)
            return f"the lock file {path} cannot be locked ({e.strerror or e})"
        if not taken:
            os.close(fd)
            return False, who or "another process of this job (it has not said which yet)"
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if not same:
            # Removed by a clean-up between our open and our lock: try the new file.
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        except OSError:
            pass  # the claim is this process's all the same; the others cannot name it
        _HELD[str(path)] = (fd, os.getpid())
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

"""The job's claim on a MIG instance (one report per instance among a job's processes on a node),
against what really shares its directory: the node sampler's clean-up, which takes a lock file's
lock for a moment to judge it (and removes it if stale); other threads of the process; a forked
worker; other users of a shared ``/dev/shm``; a full file system."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from carbonctx._distributed import claims
from carbonctx._distributed.claims import _path, claim_instance

KEY, INSTANCE = "jkey", "gpu-0a1b/1/0"

#: How long a claimant waits on a lock held by another open file, in the tests where that one
#: lets go after a moment: generous, so that a loaded machine's scheduling decides nothing.
PATIENT_S = 10.0


@contextmanager
def _held_by(
    path: Path, holder: bytes, mode: int = 0o600, uid: int | None = None
) -> Iterator[None]:
    """Another claimant's lock file at `path` (made with `mode`, given to user and group `uid`
    where set), its lock held and `holder` written in it, for the `with` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        if uid is not None:
            os.fchown(fd, uid, uid)
            os.fchmod(fd, mode)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, holder)
        yield
    finally:
        os.close(fd)


def _hold_for_a_moment(path: Path, seconds: float, remove: bool = False) -> threading.Thread:
    """What the node sampler's clean-up does to a lock file nobody holds: opens it, takes its
    lock, removes it where it is stale, lets go. It never writes to it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def let_go() -> None:
        time.sleep(seconds)
        if remove:
            os.unlink(path)
        os.close(fd)

    t = threading.Thread(target=let_go)
    t.start()
    return t


@pytest.mark.parametrize("remove", [False, True])
@pytest.mark.parametrize("stale_text", ["", "rank 3 (local rank 3, pid 999999999)"])
def test_a_clean_up_holding_the_lock_for_a_moment_is_no_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remove: bool, stale_text: str
) -> None:
    # The instance's file is there from an earlier holder (its text left in it, or none): the
    # clean-up of a process starting its node sampler holds its lock for a moment just as this
    # process claims. Nobody else of the job is on the instance: this process must report it
    # (else no one does), whether the clean-up then leaves the file or removes it.
    monkeypatch.setattr(claims, "WAIT_S", PATIENT_S)
    where = tmp_path / "shm"
    where.mkdir()
    path = _path(str(where), KEY, INSTANCE)
    path.write_text(stale_text)
    t = _hold_for_a_moment(path, 0.05, remove)
    try:
        assert claim_instance(KEY, INSTANCE, "rank 0", str(where)) == (True, "rank 0")
    finally:
        t.join()
    # And it holds the file the path names now: another open file of it cannot take the lock.
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert os.pread(fd, 64, 0) == b"rank 0"
    finally:
        os.close(fd)


def test_a_live_holder_is_still_found_and_named(tmp_path: Path) -> None:
    # Another process of the job holds the claim for good: this one reports 0 and names it.
    where = tmp_path / "shm"
    where.mkdir()
    path = _path(str(where), KEY, INSTANCE)
    with _held_by(path, b"rank 5 (local rank 5, pid 1)"):
        assert claim_instance(KEY, INSTANCE, "rank 0", str(where)) == (
            False,
            "rank 5 (local rank 5, pid 1)",
        )


def test_threads_of_one_process_claiming_at_once_all_hold_it(tmp_path: Path) -> None:
    # One process is one claimant: however many of its threads ask at once, each is told that
    # this process reports the instance (never "another process": itself).
    where = str(tmp_path / "shm")
    n = 8
    start = threading.Barrier(n)
    got: list[object] = []

    def claim() -> None:
        start.wait()
        got.append(claim_instance(KEY, INSTANCE, "rank 0", where))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [(True, "rank 0")] * n


def test_a_symlink_in_the_lock_files_place_is_not_followed(tmp_path: Path) -> None:
    # Another user of a shared /dev/shm can guess the file's name (job id, user, boot id, node,
    # GPU UUID) and put a link there to a file of this user: it is not written through, and
    # the claim cannot be known (the caller warns and keeps its report).
    where = tmp_path / "shm"
    where.mkdir()
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    _path(str(where), KEY, INSTANCE).symlink_to(victim)
    got = claim_instance(KEY, INSTANCE, "rank 0", str(where))
    assert victim.read_text() == "precious"
    assert isinstance(got, str) and "no lock file can be made" in got


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs a file of another user"
)
def test_a_lock_file_of_another_user_decides_nothing(tmp_path: Path) -> None:
    # Another user made the file (world-writable) and holds its lock, claiming to be a rank of
    # this job: this process does not report 0 on its word; it cannot know, and says so.
    where = tmp_path / "shm"
    where.mkdir()
    path = _path(str(where), KEY, INSTANCE)
    with _held_by(path, b"rank 0 (local rank 0, pid 1)", 0o666, uid=65534):
        got = claim_instance(KEY, INSTANCE, "rank 1", str(where))
        assert isinstance(got, str) and "another user" in got


def _run(script: str, tmp_path: Path) -> str:
    """``script``'s output, through files: a pipe would stay open in a forked worker."""
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        done = subprocess.run([sys.executable, "-c", script], stdout=out, stderr=err, timeout=60)
    assert done.returncode == 0, (tmp_path / "err").read_text()
    return (tmp_path / "out").read_text()


def test_a_claim_whose_file_cannot_be_written_is_held_all_the_same(tmp_path: Path) -> None:
    # The lock is taken but the holder's name cannot be written (a full /dev/shm: here the
    # file size limit, which fails the write the same way): no exception into the caller (it
    # would read no GPU at all), and the claim is this process's (else nobody reports it).
    where = str(tmp_path / "shm")
    script = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
from carbonctx._distributed.claims import claim_instance
got = [claim_instance({KEY!r}, {INSTANCE!r}, "rank 0", {where!r}) for _ in range(2)]
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(*got, sep="\\n")
"""
    assert _run(script, tmp_path).split("\n")[:2] == ["(True, 'rank 0')"] * 2


def test_a_worker_forked_while_the_rank_claims_does_not_keep_the_claim(tmp_path: Path) -> None:
    # The rank claims on one thread (waiting while the node sampler's clean-up holds the lock
    # for a moment) while another thread forks a worker: the worker must not share the rank's
    # lock, so once the rank has exited the next process of the job takes the claim.
    import signal

    where, ready = str(tmp_path / "shm"), tmp_path / "worker"
    os.makedirs(where)
    path = _path(where, KEY, INSTANCE)
    script = f"""
import fcntl, os, threading, time
from carbonctx._distributed import claims
from carbonctx._distributed.claims import claim_instance
claims.WAIT_S = {PATIENT_S!r}
fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the clean-up, for a moment
got = []
claimer = threading.Thread(target=lambda: got.append(claim_instance({KEY!r}, {INSTANCE!r},
                                                                    "rank 0", {where!r})))
claimer.start()
time.sleep(0.03)
def let_go():
    time.sleep(0.05)
    os.close(fd)
threading.Thread(target=let_go).start()
if os.fork() == 0:
    try:
        os.close(fd)  # the clean-up's lock is not the worker's (the node sampler's fork handler)
    except OSError:
        pass  # let go of already
    open({str(ready)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
claimer.join()
while not os.path.exists({str(ready)!r}):
    time.sleep(0.01)
print(got[0])
"""
    out = _run(script, tmp_path)
    pid = int(ready.read_text())
    try:
        assert out.strip() == "(True, 'rank 0')"
        assert claim_instance(KEY, INSTANCE, "rank 1", where) == (True, "rank 1")
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_forked_workers_copy_of_the_claim_is_not_passed_on_to_programs_it_runs(
    tmp_path: Path,
) -> None:
    where = str(tmp_path / "shm")
    script = f"""
import os
from carbonctx._distributed import claims
claims.claim_instance({KEY!r}, {INSTANCE!r}, "rank 0", {where!r})
(fd, _), = claims._HELD.values()
pid = os.fork()
if pid == 0:
    os._exit(0 if not os.get_inheritable(fd) else 1)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    assert _run(script, tmp_path).strip() == "0"


def test_the_node_samplers_clean_up_leaves_a_held_claim_and_removes_an_abandoned_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The claims live among the node sampler's files, whose clean-up (at each sampler start)
    # removes lock files nobody holds: never a held claim's, however old (a second process
    # would then claim a new file of the same name, and the job count the instance twice).
    import carbonctx
    from carbonctx.testing import SimulatedMachine, Wave

    env = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    for k, v in {**env, "TORCHELASTIC_RUN_ID": "claims"}.items():
        monkeypatch.setenv(k, v)
    shm = Path(os.environ["CARBONCTX_NODE_DIR"])
    held = _path(str(shm), "jother", "gpu-a/1/0")
    abandoned = _path(str(shm), "jother", "gpu-a/2/0")
    script = f"""
import sys, time
from carbonctx._distributed.claims import claim_instance
print(claim_instance("jother", "gpu-a/1/0", "rank 1", {str(shm)!r}), flush=True)
time.sleep(60)
"""
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().decode().strip() == "(True, 'rank 1')"
        abandoned.write_text("rank 2 (local rank 2, pid 999999999)")
        old = time.time() - 3600
        for p in (held, abandoned):
            os.utime(p, (old, old))
        with SimulatedMachine(tmp_path / "hw", package=Wave.constant(80.0)) as sim:
            carbonctx.configure(**sim.settings())
            with carbonctx.track("step"):
                time.sleep(0.05)
            node = carbonctx.devices()["rank"]["node_sampler"]
        assert node["role"] == "owner"
        assert str(abandoned) in node["reclaimed"] and not abandoned.exists()
        assert str(held) not in node["reclaimed"] and held.exists()
    finally:
        holder.kill()
        holder.communicate()

"""Files in places other users may write: what another user (or a crashed job) may have left
under the names carbonctx uses.

The node directory (``node_dir``; ``/dev/shm`` by default): a link planted as the node sampler's
lock file is never followed (the file it points at is left as it was) and the process measures
with a sampler of its own, with one warning; so too where the directory cannot be used, or the
lock file belongs to another user. An intensity cache file of another user's is not believed.
(A MIG instance's claim, in the same directory: tests/test_mig_claims.py.)

Another user is simulated with ``os.chown`` (those cases need root, as the tests run here).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import carbonctx
from carbonctx._carbon.cache import DiskCache, UnusableCache
from carbonctx._measure import process
from carbonctx.errors import CarbonctxWarning
from carbonctx.testing import SimulatedMachine

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="making another user's file needs root")
PRECIOUS = b"the user's own file"
FALLBACK = "the node's shared sampler cannot be used"


def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_bytes(PRECIOUS)
    return v


def measure() -> carbonctx.Measurement:
    with carbonctx.track("r") as r:
        time.sleep(0.2)
    carbonctx.flush()
    return r.result()


def lock_path_of_the_node_sampler(monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine) -> Path:
    """Run the node's sampler once (as its owner) to learn its file names, then stop it."""
    carbonctx.configure(**sim.settings(), node_sampler=True)
    measure()
    node = carbonctx.devices()["rank"]["node_sampler"]
    assert node["role"] == "owner"
    process.reset()
    carbonctx.configure(**sim.settings(), node_sampler=True)
    return Path(node["segment"]).with_suffix(".lock")


def assert_own_sampler(r: carbonctx.Measurement, rec: pytest.WarningsRecorder) -> str:
    """The region was measured by the process's own sampler; returns the one warning."""
    assert r.energy_j > 0
    assert "node_sampler" not in carbonctx.devices()["rank"]
    warned = [str(w.message) for w in rec if FALLBACK in str(w.message)]
    assert len(warned) == 1, [str(w.message) for w in rec]
    return warned[0]


def test_a_link_planted_as_the_lock_file_is_not_followed(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine, tmp_path: Path
) -> None:
    lock = lock_path_of_the_node_sampler(monkeypatch, sim)
    assert lock.name.startswith(f"carbonctx-{os.geteuid()}-")
    assert lock.stat().st_mode & 0o777 == 0o600
    assert lock.with_suffix(".seg").stat().st_mode & 0o777 == 0o600
    v = victim(tmp_path)
    lock.unlink()
    lock.symlink_to(v)
    with pytest.warns(CarbonctxWarning) as rec:
        r = measure()
        r = measure()  # warned once, not per region
    why = assert_own_sampler(r, rec)
    assert "symbolic link" in why
    assert v.read_bytes() == PRECIOUS
    assert lock.is_symlink()


@needs_root
def test_a_lock_file_of_another_user_is_refused(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    lock = lock_path_of_the_node_sampler(monkeypatch, sim)
    os.chown(lock, 4242, 4242)
    with pytest.warns(CarbonctxWarning) as rec:
        r = measure()
    assert "belongs to user 4242" in assert_own_sampler(r, rec)


def test_a_node_directory_that_cannot_be_used_leaves_the_process_its_own_sampler(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    carbonctx.configure(**sim.settings(), node_sampler=True, node_dir=str(blocker / "shm"))
    with pytest.warns(CarbonctxWarning) as rec:
        r = measure()
    assert "a-file" in assert_own_sampler(r, rec)


@needs_root
def test_an_intensity_cache_file_of_another_user_is_not_believed(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, "p", "DE")
    disk.write(
        "recent",
        {
            "format": 1,
            "provider": "p",
            "zone": "DE",
            "kind": "recent",
            "fetched_at": None,
            "failure": None,
            "periods": [],
        },
    )
    assert disk.read("recent") == (None, [], None)
    os.chown(disk.path("recent"), 4242, 4242)
    with pytest.raises(UnusableCache, match="belongs to user 4242"):
        disk.read("recent")

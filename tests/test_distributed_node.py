"""The node's shared sampler in real processes: its owner killed with SIGKILL mid-region, the
other rank's regions still resolve, a follower takes over, the gap is recorded and nothing is
invented across it; the next job on the node is not blocked by what the killed one left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from carbonctx.testing import SimulatedMachine, Wave

WORKER = str(Path(__file__).resolve().parent / "node_worker.py")
PKG = "powercap:intel-rapl:0"
#: A hang fails well within pytest's limit.
STEP_TIMEOUT_S = 25.0


def job_env(sim: SimulatedMachine, tmp: Path, job: str, rank: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CARBONCTX_", "SLURM_", "OMPI_", "PMI_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
    }
    env.update(sim.env())
    env.update(
        CARBONCTX_ZONE="DE",
        CARBONCTX_CACHE_DIR=str(tmp / "cache"),
        CARBONCTX_NODE_DIR=str(tmp / "shm"),
        CARBONCTX_GPU="0",
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        GROUP_RANK="0",
        TORCHELASTIC_RUN_ID=job,
        PYTHONUNBUFFERED="1",
    )
    return env


def start(role: str, env: dict[str, str], out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, role, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(path: Path, procs: list[subprocess.Popen[str]]) -> Any:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not path.exists():
        for p in procs:
            if p.poll() is not None and p.returncode != -signal.SIGKILL:
                raise AssertionError(f"{p.args} exited {p.returncode}: {p.communicate()[0]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path.name} within {STEP_TIMEOUT_S} s")
        time.sleep(0.02)
    time.sleep(0.05)  # written in one call, but let it land
    return json.loads(path.read_text())


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()


def test_a_killed_owner_is_replaced_and_the_gap_is_recorded(
    tmp_path: Path, fake_nvml: Path
) -> None:
    with SimulatedMachine(
        tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0)
    ) as sim:
        out = tmp_path / "job1"
        out.mkdir()
        procs: list[subprocess.Popen[str]] = []
        try:
            owner = start("owner", job_env(sim, tmp_path, "job1", 0), out)
            procs.append(owner)
            first = wait_for(out / "owner.json", procs)
            assert first["role"] == "owner" and first["owner_pid"] == owner.pid
            follower = start("follower", job_env(sim, tmp_path, "job1", 1), out)
            procs.append(follower)
            ready = wait_for(out / "follower-ready", procs)
            assert ready["role"] == "follower" and ready["owner_pid"] == owner.pid
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait(timeout=STEP_TIMEOUT_S)
            (out / "killed").write_text("")
            result = wait_for(out / "follower.json", procs)
            assert follower.wait(timeout=STEP_TIMEOUT_S) == 0
        finally:
            kill_all(procs)
        truth = sim.truth_j("package", 0, *result["after_ns"])
        node = result["node"]
    # The follower took over: it is the owner now, and reads the counters itself.
    assert node["role"] == "owner" and node["owner_pid"] == follower.pid
    assert node["takeovers"] == 1 and node["generation"] == 2
    assert result["reads"][PKG] > 0
    # The gap is recorded, and the region across it invents nothing for the source.
    assert result["gaps"][PKG], result["gaps"]
    across = result["across"]
    assert PKG in across["missing"], across["missing"]
    assert across["by_source"][PKG]["joules"] is None
    # The region after the takeover is measured again, against the truth.
    after = result["after"]
    assert after["missing"] == []
    assert after["by_source"][PKG]["node_joules"] == pytest.approx(truth, rel=0.01)

    # A new job on the node is not blocked by what the killed one left behind.
    with SimulatedMachine(tmp_path / "hw2", package=Wave.constant(50.0)) as sim2:
        out2 = tmp_path / "job2"
        out2.mkdir()
        procs = []
        try:
            procs.append(start("owner", job_env(sim2, tmp_path, "job2", 0), out2))
            again = wait_for(out2 / "owner.json", procs)
        finally:
            kill_all(procs)
    assert again["role"] == "owner" and again["generation"] == 1

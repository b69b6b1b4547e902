"""Ranks of a job on one simulated node, measured for real: each a subprocess started with the
variables torchrun sets, against one SimulatedMachine, sharing the node's one sampler.

The ranks measure concurrent regions over the same span of CLOCK_MONOTONIC (the test hands them
the start), so the node's truth over that span is what their figures must add up to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import dist_worker
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave

WORKER = str(Path(__file__).resolve().parent / "rank_worker.py")
#: The measured region (seconds): long enough that edge jitter between ranks is far below 0.5%.
REGION_S = 2.0


def rank_env(sim: SimulatedMachine, tmp: Path, **launcher: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CARBONCTX_", "SLURM_", "OMPI_", "PMI_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
        and k != "CUDA_VISIBLE_DEVICES"
    }
    env.update(sim.env())
    env.update(
        CARBONCTX_ZONE="DE",
        CARBONCTX_CACHE_DIR=str(tmp / "cache"),
        CARBONCTX_NODE_DIR=str(tmp / "shm"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(launcher)
    return env


def gpu_specs(n: int) -> list[GpuSpec]:
    # Each GPU its own power, so a rank reporting another's GPU would show.
    return [GpuSpec(wave=Wave(60.0 + 40 * k, 180.0 + 60 * k, 0.2 + 0.1 * k)) for k in range(n)]


def run_ranks(sim: SimulatedMachine, tmp: Path, envs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Start the ranks, wait until each has its sampler running, hand them a common span."""
    n = len(envs)
    cmd = [sys.executable, WORKER, "region", str(tmp)]
    go_written = False

    def go() -> None:
        nonlocal go_written
        deadline = time.monotonic() + dist_worker.JOB_TIMEOUT - REGION_S - 5
        while not all((tmp / f"ready{r}").exists() for r in range(n)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        t0 = time.monotonic_ns() + 200_000_000
        (tmp / "go.tmp").write_text(f"{t0} {int(REGION_S * 1e9)}")
        os.replace(tmp / "go.tmp", tmp / "go")
        go_written = True

    import threading

    t = threading.Thread(target=go, daemon=True)
    t.start()
    results = dist_worker.run_processes([cmd] * n, envs)
    t.join(timeout=1)
    for code, out in results:
        assert code == 0, out
    assert go_written
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.mark.parametrize("n", [2, 4])
def test_ranks_add_up_to_the_node(n: int, tmp_path: Path, fake_nvml: Path) -> None:
    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave(40.0, 120.0, 0.05),
        dram=Wave(5.0, 9.0, 0.3),
        gpus=gpu_specs(n),
        gpu_update_s=0.01,
        nvml_library=fake_nvml,
    ) as sim:
        envs = [
            rank_env(
                sim,
                tmp_path,
                RANK=str(r),
                WORLD_SIZE=str(n),
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE=str(n),
                GROUP_RANK="0",
                TORCHELASTIC_RUN_ID="measure",
                CARBONCTX_OUTPUT=str(tmp_path / "out" / "{node}" / "r{rank}.jsonl"),
            )
            for r in range(n)
        ]
        results = run_ranks(sim, tmp_path, envs)
        t0 = min(r["t0_ns"] for r in results)
        t1 = max(r["t1_ns"] for r in results)
        # Each rank carries 1/n of the node's package and DRAM over its own region (the ranks
        # start within a few ms of each other, more on a loaded machine: the truth is taken over
        # each rank's span, so that the sum is the node counted once whatever the spread).
        spans = [(x["t0_ns"], x["t1_ns"]) for x in results]
        truth = {
            "cpu_j": sum(sim.truth_j("package", 0, a, b) for a, b in spans) / n,
            "dram_j": sum(sim.truth_j("dram", 0, a, b) for a, b in spans) / n,
            "gpu_j": sum(sim.gpu_truth_j(k, a, b) for k, (a, b) in enumerate(spans)),
        }
        own_gpu = [sim.gpu_truth_j(r, a, b) for r, (a, b) in enumerate(spans)]
        union = {"cpu_j": sim.truth_j("package", 0, t0, t1)}
    # The ranks' edges are close: their regions are the same span, the node counted once.
    assert t1 - t0 < REGION_S * 1e9 * 1.05
    assert truth["cpu_j"] == pytest.approx(union["cpu_j"], rel=0.03)
    for key, want in truth.items():
        total = sum(r[key] for r in results)
        assert total == pytest.approx(want, rel=0.005), (key, total, want)
    for rank, r in enumerate(results):
        assert r["rank"] == rank and r["local_rank"] == rank and r["job"] == "measure"
        assert r["gpu_j"] == pytest.approx(own_gpu[rank], rel=0.01)
        gpus = [s for s in r["by_source"].values() if s["domain"] == "gpu"]
        assert [s["id"] for s in gpus] == [f"nvml:{rank}"]
        assert gpus[0]["share"] == 1.0 and "local-rank" in gpus[0]["share_rule"]
        pkg = (
            r["by_source"]["rapl:package-0"]
            if "rapl:package-0" in r["by_source"]
            else next(s for s in r["by_source"].values() if s["domain"] == "package")
        )
        assert pkg["share"] == pytest.approx(1 / n)
        assert pkg["node_joules"] == pytest.approx(pkg["joules"] * n)
        assert f"1/{n}" in pkg["share_rule"]
        files = list((tmp_path / "out").rglob(f"r{rank}.jsonl"))
        assert len(files) == 1, files
        dev = r["devices"]
        assert dev["gpus"]["indices"] == [rank] and dev["gpus"]["rule"] == "local-rank"
        assert dev["launcher"] == "torchrun" and dev["rank"] == rank

    # One sampler for the node: one rank owns it and reads the counters, the others read
    # none, so the node's counter reads do not grow with its ranks.
    roles = sorted(r["devices"]["node_sampler"]["role"] for r in results)
    assert roles == ["follower"] * (n - 1) + ["owner"], roles
    owners = {r["devices"]["node_sampler"]["owner_pid"] for r in results}
    assert len(owners) == 1
    for r in results:
        if r["devices"]["node_sampler"]["role"] == "follower":
            assert r["own_reads"] == 0, r["own_reads"]
        else:
            assert r["own_reads"] > 0

    # The ranks' region files, merged: the job's figures, each node's CPU once.
    out = subprocess.run(
        [sys.executable, "-m", "carbonctx", "report", str(tmp_path / "out"), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rep = json.loads(out.stdout)
    assert rep["job"]["id"] == "measure" and len(rep["ranks"]) == n and len(rep["nodes"]) == 1
    for key in ("energy_j", "cpu_j", "dram_j", "gpu_j"):
        want = sum(r[key] + r["warm_up"][key] for r in results)
        assert rep["job"][key] == pytest.approx(want, rel=1e-9), key

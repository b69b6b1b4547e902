"""A real job of 2 simulated nodes x 2 ranks running carbonctx.epochs(): over torch.distributed
(gloo, CPU) and over MPI (mpiexec from the mpich wheel, mpi4py). Each node is its own
SimulatedMachine with its own node setting; every process is killed if the job has not finished
within dist_worker.JOB_TIMEOUT (below pytest's 60 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import dist_worker
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave
from test_distributed_jobs import base_env, mpiexec, needs_mpi4py, needs_torch

WORKER = str(Path(__file__).resolve().parent / "rank_worker.py")
NODES = 2
PER_NODE = 2
N = NODES * PER_NODE
EPOCH_S = 1.0


@pytest.fixture
def nodes(tmp_path: Path, fake_nvml: Path) -> Iterator[list[SimulatedMachine]]:
    with ExitStack() as stack:
        sims = [
            stack.enter_context(
                SimulatedMachine(
                    tmp_path / f"hw{k}",
                    package=Wave(40.0 + 20 * k, 120.0, 0.05),
                    dram=Wave.constant(6.0 + k),
                    gpus=[GpuSpec(wave=Wave(60.0 + 30 * g, 200.0 + 50 * k, 0.2)) for g in range(2)],
                    gpu_update_s=0.01,
                    nvml_library=fake_nvml,
                )
            )
            for k in range(NODES)
        ]
        yield sims


def node_env(sim: SimulatedMachine, k: int, tmp: Path) -> dict[str, str]:
    return {
        **sim.env(),
        "CARBONCTX_NODE": f"sim-node-{k}",
        "CARBONCTX_ZONE": "DE",
        "CARBONCTX_CACHE_DIR": str(tmp / "cache"),
        "CARBONCTX_NODE_DIR": str(tmp / "shm"),
    }


def truth(sims: list[SimulatedMachine], results: list[dict[str, Any]]) -> float:
    """The job's true energy under the share rule: each node's CPU and DRAM over its ranks'
    epochs, each rank's share 1/PER_NODE, and each rank's own GPU."""
    total = 0.0
    for r in results:
        sim = sims[r["rank"] // PER_NODE]
        for e in r["epochs"]:
            a, b = e["t0_ns"], e["t1_ns"]
            node = sim.truth_j("package", 0, a, b) + sim.truth_j("dram", 0, a, b)
            total += node / PER_NODE + sim.gpu_truth_j(r["local_rank"], a, b)
    return total


def node_truth(sims: list[SimulatedMachine], results: list[dict[str, Any]]) -> float:
    """Both nodes' truth over each epoch as the node's ranks ran it together (the mean of their
    edges: the collectives at epoch ends keep the ranks within a few ms of each other)."""
    total = 0.0
    epochs = len(results[0]["epochs"])
    for k, sim in enumerate(sims):
        ranks = [r for r in results if r["rank"] // PER_NODE == k]
        for i in range(epochs):
            a = sum(r["epochs"][i]["t0_ns"] for r in ranks) // len(ranks)
            b = sum(r["epochs"][i]["t1_ns"] for r in ranks) // len(ranks)
            total += sim.truth_j("package", 0, a, b) + sim.truth_j("dram", 0, a, b)
            total += sum(sim.gpu_truth_j(g, a, b) for g in range(PER_NODE))
    return total


def check(
    sims: list[SimulatedMachine], results: list[dict[str, Any]], engine: str, epochs: int
) -> None:
    assert [r["rank"] for r in results] == list(range(N))
    for r in results:
        assert r["engine"] == engine
        assert r["epochs_done"] == epochs
    # The same job figures on every rank, bit for bit (one allreduce).
    assert len({r["actual"]["energy_j"] for r in results}) == 1
    assert len({r["job_total"]["energy_j"] for r in results}) == 1
    assert len({json.dumps(r["job_epoch_energy_j"]) for r in results}) == 1
    assert len({r["run_id"] for r in results}) == 1
    job = results[0]["actual"]["energy_j"]
    assert job == pytest.approx(sum(r["rank_actual"]["energy_j"] for r in results), rel=1e-12)
    assert results[0]["job_total"]["energy_j"] == pytest.approx(job, rel=1e-12)
    assert results[0]["job_total"]["ranks"] == N
    assert job == pytest.approx(truth(sims, results), rel=0.005)
    assert job == pytest.approx(node_truth(sims, results), rel=0.005)


def read(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(N)]


def report_json(directory: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "carbonctx", "report", str(directory), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(json.loads(out.stdout))


def torch_job(
    sims: list[SimulatedMachine], tmp: Path, epochs: int, extra: list[str], env: dict[str, str]
) -> list[dict[str, Any]]:
    port = str(dist_worker.free_port())
    envs = []
    for rank in range(N):
        e = base_env()
        e.update(node_env(sims[rank // PER_NODE], rank // PER_NODE, tmp))
        e.update(
            RANK=str(rank),
            WORLD_SIZE=str(N),
            LOCAL_RANK=str(rank % PER_NODE),
            LOCAL_WORLD_SIZE=str(PER_NODE),
            GROUP_RANK=str(rank // PER_NODE),
            TORCHELASTIC_RUN_ID="job-t",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **env,
        )
        envs.append(e)
    cmd = [sys.executable, WORKER, "epochs", "torch", str(tmp), str(epochs), str(EPOCH_S), *extra]
    for code, out in dist_worker.run_processes([cmd] * N, envs):
        assert code == 0, out
    return read(tmp)


@needs_torch
def test_torch_job_total_and_report(nodes: list[SimulatedMachine], tmp_path: Path) -> None:
    results = torch_job(nodes, tmp_path, 2, [], {})
    check(nodes, results, "torch", 2)
    rep = report_json(tmp_path / "logs")
    job = results[0]["actual"]["energy_j"]
    assert rep["job"]["energy_j"] == pytest.approx(job, rel=1e-9)
    assert sorted(rep["nodes"]) == ["sim-node-0", "sim-node-1"]
    assert sorted(rep["ranks"], key=int) == [str(r) for r in range(N)]
    for key in ("energy_j", "cpu_j", "dram_j", "gpu_j", "co2_g"):
        assert rep["job"][key] == pytest.approx(sum(v[key] for v in rep["nodes"].values()))
        assert rep["job"][key] == pytest.approx(sum(v[key] for v in rep["ranks"].values()))
    # Each node's shared sources once: its CPU is its truth, not once per rank.
    for k, sim in enumerate(nodes):
        ranks = [r for r in results if r["rank"] // PER_NODE == k]
        cpu = 0.0
        for i in range(2):
            a = sum(r["epochs"][i]["t0_ns"] for r in ranks) // PER_NODE
            b = sum(r["epochs"][i]["t1_ns"] for r in ranks) // PER_NODE
            cpu += sim.truth_j("package", 0, a, b)
        assert rep["nodes"][f"sim-node-{k}"]["cpu_j"] == pytest.approx(cpu, rel=0.005)
    text = subprocess.run(
        [sys.executable, "-m", "carbonctx", "report", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "job job-t" in text and "4 ranks" in text
    assert "node sim-node-0" in text and "node sim-node-1" in text and "rank    3" in text


@needs_torch
def test_torch_job_budget_stops_every_rank_together(
    nodes: list[SimulatedMachine], tmp_path: Path
) -> None:
    # Only the last rank has a budget, and it is exceeded at the first forecast: every rank
    # must stop after the same epoch (a rank stopping alone would hang the others).
    results = torch_job(nodes, tmp_path, 8, ["1e-6"], {"BUDGET_RANKS": str(N - 1)})
    # The first forecast (epoch 0's figures) is counted at the end of epoch 1: an epoch end
    # never waits for the sampler, so the budget decision lags one epoch (_runs.lag).
    check(nodes, results, "torch", 2)
    assert "budget" in results[N - 1]["stop_reason"]
    assert "another rank" in results[0]["stop_reason"]


@needs_mpi4py
def test_mpi_job_budget(nodes: list[SimulatedMachine], tmp_path: Path) -> None:
    per_rank = {}
    for rank in range(N):
        k = rank // PER_NODE
        per_rank[str(rank)] = {
            **node_env(nodes[k], k, tmp_path),
            "CARBONCTX_LOCAL_RANK": str(rank % PER_NODE),
            "CARBONCTX_LOCAL_WORLD_SIZE": str(PER_NODE),
        }
    env_file = tmp_path / "ranks.json"
    env_file.write_text(json.dumps(per_rank))
    env = base_env()
    env["RANK_ENV_FILE"] = str(env_file)
    cmd = [mpiexec(), "-n", str(N), sys.executable, WORKER, "epochs", "mpi", str(tmp_path)]
    cmd += ["3", str(EPOCH_S), "1e-6"]
    ((code, out),) = dist_worker.run_processes([cmd], [env])
    assert code == 0, out
    results = read(tmp_path)
    check(nodes, results, "mpi", 2)  # the budget decision lags one epoch (_runs.lag)
    rep = report_json(tmp_path / "logs")
    assert rep["job"]["energy_j"] == pytest.approx(results[0]["actual"]["energy_j"], rel=1e-9)

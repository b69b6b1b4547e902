"""Real distributed jobs on this machine: torch.distributed (gloo, CPU) and MPI (mpi4py).

Each job runs tests/dist_worker.py in 2 or 4 processes over loopback; every process is killed if
the job has not finished within dist_worker.JOB_TIMEOUT (well below pytest's 60 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import dist_worker

WORKER = str(Path(dist_worker.__file__).resolve())
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the test extra)")
needs_mpi4py = pytest.mark.skipif(not HAS_MPI4PY, reason="mpi4py is not installed (the test extra)")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARBONCTX_", "SLURM_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    # Loopback only, few threads: the machine is shared.
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # The node's shared sampler keeps its files in the test's folder (conftest), not /dev/shm.
    env["CARBONCTX_NODE_DIR"] = os.environ["CARBONCTX_NODE_DIR"]
    return env


def check_job(results: list[dict[str, Any]], n: int, engine: str, nodes: int = 1) -> None:
    per_node = n // nodes
    expected_sum = [n * (n + 1) / 2, 0.25 * n, 1e15 * n + n * (n - 1) / 2]
    pids = [r["pid"] for r in results]
    assert len(set(pids)) == n
    for rank, r in enumerate(results):
        assert r["engine"] == engine
        assert r["world"] == [rank, n]
        info = r["info"]
        assert (info["rank"], info["world_size"], info["distributed"]) == (rank, n, True)
        assert (info["local_rank"], info["local_world_size"]) == (rank % per_node, per_node)
        assert info["problems"] == []
        # The same answers on every rank; float64 keeps 1e15 + small integers exact.
        assert r["sum"] == expected_sum
        assert r["any_last"] is True
        assert r["any_none"] is False
        assert r["gathered"] == [{"rank": i, "pid": pids[i]} for i in range(n)]
        # One simulated GPU per local rank on each node: its own.
        assert r["gpus"] == [rank % per_node]
    # One sampler key per node of the job, shared by the node's ranks.
    keys = [r["info"]["job_key"] for r in results]
    assert len(set(keys)) == nodes
    for node in range(nodes):
        assert len(set(keys[node * per_node : (node + 1) * per_node])) == 1


@needs_torch
@pytest.mark.parametrize(("n", "nodes"), [(2, 1), (4, 1), (4, 2)])
def test_torch_gloo_job(n: int, nodes: int, tmp_path: Path) -> None:
    """n ranks as torchrun sets them; with 2 nodes, each simulated by its own node setting."""
    port = str(dist_worker.free_port())
    per_node = n // nodes
    envs = []
    for rank in range(n):
        env = base_env()
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(n),
            LOCAL_RANK=str(rank % per_node),
            LOCAL_WORLD_SIZE=str(per_node),
            GROUP_RANK=str(rank // per_node),
            TORCHELASTIC_RUN_ID="test-job",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        if nodes > 1:
            env["DIST_TEST_NODE"] = f"sim-node-{rank // per_node}"
        envs.append(env)
    cmd = [sys.executable, WORKER, "torch", str(tmp_path)]
    for code, out in dist_worker.run_processes([cmd] * n, envs):
        assert code == 0, out
    results = dist_worker.read_results(tmp_path, n)
    check_job(results, n, "torch", nodes)
    for rank, r in enumerate(results):
        assert r["engine_before_init"] == "local"
        assert r["local_sum"] == [1.0, 2.0]
        assert r["info"]["launcher"] == "torchrun"
        assert r["info"]["node_rank"] == rank // per_node
        assert r["path"] == f"out/test-job/r{rank}.json"


@needs_torch
def test_torchrun_standalone_job(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        WORKER,
        "torch",
        str(tmp_path),
    ]
    ((code, out),) = dist_worker.run_processes([cmd], [base_env()])
    assert code == 0, out
    results = dist_worker.read_results(tmp_path, 2)
    check_job(results, 2, "torch")
    infos = [r["info"] for r in results]
    assert {i["launcher"] for i in infos} == {"torchrun"}
    assert {i["node_rank"] for i in infos} == {0}
    # torchrun --standalone makes a run id: the job, the same on both ranks.
    jobs = {i["job"] for i in infos}
    assert len(jobs) == 1 and None not in jobs
    (job,) = jobs
    assert [r["path"] for r in results] == [f"out/{job}/r0.json", f"out/{job}/r1.json"]


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )
    assert found, "mpi4py is installed but no mpiexec was found: pip install mpich"
    return found


@needs_mpi4py
def test_mpi_job(tmp_path: Path) -> None:
    n = 2
    cmd = [mpiexec(), "-n", str(n), sys.executable, WORKER, "mpi", str(tmp_path)]
    ((code, out),) = dist_worker.run_processes([cmd], [base_env()])
    assert code == 0, out
    results = dist_worker.read_results(tmp_path, n)
    check_job(results, n, "mpi")
    for r in results:
        assert r["torch_imported"] is False
        assert r["info"]["launcher"] in ("mpich", "openmpi", "intel-mpi", "pmi")

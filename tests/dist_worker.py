"""One rank of a real distributed test job; also the launcher helpers the tests use.

Run as ``python dist_worker.py ENGINE OUT_DIR``: ENGINE is ``torch`` (torch.distributed with
gloo, from the env:// variables torchrun or the test sets) or ``mpi`` (mpi4py under mpiexec).
Each rank writes ``OUT_DIR/rank<N>.json`` with what the carbonctx._distributed functions gave.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

#: Seconds a whole test job may take before its processes are killed (pytest allows 60).
JOB_TIMEOUT = 40.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_processes(
    commands: Sequence[Sequence[str]],
    envs: Sequence[Mapping[str, str]],
    *,
    timeout: float = JOB_TIMEOUT,
) -> list[tuple[int, str]]:
    """Start every command (each in its own session), wait for all; kill all on timeout.

    Returns (exit code, output) per command. Raises AssertionError on timeout, after killing.
    """
    procs = [
        subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for cmd, env in zip(commands, envs, strict=True)
    ]
    results: list[tuple[int, str]] = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            results.append((p.returncode, out))
    except subprocess.TimeoutExpired:
        outputs = []
        for p in procs:
            _kill_group(p)
            out, _ = p.communicate()
            outputs.append(out)
        raise AssertionError(
            f"distributed test job did not finish in {timeout} s; output:\n" + "\n".join(outputs)
        ) from None
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
                p.wait()
    return results


def _kill_group(p: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)


def read_results(out_dir: Path, n: int) -> list[dict[str, Any]]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(n)]


def wait_for_ranks(out_dir: Path, n: int, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) until ranks 0..n-1 have each written
    ``out_dir/rank<N>.json``. A rank that stays until then keeps the node's shared sampler: an
    owner that exits first hands it over, and a rank still reading its figures would report
    itself the owner too."""
    deadline = time.monotonic() + timeout
    while not all((out_dir / f"rank{k}.json").exists() for k in range(n)):
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def rank_env(
    machine_env: Mapping[str, str],
    work: Path,
    rank: int,
    n: int,
    port: str,
    run_id: str,
    *,
    node_dir: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables torchrun sets for ``rank`` of ``n`` on one node (env:// over loopback),
    on the simulated machine whose variables are ``machine_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONCTX_")}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK"):
        env.pop(k, None)
    env.update(machine_env)
    env.update(
        CARBONCTX_ZONE="DE",
        CARBONCTX_CACHE_DIR=str(work / "cache"),
        CARBONCTX_NODE_DIR=node_dir or str(work / "shm"),
        RANK=str(rank),
        GROUP_RANK="0",
        WORLD_SIZE=str(n),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(n),
        TORCHELASTIC_RUN_ID=run_id,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra or {})
    return env


def script_job(work: Path, script: str, how: str, n: int = 2) -> list[tuple[int, str]]:
    """Runs ``script`` (a worker's source; its arguments OUT_DIR and ``how``) as ``n`` ranks of
    a gloo job on a simulated one-package machine, bounded: each rank's exit status and output."""
    from carbonctx.testing import SimulatedMachine, Wave

    sim = SimulatedMachine(work / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6))
    sim.start()
    try:
        path = work / "worker.py"
        path.write_text(script)
        port = str(free_port())
        envs = [rank_env(sim.env(), work, r, n, port, how) for r in range(n)]
        cmds = [[sys.executable, str(path), str(work), how] for _ in range(n)]
        return run_processes(cmds, envs, timeout=28.0)
    finally:
        sim.close()


def torchrun_job(
    script: str,
    work: Path,
    machine_env: Mapping[str, str],
    run_id: str,
    *,
    args: Sequence[Sequence[str]] = ((), ()),
    node_dir: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 150.0,
) -> list[dict[str, Any]]:
    """Run ``script`` (its text) as one rank per entry of ``args`` on this node, with the
    variables torchrun sets (env:// over loopback, gloo), on the simulated machine whose
    variables are ``machine_env``; each rank is given ``work`` and its own ``args`` and writes
    ``work/rank<N>.json``, which this returns. Fails the test when a rank fails."""
    path = work / "worker.py"
    path.write_text(script)
    port = str(free_port())
    n = len(args)
    envs = [
        rank_env(machine_env, work, rank, n, port, run_id, node_dir=node_dir, extra=extra_env)
        for rank in range(n)
    ]
    cmds = [[sys.executable, str(path), str(work), *a] for a in args]
    for code, out in run_processes(cmds, envs, timeout=timeout):
        assert code == 0, out
    return read_results(work, n)


# ---------------------------------------------------------------------------- the rank itself


def _run(engine: str, out_dir: Path) -> None:
    from carbonctx._distributed import (
        Gpu,
        allreduce_sum,
        any_rank,
        detect_ranks,
        expand_path,
        gather_objects,
        owned_gpus,
        world,
    )
    from carbonctx._distributed import engine as current_engine

    record: dict[str, Any] = {}
    if engine == "torch":
        import torch.distributed as dist

        # Imported but not initialised yet: the collectives stay local.
        record["engine_before_init"] = current_engine()
        record["local_sum"] = allreduce_sum([1.0, 2.0])
        dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    else:
        from mpi4py import MPI

        assert MPI.Is_initialized()
        record["torch_imported"] = "torch" in sys.modules

    rank, size = world()
    # DIST_TEST_NODE stands for the node setting (CARBONCTX_NODE): simulated nodes on one machine.
    info = detect_ranks(os.environ, node=os.environ.get("DIST_TEST_NODE"))
    record["pid"] = os.getpid()
    record["engine"] = current_engine()
    record["world"] = [rank, size]
    record["info"] = {
        "rank": info.rank,
        "world_size": info.world_size,
        "local_rank": info.local_rank,
        "local_world_size": info.local_world_size,
        "node_rank": info.node_rank,
        "launcher": info.launcher,
        "job": info.job,
        "job_key": info.job_key,
        "distributed": info.distributed,
        "problems": list(info.problems),
    }
    # 1e15 + small integers are exact in float64 but not in float32.
    record["sum"] = allreduce_sum([rank + 1.0, 0.25, 1e15 + rank])
    record["any_last"] = any_rank(rank == size - 1)
    record["any_none"] = any_rank(False)
    record["gathered"] = gather_objects({"rank": rank, "pid": os.getpid()})
    gpus = [Gpu(index=i, uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000") for i in range(size)]
    record["gpus"] = list(owned_gpus(info, gpus[: info.local_world_size or size], {}).indices)
    record["path"] = str(expand_path("out/{job}/r{rank}.json", info))

    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    if engine == "torch":
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    _run(sys.argv[1], Path(sys.argv[2]))

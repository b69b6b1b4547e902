"""Counter reads on one node as the number of ranks grows: one sampler per node against one
sampler per process.

N processes (1, 2, 4) are started with the variables torchrun sets, on one simulated node
(package and DRAM zones, one GPU per rank), each marking a 20 ms region back to back for a few
seconds. Each reports the counter reads its own sampler made and the CPU time of its sampler
threads. With ``node_sampler`` on (the default in a job) one process reads the node's counters
and the others copy what it publishes; with it off every process reads every counter.

Run: ``.venv/bin/python benches/bench_node_reads.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, thread_cpu_s, write_result

SECONDS = 3.0
REGION_S = 0.02


def worker(out: Path) -> None:
    import carbonctx
    from carbonctx._measure import process

    with carbonctx.track("warm-up"):
        time.sleep(0.05)
    rt = process.runtime()
    s = rt.sampler
    assert s is not None
    # The role at the start (the first rank to finish hands the node's sampler over).
    node = carbonctx.devices()["rank"].get("node_sampler") or {}
    reads0 = sum(st["reads"] for st in s.status())
    cpu0 = thread_cpu_s("carbonctx-")
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < SECONDS:
        with carbonctx.track("step"):
            time.sleep(REGION_S)
        n += 1
    elapsed = time.monotonic() - t0
    reads = sum(st["reads"] for st in s.status()) - reads0
    cpu = thread_cpu_s("carbonctx-") - cpu0
    rank = rt.rank_info.rank
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "reads_per_s": reads / elapsed,
                "cpu_pct": 100 * cpu / elapsed,
                "regions": n,
                "role": node.get("role", "own sampler"),
            }
        )
    )


def run(n: int, node_sampler: bool, sim_env: dict[str, str], tmp: Path) -> list[dict[str, float]]:
    out = Path(tempfile.mkdtemp(dir=tmp))
    job = f"bench-{n}-{int(node_sampler)}-{time.monotonic_ns()}"
    procs = []
    for r in range(n):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONCTX_")}
        env.update(sim_env)
        env.update(
            RANK=str(r),
            WORLD_SIZE=str(n),
            LOCAL_RANK=str(r),
            LOCAL_WORLD_SIZE=str(n),
            TORCHELASTIC_RUN_ID=job,
            CARBONCTX_NODE_SAMPLER="1" if node_sampler else "0",
            CARBONCTX_NODE_DIR=str(tmp / "shm"),
            CARBONCTX_ZONE="DE",
            CARBONCTX_CACHE_DIR=str(tmp / "cache"),
        )
        procs.append(subprocess.Popen([sys.executable, __file__, "worker", str(out)], env=env))
        time.sleep(0.3)  # the first one becomes the node's owner
    for p in procs:
        assert p.wait(timeout=60) == 0
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def main() -> None:
    from carbonctx.testing import SimulatedMachine, Wave, build_fake_nvml

    tmp = Path(tempfile.mkdtemp(prefix="carbonctx-node-bench-"))
    nvml = build_fake_nvml(tmp / "nvml")
    rows = []
    with SimulatedMachine(
        tmp / "hw", package=Wave(40.0, 120.0, 0.05), gpus=4, nvml_library=nvml
    ) as sim:
        env = sim.env()
        for n in (1, 2, 4):
            for on in (False, True):
                if n == 1 and on:
                    continue
                res = run(n, on, env, tmp)
                reads = sum(r["reads_per_s"] for r in res)
                cpu = sum(r["cpu_pct"] for r in res)
                roles = ", ".join(sorted({r["role"] for r in res}))
                rows.append((n, "one per node" if on else "one per process", reads, cpu, roles))
    lines = [
        f"| {n} | {mode} | {reads:,.0f} | {cpu:.2f} % | {roles} |"
        for n, mode, reads, cpu, roles in rows
    ]
    text = f"""# Counter reads on a node, by number of ranks

{machine()}

N processes started with torchrun's variables on one simulated node (package and DRAM zones,
four simulated GPUs, each rank owning one), each marking 20 ms regions back to back for
{SECONDS:.0f} s. Reads: counter reads per second made by all the processes' samplers together.
CPU: their carbonctx threads' CPU time (sampler, follower, resolver), summed, in % of one core.

| ranks | sampler | counter reads / s (node) | carbonctx threads CPU (all ranks) | roles |
| --- | --- | --- | --- | --- |
{chr(10).join(lines)}

Roles are as each process started (the owner started first). With one sampler per node the
node's reads stay those of one process whatever the number of ranks; with one per process they
grow with it (on a real GPU each NVML energy read costs about
3 ms of driver CPU, so that growth is what the shared sampler saves).
"""
    print(text)
    write_result("node-reads", text)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]))
    else:
        main()

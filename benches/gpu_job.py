"""Distributed jobs on a real GPU: what only a machine with NVIDIA GPUs and NCCL can show.

``python benches/gpu_job.py OUT_DIR`` launches small jobs with PyTorch's own launcher
(``torch.distributed.run``) on the machine's first GPU and writes ``OUT_DIR/gpu-job.json``:

- ``nccl-1``: one rank on the NCCL backend: ``job_total()`` sums over ranks through NCCL (a
  tensor on the current GPU), which no CPU-only test can run;
- ``mixed-1``: one rank on ``cpu:gloo,cuda:nccl`` (the combined backend);
- ``gloo-2-shared``: two ranks on gloo that both make GPU 0 current (more ranks than GPUs): the
  job's GPU energy must count that GPU once. NCCL refuses two ranks on one GPU, hence gloo.

Each rank runs about 1.5 s of bf16 matrix products inside ``track("work")`` between two
barriers; rank 0 also reads NVML's energy counter at the barriers. The job's GPU figure
(``job_total(m).gpu_j``) should come out close to that direct reading, never twice it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES = {
    "nccl-1": ("nccl", 1),
    "mixed-1": ("cpu:gloo,cuda:nccl", 1),
    "gloo-2-shared": ("gloo", 2),
}


def rank_main(out_dir: Path) -> None:
    import torch
    import torch.distributed as dist

    backend = os.environ["GPU_JOB_BACKEND"]
    # GPU_JOB_DRY=1: a CPU-only rehearsal of the script itself (gloo, no GPU, no NVML).
    dry = os.environ.get("GPU_JOB_DRY") == "1"
    dev, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    if not dry:
        torch.cuda.set_device(0)  # every rank on the one GPU
    dist.init_process_group(backend)
    rank = dist.get_rank()

    import carbonctx

    carbonctx.configure(cpu_backends=[], estimate="never")
    a = torch.randn(4096, 4096, device=dev, dtype=dtype)
    b = torch.randn(4096, 4096, device=dev, dtype=dtype)

    def work(s: float) -> None:
        end = time.monotonic() + s
        while time.monotonic() < end:
            for _ in range(1 if dry else 8):
                a @ b
            if not dry:
                torch.cuda.synchronize()

    work(0.5)
    nvml_j: float | None = None
    h = None
    if rank == 0 and not dry:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
    dist.barrier()
    e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) if h is not None else 0
    t0 = time.monotonic()
    with carbonctx.track("work", sync=True) as m:
        work(1.5)
    dist.barrier()
    wall = time.monotonic() - t0
    if h is not None:
        nvml_j = (pynvml.nvmlDeviceGetTotalEnergyConsumption(h) - e0) / 1e3
    jt = carbonctx.job_total(m)
    dev = carbonctx.devices()
    rec: dict[str, Any] = {
        "rank": rank,
        "world": dist.get_world_size(),
        "backend": backend,
        "region_gpu_j": m.gpu_j,
        "region_energy_j": m.energy_j,
        "region_uncertainty_j": m.uncertainty_j,
        "job_gpu_j": jt.gpu_j,
        "job_energy_j": jt.energy_j,
        "job_ranks": jt.ranks,
        "job_engine": jt.engine,
        "nvml_direct_between_barriers_j": nvml_j,
        "barrier_to_barrier_s": wall,
        "rank_gpus": dev.get("rank", {}).get("gpus") if isinstance(dev, dict) else None,
        "by_source": {
            k: {"joules": v.joules, "share": v.share, "rule": v.share_rule}
            for k, v in m.by_source.items()
        },
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(rec, indent=2, default=str))
    dist.barrier()
    dist.destroy_process_group()


def launch(out_dir: Path) -> None:
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    dry = os.environ.get("GPU_JOB_DRY") == "1"
    for case, (backend, n) in CASES.items():
        if dry:
            backend = "gloo"
        d = out_dir / case
        d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GPU_JOB_BACKEND=backend, PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={n}",
            __file__,
            "--rank",
            str(d),
        ]
        t = time.monotonic()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            rc, log = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, log = -9, f"timed out: {e}"
        ranks = []
        for k in range(n):
            f = d / f"rank{k}.json"
            ranks.append(json.loads(f.read_text()) if f.exists() else None)
        out[case] = {
            "rc": rc,
            "seconds": round(time.monotonic() - t, 1),
            "ranks": ranks,
            "log_tail": log[-3000:] if rc else "",
        }
        print(json.dumps({case: rc}), flush=True)
    (out_dir / "gpu-job.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rank":
        rank_main(Path(sys.argv[2]))
    else:
        launch(Path(sys.argv[1] if len(sys.argv) > 1 else "."))

"""One rank of a measured test job on simulated hardware (see test_distributed_measure.py).

``python rank_worker.py region OUT_DIR``: the launcher's variables and the simulated machine's
``CARBONCTX_*`` variables come from the environment. The rank starts its sampler, writes
``OUT_DIR/ready<rank>``, waits for ``OUT_DIR/go`` (``T0_NS DURATION_NS`` on CLOCK_MONOTONIC,
the clock every process of the machine shares), measures one region from T0 to T0 + duration
and writes ``OUT_DIR/rank<rank>.json``.

``python rank_worker.py epochs ENGINE OUT_DIR EPOCHS EPOCH_S [BUDGET_KWH]``: a job of
``carbonctx.epochs()`` over torch.distributed (gloo) or MPI (mpi4py); each epoch sleeps
``EPOCH_S``; writes ``OUT_DIR/rank<rank>.json`` with what every rank saw.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

#: How long a rank waits for the test's go before giving up (the test kills it sooner).
WAIT_S = 30.0


def _sleep_until(t_ns: int) -> None:
    while True:
        left = (t_ns - time.monotonic_ns()) * 1e-9
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def _region(out_dir: Path) -> None:
    import carbonctx
    from carbonctx._measure import process

    with carbonctx.track("warm-up"):
        time.sleep(0.05)
    carbonctx.flush()
    rt = process.runtime()
    rank = rt.rank_info.rank
    (out_dir / f"ready{rank}").write_text("ready")
    go = out_dir / "go"
    deadline = time.monotonic() + WAIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go from the test")
        time.sleep(0.01)
    t0_ns, duration_ns = (int(x) for x in go.read_text().split())
    _sleep_until(t0_ns)
    with carbonctx.track("step") as m:
        _sleep_until(t0_ns + duration_ns)
    r = m.result()
    record = r.to_dict()
    record["t0_ns"] = round((r.start - rt._offset) * 1e9)
    record["t1_ns"] = round((r.end - rt._offset) * 1e9)
    record["devices"] = carbonctx.devices()["rank"]
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record, default=str))


def _epochs(engine: str, out_dir: Path, n: int, epoch_s: float, budget: float | None) -> None:
    if engine == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    else:
        from mpi4py import MPI

        assert MPI.Is_initialized()
    import carbonctx

    run = carbonctx.epochs(n, budget_kwh=budget, quiet=True, log_dir=str(out_dir / "logs"))
    seen: list[dict[str, Any]] = []
    for _ in run:
        time.sleep(epoch_s)
    for ep in run.job_epochs:
        seen.append({"energy_j": ep.energy_j, "co2_g": ep.co2_g})
    job = carbonctx.job_total()
    from carbonctx._measure import process

    rt = process.runtime()
    rank = rt.rank_info.rank
    record = {
        "rank": rank,
        "epochs_done": run.epochs_done,
        "stop_reason": run.stop_reason,
        "actual": run.actual.to_dict(),
        "rank_actual": run.rank_actual.to_dict(),
        "forecast": run.forecast.to_dict() if run.forecast else None,
        "job_total": job.to_dict(),
        "epochs": [
            {
                "t0_ns": round((e.start - rt._offset) * 1e9),
                "t1_ns": round((e.end - rt._offset) * 1e9),
                "energy_j": e.energy_j,
            }
            for e in run.rank_epochs
        ],
        "job_epochs": seen,
        "log_path": str(run.log_path),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    if engine == "torch":
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "region":
        _region(Path(sys.argv[2]))
    else:
        _epochs(
            sys.argv[2],
            Path(sys.argv[3]),
            int(sys.argv[4]),
            float(sys.argv[5]),
            float(sys.argv[6]) if len(sys.argv) > 6 else None,
        )

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
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

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

    with carbonctx.track("warm-up") as w:
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
    sampler = rt.sampler
    record["own_reads"] = sum(st["reads"] for st in sampler.status()) if sampler else None
    record["warm_up"] = w.result().to_dict()
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record, default=str))
    # Stay until every rank has written its record.
    from dist_worker import wait_for_ranks

    wait_for_ranks(out_dir, rt.rank_info.world_size or 1, WAIT_S)


def _rank_env() -> None:
    """Under mpiexec every rank gets the same environment: ``RANK_ENV_FILE`` maps each rank
    (``PMI_RANK``) to its own variables (its simulated node)."""
    path = os.environ.get("RANK_ENV_FILE")
    if path:
        rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
        os.environ.update(json.loads(Path(path).read_text())[rank])


def _epochs(engine: str, out_dir: Path, n: int, epoch_s: float, budget: float | None) -> None:
    _rank_env()
    if engine == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    else:
        from mpi4py import MPI

        assert MPI.Is_initialized()
    import carbonctx
    from carbonctx._measure import process

    rt = process.runtime()
    rank = rt.rank_info.rank
    # BUDGET_RANKS: the ranks that have the budget (all by default): the stop is joint.
    holders = os.environ.get("BUDGET_RANKS")
    if holders is not None and str(rank) not in holders.split(","):
        budget = None
    run = carbonctx.epochs(n, budget_kwh=budget, quiet=True, log_dir=str(out_dir / "logs"))
    for _ in run:
        time.sleep(epoch_s)
    job = carbonctx.job_total()
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
            for e in run._rank_epochs
        ],
        "job_epoch_energy_j": run.epoch_energy_j,
        "engine": run.engine,
        "run_id": run.run_id,
        "local_rank": rt.rank_info.local_rank,
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

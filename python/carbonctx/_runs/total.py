"""``carbonctx.job_total()``: a distributed job's energy and CO2, on every rank."""

from __future__ import annotations

from typing import Any

from carbonctx._distributed import engine, world
from carbonctx._measure.region import Tracker
from carbonctx._results.measurement import Measurement
from carbonctx._results.runs import JobTotal
from carbonctx._runs.jobs import SUMMED, sum_over_ranks
from carbonctx._runs.run import Run, last_run
from carbonctx.errors import ConfigurationError

__all__ = ["job_total"]


def job_total(of: Measurement | Tracker | Run | None = None) -> JobTotal:
    """The job's energy and CO2: this rank's figures summed over every rank.

    ``of`` is a region's result (a :class:`Measurement`, or the object ``track()`` gave): the
    job's figures for a region every rank measured at the same time; or a run of ``epochs()``:
    its figures so far (and the job's forecast); by default the last run of ``epochs()`` in
    this process. A collective, like ``torch.distributed.all_reduce``: **every rank must call
    it at the same point**. Outside a job (neither torch.distributed nor MPI initialised) it
    gives this process's own figures.
    """
    if of is None:
        run = last_run()
        if run is None:
            raise ConfigurationError(
                "job_total() totals the last run of carbonctx.epochs(), and there is none: pass "
                "a region's result or a run, as job_total(m)"
            )
        of = run
    forecast = None
    if isinstance(of, Run):
        a = of.rank_actual
        mine: dict[str, float | None] = {
            "energy_j": a.energy_j,
            **of.rank_parts,
            "uncertainty_j": a.energy_j_high - a.energy_j,
            "co2_g": a.co2_g,
            "node_j": a.node_j,
        }
        what = f"run {of.run_id}: {of.epochs_done} epochs"
        forecast = of.forecast
    elif isinstance(of, (Measurement, Tracker)):
        m = of.result() if isinstance(of, Tracker) else of
        mine = {k: getattr(m, k) for k in SUMMED}
        what = f"region {m.name!r}"
    else:
        raise ConfigurationError(
            f"job_total() totals a region's result or a run of epochs(), not {of!r}"
        )
    summed, _ = sum_over_ranks(mine)
    eng = engine()
    _, size = world()
    optional = ("co2_g", "node_j")
    f: dict[str, Any] = {k: float(summed[k] or 0.0) for k in SUMMED if k not in optional}
    return JobTotal(
        of=what,
        ranks=size,
        engine=eng,
        co2_g=summed["co2_g"],
        forecast=forecast,
        node_j=summed["node_j"],
        **f,
    )

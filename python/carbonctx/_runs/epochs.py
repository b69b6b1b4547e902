"""Runs of epochs: forecast a run's total from its first epochs, and keep it inside a budget.

::

    run = carbonctx.epochs(100, budget_kwh=2.0, on_budget="stop", log_dir="runs/")
    for epoch in run:                 # each epoch is a region named "epoch"
        train_one_epoch()
    run.forecast, run.actual, run.stop_reason

After ``forecast_after`` epochs (1 by default) the whole run's duration, energy and CO2 are
forecast, printed once to stderr, and updated as each later epoch ends. The forecast is the
actual so far plus the remaining epochs times the mean epoch, with a 95% prediction interval
from how much the epochs have varied (Student's t; with a single epoch the interval reflects only
the measurement's uncertainty, and the forecast says it is a single-epoch extrapolation). CO2
for the remaining epochs uses the provider's intensity forecast over the predicted span when the
zone's provider has one, else the current (or tabulated) value; the forecast says which.

An epoch end never waits for the sampler: the figures counted there are those of the earlier
epochs already resolved (``_runs.lag``), so the forecast and the budget lag one epoch behind the
loop (more for epochs shorter than the sampler's lag). A budget (``budget_kwh``,
``budget_co2_kg``) is compared with the central forecast after every epoch counted. When it is
exceeded: ``on_budget="stop"`` ends the loop normally after the epoch running then, ``"warn"``
warns once (:class:`~carbonctx.CarbonctxWarning`), a callable is called once with the run.
Nothing here raises into the loop, except for arguments that cannot be used
(:class:`~carbonctx.ConfigurationError`).

With ``log_dir`` (or ``CARBONCTX_LOG_DIR``) each run writes ``<log_dir>/<run-id>.jsonl``: a
``run-start`` record, an ``epoch`` record per epoch (with the forecast after it) and a final
``run`` record (actual and forecast side by side, budget, stop reason, equivalents, and where the
zone, intensity and PUE came from). ``carbonctx report DIR`` summarises a directory of such logs.

In a distributed job (torch.distributed initialised, or MPI through mpi4py, when the loop
starts) every rank must run the same ``epochs()`` loop: each epoch's figures are summed over the
ranks at its end (one ``allreduce``), so ``run.actual``, ``run.forecast`` and the budget are the
job's on every rank (``run.rank_actual`` is this rank's), and whether to stop is decided jointly
(one more ``allreduce``): every rank stops at the same epoch boundary. The ranks share rank 0's
run id; each writes its own log (``log_dir`` may use ``{rank}``, ``{node}``, ``{job}``; a plain
directory gets a ``rank<N>`` folder per rank), with its own figures and the job's. Ranks whose
loops differ in length (``epochs(n)`` with another ``n``) find it out as the loop starts, and
every one of them keeps its own figures only, with a note. A collective that fails (a peer rank
died, or did not arrive within the process group's timeout) never raises into the loop: from
then on this rank's figures are its own, and the run's notes say from which epoch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from carbonctx._runs.budget import OnBudget, check_epochs_args, check_limit
from carbonctx._runs.run import Run

__all__ = ["epochs"]


def epochs(
    n: int,
    *,
    budget_kwh: float | None = None,
    budget_co2_kg: float | None = None,
    on_budget: OnBudget = "stop",
    forecast_after: int = 1,
    name: str = "epoch",
    log_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Run:
    """A run of ``n`` epochs, forecast from its first ones and kept inside a budget::

        run = carbonctx.epochs(20, budget_kwh=0.5)
        for epoch in run:
            train_one_epoch()
        print(run.actual, run.forecast, run.stop_reason)

    ``budget_kwh`` / ``budget_co2_kg``: limits compared with the forecast after each epoch.
    ``on_budget``: ``"stop"`` (end the loop after that epoch), ``"warn"`` (one
    :class:`CarbonctxWarning`) or a callable called once with the run (it may call
    ``run.stop(reason)``). ``forecast_after``: epochs measured before the first forecast.
    ``name``: the regions' name. ``log_dir``: where ``<run-id>.jsonl`` is written (default
    ``CARBONCTX_LOG_DIR``; none when unset). ``progress``: the ``\\r`` progress line on stderr
    (default: when stderr is a terminal and ``CARBONCTX_PROGRESS`` is not ``0``; True forces it).
    ``quiet``: no forecast or summary lines on stderr. ``tags`` go into every epoch's record.
    """
    check_epochs_args(n, forecast_after, on_budget, name, progress)
    return Run(
        n,
        budget_kwh=check_limit(budget_kwh, "budget_kwh"),
        budget_co2_kg=check_limit(budget_co2_kg, "budget_co2_kg"),
        on_budget=on_budget,
        forecast_after=forecast_after,
        name=name,
        log_dir=log_dir,
        progress=progress,
        quiet=quiet,
        tags=tags,
        run_id=run_id,
    )

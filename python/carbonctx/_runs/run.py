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

A budget (``budget_kwh``, ``budget_co2_kg``) is compared with the central forecast after every
epoch. When it is exceeded: ``on_budget="stop"`` ends the loop normally after that epoch,
``"warn"`` warns once (:class:`~carbonctx.CarbonctxWarning`), a callable is called once with the
run. Nothing here raises into the loop, except for arguments that cannot be used
(:class:`~carbonctx.ConfigurationError`).

With ``log_dir`` (or ``CARBONCTX_LOG_DIR``) each run writes ``<log_dir>/<run-id>.jsonl``: a
``run-start`` record, an ``epoch`` record per epoch (with the forecast after it) and a final
``run`` record (actual and forecast side by side, budget, stop reason, equivalents, and where the
zone, intensity and PUE came from). ``carbonctx report DIR`` summarises a directory of such logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from carbonctx import _config
from carbonctx._measure import process
from carbonctx._measure.region import Region, Tracker
from carbonctx._results.measurement import Measurement
from carbonctx._results.runs import RunTotals
from carbonctx._runs import intensity
from carbonctx._runs.budget import Budget, OnBudget, check_limit
from carbonctx._runs.forecast import Epoch, actual_totals, forecast_totals
from carbonctx._runs.log import RunLogWriter, epoch_record, final_record, start_record
from carbonctx._runs.progress import ProgressLine, final_text, forecast_text, say
from carbonctx.errors import CarbonctxError, CarbonctxWarning, ConfigurationError

__all__ = ["Run", "epochs"]

_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _new_run_id(name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{stamp}-{_ID_SAFE.sub('_', name)[:40]}-{secrets.token_hex(3)}"


class Run:
    """What :func:`epochs` returns: iterate it for the epoch indices.

    ``forecast`` and ``actual`` are :class:`RunTotals` objects (``forecast`` is None until
    ``forecast_after`` epochs have ended); ``stop_reason`` is None unless the run ended before
    its last epoch; ``epochs_done`` counts finished epochs; ``log_path`` is the JSON Lines log.

    The run iterates and keeps its epochs; the forecast maths (``_runs.forecast``), the budget
    (``_runs.budget``), the log (``_runs.log``) and stderr (``_runs.progress``) are its parts.
    """

    def __init__(
        self,
        n: int,
        *,
        budget_kwh: float | None,
        budget_co2_kg: float | None,
        on_budget: OnBudget,
        forecast_after: int,
        name: str,
        log_dir: str | os.PathLike[str] | None,
        progress: bool | None,
        quiet: bool,
        tags: Mapping[str, Any] | None,
        run_id: str | None,
    ) -> None:
        self.n = n
        self.name = name
        self.budget = Budget(budget_kwh, budget_co2_kg, on_budget)
        self.forecast_after = forecast_after
        self.tags = dict(tags) if tags else {}
        self.quiet = quiet
        self.run_id = run_id or _new_run_id(name)
        self.forecast: RunTotals | None = None
        self.first_forecast: RunTotals | None = None
        self.stop_reason: str | None = None
        self._epochs: list[Epoch] = []
        self._started = False
        self._finished = False
        self._stop_requested: str | None = None
        self._notes: list[str] = []
        self._log = RunLogWriter(_config.log_dir(log_dir), self._note)
        self._progress = ProgressLine(_config.progress(progress))

    def __repr__(self) -> str:
        state = "finished" if self._finished else f"{self.epochs_done}/{self.n} epochs"
        return f"<Run {self.run_id!r} {state}>"

    # ------------------------------------------------------------------ public state

    @property
    def budget_kwh(self) -> float | None:
        return self.budget.kwh

    @property
    def budget_co2_kg(self) -> float | None:
        return self.budget.co2_kg

    @property
    def on_budget(self) -> OnBudget:
        return self.budget.on_budget

    @property
    def budget_exceeded(self) -> dict[str, Any] | None:
        """What exceeded the budget and when (None while within it)."""
        return self.budget.exceeded

    @property
    def log_path(self) -> Path | None:
        return self._log.path

    @property
    def epochs_done(self) -> int:
        return len(self._epochs)

    @property
    def epoch_energy_j(self) -> list[float]:
        """Energy of each finished epoch, in joules."""
        return [e.energy_j for e in self._epochs]

    @property
    def actual(self) -> RunTotals:
        """Duration, energy and CO2 of the epochs so far (interval: measurement uncertainty)."""
        return actual_totals(self._epochs, self.n, self._actual_basis())

    def stop(self, reason: str = "stopped by the program") -> None:
        """End the loop after the current epoch, recording ``reason`` (e.g. from a callback)."""
        if self._stop_requested is None:
            self._stop_requested = reason

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[int]:
        if self._started:
            raise CarbonctxError(
                f"run {self.run_id!r} has already been iterated: call carbonctx.epochs() again "
                "for a new run"
            )
        self._started = True
        self._open_log()
        self._warm_up()
        completed = False
        try:
            for i in range(self.n):
                tracker = Tracker(self.name, tags={**self.tags, "run": self.run_id, "epoch": i})
                region = tracker.__enter__()
                try:
                    yield i
                finally:
                    tracker.__exit__(None, None, None)
                self._epoch_done(i, region)
                reason = self._stop_requested
                if reason is not None and i < self.n - 1:
                    self.stop_reason = reason
                    break
            completed = True
        finally:
            if not completed and self.stop_reason is None:
                done = len(self._epochs)
                self.stop_reason = (
                    f"the loop was left during epoch {done + 1} of {self.n} "
                    "(break or exception); that epoch is not counted"
                )
            self._finish()

    def _warm_up(self) -> None:
        """Start the sampler and let it settle before the first epoch, whose energy the first
        forecast extrapolates: a region that opens as the sampler starts is less exact."""
        with contextlib.suppress(Exception):
            rt = process.runtime()
            if rt.sampler_or_start() is not None:
                rt.flush(timeout=1.0)

    # ------------------------------------------------------------------ per epoch

    def _epoch_done(self, i: int, region: Region) -> None:
        try:
            m: Measurement | None = region.result()
        except CarbonctxError as e:
            self._note(f"epoch {i}: no measurement ({e}); it counts as 0 J")
            m = None
        if m is not None:
            ep = Epoch(
                index=i,
                start=m.start,
                end=m.end,
                duration_s=m.duration_s,
                energy_j=m.energy_j,
                uncertainty_j=m.uncertainty_j or 0.0,
                co2_g=m.co2_g,
                measurement=m,
            )
        else:
            now = time.time()
            prev_end = self._epochs[-1].end if self._epochs else now
            ep = Epoch(i, prev_end, now, now - prev_end, 0.0, 0.0, None, None)
        self._epochs.append(ep)
        fc: RunTotals | None = None
        if len(self._epochs) >= self.forecast_after:
            try:
                fc = self._make_forecast()
            except Exception as e:  # never break the loop
                self._note(f"forecast failed: {e!r}")
            if fc is not None:
                self.forecast = fc
                if self.first_forecast is None:
                    self.first_forecast = fc
                    if not self.quiet:
                        self._progress.clear()
                        say(forecast_text(self.name, self.n, fc))
                self.budget.check(fc, i, self.n, self.run_id, self.stop, self)
        self._log.write(epoch_record(self.run_id, ep, fc))
        self._progress.show(self.name, self.n, self.actual, self.forecast)

    def _make_forecast(self) -> RunTotals:
        return forecast_totals(self._epochs, self.n, self.actual, self._remaining_intensity)

    def _service(self) -> Any:
        rt = process.current_runtime() or process.runtime()
        return rt.intensity()

    def _last_measurement(self) -> Measurement | None:
        return self._epochs[-1].measurement if self._epochs else None

    def _remaining_intensity(
        self, energy_j: float, span_s: float, start: float
    ) -> tuple[float | None, str | None]:
        last = self._last_measurement()
        svc = None if energy_j <= 0 or span_s <= 0 else self._service()
        return intensity.remaining_intensity(svc, last, energy_j, span_s, start)

    def _actual_basis(self) -> str | None:
        return intensity.actual_basis(self._last_measurement())

    # ------------------------------------------------------------------ the end

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._progress.clear()
        if self._epochs:
            with contextlib.suppress(Exception):
                fc = self._make_forecast()
                self.forecast = fc
        rec = self.final_record()
        self._log.write(rec)
        self._log.close()
        if not self.quiet and self._epochs:
            say(final_text(self.name, self.n, self.actual, self.first_forecast, self.stop_reason))

    def final_record(self) -> dict[str, Any]:
        """The final log record: actual and forecast side by side, budget, reason, provenance."""
        actual = self.actual
        svc = None
        with contextlib.suppress(Exception):
            svc = self._service()
        carbon: dict[str, Any] | None = None
        if svc is not None:
            carbon = intensity.carbon_provenance(
                svc,
                actual.intensity_basis,
                self.first_forecast.intensity_basis if self.first_forecast else None,
            )
        return final_record(
            run_id=self.run_id,
            name=self.name,
            epochs_planned=self.n,
            epochs_done=len(self._epochs),
            stop_reason=self.stop_reason,
            actual=actual,
            first_forecast=self.first_forecast,
            forecast=self.forecast,
            budget=self.budget.to_dict(),
            carbon=carbon,
            notes=self._notes,
            tags=self.tags,
        )

    # ------------------------------------------------------------------ notes and the log

    def _note(self, msg: str) -> None:
        if msg not in self._notes:
            self._notes.append(msg)
            warnings.warn(f"carbonctx run {self.run_id}: {msg}", CarbonctxWarning, stacklevel=4)

    def _open_log(self) -> None:
        if self._log.open(self.run_id):
            self._log.write(
                start_record(
                    run_id=self.run_id,
                    name=self.name,
                    epochs_planned=self.n,
                    forecast_after=self.forecast_after,
                    budget_kwh=self.budget.kwh,
                    budget_co2_kg=self.budget.co2_kg,
                    tags=self.tags,
                )
            )


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
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"epochs(n={n!r}): n is the number of epochs, an int >= 1")
    if isinstance(forecast_after, bool) or not isinstance(forecast_after, int):
        raise ConfigurationError(f"forecast_after={forecast_after!r} must be an int >= 1")
    if not 1 <= forecast_after <= n:
        raise ConfigurationError(
            f"forecast_after={forecast_after} must be between 1 and the number of epochs ({n})"
        )
    if not (on_budget in ("stop", "warn") or callable(on_budget)):
        raise ConfigurationError(
            f"on_budget={on_budget!r}: use 'stop', 'warn', or a function taking the run"
        )
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"name={name!r} must be a non-empty string")
    if progress is not None and not isinstance(progress, bool):
        raise ConfigurationError(f"progress={progress!r} must be True, False or None")
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

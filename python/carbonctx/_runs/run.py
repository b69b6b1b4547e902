"""The run that :func:`carbonctx.epochs` returns (``_runs.epochs`` says what a run does).

:class:`Run` iterates the epochs as regions and counts each one an epoch late (``_runs.lag``);
its parts are the forecast maths (``_runs.forecast``), the budget (``_runs.budget``), the job's
collectives (``_runs.jobs``), the log (``_runs.log``) and stderr (``_runs.progress``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from carbonctx import _config
from carbonctx._distributed import (
    Engine,
    any_rank,
    engine,
    expand_path,
    failure,
    gather_objects,
)
from carbonctx._measure import process
from carbonctx._measure.ranks import rank_fields
from carbonctx._measure.region import Region, Tracker
from carbonctx._results.measurement import Measurement
from carbonctx._results.runs import RunTotals
from carbonctx._runs import intensity
from carbonctx._runs.budget import Budget, OnBudget
from carbonctx._runs.forecast import Epoch, actual_totals, forecast_totals
from carbonctx._runs.jobs import reduce_epoch, stop_reason_of_others
from carbonctx._runs.lag import EpochLag
from carbonctx._runs.log import RunLogWriter, epoch_record, final_record, start_record
from carbonctx._runs.progress import ProgressLine, final_text, forecast_text, say
from carbonctx.errors import CarbonctxError, CarbonctxWarning

__all__ = ["Run", "last_run"]

_LAST_RUN: list[weakref.ref[Run]] = []


def last_run() -> Run | None:
    """The run of ``epochs()`` this process iterated last (what ``job_total()`` totals)."""
    return _LAST_RUN[0]() if _LAST_RUN else None


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

    __module__ = "carbonctx"  # public as carbonctx.Run: help(), reprs, pickles

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
        # The job's epochs (this rank's outside a job) and this rank's; the job's parts
        # (cpu_j, dram_j, gpu_j) per epoch.
        self._epochs: list[Epoch] = []
        self._rank_epochs: list[Epoch] = []
        self._job_parts: list[dict[str, float | None]] = []
        self._rank: dict[str, Any] = {}
        #: Where the job's figures come from: "torch", "mpi", or "local" (this process alone).
        self.engine: Engine = "local"
        self._started = False
        self._finished = False
        self._stop_requested: str | None = None
        self._notes: list[str] = []
        self._alone_since = ""  # the epoch from which a failed collective left this rank alone
        self._log_dir = _config.log_dir(log_dir)
        self._run_id_given = run_id is not None
        self._log = RunLogWriter(None, self._note)
        self._progress = ProgressLine(_config.progress(progress))
        self._lag = EpochLag()

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
        """Energy of each finished epoch, in joules (the job's, in a distributed job)."""
        return [e.energy_j for e in self._epochs]

    @property
    def actual(self) -> RunTotals:
        """Duration, energy and CO2 of the epochs so far (interval: measurement uncertainty);
        in a distributed job, the job's (every rank's figures added up)."""
        return actual_totals(self._epochs, self.n, self._actual_basis())

    @property
    def rank_actual(self) -> RunTotals:
        """This rank's part of :attr:`actual` (the same outside a distributed job)."""
        return actual_totals(self._rank_epochs, self.n, self._actual_basis())

    @property
    def rank_parts(self) -> dict[str, float]:
        """This rank's cpu_j, dram_j and gpu_j over the epochs so far."""
        out = {"cpu_j": 0.0, "dram_j": 0.0, "gpu_j": 0.0}
        for e in self._rank_epochs:
            m = e.measurement
            if m is not None:
                out["cpu_j"] += m.cpu_j
                out["dram_j"] += m.dram_j
                out["gpu_j"] += m.gpu_j
        return out

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
        _LAST_RUN[:] = [weakref.ref(self)]
        # Warm up first: joining the job is a collective, so the ranks start epoch 0 together.
        self._warm_up()
        self._join_job()
        self._open_log()
        completed = False
        joint = self.engine != "local"
        try:
            for i in range(self.n):
                tracker = Tracker(self.name, tags={**self.tags, "run": self.run_id, "epoch": i})
                region = tracker.__enter__()
                try:
                    yield i
                finally:
                    tracker.__exit__(None, None, None)
                # Never waits for the sampler: the epochs counted now are earlier ones (_runs.lag).
                for k, r in self._lag.ended(i, region, joint):
                    self._epoch_done(k, r, joint)
                if joint and i == 0:
                    self._joint_stop()  # the same collectives at every epoch end, on every rank
                reason = self._stop_requested
                if reason is not None and i < self.n - 1:
                    self.stop_reason = reason
                    break
            completed = True
            self._count_rest(joint)  # every rank is here: the loop ended or stopped jointly
        finally:
            if not completed:
                done = len(self._epochs) + len(self._lag)
                self._count_rest(False)  # not every rank may be here: no collective
                if self.stop_reason is None:
                    self.stop_reason = (
                        f"the loop was left during epoch {done + 1} of {self.n} "
                        "(break or exception); that epoch is not counted"
                    )
            self._finish()

    def _count_rest(self, joint: bool) -> None:
        """The ended epochs not counted yet (waits for the sampler: the loop is over)."""
        reason = self._stop_requested
        rest = self._lag.rest()
        if rest and not joint and self.engine != "local":
            self._note(
                f"epoch {rest[0][0]} was counted after the loop was left: this rank's figures "
                "only, not summed over the job's ranks"
            )
        for k, r in rest:
            self._epoch_done(k, r, joint)
        self._stop_requested = reason  # the loop is over: nothing more to stop

    def _join_job(self) -> None:
        """In a distributed job: the engine for the job's figures, rank 0's run id, and this
        rank's log directory. (A collective when an engine is initialised.)"""
        rt = None
        with contextlib.suppress(Exception):
            rt = process.runtime()
        info = rt.rank_info if rt is not None else None
        self.engine = engine()
        if self.engine != "local":
            joined = gather_objects((self.run_id, self.n))
            if not self._run_id_given and joined:
                self.run_id = str(joined[0][0])
            self.engine = engine()  # "local" when that collective failed (a peer gone)
            counts = [int(n) for _, n in joined]
            if len(set(counts)) > 1:
                # Every rank sees the same list: all of them leave the job's sums alike, so
                # none waits at an epoch end the others never reach.
                self.engine = "local"
                self._note(
                    "the job's ranks run loops of different lengths ("
                    + ", ".join(f"rank {k}: {c}" for k, c in enumerate(counts))
                    + " epochs): this run's figures are this rank's figures only, not summed "
                    "over the job's ranks, and budget decisions are not joint (give every rank "
                    "the same epochs(n))"
                )
        elif info is not None and info.distributed and failure() is not None:
            self._note(
                f"an earlier collective over the job's ranks failed ({failure()}): this run's "
                "figures are this rank's figures only, and budget decisions are not joint"
            )
        elif info is not None and info.distributed:
            self._note(
                "this process is rank "
                f"{info.rank} of {info.world_size}, but neither torch.distributed nor MPI "
                "(mpi4py) is initialised when the loop starts: the run's figures are this "
                "rank's only, and budget decisions are not joint"
            )
        if info is not None and info.distributed:
            self._rank = rank_fields(info)
        directory = self._log_dir
        if directory is not None and info is not None:
            # A directory: a plain one gets a rank<N> folder per rank in a job.
            directory = expand_path(str(directory).rstrip("/\\") + "/", info)
        self._log = RunLogWriter(directory, self._note)

    def _warm_up(self) -> None:
        """Start the sampler and let it settle before the first epoch, whose energy the first
        forecast extrapolates: a region that opens as the sampler starts is less exact."""
        with contextlib.suppress(Exception):
            rt = process.runtime()
            if rt.sampler_or_start() is not None:
                rt.flush(timeout=1.0)

    # ------------------------------------------------------------------ per epoch

    def _joint_stop(self) -> None:
        """Whether any rank asked to stop (a collective)."""
        stop = any_rank(self._stop_requested is not None)
        if stop and self._stop_requested is None:
            self._stop_requested = stop_reason_of_others()

    def _epoch_done(self, i: int, region: Region, joint: bool) -> None:
        try:
            m: Measurement | None = region.result()
        except CarbonctxError as e:
            self._note(f"epoch {i}: no measurement ({e}); it counts as 0 J")
            m = None
        ep = self._rank_epoch(i, m)
        self._rank_epochs.append(ep)
        job_ep = ep
        parts: dict[str, float | None] = {}
        if joint:
            # Every rank reaches this point once per epoch: the sum is a collective.
            job_ep, parts = reduce_epoch(ep, m)
            why = failure()
            if why is not None:  # the sum failed (or an earlier one did): this rank's own
                job_ep, parts = ep, {}
            if why is not None and not self._alone_since:
                self._alone_since = f"epoch {i}"
                self._note(
                    f"a collective over the job's ranks failed by epoch {i} ({why}): the run's "
                    f"figures from epoch {i} on are this rank's figures only, not summed over "
                    "the job's ranks, and its budget decisions are not joint"
                )
        self._epochs.append(job_ep)
        self._job_parts.append(parts)
        fc: RunTotals | None = None
        try:
            fc = self._after_epoch(i)
        finally:
            if joint:
                self._joint_stop()  # every rank stops at the same boundary
        self._log.write(
            epoch_record(self.run_id, ep, fc, job=job_ep if parts else None, parts=parts)
            | self._rank
        )
        self._progress.show(self.name, self.n, self.actual, self.forecast)

    def _rank_epoch(self, i: int, m: Measurement | None) -> Epoch:
        if m is not None:
            return Epoch(
                index=i,
                start=m.start,
                end=m.end,
                duration_s=m.duration_s,
                energy_j=m.energy_j,
                uncertainty_j=m.uncertainty_j or 0.0,
                co2_g=m.co2_g,
                measurement=m,
                node_j=m.node_j,
            )
        now = time.time()
        prev_end = self._rank_epochs[-1].end if self._rank_epochs else now
        return Epoch(i, prev_end, now, now - prev_end, 0.0, 0.0, None, None)

    def _after_epoch(self, i: int) -> RunTotals | None:
        """The forecast after epoch ``i`` and the budget check against it."""
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
        return fc

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
        self._log.write(rec | self._rank)
        self._log.close()
        if not self.quiet and self._epochs:
            say(final_text(self.name, self.n, self.actual, self.first_forecast, self.stop_reason))

    def final_record(self) -> dict[str, Any]:
        """The final log record: actual and forecast side by side, budget, reason, provenance."""
        actual = self.rank_actual
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
            job_actual=self.actual if self.engine != "local" else None,
            engine=self.engine if self._rank else None,
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
                | self._rank
            )

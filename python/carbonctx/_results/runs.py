"""A run of epochs in figures: :class:`RunTotals` (forecast or actual) and :class:`RunLog`
(a run read back from its log)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from carbonctx._results.units import J_PER_KWH, format_grams, format_kwh, format_seconds

__all__ = ["CONFIDENCE", "JobTotal", "RunLog", "RunTotals", "format_run_totals"]

#: Confidence level of forecast intervals.
CONFIDENCE = 0.95


@attrs.frozen(slots=True)
class RunTotals:
    """Duration, energy and CO2 of a whole run (``run.forecast``) or of its epochs so far
    (``run.actual``), each with an interval.

    ``duration_s`` is wall-clock time from the first epoch's start to the last one's end (work
    between epochs included); ``energy_j`` is the sum of the epochs' energy (work between epochs
    is not measured); ``co2_g`` applies the zone's intensity and the PUE in use (None when no
    intensity is known). ``*_low`` / ``*_high`` bound each figure: for a forecast, a
    ``confidence`` prediction interval for the whole run; for the actual, the measurement's own
    uncertainty. ``method`` says how the interval was found, ``intensity_basis`` which intensity
    the CO2 used. (Formerly ``Estimate``, a name kept as an alias.)

    Where the node's wall power is measured (a BMC, an ACPI power meter), ``node_j`` is the
    node's energy over the epochs (this rank's share, or the job's sum, as ``energy_j``) and
    ``overhead_j`` what the components do not explain (see :attr:`Measurement.overhead_j`);
    both None otherwise, and for a forecast.
    """

    __module__ = "carbonctx"  # public as carbonctx.RunTotals: help(), reprs, pickles

    epochs_done: int
    epochs_total: int
    duration_s: float
    duration_s_low: float
    duration_s_high: float
    energy_j: float
    energy_j_low: float
    energy_j_high: float
    co2_g: float | None
    co2_g_low: float | None
    co2_g_high: float | None
    method: str
    intensity_basis: str | None = None
    confidence: float | None = CONFIDENCE
    at: float = 0.0
    node_j: float | None = None
    overhead_j: float | None = None

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / J_PER_KWH

    @property
    def energy_kwh_low(self) -> float:
        return self.energy_j_low / J_PER_KWH

    @property
    def energy_kwh_high(self) -> float:
        return self.energy_j_high / J_PER_KWH

    @property
    def co2_kg(self) -> float | None:
        return None if self.co2_g is None else self.co2_g / 1e3

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        if self.node_j is None:
            del d["node_j"], d["overhead_j"]  # records without a node meter stay as they were
        d["energy_kwh"] = self.energy_kwh
        return d

    def __str__(self) -> str:
        return format_run_totals(self)


def _with_range(v: float, lo: float, hi: float, fmt: Callable[[float], str]) -> str:
    if fmt(lo) == fmt(hi):
        return fmt(v)
    return f"{fmt(v)} ({fmt(lo)} to {fmt(hi)})"


def format_run_totals(e: RunTotals) -> str:
    """One line: duration, energy and CO2 with their intervals."""
    parts = [
        _with_range(e.duration_s, e.duration_s_low, e.duration_s_high, format_seconds),
        _with_range(e.energy_j, e.energy_j_low, e.energy_j_high, format_kwh),
    ]
    if e.co2_g is not None and e.co2_g_low is not None and e.co2_g_high is not None:
        parts.append(_with_range(e.co2_g, e.co2_g_low, e.co2_g_high, format_grams) + " CO2e")
    else:
        parts.append("CO2e unknown")
    return ", ".join(parts)


@attrs.frozen(slots=True)
class RunLog:
    """One run read back from its JSON Lines log."""

    path: str
    run: str
    name: str
    epochs_planned: int
    epochs: tuple[dict[str, Any], ...]
    final: dict[str, Any] | None
    start: dict[str, Any] | None
    bad_lines: int = 0

    @property
    def complete(self) -> bool:
        return self.final is not None

    @property
    def energy_j(self) -> float:
        if self.final is not None:
            return float(self.final["actual"]["energy_j"])
        return sum(float(e.get("energy_j") or 0.0) for e in self.epochs)

    @property
    def co2_g(self) -> float | None:
        if self.final is not None:
            v = self.final["actual"].get("co2_g")
            return None if v is None else float(v)
        vals = [e.get("co2_g") for e in self.epochs]
        if not vals or any(v is None for v in vals):
            return None
        return sum(float(v) for v in vals if v is not None)

    @property
    def duration_s(self) -> float:
        if self.final is not None:
            return float(self.final["actual"]["duration_s"])
        if not self.epochs:
            return 0.0
        return float(self.epochs[-1]["end"]) - float(self.epochs[0]["start"])

    @property
    def first_forecast(self) -> dict[str, Any] | None:
        if self.final is not None and self.final.get("forecast_first"):
            f: dict[str, Any] = self.final["forecast_first"]
            return f
        for e in self.epochs:
            if e.get("forecast"):
                f = e["forecast"]
                return f
        return None

    @property
    def stop_reason(self) -> str | None:
        if self.final is None:
            return "no final record (the process ended before the run did)"
        r = self.final.get("stop_reason")
        return None if r is None else str(r)

    @property
    def budget(self) -> dict[str, Any] | None:
        if self.final is not None:
            b: dict[str, Any] | None = self.final.get("budget")
            return b
        if self.start is not None:
            return {
                "budget_kwh": self.start.get("budget_kwh"),
                "budget_co2_kg": self.start.get("budget_co2_kg"),
            }
        return None

    @property
    def started(self) -> float:
        if self.start is not None and self.start.get("started"):
            return float(self.start["started"])
        if self.epochs:
            return float(self.epochs[0].get("start") or 0.0)
        return 0.0


@attrs.frozen(slots=True)
class JobTotal:
    """Energy and CO2 summed over every rank of a distributed job (:func:`carbonctx.job_total`).

    ``ranks`` is how many processes were summed (1 outside a job), ``engine`` what summed them
    (``"torch"``, ``"mpi"`` or ``"local"``). ``co2_g`` is None when a rank had no CO2 figure.
    ``of`` says what was totalled; ``forecast`` is the job's forecast when a run was totalled.
    """

    __module__ = "carbonctx"  # public as carbonctx.JobTotal: help(), reprs, pickles

    of: str
    ranks: int
    engine: str
    energy_j: float
    cpu_j: float
    dram_j: float
    gpu_j: float
    uncertainty_j: float
    co2_g: float | None
    forecast: RunTotals | None = None
    #: The nodes' wall energy summed over the ranks (each rank's share of its node's), where
    #: every rank measures its node's (None otherwise).
    node_j: float | None = None

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / J_PER_KWH

    @property
    def co2_kg(self) -> float | None:
        return None if self.co2_g is None else self.co2_g / 1e3

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self, recurse=False)
        if self.node_j is None:
            del d["node_j"]
        d["forecast"] = self.forecast.to_dict() if self.forecast is not None else None
        d["energy_kwh"] = self.energy_kwh
        return d

    def __str__(self) -> str:
        co2 = format_grams(self.co2_g) + " CO2e" if self.co2_g is not None else "CO2e unknown"
        return f"job total over {self.ranks} ranks: {format_kwh(self.energy_j)}, {co2}"

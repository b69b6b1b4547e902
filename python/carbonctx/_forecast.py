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
zone, intensity and PUE came from). :func:`report_dir` summarises a directory of such logs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import IO, Any

import attrs

from carbonctx import _runtime
from carbonctx._report import (
    J_PER_KWH,
    Measurement,
    _fmt_g,
    _fmt_j,
    _fmt_s,
    format_table,
    read_json_lines,
)
from carbonctx._tracker import Region, Tracker
from carbonctx.errors import CarbonctxError, CarbonctxWarning, ConfigurationError

__all__ = [
    "Equivalent",
    "Estimate",
    "PueSuggestion",
    "Run",
    "epochs",
    "equivalents",
    "pue_suggestion",
    "read_run_logs",
    "report_dir",
]

#: Confidence level of forecast intervals.
CONFIDENCE = 0.95

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a 95% interval)."""
    if df < 1:
        return math.inf
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    # Cornish-Fisher expansion: within 1e-4 of the exact value for df > 30.
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


# ---------------------------------------------------------------------------------------------
# Value objects


@attrs.frozen(slots=True)
class Estimate:
    """Duration, energy and CO2 of a whole run (``run.forecast``) or of its epochs so far
    (``run.actual``), each with an interval.

    ``duration_s`` is wall-clock time from the first epoch's start to the last one's end (work
    between epochs included); ``energy_j`` is the sum of the epochs' energy (work between epochs
    is not measured); ``co2_g`` applies the zone's intensity and the PUE in use (None when no
    intensity is known). ``*_low`` / ``*_high`` bound each figure: for a forecast, a
    ``confidence`` prediction interval for the whole run; for the actual, the measurement's own
    uncertainty. ``method`` says how the interval was found, ``intensity_basis`` which intensity
    the CO2 used.
    """

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
        d["energy_kwh"] = self.energy_kwh
        return d

    def __str__(self) -> str:
        return format_estimate(self)


@attrs.frozen(slots=True)
class Equivalent:
    """An everyday equivalent of an amount of CO2 or energy, with its source and year.

    ``str(eq)`` reads like ``"12.3 km driven by an average new car in the EU"``; ``citation``
    names the figure used and where it comes from.
    """

    id: str
    value: float
    unit: str
    label: str
    basis: str
    per_unit: float
    per_unit_unit: str
    source: str
    year: int
    url: str

    @property
    def citation(self) -> str:
        return f"{self.per_unit:g} {self.per_unit_unit}, {self.source}, {self.year} ({self.url})"

    def __str__(self) -> str:
        value, unit = _readable(self.value, self.unit)
        return f"{_fmt_num(value)} {unit} {self.label}"

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["text"] = str(self)
        return d


@attrs.frozen(slots=True)
class PueSuggestion:
    """A cloud provider's published PUE, offered (never applied) when the zone rule found that
    provider's region. Apply it with ``carbonctx.configure(pue=...)`` or ``CARBONCTX_PUE``."""

    cloud: str
    provider: str
    pue: float
    kind: str
    year: int
    source: str
    url: str

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.provider} publishes a PUE of {self.pue:g} ({self.kind}, {self.year}; "
            f"{self.source}). Not applied: set carbonctx.configure(pue={self.pue:g}) or "
            f"CARBONCTX_PUE={self.pue:g} to count facility overhead."
        )


@functools.lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = resources.files("carbonctx").joinpath("data/equivalents.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def equivalents(*, co2_g: float | None = None, energy_j: float | None = None) -> list[Equivalent]:
    """Everyday equivalents of ``co2_g`` grams of CO2e and ``energy_j`` joules, each cited::

    for eq in carbonctx.equivalents(co2_g=1200.0, energy_j=3.6e6):
        print(eq, "-", eq.citation)
    """
    out: list[Equivalent] = []
    for e in _data()["equivalents"]:
        if e["basis"] == "co2":
            if co2_g is None:
                continue
            value = float(co2_g) / float(e["per_unit"])
        else:
            if energy_j is None:
                continue
            value = float(energy_j) / J_PER_KWH / float(e["per_unit"])
        out.append(
            Equivalent(
                id=e["id"],
                value=value,
                unit=e["unit"],
                label=e["label"],
                basis=e["basis"],
                per_unit=float(e["per_unit"]),
                per_unit_unit=e["per_unit_unit"],
                source=e["source"],
                year=int(e["year"]),
                url=e["url"],
            )
        )
    return out


def pue_suggestion(cloud: str | None) -> PueSuggestion | None:
    """The published PUE of cloud ``cloud`` (``"aws"``, ``"gcp"``, ``"azure"``), if known."""
    if not cloud:
        return None
    p = _data()["cloud_pue"].get(cloud)
    if p is None:
        return None
    return PueSuggestion(
        cloud=cloud,
        provider=p["provider"],
        pue=float(p["pue"]),
        kind=p["kind"],
        year=int(p["year"]),
        source=p["source"],
        url=p["url"],
    )


# ---------------------------------------------------------------------------------------------
# Formatting


_SMALLER: dict[str, tuple[tuple[str, float], ...]] = {
    "km": (("m", 1e-3),),
    "days": (("hours", 1 / 24), ("minutes", 1 / 1440), ("seconds", 1 / 86400)),
}


def _readable(value: float, unit: str) -> tuple[float, str]:
    """Small amounts in a smaller unit: 0.004 km is 4 m, 0.01 days about 14 minutes."""
    for smaller, size in _SMALLER.get(unit, ()):
        if abs(value) >= 1:
            break
        value, unit = value * (_unit_size(unit) / size), smaller
    return value, unit


def _unit_size(unit: str) -> float:
    for base, options in _SMALLER.items():
        if unit == base:
            return 1.0
        for name, size in options:
            if name == unit:
                return size
    return 1.0


def _fmt_num(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"


def fmt_kwh(j: float) -> str:
    """Energy in kWh with sensible precision (Wh below 0.1 kWh, J below 0.1 Wh)."""
    kwh = j / J_PER_KWH
    if abs(kwh) >= 0.1:
        return f"{kwh:.3g} kWh" if abs(kwh) < 100 else f"{kwh:,.0f} kWh"
    if abs(kwh) * 1e3 >= 0.1:
        return f"{kwh * 1e3:.3g} Wh"
    return _fmt_j(j)


def _with_range(v: float, lo: float, hi: float, fmt: Callable[[float], str]) -> str:
    if fmt(lo) == fmt(hi):
        return fmt(v)
    return f"{fmt(v)} ({fmt(lo)} to {fmt(hi)})"


def format_estimate(e: Estimate) -> str:
    """One line: duration, energy and CO2 with their intervals."""
    parts = [
        _with_range(e.duration_s, e.duration_s_low, e.duration_s_high, _fmt_s),
        _with_range(e.energy_j, e.energy_j_low, e.energy_j_high, fmt_kwh),
    ]
    if e.co2_g is not None and e.co2_g_low is not None and e.co2_g_high is not None:
        parts.append(_with_range(e.co2_g, e.co2_g_low, e.co2_g_high, _fmt_g) + " CO2e")
    else:
        parts.append("CO2e unknown")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The run


@attrs.frozen(slots=True)
class _Epoch:
    index: int
    start: float
    end: float
    duration_s: float
    energy_j: float
    uncertainty_j: float
    co2_g: float | None
    measurement: Measurement | None


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)


_ID_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _new_run_id(name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{stamp}-{_ID_SAFE.sub('_', name)[:40]}-{secrets.token_hex(3)}"


OnBudget = str | Callable[["Run"], object]


class Run:
    """What :func:`epochs` returns: iterate it for the epoch indices.

    ``forecast`` and ``actual`` are :class:`Estimate` objects (``forecast`` is None until
    ``forecast_after`` epochs have ended); ``stop_reason`` is None unless the run ended before
    its last epoch; ``epochs_done`` counts finished epochs; ``log_path`` is the JSON Lines log.
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
        self.budget_kwh = budget_kwh
        self.budget_co2_kg = budget_co2_kg
        self.on_budget = on_budget
        self.forecast_after = forecast_after
        self.tags = dict(tags) if tags else {}
        self.quiet = quiet
        self.run_id = run_id or _new_run_id(name)
        self.forecast: Estimate | None = None
        self.first_forecast: Estimate | None = None
        self.stop_reason: str | None = None
        self.budget_exceeded: dict[str, Any] | None = None
        self._epochs: list[_Epoch] = []
        self._started = False
        self._finished = False
        self._stop_requested: str | None = None
        self._notes: list[str] = []
        self._log: IO[str] | None = None
        self.log_path: Path | None = None
        if log_dir is None:
            env = os.environ.get("CARBONCTX_LOG_DIR", "").strip()
            log_dir = env or None
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._progress = _progress_enabled(progress)
        self._progress_width = 0

    def __repr__(self) -> str:
        state = "finished" if self._finished else f"{self.epochs_done}/{self.n} epochs"
        return f"<Run {self.run_id!r} {state}>"

    # ------------------------------------------------------------------ public state

    @property
    def epochs_done(self) -> int:
        return len(self._epochs)

    @property
    def epoch_energy_j(self) -> list[float]:
        """Energy of each finished epoch, in joules."""
        return [e.energy_j for e in self._epochs]

    @property
    def actual(self) -> Estimate:
        """Duration, energy and CO2 of the epochs so far (interval: measurement uncertainty)."""
        eps = self._epochs
        if not eps:
            return Estimate(0, self.n, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, "measured")
        energy = sum(e.energy_j for e in eps)
        unc = sum(e.uncertainty_j for e in eps)
        co2s = [e.co2_g for e in eps]
        co2 = None if any(c is None for c in co2s) else sum(c for c in co2s if c is not None)
        duration = eps[-1].end - eps[0].start
        lo, hi = max(energy - unc, 0.0), energy + unc
        co2_lo = co2_hi = None
        if co2 is not None:
            scale = co2 / energy if energy > 0 else 0.0
            co2_lo, co2_hi = lo * scale, hi * scale
        return Estimate(
            epochs_done=len(eps),
            epochs_total=self.n,
            duration_s=duration,
            duration_s_low=duration,
            duration_s_high=duration,
            energy_j=energy,
            energy_j_low=lo,
            energy_j_high=hi,
            co2_g=co2,
            co2_g_low=co2_lo,
            co2_g_high=co2_hi,
            method="measured (interval: the sampler's uncertainty at epoch edges)",
            intensity_basis=self._actual_basis(),
            confidence=None,
            at=eps[-1].end,
        )

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
            rt = _runtime.runtime()
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
            ep = _Epoch(
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
            ep = _Epoch(i, prev_end, now, now - prev_end, 0.0, 0.0, None, None)
        self._epochs.append(ep)
        fc: Estimate | None = None
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
                        self._clear_progress()
                        print(self._forecast_text(fc), file=sys.stderr, flush=True)
                self._check_budget(fc, i)
        self._write(self._epoch_record(ep, fc))
        self._show_progress()

    def _make_forecast(self) -> Estimate:
        eps = self._epochs
        k = len(eps)
        r = self.n - k
        energies = [e.energy_j for e in eps]
        walls = [eps[0].end - eps[0].start] + [eps[j].end - eps[j - 1].end for j in range(1, k)]
        e_mean, e_std = _mean_std(energies)
        w_mean, w_std = _mean_std(walls)
        actual = self.actual
        e_total = actual.energy_j + r * e_mean
        d_total = actual.duration_s + r * w_mean
        if r == 0:
            method = "complete: the forecast is the measurement"
            e_half = 0.0
            d_half = 0.0
        elif k == 1:
            method = (
                "single-epoch extrapolation (its interval is the measurement's uncertainty "
                "only: how epochs vary is not known yet)"
            )
            e_half = (self.n) * eps[0].uncertainty_j
            d_half = 0.0
        else:
            t = t975(k - 1)
            spread = math.sqrt(r + r * r / k)
            e_half = t * e_std * spread
            d_half = t * w_std * spread
            method = f"{CONFIDENCE:.0%} prediction interval (Student's t) from {k} epochs"
        # CO2: measured epochs as measured; the remaining ones over the predicted span.
        co2 = co2_lo = co2_hi = None
        basis: str | None = None
        e_rem = r * e_mean
        if actual.co2_g is not None:
            rem_g_per_j, basis = self._remaining_intensity(e_rem, r * w_mean, eps[-1].end)
            if rem_g_per_j is not None:
                lo_rem = max(e_rem - e_half, 0.0)
                hi_rem = e_rem + e_half
                co2 = actual.co2_g + e_rem * rem_g_per_j
                co2_lo = (actual.co2_g_low or 0.0) + lo_rem * rem_g_per_j
                co2_hi = (actual.co2_g_high or 0.0) + hi_rem * rem_g_per_j
        return Estimate(
            epochs_done=k,
            epochs_total=self.n,
            duration_s=d_total,
            duration_s_low=max(d_total - d_half, actual.duration_s),
            duration_s_high=d_total + d_half,
            energy_j=e_total,
            energy_j_low=max(e_total - e_half, actual.energy_j_low),
            energy_j_high=e_total + e_half if r else actual.energy_j_high,
            co2_g=co2,
            co2_g_low=co2_lo,
            co2_g_high=co2_hi,
            method=method,
            intensity_basis=basis,
            confidence=CONFIDENCE if r else None,
            at=eps[-1].end,
        )

    def _service(self) -> Any:
        rt = _runtime.current_runtime() or _runtime.runtime()
        return rt.intensity()

    def _remaining_intensity(
        self, energy_j: float, span_s: float, start: float
    ) -> tuple[float | None, str | None]:
        """(g per J, basis) for the remaining epochs over ``[start, start + span_s]``."""
        last = self._epochs[-1].measurement
        if energy_j <= 0 or span_s <= 0:
            return (
                (last.co2_g / last.energy_j if last and last.co2_g and last.energy_j else 0.0),
                self._actual_basis(),
            )
        svc = self._service()
        if svc is None:
            return None, None
        end = start + span_s
        periods = svc.forecast(start, end)
        c = svc.co2(energy_j, start, end)
        g_per_j = c.co2_g / energy_j
        pue = f"PUE {c.pue:g}: {c.pue_source}"
        if periods:
            prov = periods[0].provider
            basis = (
                f"intensity forecast from {prov} over the predicted span "
                f"(mean {c.intensity_g_per_kwh:.0f} gCO2e/kWh, zone {c.zone.zone}); {pue}"
            )
        else:
            p = c.periods[0] if c.periods else None
            if p is not None and p.source == "table":
                what = f"the yearly table ({p.dataset})"
            elif p is not None:
                what = f"the current {p.source} value from {p.provider}"
            else:
                what = "the current value"
            basis = (
                f"{what}, {c.intensity_g_per_kwh:.0f} gCO2e/kWh for zone {c.zone.zone} "
                f"(no intensity forecast for this zone); {pue}"
            )
        return g_per_j, basis

    def _actual_basis(self) -> str | None:
        last = self._epochs[-1].measurement if self._epochs else None
        if last is None or last.carbon is None:
            return None
        c = last.carbon
        sources = ", ".join(c.get("sources") or [])
        zone = (c.get("zone") or {}).get("zone")
        return f"{sources or 'intensity'} values for zone {zone}"

    def _check_budget(self, fc: Estimate, i: int) -> None:
        if self.budget_exceeded is not None:
            return
        over: list[str] = []
        detail: dict[str, Any] = {}
        if self.budget_kwh is not None and fc.energy_kwh > self.budget_kwh:
            over.append(
                f"forecast energy {fc.energy_kwh:.4g} kWh exceeds budget_kwh={self.budget_kwh:g}"
            )
            detail["energy_kwh"] = {"forecast": fc.energy_kwh, "budget": self.budget_kwh}
        if (
            self.budget_co2_kg is not None
            and fc.co2_kg is not None
            and fc.co2_kg > self.budget_co2_kg
        ):
            over.append(
                f"forecast CO2e {fc.co2_kg:.4g} kg exceeds budget_co2_kg={self.budget_co2_kg:g}"
            )
            detail["co2_kg"] = {"forecast": fc.co2_kg, "budget": self.budget_co2_kg}
        if not over:
            return
        where = f"after epoch {i + 1} of {self.n}"
        text = "budget exceeded: " + "; ".join(over) + f" ({where})"
        self.budget_exceeded = {
            "after_epoch": i + 1,
            "action": self.on_budget if isinstance(self.on_budget, str) else "callback",
            "message": text,
            **detail,
        }
        if self.on_budget == "stop":
            if i < self.n - 1:
                self.stop(text + "; stopped")
        elif self.on_budget == "warn":
            warnings.warn(f"carbonctx run {self.run_id}: {text}", CarbonctxWarning, stacklevel=4)
        elif callable(self.on_budget):
            self.on_budget(self)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._clear_progress()
        if self._epochs:
            with contextlib.suppress(Exception):
                fc = self._make_forecast()
                self.forecast = fc
        rec = self.final_record()
        self._write(rec)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
        if not self.quiet and self._epochs:
            print(self._final_text(), file=sys.stderr, flush=True)

    def final_record(self) -> dict[str, Any]:
        """The final log record: actual and forecast side by side, budget, reason, provenance."""
        actual = self.actual
        eqs = equivalents(co2_g=actual.co2_g, energy_j=actual.energy_j)
        svc = None
        with contextlib.suppress(Exception):
            svc = self._service()
        carbon: dict[str, Any] | None = None
        if svc is not None:
            zc = svc.zone_choice
            sugg = pue_suggestion(getattr(zc, "cloud", None))
            carbon = {
                "zone": zc.to_dict(),
                "pue": svc.pue,
                "pue_source": svc.pue_source,
                "pue_suggestion": sugg.to_dict() if sugg else None,
                "actual_basis": actual.intensity_basis,
                "forecast_basis": (
                    self.first_forecast.intensity_basis if self.first_forecast else None
                ),
            }
        return {
            "kind": "run",
            "run": self.run_id,
            "name": self.name,
            "epochs_planned": self.n,
            "epochs_done": len(self._epochs),
            "completed": len(self._epochs) == self.n,
            "stop_reason": self.stop_reason,
            "actual": actual.to_dict(),
            "forecast_first": self.first_forecast.to_dict() if self.first_forecast else None,
            "forecast": self.forecast.to_dict() if self.forecast else None,
            "budget": {
                "budget_kwh": self.budget_kwh,
                "budget_co2_kg": self.budget_co2_kg,
                "on_budget": self.on_budget if isinstance(self.on_budget, str) else "callback",
                "exceeded": self.budget_exceeded,
            },
            "equivalents": [e.to_dict() for e in eqs],
            "carbon": carbon,
            "notes": list(self._notes),
            "tags": self.tags,
            "ended": time.time(),
        }

    # ------------------------------------------------------------------ output

    def _note(self, msg: str) -> None:
        if msg not in self._notes:
            self._notes.append(msg)
            warnings.warn(f"carbonctx run {self.run_id}: {msg}", CarbonctxWarning, stacklevel=4)

    def _open_log(self) -> None:
        if self._log_dir is None:
            return
        try:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self._log_dir / f"{self.run_id}.jsonl"
            self._log = open(self.log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as e:
            self._log = None
            self._note(f"cannot write the run log in {self._log_dir}: {e}")
            return
        self._write(
            {
                "kind": "run-start",
                "run": self.run_id,
                "name": self.name,
                "epochs_planned": self.n,
                "forecast_after": self.forecast_after,
                "budget_kwh": self.budget_kwh,
                "budget_co2_kg": self.budget_co2_kg,
                "pid": os.getpid(),
                "started": time.time(),
                "tags": self.tags,
            }
        )

    def _write(self, rec: Mapping[str, Any]) -> None:
        if self._log is None:
            return
        try:
            self._log.write(json.dumps(rec, default=_json_default, allow_nan=False) + "\n")
            self._log.flush()
        except (OSError, ValueError) as e:
            self._log = None
            self._note(f"cannot write the run log {self.log_path}: {e}")

    def _epoch_record(self, ep: _Epoch, fc: Estimate | None) -> dict[str, Any]:
        m = ep.measurement
        return {
            "kind": "epoch",
            "run": self.run_id,
            "epoch": ep.index,
            "start": ep.start,
            "end": ep.end,
            "duration_s": ep.duration_s,
            "energy_j": ep.energy_j,
            "cpu_j": m.cpu_j if m else None,
            "dram_j": m.dram_j if m else None,
            "gpu_j": m.gpu_j if m else None,
            "uncertainty_j": ep.uncertainty_j,
            "co2_g": ep.co2_g,
            "intensity": m.intensity if m else None,
            "zone": m.zone if m else None,
            "estimated": m.estimated if m else None,
            "missing": list(m.missing) if m else None,
            "forecast": fc.to_dict() if fc else None,
        }

    def _forecast_text(self, fc: Estimate) -> str:
        k = fc.epochs_done
        head = (
            f"carbonctx: forecast for {self.n} epochs of {self.name!r} after {k} "
            f"epoch{'s' if k != 1 else ''}: {format_estimate(fc)}"
        )
        why = fc.method
        if fc.intensity_basis:
            why += f"; CO2 uses {fc.intensity_basis}"
        return head + "\n  " + why

    def _final_text(self) -> str:
        a = self.actual
        line = f"carbonctx: {self.name!r} {a.epochs_done}/{self.n} epochs: {format_estimate(a)}"
        if self.first_forecast is not None and self.stop_reason is None:
            f = self.first_forecast
            if f.energy_j > 0 and a.energy_j > 0:
                err = (f.energy_j / a.energy_j - 1) * 100
                line += f"; first forecast {fmt_kwh(f.energy_j)} ({err:+.1f}%)"
        if self.stop_reason:
            line += f"\n  stopped: {self.stop_reason}"
        return line

    def _show_progress(self) -> None:
        if not self._progress:
            return
        a = self.actual
        text = f"carbonctx {self.name} {a.epochs_done}/{self.n}  {fmt_kwh(a.energy_j)} so far"
        fc = self.forecast
        if fc is not None:
            text += f"  forecast {fmt_kwh(fc.energy_j)}"
            if fc.co2_g is not None:
                text += f", {_fmt_g(fc.co2_g)} CO2e"
        pad = max(self._progress_width - len(text), 0)
        self._progress_width = len(text)
        with contextlib.suppress(Exception):
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()

    def _clear_progress(self) -> None:
        if self._progress and self._progress_width:
            with contextlib.suppress(Exception):
                sys.stderr.write("\r" + " " * self._progress_width + "\r")
                sys.stderr.flush()
            self._progress_width = 0


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    if os.environ.get("CARBONCTX_PROGRESS", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _json_default(o: object) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def _check_budget_arg(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{name}={value!r} is not a number: give a positive limit, or leave it out"
        ) from None
    if not (v > 0 and math.isfinite(v)):
        raise ConfigurationError(f"{name}={value!r} must be a positive, finite number")
    return v


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
        budget_kwh=_check_budget_arg(budget_kwh, "budget_kwh"),
        budget_co2_kg=_check_budget_arg(budget_co2_kg, "budget_co2_kg"),
        on_budget=on_budget,
        forecast_after=forecast_after,
        name=name,
        log_dir=log_dir,
        progress=progress,
        quiet=quiet,
        tags=tags,
        run_id=run_id,
    )


# ---------------------------------------------------------------------------------------------
# Reading run logs back


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


def read_run_log(path: str | os.PathLike[str]) -> RunLog | None:
    """Read one run log; None when the file holds no run records."""
    start: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    eps: list[dict[str, Any]] = []
    records, bad = read_json_lines(path)
    for rec in records:
        kind = rec.get("kind")
        if kind == "run-start":
            start = rec
        elif kind == "epoch":
            eps.append(rec)
        elif kind == "run":
            final = rec
    if start is None and final is None and not eps:
        return None
    src = final or start or {}
    run = str(src.get("run") or (eps[0].get("run") if eps else None) or Path(path).stem)
    planned = int(src.get("epochs_planned") or len(eps))
    eps.sort(key=lambda e: int(e.get("epoch", 0)))
    return RunLog(
        path=str(path),
        run=run,
        name=str(src.get("name") or "epoch"),
        epochs_planned=planned,
        epochs=tuple(eps),
        final=final,
        start=start,
        bad_lines=bad,
    )


def read_run_logs(directory: str | os.PathLike[str]) -> list[RunLog]:
    """Every run log (``*.jsonl`` with run records) in ``directory``, oldest first."""
    runs: list[RunLog] = []
    for p in sorted(Path(directory).glob("*.jsonl")):
        try:
            r = read_run_log(p)
        except (OSError, UnicodeDecodeError):
            continue
        if r is not None:
            runs.append(r)
    runs.sort(key=lambda r: (r.started, r.run))
    return runs


def format_runs(runs: Sequence[RunLog]) -> str:
    """The per-run table and the totals, as plain text."""
    rows = []
    for r in runs:
        ff = r.first_forecast
        fc_text = "-"
        if ff is not None and r.complete and r.stop_reason is None and r.energy_j > 0:
            err = (float(ff["energy_j"]) / r.energy_j - 1) * 100
            fc_text = f"{fmt_kwh(float(ff['energy_j']))} ({err:+.1f}%)"
        elif ff is not None:
            fc_text = fmt_kwh(float(ff["energy_j"]))
        co2 = r.co2_g
        status = "completed" if r.complete and r.stop_reason is None else "stopped"
        if not r.complete:
            status = "incomplete"
        elif r.budget and r.budget.get("exceeded"):
            status += ", over budget"
        rows.append(
            [
                r.run,
                f"{len(r.epochs)}/{r.epochs_planned}",
                _fmt_s(r.duration_s),
                fmt_kwh(r.energy_j),
                _fmt_g(co2) + " CO2e" if co2 is not None else "-",
                fc_text,
                status,
            ]
        )
    header = ["run", "epochs", "duration", "energy", "CO2e", "first forecast", "status"]
    table = format_table(header, rows)
    total_j = sum(r.energy_j for r in runs)
    co2s = [r.co2_g for r in runs]
    total_g = sum(c for c in co2s if c is not None)
    total = f"total: {len(runs)} runs, {sum(len(r.epochs) for r in runs)} epochs, "
    total += f"{_fmt_s(sum(r.duration_s for r in runs))}, {fmt_kwh(total_j)}"
    total += f" ({total_j:.6g} J), {_fmt_g(total_g)} CO2e"
    if any(c is None for c in co2s):
        total += " (some runs have no CO2 figure)"
    lines = [table, "", total]
    for eq in equivalents(co2_g=total_g, energy_j=total_j):
        lines.append(f"  ≈ {eq} ({eq.per_unit:g} {eq.per_unit_unit}; {eq.source}, {eq.year})")
    for r in runs:
        if r.stop_reason:
            lines.append(f"{r.run}: {r.stop_reason}")
    return "\n".join(lines)


def report_dir(path: str | os.PathLike[str], html_out: str | os.PathLike[str] | None = None) -> int:
    """``carbonctx report DIR``: print every run's totals and the sum; with ``html_out``, write
    a one-page HTML report with charts. Returns the exit status (0, or 2 when nothing could be
    read)."""
    d = Path(path)
    if not d.is_dir():
        print(f"carbonctx report: {d} is not a directory", file=sys.stderr)
        return 2
    try:
        runs = read_run_logs(d)
    except OSError as e:
        print(f"carbonctx report: cannot read {d}: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(
            f"carbonctx report: no run logs in {d} (runs write them with "
            "carbonctx.epochs(..., log_dir=DIR) or CARBONCTX_LOG_DIR)",
            file=sys.stderr,
        )
        return 2
    print(f"{d}: {len(runs)} runs")
    print(format_runs(runs))
    if html_out is not None:
        from carbonctx._html import render_report

        page = render_report(runs, title=f"carbonctx report: {d.name or d}")
        try:
            Path(html_out).write_text(page, encoding="utf-8")
        except OSError as e:
            print(f"carbonctx report: cannot write {html_out}: {e}", file=sys.stderr)
            return 2
        print(f"\nHTML report written to {html_out}")
    sys.stdout.flush()
    return 0

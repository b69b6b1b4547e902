"""Forecast maths: a run's total from its first epochs, with a prediction interval.

The forecast is the actual so far plus the remaining epochs times the mean epoch, with a 95%
prediction interval from how much the epochs have varied (Student's t; with a single epoch the
interval reflects only the measurement's uncertainty, and says it is a single-epoch
extrapolation). CO2 for the remaining epochs uses a g/J figure the caller finds (see
``_runs.intensity``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

from carbonctx._results.measurement import Measurement, overhead
from carbonctx._results.runs import CONFIDENCE, RunTotals

__all__ = ["Epoch", "actual_totals", "forecast_totals", "mean_std", "t975"]

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


@attrs.frozen(slots=True)
class Epoch:
    """One finished epoch as a run counts it (a missing measurement counts as 0 J)."""

    index: int
    start: float
    end: float
    duration_s: float
    energy_j: float
    uncertainty_j: float
    co2_g: float | None
    measurement: Measurement | None
    #: The node's wall energy (None without a node meter, or, for a job's epoch, when a rank
    #: had none).
    node_j: float | None = None


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, 0.0
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var)


def actual_totals(eps: Sequence[Epoch], n: int, intensity_basis: str | None) -> RunTotals:
    """Duration, energy and CO2 of the epochs so far (interval: measurement uncertainty)."""
    if not eps:
        return RunTotals(0, n, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, "measured")
    energy = sum(e.energy_j for e in eps)
    unc = sum(e.uncertainty_j for e in eps)
    co2s = [e.co2_g for e in eps]
    co2 = None if any(c is None for c in co2s) else sum(c for c in co2s if c is not None)
    duration = eps[-1].end - eps[0].start
    lo, hi = max(energy - unc, 0.0), energy + unc
    nodes = [e.node_j for e in eps]
    node = None if any(v is None for v in nodes) else sum(v for v in nodes if v is not None)
    co2_lo = co2_hi = None
    if co2 is not None:
        scale = co2 / energy if energy > 0 else 0.0
        co2_lo, co2_hi = lo * scale, hi * scale
    return RunTotals(
        epochs_done=len(eps),
        epochs_total=n,
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
        intensity_basis=intensity_basis,
        confidence=None,
        at=eps[-1].end,
        node_j=node,
        # Over the epochs' measured time (what energy_j covers), not the gaps between them.
        overhead_j=overhead(node, energy, sum(e.duration_s for e in eps)),
    )


#: ``(energy_j, span_s, start) -> (g per J, basis)`` for the remaining epochs.
RemainingIntensity = Callable[[float, float, float], tuple[float | None, str | None]]


def forecast_totals(
    eps: Sequence[Epoch], n: int, actual: RunTotals, remaining_intensity: RemainingIntensity
) -> RunTotals:
    """The whole run of ``n`` epochs forecast from ``eps`` (at least one)."""
    k = len(eps)
    r = n - k
    energies = [e.energy_j for e in eps]
    walls = [eps[0].end - eps[0].start] + [eps[j].end - eps[j - 1].end for j in range(1, k)]
    e_mean, e_std = mean_std(energies)
    w_mean, w_std = mean_std(walls)
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
        e_half = (n) * eps[0].uncertainty_j
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
        rem_g_per_j, basis = remaining_intensity(e_rem, r * w_mean, eps[-1].end)
        if rem_g_per_j is not None:
            lo_rem = max(e_rem - e_half, 0.0)
            hi_rem = e_rem + e_half
            co2 = actual.co2_g + e_rem * rem_g_per_j
            co2_lo = (actual.co2_g_low or 0.0) + lo_rem * rem_g_per_j
            co2_hi = (actual.co2_g_high or 0.0) + hi_rem * rem_g_per_j
    return RunTotals(
        epochs_done=k,
        epochs_total=n,
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

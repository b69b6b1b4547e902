"""Time-weighted means over intensity periods, and the lowest-carbon window of a forecast."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs

from carbonctx._carbon.intensity import UTC, Intensity

__all__ = ["Window", "lowest_carbon_window", "mean_over"]


@attrs.frozen
class Window:
    """A span in a forecast and its time-weighted mean intensity."""

    start: datetime
    end: datetime
    mean_g_per_kwh: float

    def to_dict(self) -> dict[str, object]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "mean_g_per_kwh": self.mean_g_per_kwh,
        }


def _blocks(periods: Iterable[Intensity]) -> list[list[tuple[float, float, float]]]:
    """Contiguous runs of ``(start, end, g)``, sorted, overlaps clipped."""
    spans = sorted(
        (p.valid_from.timestamp(), p.valid_to.timestamp(), p.g_per_kwh)
        for p in periods
        if p.valid_from is not None and p.valid_to is not None
    )
    blocks: list[list[tuple[float, float, float]]] = []
    for a, b, g in spans:
        if blocks and a < blocks[-1][-1][1]:
            a = blocks[-1][-1][1]  # overlaps the previous period: keep the earlier one's part
        if b <= a:
            continue
        if blocks and a == blocks[-1][-1][1]:
            blocks[-1].append((a, b, g))
        else:
            blocks.append([(a, b, g)])
    return blocks


def mean_over(periods: Iterable[Intensity], start: float, end: float) -> float | None:
    """Time-weighted mean intensity over ``[start, end]``, or None if not fully covered."""
    for block in _blocks(periods):
        if block[0][0] <= start and end <= block[-1][1] and end > start:
            total = sum(
                g * (min(b, end) - max(a, start)) for a, b, g in block if b > start and a < end
            )
            return total / (end - start)
    return None


def _integral(
    block: list[tuple[float, float, float]], starts: list[float], cum: list[float], t: float
) -> float:
    """Integral of intensity over time from the block's start to ``t`` (inside the block)."""
    i = max(0, bisect.bisect_right(starts, t) - 1)
    a, _, g = block[i]
    return cum[i] + g * (t - a)


def lowest_carbon_window(
    periods: Sequence[Intensity], hours: float, not_before: float | None = None
) -> Window | None:
    """The ``hours``-long span with the lowest mean intensity within the periods' coverage.

    A sliding-window minimum of the time-weighted mean: windows may start at ``not_before``
    (Unix seconds) at the earliest and must lie within one gap-free run of periods. The mean is
    piecewise linear in the start time, so its minimum lies where the window's start or end
    meets a period boundary, or at an end of the allowed range: those are the candidates.
    Returns None when no gap-free run is long enough.
    """
    length = hours * 3600.0
    if not (length > 0 and math.isfinite(length)):
        return None
    best: tuple[float, float] | None = None  # (mean, start)
    for block in _blocks(periods):
        lo = block[0][0] if not_before is None else max(block[0][0], not_before)
        hi = block[-1][1] - length
        if hi < lo:
            continue
        starts = [a for a, _, _ in block]
        cum = [0.0]
        for a, b, g in block:
            cum.append(cum[-1] + g * (b - a))
        cands = {lo, hi}
        for a, b, _ in block:
            for s in (a, b - length):
                if lo <= s <= hi:
                    cands.add(s)
        for s in sorted(cands):
            mean = (
                _integral(block, starts, cum, s + length) - _integral(block, starts, cum, s)
            ) / length
            if best is None or mean < best[0] - 1e-9:
                best = (mean, s)
    if best is None:
        return None
    mean, s = best
    return Window(
        start=datetime.fromtimestamp(s, UTC),
        end=datetime.fromtimestamp(s + length, UTC),
        mean_g_per_kwh=mean,
    )

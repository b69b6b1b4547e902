"""Answers from the cache of a live provider: the value for now, the values over a span, the
forecast; each labelled ``"live"`` while its fetch is fresh and ``"cached"`` (with why) after.

Where the cache has nothing usable, the zone's yearly table answers, and its note says why.
"""

from __future__ import annotations

import math

import attrs

from carbonctx._carbon.cache import CachedSeries
from carbonctx._carbon.intensity import Intensity
from carbonctx._carbon.providers import Provider
from carbonctx._carbon.refresh import Refresher
from carbonctx._carbon.tables import table_intensity
from carbonctx._carbon.zones import ZoneChoice

__all__ = ["LiveValues"]


class LiveValues:
    """Reads the refresher's cached series (under its lock); never fetches, never raises."""

    def __init__(self, provider: Provider, refresher: Refresher, zone_choice: ZoneChoice) -> None:
        self.provider = provider
        self._refresher = refresher
        self._zone_choice = zone_choice

    def current(self, now: float) -> Intensity:
        """The best value for ``now``: a period covering it, else a recent one within the
        provider's ``max_age_s``, else the yearly table."""
        prov = self.provider
        ref = self._refresher
        with ref.lock:
            recent, fc = ref.series["recent"], ref.series["forecast"]
            p = recent.at(now)
            if p is not None:
                return self._mark(p, recent, now)
            p = fc.at(now)
            if p is not None:
                return self._mark(p, fc, now)
            latest = recent.latest_before(now)
            reason = self._unavailable()
        if (
            latest is not None
            and latest.valid_to is not None
            and latest.valid_from is not None
            and now - latest.valid_to.timestamp() <= prov.max_age_s
        ):
            marked = self._mark(latest, recent, now)
            newest = f"newest {prov.id} value is for {latest.valid_from:%Y-%m-%d %H:%M}Z"
            return attrs.evolve(marked, note=f"{newest}; {marked.note}" if marked.note else newest)
        return table_intensity(
            self._zone_choice, note=f"live value unavailable ({reason}); used the yearly table"
        )

    def segments(self, start: float, end: float, now: float) -> list[tuple[Intensity, float]]:
        """``(value, seconds)`` covering ``[start, end]``: cached periods where there are some,
        the best current value in the gaps (an empty span: the value at ``start``, weight 1)."""
        ref = self._refresher
        segments: list[tuple[Intensity, float]] = []
        with ref.lock:  # a consistent view while the refresh thread may update the series
            series_list = [s for s in (ref.series["recent"], ref.series["forecast"]) if s.starts]
            if not (end - start > 0 and math.isfinite(end - start)):
                for series in series_list:
                    p = series.at(start)
                    if p is not None:
                        return [(self._mark(p, series, now), 1.0)]
                return [(self.current(now), 1.0)]
            fallback: Intensity | None = None
            t = start
            while t < end:
                used: Intensity | None = None
                seg_end = end
                for series in series_list:
                    p = series.at(t)
                    if p is not None and p.valid_to is not None:
                        used = self._mark(p, series, now)
                        seg_end = min(end, p.valid_to.timestamp())
                        break
                if used is None:
                    for series in series_list:
                        n = series.next_start(t)
                        if n is not None:
                            seg_end = min(seg_end, n)
                    if fallback is None:
                        fallback = self.current(now)
                    used = fallback
                if seg_end <= t:  # cannot happen with well-formed periods; stay finite anyway
                    seg_end = end
                segments.append((used, seg_end - t))
                t = seg_end
        return segments

    def forecast(self, start: float, end: float, now: float) -> list[Intensity] | None:
        """Cached forecast periods overlapping ``[start, end]`` (``"cached"`` once not fresh)."""
        ref = self._refresher
        with ref.lock:
            series = ref.series["forecast"]
            fresh = ref.fresh(series, now)
            found = [
                p
                for s in series.starts
                if (p := series.periods[s]).valid_to is not None
                and p.valid_from is not None
                and p.valid_to.timestamp() > start
                and p.valid_from.timestamp() < end
            ]
        if not found:
            return None
        return found if fresh else [attrs.evolve(p, source="cached") for p in found]

    def _mark(self, p: Intensity, series: CachedSeries, now: float) -> Intensity:
        """``p`` as served now: ``"cached"``, with the reason, once its fetch is not fresh."""
        if self._refresher.fresh(series, now):
            return p
        if series.failure is not None:
            why = f"kept from an earlier fetch; {series.failure.reason}"
        else:
            why = "kept from an earlier fetch; a refresh is due"
        return attrs.evolve(p, source="cached", note=why)

    def _unavailable(self) -> str:
        prov = self.provider
        series = self._refresher.series["recent"]
        if series.failure is not None:
            return series.failure.reason
        if series.fetched_at is None:
            return f"{prov.id} has not answered yet"
        return f"{prov.id} has no value for now"

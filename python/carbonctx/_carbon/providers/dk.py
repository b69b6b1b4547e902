"""Denmark: Energi Data Service ``CO2Emis`` and ``CO2EmisProg`` (DK1, DK2)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar

import attrs

from carbonctx._carbon.intensity import Intensity, parse_time, utc_from_timestamp
from carbonctx._carbon.providers.base import Fetched, ProviderError
from carbonctx._carbon.providers.http import (
    DEFAULT_LIMITS,
    Limits,
    get_json,
    intensity_number,
    malformed,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["DkProvider"]


@attrs.define
class DkProvider:
    """Energi Data Service ``CO2Emis`` (5-minute values) and ``CO2EmisProg`` (forecast).

    The service takes one request per dataset per minute from one address (its API guide, since
    August 2025) and answers more with HTTP 429, without ``Retry-After``. This provider asks at
    most once per dataset per minute, raising a ``"throttled"`` error instead of sending a
    request too soon; a 429 all the same means another program at the same address (another
    process, another host behind the same NAT) asked within the minute: it is backed off as any
    429 is, a minute, doubling while it lasts.
    """

    base_url: str
    limits: Limits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)
    clock: Callable[[], float]
    min_interval_s: float = 60.0
    _last: dict[str, float] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    id: ClassVar[str] = "dk"
    name: ClassVar[str] = "Energi Data Service"
    ttl_s: ClassVar[float] = 300.0
    max_age_s: ClassVar[float] = 3600.0
    has_forecast: ClassVar[bool] = True
    signal: ClassVar[str] = "average"
    _AREAS: ClassVar[dict[str, str]] = {"DK-DK1": "DK1", "DK-DK2": "DK2"}
    _STEP: ClassVar[timedelta] = timedelta(minutes=5)

    def covers(self, zone: str) -> bool:
        return zone in self._AREAS

    def _acquire(self, dataset: str) -> None:
        with self._lock:
            now = self.clock()
            last = self._last.get(dataset)
            if last is not None and now < last:
                # the clock was set back since: how long ago that request was is unknown (a
                # fraction of a second, after an NTP step), so the minute counts from now
                self._last[dataset] = last = now
            if last is not None and now - last < self.min_interval_s:
                wait = self.min_interval_s - (now - last)
                raise ProviderError(
                    "throttled",
                    f"{self.name}: {dataset} was asked less than a minute ago",
                    retry_after=wait,
                )
            self._last[dataset] = now

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        area = self._AREAS[zone]
        t = utc_from_timestamp(now).replace(second=0, microsecond=0)
        if kind == "forecast":
            dataset, start, end = "CO2EmisProg", t - self._STEP, t + timedelta(days=2)
        else:
            dataset, start, end = "CO2Emis", t - timedelta(hours=24), t + self._STEP
        self._acquire(dataset)
        params = {
            "start": start.strftime("%Y-%m-%dT%H:%M"),
            "end": end.strftime("%Y-%m-%dT%H:%M"),
            "timezone": "UTC",
            "filter": json.dumps({"PriceArea": [area]}, separators=(",", ":")),
            "sort": "Minutes5UTC ASC",
            "limit": "1000",
        }
        try:
            body = get_json(
                client,
                f"{self.base_url}/dataset/{dataset}",
                name=self.name,
                now=now,
                params=params,
                limits=self.limits,
            )
        except ProviderError as exc:
            if exc.kind != "rate-limited" or exc.retry_after is not None:
                raise
            # one request per dataset per minute from an address: this process kept to it, so
            # another program at the same address asked (no ban to wait out: the minute passes)
            raise ProviderError(
                exc.kind,
                f"{exc.reason}; the service takes one request per dataset per minute from an "
                "address, and another process or program at this address asked within it",
            ) from None
        fetched = utc_from_timestamp(now)
        out: list[Intensity] = []
        try:
            records = body["records"]
            if not isinstance(records, list):
                raise ValueError("records is not a list")
            for r in records:
                if r.get("PriceArea") != area or r.get("CO2Emission") is None:
                    continue
                begin = parse_time(r["Minutes5UTC"])
                out.append(
                    Intensity(
                        g_per_kwh=intensity_number(r["CO2Emission"]),
                        zone=zone,
                        source="live",
                        provider=self.id,
                        dataset=f"Energi Data Service {dataset} (CC BY 4.0)",
                        valid_from=begin,
                        valid_to=begin + self._STEP,
                        fetched_at=fetched,
                        is_estimated=kind == "forecast",
                    )
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise malformed(self.name, str(exc)) from None
        if not out:
            raise ProviderError("no-data", f"{self.name}: no {dataset} records for {area}")
        return Fetched(out)

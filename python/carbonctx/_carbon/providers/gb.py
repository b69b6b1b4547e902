"""Great Britain: the NESO carbon intensity API (national, half-hourly, with a 48 h forecast)."""

from __future__ import annotations

from datetime import datetime, timedelta
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

__all__ = ["GbProvider"]


@attrs.define
class GbProvider:
    """GB National Energy System Operator carbon intensity API (national, half-hourly)."""

    base_url: str
    limits: Limits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)

    id: ClassVar[str] = "gb"
    name: ClassVar[str] = "GB carbon intensity API"
    ttl_s: ClassVar[float] = 1800.0
    max_age_s: ClassVar[float] = 2 * 3600.0
    has_forecast: ClassVar[bool] = True
    signal: ClassVar[str] = "average"

    def covers(self, zone: str) -> bool:
        return zone == "GB"

    @staticmethod
    def _fmt(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%MZ")

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        t = utc_from_timestamp(now).replace(second=0, microsecond=0)
        if kind == "forecast":
            path = f"/intensity/{self._fmt(t)}/fw48h"
        else:
            path = f"/intensity/{self._fmt(t - timedelta(hours=24))}/{self._fmt(t)}"
        body = get_json(client, self.base_url + path, name=self.name, now=now, limits=self.limits)
        fetched = utc_from_timestamp(now)
        out: list[Intensity] = []
        try:
            data = body["data"]
            if not isinstance(data, list):
                raise ValueError("data is not a list")
            for item in data:
                values = item["intensity"]
                actual, forecast = values.get("actual"), values.get("forecast")
                if actual is None and forecast is None:
                    continue
                use_actual = actual is not None and kind != "forecast"
                out.append(
                    Intensity(
                        g_per_kwh=intensity_number(actual if use_actual else forecast),
                        zone=zone,
                        source="live",
                        provider=self.id,
                        dataset="NESO carbon intensity API "
                        + ("actual" if use_actual else "forecast")
                        + " (CC BY 4.0)",
                        valid_from=parse_time(item["from"]),
                        valid_to=parse_time(item["to"]),
                        fetched_at=fetched,
                        is_estimated=not use_actual,
                    )
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise malformed(self.name, str(exc)) from None
        if not out:  # "data": [] or every value null: nothing to use, and said so
            what = "forecast" if kind == "forecast" else "intensity"
            raise ProviderError("no-data", f"{self.name}: no {what} values for GB in the answer")
        return Fetched(out)

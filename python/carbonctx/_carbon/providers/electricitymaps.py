"""Electricity Maps (API v3): hourly history, latest and forecast for any zone it knows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from carbonctx._carbon.intensity import Intensity, parse_time, utc_from_timestamp
from carbonctx._carbon.providers.base import ProviderError
from carbonctx._carbon.providers.http import get_json, intensity_number, malformed
from carbonctx._carbon.zones import WORLD

if TYPE_CHECKING:
    import httpx

__all__ = ["ElectricityMapsProvider"]


@attrs.define(repr=False)
class ElectricityMapsProvider:
    """Electricity Maps API v3: ``/v3/carbon-intensity/{latest,history,forecast}?zone=Z``.

    Hourly values; the token goes in the ``auth-token`` header and nowhere else.
    """

    base_url: str
    _token: str | None = attrs.field(default=None, alias="token")

    id: ClassVar[str] = "electricitymaps"
    name: ClassVar[str] = "Electricity Maps"
    ttl_s: ClassVar[float] = 3600.0
    max_age_s: ClassVar[float] = 6 * 3600.0
    has_forecast: ClassVar[bool] = True
    _HOUR: ClassVar[timedelta] = timedelta(hours=1)

    def __repr__(self) -> str:
        token = "'***'" if self._token else "None"
        return f"ElectricityMapsProvider(base_url={self.base_url!r}, token={token})"

    def covers(self, zone: str) -> bool:
        return zone != WORLD

    def _headers(self) -> dict[str, str]:
        return {"auth-token": self._token} if self._token else {}

    @staticmethod
    def _unknown_zone(response: httpx.Response) -> bool:
        return response.status_code in (400, 404)

    def _get(self, client: httpx.Client, path: str, zone: str, now: float) -> Any:
        return get_json(
            client,
            f"{self.base_url}/v3/carbon-intensity/{path}",
            name=self.name,
            now=now,
            params={"zone": zone},
            headers=self._headers(),
            unknown_zone=self._unknown_zone,
        )

    def _period(self, item: object, zone: str, fetched: datetime, dataset: str) -> Intensity:
        if not isinstance(item, dict):
            raise ValueError("entry is not an object")
        start = parse_time(item["datetime"])
        est = item.get("isEstimated")
        return Intensity(
            g_per_kwh=intensity_number(item["carbonIntensity"]),
            zone=zone,
            source="live",
            provider=self.id,
            dataset=dataset,
            valid_from=start,
            valid_to=start + self._HOUR,
            fetched_at=fetched,
            is_estimated=est
            if isinstance(est, bool)
            else (True if "forecast" in dataset else None),
        )

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> list[Intensity]:
        fetched = utc_from_timestamp(now)
        try:
            if kind == "forecast":
                body = self._get(client, "forecast", zone, now)
                items = body["forecast"]
                if not isinstance(items, list):
                    raise ValueError("forecast is not a list")
                ds = "Electricity Maps v3 forecast"
                return [self._period(i, zone, fetched, ds) for i in items if _has_value(i)]
            latest = self._get(client, "latest", zone, now)
            periods = [self._period(latest, zone, fetched, "Electricity Maps v3 latest")]
            try:
                hist = self._get(client, "history", zone, now)
            except ProviderError as exc:
                if exc.kind in ("timeout", "connection"):
                    raise
                return periods  # a token without history access still gives the latest value
            items = hist["history"]
            if not isinstance(items, list):
                raise ValueError("history is not a list")
            ds = "Electricity Maps v3 history"
            return [self._period(i, zone, fetched, ds) for i in items if _has_value(i)] + periods
        except (KeyError, TypeError, ValueError) as exc:
            raise malformed(self.name, str(exc)) from None


def _has_value(item: object) -> bool:
    return isinstance(item, dict) and item.get("carbonIntensity") is not None

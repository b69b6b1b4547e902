"""WattTime (API v3): the marginal operating emissions rate (``co2_moer``) of a grid region, now
and forecast, after the login flow.

- ``GET /login`` with HTTP basic auth answers ``{"token": ...}``, a bearer token valid for 30
  minutes; it is kept 25 minutes, and a 401 on a data request logs in again once.
- ``GET /v3/forecast?region=R&signal_type=co2_moer&horizon_hours=0`` gives the current value
  (the documented way to read real-time MOER in v3); without ``horizon_hours``, the forecast.
  Points are ``{"point_time", "value"}``, each for ``meta.data_point_period_seconds`` (300), in
  ``meta.units`` (``lbs_co2_per_mwh``).
- ``GET /v3/region-from-loc?latitude=..&longitude=..&signal_type=co2_moer`` names the region
  for coordinates (``{"region": "CAISO_NORTH", ...}``).
- ``GET /v3/signal-index`` gives only a percentile (0-100) of the region's MOER, which no
  figure in grams can come from; it is what a free plan allows outside ``CAISO_NORTH``, so a
  refused ``co2_moer`` is reported with the index and that reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from carbonctx._carbon.intensity import Intensity, parse_time, utc_from_timestamp
from carbonctx._carbon.providers.base import Fetched, ProviderError
from carbonctx._carbon.providers.http import (
    DEFAULT_LIMITS,
    Limits,
    error_message,
    get_json,
    intensity_number,
    malformed,
)
from carbonctx._carbon.zones import WORLD

if TYPE_CHECKING:
    import httpx

__all__ = ["LBS_PER_MWH_TO_G_PER_KWH", "WattTimeProvider"]

#: 1 lb/MWh = 453.59237 g / 1000 kWh
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237
_UNITS = {"lbs_co2_per_mwh": LBS_PER_MWH_TO_G_PER_KWH, "g_co2_per_kwh": 1.0, "kg_co2_per_mwh": 1.0}
_TOKEN_TTL_S = 25 * 60.0


@attrs.define(repr=False)
class WattTimeProvider:
    """WattTime v3 ``co2_moer`` for one region, given or found from coordinates."""

    base_url: str
    _username: str | None = attrs.field(default=None, alias="username")
    _password: str | None = attrs.field(default=None, alias="password")
    region: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    limits: Limits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)
    _token: tuple[str, float] | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    id: ClassVar[str] = "watttime"
    name: ClassVar[str] = "WattTime"
    ttl_s: ClassVar[float] = 300.0
    max_age_s: ClassVar[float] = 3600.0
    has_forecast: ClassVar[bool] = True
    signal: ClassVar[str] = "marginal"
    credentials: ClassVar[str] = "CARBONCTX_WATTTIME_USERNAME and CARBONCTX_WATTTIME_PASSWORD"

    def __repr__(self) -> str:
        return f"WattTimeProvider(base_url={self.base_url!r}, region={self.region!r})"

    def covers(self, zone: str) -> bool:
        located = self.region is not None or self.latitude is not None
        return located and bool(self._username and self._password) and zone != WORLD

    # ------------------------------------------------------------------ login and requests

    def _login(self, client: httpx.Client, now: float) -> str:
        with self._lock:
            if self._token is not None and now < self._token[1]:
                return self._token[0]
        body = get_json(
            client,
            f"{self.base_url}/login",
            name=f"{self.name} login",
            now=now,
            auth=(self._username or "", self._password or ""),
            limits=self.limits,
            explain=_login_refused,
        )
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not token.isascii():
            raise malformed(f"{self.name} login", "no token")
        with self._lock:
            self._token = (token, now + _TOKEN_TTL_S)
        return token

    def _get(
        self,
        client: httpx.Client,
        path: str,
        params: dict[str, str],
        now: float,
        unknown_zone: Callable[[int, str], bool] | None = None,
    ) -> Any:
        for attempt in (1, 2):
            token = self._login(client, now)
            try:
                return get_json(
                    client,
                    f"{self.base_url}{path}",
                    name=f"{self.name} {path.rsplit('/', 1)[-1]}",
                    now=now,
                    params=params,
                    headers={"authorization": f"Bearer {token}"},
                    unknown_zone=unknown_zone,
                    limits=self.limits,
                )
            except ProviderError as exc:
                if exc.kind != "auth" or attempt == 2:
                    raise
                with self._lock:
                    self._token = None  # expired early: log in again, once
        raise AssertionError("unreachable")

    def _region(self, client: httpx.Client, now: float) -> str:
        if self.region is not None:
            return self.region
        body = self._get(
            client,
            "/v3/region-from-loc",
            {
                "latitude": f"{self.latitude:.4f}",
                "longitude": f"{self.longitude:.4f}",
                "signal_type": "co2_moer",
            },
            now,
            # a point in no region it covers (sea, or a grid without data) is refused with a
            # client error: the coordinates, not the request
            unknown_zone=lambda status, said: status in (400, 404),
        )
        region = body.get("region") if isinstance(body, dict) else None
        if not isinstance(region, str) or not region:
            raise malformed(f"{self.name} region-from-loc", "no region")
        self.region = region
        return region

    # ------------------------------------------------------------------ values

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        region = self._region(client, now)
        params = {"region": region, "signal_type": "co2_moer"}
        if kind != "forecast":
            params["horizon_hours"] = "0"
        try:
            body = self._get(client, "/v3/forecast", params, now)
        except ProviderError as exc:
            if exc.kind in ("forbidden", "http"):
                raise self._explain(client, region, exc, now) from None
            raise
        return Fetched(self._points(body, zone, region, kind, now))

    def _explain(
        self, client: httpx.Client, region: str, exc: ProviderError, now: float
    ) -> ProviderError:
        """A refused ``co2_moer``: say whether the plan gives the signal index instead."""
        try:
            idx = self._get(
                client, "/v3/signal-index", {"region": region, "signal_type": "co2_moer"}, now
            )
            value = idx["data"][0]["value"]
            pct = f"percentile {float(value):.0f} now"
        except (ProviderError, KeyError, IndexError, TypeError, ValueError):
            return exc
        return ProviderError(
            exc.kind,
            f"{exc.reason}; the plan gives only the signal index for {region} ({pct}), "
            "which is relative, not grams (a free plan gives co2_moer for CAISO_NORTH only)",
        )

    def _points(self, body: Any, zone: str, region: str, kind: str, now: float) -> list[Intensity]:
        fetched = utc_from_timestamp(now)
        try:
            meta, data = body["meta"], body["data"]
            factor = _UNITS.get(str(meta.get("units", "lbs_co2_per_mwh")))
            if factor is None:
                raise ValueError(f"unknown units {meta.get('units')!r}")
            step = meta.get("data_point_period_seconds", 300)
            if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 3600:
                raise ValueError("bad data_point_period_seconds")
            if not isinstance(data, list):
                raise TypeError("data is not a list")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise malformed(self.name, str(exc)) from None
        out: list[Intensity] = []
        for point in data:
            try:
                start: datetime = parse_time(point["point_time"])
                raw = point["value"]
                if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                    continue
                g = intensity_number(raw * factor)
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            out.append(
                Intensity(
                    g_per_kwh=g,
                    zone=zone,
                    source="live",
                    provider=self.id,
                    dataset=f"WattTime v3 co2_moer {region}"
                    + (" forecast" if kind == "forecast" else ""),
                    valid_from=start,
                    valid_to=start + timedelta(seconds=float(step)),
                    fetched_at=fetched,
                    is_estimated=kind == "forecast",
                    signal="marginal",
                )
            )
        if data and not out:
            raise malformed(self.name, "no point has a usable value")
        if not out:
            raise ProviderError("no-data", f"{self.name}: no co2_moer values for {region}")
        return out


def _login_refused(status: int, body: bytes) -> ProviderError | None:
    """``/login`` answers a wrong username or password with 401 or 403: either way the
    credentials are refused, not a plan's limit (and nothing else is worth asking with them)."""
    if status not in (401, 403):
        return None
    said = error_message(body)
    quoted = f': "{said}"' if said else ""
    return ProviderError(
        "auth",
        f"{WattTimeProvider.name} login: HTTP {status}, the credentials were refused{quoted}",
    )

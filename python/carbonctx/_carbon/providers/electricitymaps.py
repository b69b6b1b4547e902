"""Electricity Maps (API v3, or v4): hourly history, latest and forecast for any zone it knows.

v4 keeps v3's paths and answers (``/v4/carbon-intensity/{latest,history,forecast}?zone=Z``;
``latest`` answers ``{"zone", "carbonIntensity", "datetime", "updatedAt", "createdAt",
"emissionFactorType", "isEstimated", "estimationMethod", "temporalGranularity"}``, ``history``
and ``forecast`` put such entries in a list under their own name) and takes
``temporalGranularity`` (asked for ``hourly`` here). Values are lifecycle emissions unless an
entry's ``emissionFactorType`` is ``direct``, which its dataset then says; an entry with
``isEstimated`` true (the latest hour usually is: a nowcast) names its ``estimationMethod``
there too.

Given coordinates, every endpoint is asked with ``lat``/``lon`` instead of ``zone``: the
provider finds the zone (finer than any offline guess), and its answer names it. Its fallback to
the caller's IP address when no zone matches is turned off (v3 ``shouldUseFallbackCallerLookup=
false``, v4 ``disableCallerLookup=true``): a wrong country is worse than no value."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

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
from carbonctx._carbon.zones import WORLD

if TYPE_CHECKING:
    import httpx

__all__ = ["ElectricityMapsProvider"]

#: the longest a refused secondary endpoint is held back
_HOLD_MAX_S = 6 * 3600.0


@attrs.define(repr=False)
class ElectricityMapsProvider:
    """Electricity Maps API ``version`` (``"v3"`` or ``"v4"``):
    ``/<version>/carbon-intensity/{latest,history,forecast}?zone=Z``.

    Hourly values; the token goes in the ``auth-token`` header and nowhere else. ``latest`` is
    the value that counts: a ``history`` refused (a free plan allows ``latest`` only) leaves the
    latest value standing, is reported once, and is not asked again for an hour (doubling).
    """

    base_url: str
    limits: Limits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)
    _token: str | None = attrs.field(default=None, alias="token")
    version: str = attrs.field(default="v3", kw_only=True)
    #: where the machine is (degrees): asked by coordinates instead of by zone when given
    latitude: float | None = attrs.field(default=None, kw_only=True)
    longitude: float | None = attrs.field(default=None, kw_only=True)
    #: endpoint -> (failures in a row, not asked again before)
    #: endpoint -> (refusals in a row, held until, for how long)
    _held: dict[str, tuple[int, float, float]] = attrs.field(factory=dict, init=False)

    id: ClassVar[str] = "electricitymaps"
    name: ClassVar[str] = "Electricity Maps"
    ttl_s: ClassVar[float] = 3600.0
    max_age_s: ClassVar[float] = 6 * 3600.0
    has_forecast: ClassVar[bool] = True
    signal: ClassVar[str] = "average"
    credentials: ClassVar[str] = "CARBONCTX_ELECTRICITYMAPS_TOKEN"
    _HOUR: ClassVar[timedelta] = timedelta(hours=1)

    def __repr__(self) -> str:
        token = "'***'" if self._token else "None"
        return f"ElectricityMapsProvider(base_url={self.base_url!r}, token={token})"

    def covers(self, zone: str) -> bool:
        return zone != WORLD or self._located

    @property
    def _located(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def _where(self, zone: str) -> dict[str, str]:
        if not self._located:
            return {"zone": zone}
        no_ip = (
            {"disableCallerLookup": "true"}
            if self.version == "v4"
            else {"shouldUseFallbackCallerLookup": "false"}
        )
        return {"lat": f"{self.latitude:.4f}", "lon": f"{self.longitude:.4f}", **no_ip}

    def _headers(self) -> dict[str, str]:
        return {"auth-token": self._token} if self._token else {}

    @staticmethod
    def _unknown_zone(status: int, said: str) -> bool:
        # Only ``latest`` is read this way: a refused history or forecast says nothing of the
        # zone. Electricity Maps answers a zone it does not know with 400 or 404.
        return status in (400, 404) and ("zone" in said.lower() or not said)

    def _get(self, client: httpx.Client, path: str, zone: str, now: float) -> Any:
        return get_json(
            client,
            f"{self.base_url}/{self.version}/carbon-intensity/{path}",
            name=f"{self.name} {path}",
            now=now,
            params=self._where(zone)
            | ({"temporalGranularity": "hourly"} if self.version == "v4" else {}),
            headers=self._headers(),
            unknown_zone=self._unknown_zone if path == "latest" else None,
            limits=self.limits,
        )

    def _secondary(
        self, client: httpx.Client, path: str, zone: str, now: float
    ) -> tuple[Any, ProviderError | None]:
        """An endpoint whose refusal must not cost the latest value: (answer or None, error)."""
        fails, until, length = self._held.get(path, (0, 0.0, 0.0))
        if now < until <= now + length:  # more left than it was set for: the clock went back
            return None, None
        try:
            body = self._get(client, path, zone, now)
        except ProviderError as exc:
            fails += 1
            length = min(_HOLD_MAX_S, 3600.0 * 2 ** min(fails - 1, 10))
            self._held[path] = (fails, now + length, length)
            return None, exc
        self._held.pop(path, None)
        return body, None

    def _at(self, body: object) -> str:
        """For an answer by coordinates: the zone the provider found, in words."""
        found = body.get("zone") if isinstance(body, dict) else None
        if not self._located or not isinstance(found, str) or not found:
            return ""
        return f" for zone {found[:40]} at {self.latitude:g}, {self.longitude:g}"

    def _period(self, item: object, zone: str, fetched: datetime, dataset: str) -> Intensity:
        if not isinstance(item, dict):
            raise ValueError("entry is not an object")
        start = parse_time(item["datetime"])
        est = item.get("isEstimated")
        if item.get("emissionFactorType") == "direct":
            # lifecycle is the default; a plan or account set to direct says so in the result
            dataset = f"{dataset} (direct emissions, not lifecycle)"
        how = _said(item.get("estimationMethod"))
        if est is True and how:
            # an hour not yet measured (a nowcast) or filled in: the result says how
            dataset = f"{dataset} (estimated: {how})"
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

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        fetched = utc_from_timestamp(now)
        if kind == "forecast":
            body = self._get(client, "forecast", zone, now)
            ds = f"Electricity Maps {self.version} forecast{self._at(body)}"
            ahead = self._periods(body, "forecast", zone, fetched, ds)
            if not ahead:
                raise ProviderError("no-data", f"{self.name} forecast: no values for {zone}")
            return Fetched(ahead)
        latest = self._get(client, "latest", zone, now)
        if isinstance(latest, dict) and "carbonIntensity" in latest and not _has_value(latest):
            # a zone known but without a value now: no data, not a broken answer
            raise ProviderError("no-data", f"{self.name} latest: no value for {zone} now")
        try:
            periods = [
                self._period(
                    latest, zone, fetched, f"{self.name} {self.version} latest{self._at(latest)}"
                )
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise malformed(f"{self.name} latest", str(exc)) from None
        hist, problem = self._secondary(client, "history", zone, now)
        if problem is not None:
            return Fetched(periods, ((f"{self.name} history", problem),))
        if hist is None:  # held back after a refusal
            return Fetched(periods, complete=False)
        try:
            ds = f"Electricity Maps {self.version} history{self._at(hist)}"
            older = self._periods(hist, "history", zone, fetched, ds)
        except ProviderError as exc:
            return Fetched(periods, ((f"{self.name} history", exc),))
        return Fetched(older + periods)

    def _periods(
        self, body: Any, key: str, zone: str, fetched: datetime, dataset: str
    ) -> list[Intensity]:
        """The usable periods of a ``history`` or ``forecast`` answer; entries without a
        usable value are skipped, an answer with none raises."""
        try:
            items = body[key]
            if not isinstance(items, list):
                raise TypeError(f"{key} is not a list")
        except (KeyError, TypeError) as exc:
            raise malformed(f"{self.name} {key}", str(exc)) from None
        out: list[Intensity] = []
        for item in items:
            if _has_value(item):
                try:
                    out.append(self._period(item, zone, fetched, dataset))
                except (KeyError, TypeError, ValueError):
                    continue
        if items and not out:
            raise malformed(f"{self.name} {key}", "no entry has a usable value")
        return out


def _said(text: object) -> str:
    """A provider's word, printable and short; "" for none (or one of control characters)."""
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text if c.isprintable()).strip()[:40]


def _has_value(item: object) -> bool:
    return isinstance(item, dict) and item.get("carbonIntensity") is not None

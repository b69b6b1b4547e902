"""Where carbon-intensity figures come from: live providers and the bundled yearly table.

Each live provider answers one question, "what were (or will be) the intensities of this zone
around now", as a list of :class:`Intensity` periods. It speaks HTTP through an injected
``httpx.Client`` and turns every way a request can fail into a :class:`ProviderError` whose
``kind`` drives back-off and warnings. Caching, back-off and fallback live in ``_intensity``.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

if TYPE_CHECKING:
    import httpx

from carbonctx._zone import WORLD, ZoneChoice, _read_csv

__all__ = [
    "DkProvider",
    "ElectricityMapsProvider",
    "GbProvider",
    "Intensity",
    "Provider",
    "ProviderError",
    "table_intensity",
    "world_average",
]

UTC = timezone.utc


@attrs.frozen
class Intensity:
    """One carbon-intensity value, valid over one period.

    ``source`` says how it was obtained: ``"live"`` (fetched from a provider, within that
    provider's refresh interval), ``"cached"`` (fetched earlier and older than that, or a
    fallback kept from an earlier fetch), ``"table"`` (the bundled yearly figures) or
    ``"world-average"``. ``dataset`` names the data and its year, ``note`` why a fallback was used.
    Times are UTC-aware; a table value has no period.
    """

    g_per_kwh: float
    zone: str
    source: str
    provider: str
    dataset: str
    valid_from: datetime | None
    valid_to: datetime | None
    fetched_at: datetime | None
    is_estimated: bool | None = None
    note: str | None = None

    def covers(self, t: float) -> bool:
        """Whether Unix time ``t`` lies in ``[valid_from, valid_to)``."""
        if self.valid_from is None or self.valid_to is None:
            return False
        return self.valid_from.timestamp() <= t < self.valid_to.timestamp()

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form (times as ISO 8601 strings)."""
        return {
            "g_per_kwh": self.g_per_kwh,
            "zone": self.zone,
            "source": self.source,
            "provider": self.provider,
            "dataset": self.dataset,
            "valid_from": _iso(self.valid_from),
            "valid_to": _iso(self.valid_to),
            "fetched_at": _iso(self.fetched_at),
            "is_estimated": self.is_estimated,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Intensity:
        """Inverse of :meth:`to_dict` (used by the disk cache)."""
        return cls(
            g_per_kwh=float(d["g_per_kwh"]),
            zone=str(d["zone"]),
            source=str(d["source"]),
            provider=str(d["provider"]),
            dataset=str(d["dataset"]),
            valid_from=_parse_time(d["valid_from"]) if d.get("valid_from") else None,
            valid_to=_parse_time(d["valid_to"]) if d.get("valid_to") else None,
            fetched_at=_parse_time(d["fetched_at"]) if d.get("fetched_at") else None,
            is_estimated=None if d.get("is_estimated") is None else bool(d["is_estimated"]),
            note=None if d.get("note") is None else str(d["note"]),
        )


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _parse_time(value: object, *, naive_is_utc: bool = True) -> datetime:
    """Parse ISO 8601 as the providers write it ("2024-05-01T12:00Z", "...00.000Z", naive UTC)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a time string, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"time without offset: {value!r}")
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


# --------------------------------------------------------------------------- the yearly table


@attrs.frozen
class _Row:
    g_per_kwh: float
    dataset: str
    label: str


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, _Row], dict[str, _Row], dict[str, _Row], _Row]:
    countries: dict[str, _Row] = {}
    world: _Row | None = None
    for r in _read_csv("ember-yearly.csv"):
        row = _Row(float(r["g_co2e_per_kwh"]), f"Ember yearly {r['year']} (CC BY 4.0)", r["name"])
        if r["iso2"]:
            countries[r["iso2"].upper()] = row
        if r["iso3"]:
            countries[r["iso3"].upper()] = row
        if r["name"] == "World":
            world = row
    states = {
        r["state"].upper(): _Row(
            float(r["g_co2e_per_kwh"]), f"EPA eGRID{r['year']} (public domain)", r["name"]
        )
        for r in _read_csv("us-states-egrid2023.csv")
        if len(r["state"]) == 2
    }
    gcp = {
        r["Google Cloud Region"].strip().lower(): _Row(
            float(r["Grid carbon intensity (gCO2eq / kWh)"]),
            "Google Cloud region carbon info 2024, operational (Apache-2.0)",
            r["Google Cloud Region"].strip(),
        )
        for r in _read_csv("gcp-regions-2024.csv")
        if r["Grid carbon intensity (gCO2eq / kWh)"].strip()
    }
    if world is None:  # pragma: no cover - the bundled file has it
        raise RuntimeError("the bundled ember-yearly.csv has no World row")
    return countries, states, gcp, world


# Electricity Maps US balancing-authority zones that lie (almost) wholly within one state.
_US_BA_STATE: tuple[tuple[str, str], ...] = (
    ("US-CAL-", "CA"),
    ("US-TEX-ERCO", "TX"),
    ("US-NY-NYIS", "NY"),
    ("US-FLA-", "FL"),
)
_COUNTRY_ALIASES = {"UK": "GB"}


def _table_row(choice: ZoneChoice) -> _Row | None:
    countries, states, gcp, _world = _tables()
    zone = choice.zone
    if choice.cloud == "gcp" and choice.cloud_region and choice.cloud_region in gcp:
        return gcp[choice.cloud_region]
    if zone.startswith("US-"):
        rest = zone[3:]
        if len(rest) == 2 and rest in states:
            return states[rest]
        for prefix, state in _US_BA_STATE:
            if zone == prefix or (prefix.endswith("-") and zone.startswith(prefix)):
                return states[state]
    country = zone.split("-", 1)[0]
    country = _COUNTRY_ALIASES.get(country, country)
    return countries.get(country)


def world_average(note: str | None = None) -> Intensity:
    """Ember's World figure."""
    row = _tables()[3]
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        zone=WORLD,
        source="world-average",
        provider="table",
        dataset=f"{row.dataset}: World",
        valid_from=None,
        valid_to=None,
        fetched_at=None,
        note=note,
    )


def table_intensity(choice: ZoneChoice, note: str | None = None) -> Intensity:
    """The yearly-table figure for a zone; the world average (and a note) when it has none."""
    if choice.zone == WORLD:
        return world_average(note)
    row = _table_row(choice)
    if row is None:
        why = f"the yearly table has no figure for zone {choice.zone}; using the world average"
        return world_average(why if note is None else f"{note}; {why}")
    dataset = f"{row.dataset}: {row.label}"
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        zone=choice.zone,
        source="table",
        provider="table",
        dataset=dataset,
        valid_from=None,
        valid_to=None,
        fetched_at=None,
        note=note,
    )


# --------------------------------------------------------------------------- live providers


class ProviderError(Exception):
    """A provider request failed. ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


#: Failure kinds and what they mean to a user.
FAILURE_KINDS = {
    "timeout": "the request timed out",
    "connection": "could not connect",
    "auth": "the token was refused",
    "rate-limited": "the provider asked us to slow down",
    "server": "the provider had a server error",
    "malformed": "the answer could not be read",
    "unknown-zone": "the provider does not know this zone",
    "http": "the provider refused the request",
    "no-data": "the provider had no values for this zone and time",
    "throttled": "held back to respect the provider's request limit",
    "error": "an unexpected error",
}


class Provider(Protocol):
    """What the intensity service needs of a live provider."""

    id: ClassVar[str]
    name: ClassVar[str]
    #: seconds a fetched value counts as fresh: the provider's update cadence
    ttl_s: ClassVar[float]
    #: how long past its period a value may stand in for "now" when nothing newer is known
    max_age_s: ClassVar[float]
    has_forecast: ClassVar[bool]

    def covers(self, zone: str) -> bool: ...

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> list[Intensity]:
        """Periods for ``zone``: ``kind="recent"`` (past day up to now) or ``"forecast"``."""
        ...


def _retry_after(response: httpx.Response, now: float) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _get_json(
    client: httpx.Client,
    url: str,
    *,
    name: str,
    now: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    unknown_zone: Callable[[httpx.Response], bool] | None = None,
) -> Any:
    """GET and decode JSON, mapping every failure to a :class:`ProviderError`."""
    import httpx  # only live providers need it; keep it off the import path

    try:
        response = client.get(url, params=params, headers=headers)
    except httpx.TimeoutException:
        raise ProviderError("timeout", f"{name}: the request timed out") from None
    except httpx.TransportError as exc:
        # The message is the OS's ("[Errno 111] Connection refused"); it never holds headers.
        raise ProviderError("connection", f"{name}: could not connect ({exc})") from None
    status = response.status_code
    if status in (401, 403):
        raise ProviderError("auth", f"{name}: HTTP {status}, the token was refused")
    if status == 429:
        ra = _retry_after(response, now)
        tail = f", retry after {ra:.0f} s" if ra is not None else ""
        raise ProviderError("rate-limited", f"{name}: HTTP 429 too many requests{tail}", ra)
    if status >= 500:
        raise ProviderError("server", f"{name}: HTTP {status} server error")
    if status >= 400:
        if unknown_zone is not None and unknown_zone(response):
            raise ProviderError("unknown-zone", f"{name}: HTTP {status}, zone not known")
        raise ProviderError("http", f"{name}: HTTP {status}")
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise ProviderError("malformed", f"{name}: the answer is not JSON") from None


def _malformed(name: str, what: str) -> ProviderError:
    return ProviderError("malformed", f"{name}: unexpected answer ({what})")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"not a usable intensity: {value!r}")
    return x


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
        return _get_json(
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
        start = _parse_time(item["datetime"])
        est = item.get("isEstimated")
        return Intensity(
            g_per_kwh=_number(item["carbonIntensity"]),
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
        fetched = _utc(now)
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
            raise _malformed(self.name, str(exc)) from None


def _has_value(item: object) -> bool:
    return isinstance(item, dict) and item.get("carbonIntensity") is not None


@attrs.define
class GbProvider:
    """GB National Energy System Operator carbon intensity API (national, half-hourly)."""

    base_url: str

    id: ClassVar[str] = "gb"
    name: ClassVar[str] = "GB carbon intensity API"
    ttl_s: ClassVar[float] = 1800.0
    max_age_s: ClassVar[float] = 2 * 3600.0
    has_forecast: ClassVar[bool] = True

    def covers(self, zone: str) -> bool:
        return zone == "GB"

    @staticmethod
    def _fmt(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%MZ")

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> list[Intensity]:
        t = _utc(now).replace(second=0, microsecond=0)
        if kind == "forecast":
            path = f"/intensity/{self._fmt(t)}/fw48h"
        else:
            path = f"/intensity/{self._fmt(t - timedelta(hours=24))}/{self._fmt(t)}"
        body = _get_json(client, self.base_url + path, name=self.name, now=now)
        fetched = _utc(now)
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
                        g_per_kwh=_number(actual if use_actual else forecast),
                        zone=zone,
                        source="live",
                        provider=self.id,
                        dataset="NESO carbon intensity API "
                        + ("actual" if use_actual else "forecast")
                        + " (CC BY 4.0)",
                        valid_from=_parse_time(item["from"]),
                        valid_to=_parse_time(item["to"]),
                        fetched_at=fetched,
                        is_estimated=not use_actual,
                    )
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _malformed(self.name, str(exc)) from None
        return out


@attrs.define
class DkProvider:
    """Energi Data Service ``CO2Emis`` (5-minute values) and ``CO2EmisProg`` (forecast).

    The service asks for at most one request per dataset per minute per address; this provider
    keeps to that and raises a ``"throttled"`` error instead of sending a request too soon.
    """

    base_url: str
    clock: Callable[[], float]
    min_interval_s: float = 60.0
    _last: dict[str, float] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    id: ClassVar[str] = "dk"
    name: ClassVar[str] = "Energi Data Service"
    ttl_s: ClassVar[float] = 300.0
    max_age_s: ClassVar[float] = 3600.0
    has_forecast: ClassVar[bool] = True
    _AREAS: ClassVar[dict[str, str]] = {"DK-DK1": "DK1", "DK-DK2": "DK2"}
    _STEP: ClassVar[timedelta] = timedelta(minutes=5)

    def covers(self, zone: str) -> bool:
        return zone in self._AREAS

    def _acquire(self, dataset: str) -> None:
        with self._lock:
            now = self.clock()
            last = self._last.get(dataset)
            if last is not None and now - last < self.min_interval_s:
                wait = self.min_interval_s - (now - last)
                raise ProviderError(
                    "throttled",
                    f"{self.name}: {dataset} was asked less than a minute ago",
                    retry_after=wait,
                )
            self._last[dataset] = now

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> list[Intensity]:
        area = self._AREAS[zone]
        t = _utc(now).replace(second=0, microsecond=0)
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
        body = _get_json(
            client, f"{self.base_url}/dataset/{dataset}", name=self.name, now=now, params=params
        )
        fetched = _utc(now)
        out: list[Intensity] = []
        try:
            records = body["records"]
            if not isinstance(records, list):
                raise ValueError("records is not a list")
            for r in records:
                if r.get("PriceArea") != area or r.get("CO2Emission") is None:
                    continue
                begin = _parse_time(r["Minutes5UTC"])
                out.append(
                    Intensity(
                        g_per_kwh=_number(r["CO2Emission"]),
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
            raise _malformed(self.name, str(exc)) from None
        if not out:
            raise ProviderError("no-data", f"{self.name}: no {dataset} records for {area}")
        return out

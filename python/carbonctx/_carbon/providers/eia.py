"""US EIA Open Data v2: hourly net generation by fuel per balancing authority (Form EIA-930),
turned into an average lifecycle intensity.

``GET /v2/electricity/rto/fuel-type-data/data/?api_key=K&frequency=hourly&data[0]=value&
facets[respondent][]=CISO&start=YYYY-MM-DDTHH&end=...&sort[0][column]=period&
sort[0][direction]=desc&length=5000`` answers ``{"response": {"data": [{"period":
"2026-06-01T09", "respondent": "CISO", "fueltype": "NG", "value": 1234 (or "1234"),
"value-units": "megawatthours"}, ...]}}``. With ``frequency=hourly`` periods are UTC and name the
end of their hour, as EIA-930 reports hours (hour ending): ``T09`` is 08:00 to 09:00 UTC.
(``frequency=local-hourly`` would give the balancing authority's local hours, their UTC
offset appended to the period; not used.) Errors are JSON: ``{"error": {"code":
"API_KEY_INVALID", "message": ...}}`` (HTTP 403; ``API_KEY_MISSING`` too: the key refused,
EIA has no plans) or ``{"error": "...", "code": 400}``.

Fuel codes (EIA-930's energy sources) map to the lifecycle factors of
``entsoe-lifecycle-factors.csv`` (IPCC AR5 medians). Solar and wind with integrated battery
storage (``SNB``, ``WNB``) are solar and wind: their battery is charged from the plant's own
generation. Storage (``BAT`` battery, ``PS`` pumped, ``OES`` other, ``UES`` unknown energy
storage) gives back energy already counted and is left out. Net generation below zero (a plant
that drew more than it made in the hour, as solar does at night) counts as a fuel that reported
nothing; an hour where fewer than 80% of the fuels have reported is left out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from carbonctx._carbon.intensity import Intensity, parse_time, utc_from_timestamp
from carbonctx._carbon.providers.base import Fetched, ProviderError
from carbonctx._carbon.providers.entsoe import lifecycle_factors
from carbonctx._carbon.providers.http import (
    DEFAULT_LIMITS,
    Limits,
    error_message,
    get_json,
    intensity_number,
    malformed,
    parse_json,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["FUEL_TYPES", "EiaProvider"]

#: EIA-930 fuel code -> ENTSO-E production type whose lifecycle factor it takes
FUEL_TYPES: dict[str, str] = {
    "COL": "B05",  # coal
    "NG": "B04",  # natural gas
    "NUC": "B14",
    "OIL": "B06",
    "WAT": "B12",  # hydro
    "SUN": "B16",
    "SNB": "B16",  # solar with integrated battery storage
    "WND": "B19",
    "WNB": "B19",  # wind with integrated battery storage
    "GEO": "B09",
    "OTH": "B20",
    "UNK": "B20",
}
_STORAGE = {"BAT", "PS", "OES", "UES"}
_COMPLETE = 0.8
_HOUR = timedelta(hours=1)
_DATASET = "EIA-930 hourly generation by fuel x IPCC AR5 lifecycle factors"


@attrs.define(repr=False)
class EiaProvider:
    """US EIA Open Data v2, ``electricity/rto/fuel-type-data``, for a US balancing authority.

    Electricity Maps' US zones end in the EIA code of their balancing authority
    (``US-CAL-CISO``: ``CISO``); those are the zones covered.
    """

    base_url: str
    _key: str | None = attrs.field(default=None, alias="key")
    limits: Limits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)

    id: ClassVar[str] = "eia"
    name: ClassVar[str] = "US EIA"
    ttl_s: ClassVar[float] = 3600.0
    max_age_s: ClassVar[float] = 36 * 3600.0  # EIA-930 is published hours to a day late
    has_forecast: ClassVar[bool] = False
    signal: ClassVar[str] = "average"
    credentials: ClassVar[str] = "CARBONCTX_EIA_KEY"

    def __repr__(self) -> str:
        return f"EiaProvider(base_url={self.base_url!r}, key={'***' if self._key else None})"

    def covers(self, zone: str) -> bool:
        parts = zone.split("-")
        return bool(self._key) and len(parts) == 3 and parts[0] == "US" and parts[2].isalnum()

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        respondent = zone.split("-")[2]
        t = utc_from_timestamp(now).replace(minute=0, second=0, microsecond=0)
        params = {
            "api_key": self._key or "",
            "frequency": "hourly",
            "data[0]": "value",
            "facets[respondent][]": respondent,
            "start": (t - timedelta(hours=48)).strftime("%Y-%m-%dT%H"),
            "end": t.strftime("%Y-%m-%dT%H"),
            "sort[0][column]": "period",
            "sort[0][direction]": "desc",
            "offset": "0",
            "length": "5000",
        }
        try:
            body = get_json(
                client,
                f"{self.base_url}/v2/electricity/rto/fuel-type-data/data/",
                name=self.name,
                now=now,
                params=params,
                limits=self.limits,
                explain=_key_refused,
            )
        except ProviderError as exc:
            if self._key and self._key in exc.reason:
                raise ProviderError(
                    exc.kind, exc.reason.replace(self._key, "***"), exc.retry_after
                ) from None
            raise
        return Fetched(self._parse(body, zone, respondent, now))

    def _parse(self, body: Any, zone: str, respondent: str, now: float) -> list[Intensity]:
        try:
            rows = body["response"]["data"]
            if not isinstance(rows, list):
                raise TypeError("data is not a list")
        except (KeyError, TypeError) as exc:
            if isinstance(body, dict) and body.get("error"):
                raise ProviderError("http", f'{self.name}: "{str(body["error"])[:200]}"') from None
            raise malformed(self.name, str(exc)) from None
        factors = lifecycle_factors()
        hours: dict[float, dict[str, float]] = {}
        fuels: set[str] = set()
        for row in rows:
            try:
                if row["respondent"] != respondent or row["fueltype"] in _STORAGE:
                    continue
                fuel = str(row["fueltype"])
                value = row["value"]
                mwh = float(value) if isinstance(value, (int, float, str)) else None
                end = parse_time(row["period"] + ":00") if len(row["period"]) == 13 else None
            except (KeyError, TypeError, ValueError):
                continue
            if mwh is None or end is None or not (-1e7 < mwh < 1e7):
                continue
            fuels.add(fuel)
            mix = hours.setdefault(end.timestamp(), {})
            # net generation below zero (a plant drawing more than it makes: solar at night)
            # is a report of nothing generated, not a missing report
            mix[fuel] = mix.get(fuel, 0.0) + max(0.0, mwh)
        out: list[Intensity] = []
        fetched = utc_from_timestamp(now)
        for end_ts in sorted(hours):
            mix = hours[end_ts]
            total = sum(mix.values())
            if len(mix) < _COMPLETE * len(fuels) or total <= 0 or end_ts > now + 1:
                continue
            g = sum(v * factors[FUEL_TYPES.get(f, "B20")] for f, v in mix.items()) / total
            end_t = utc_from_timestamp(end_ts)
            out.append(
                Intensity(
                    g_per_kwh=intensity_number(g),
                    zone=zone,
                    source="live",
                    provider=self.id,
                    dataset=f"{_DATASET} ({respondent})",
                    valid_from=end_t - _HOUR,
                    valid_to=end_t,
                    fetched_at=fetched,
                    is_estimated=False,
                )
            )
        if not out:
            raise ProviderError(
                "no-data", f"{self.name}: no complete hour of generation for {respondent}"
            )
        return out


def _key_refused(status: int, body: bytes) -> ProviderError | None:
    """EIA's 403 for a missing or invalid key: the credentials refused, not a plan's limit."""
    try:
        err = parse_json(body, EiaProvider.name).get("error")
    except (ProviderError, AttributeError):
        return None
    code = err.get("code") if isinstance(err, dict) else None
    if status != 403 or not isinstance(code, str) or not code.startswith("API_KEY"):
        return None
    said = error_message(body)
    return ProviderError("auth", f'{EiaProvider.name}: HTTP 403, {code}: "{said}"')

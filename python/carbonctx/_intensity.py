"""Carbon intensity: turn joules into grams of CO2e, and say where the figure came from.

:class:`IntensityService` resolves the zone, keeps live values from the configured providers in
a cache (memory and disk) and refreshes it off the caller's thread. Its lookups never touch the
network and never raise::

    svc = IntensityService(zone="DE")                 # nothing configured: the yearly table
    result = svc.co2(energy_j=3.6e6, start=t0, end=t1)  # 1 kWh
    result.co2_g, result.intensity_g_per_kwh, result.periods[0].source   # ..., 342.06, "table"

Live providers are opt-in: Electricity Maps when a token is given (or it is listed), ``gb`` and
``dk`` when listed. Settings come from arguments first, then the environment:

========================================  ==========================================================
``CARBONCTX_ZONE``                        zone code (``DE``, ``DK-DK1``, ``US-CAL-CISO``)
``CARBONCTX_PUE``                         power usage effectiveness, >= 1 (default 1.0)
``CARBONCTX_PROVIDERS``                   comma list of ``electricitymaps``, ``gb``, ``dk``
``CARBONCTX_ELECTRICITYMAPS_TOKEN``       Electricity Maps API token
``CARBONCTX_<ID>_URL``                    provider base URL (scheme and host)
``CARBONCTX_CACHE_DIR``                   where fetched values are kept between runs
========================================  ==========================================================

Fallbacks, in order: a fresh live value; a cached one (older than the provider's cadence); the
yearly table; the world average. Each :class:`Intensity` says which (``source``) and why
(``note``). Provider failures back off and warn once per provider and kind of failure with an
:class:`IntensityWarning`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    import httpx

from carbonctx._providers import (
    DkProvider,
    ElectricityMapsProvider,
    GbProvider,
    Intensity,
    Provider,
    ProviderError,
    table_intensity,
    world_average,
)
from carbonctx._zone import WORLD, ZoneChoice, resolve_zone
from carbonctx.errors import CarbonctxWarning, ConfigurationError

__all__ = [
    "DEFAULT_URLS",
    "PROVIDER_IDS",
    "Co2",
    "Intensity",
    "IntensityService",
    "IntensityWarning",
    "Window",
    "ZoneChoice",
    "lowest_carbon_window",
    "resolve_zone",
]

UTC = timezone.utc

#: Provider ids and their default base URLs (override with ``CARBONCTX_<ID>_URL``).
DEFAULT_URLS: dict[str, str] = {
    "electricitymaps": "https://api.electricitymaps.com",
    "gb": "https://api.carbonintensity.org.uk",
    "dk": "https://api.energidataservice.dk",
}
PROVIDER_IDS: tuple[str, ...] = tuple(DEFAULT_URLS)

PUE_DEFAULT_SOURCE = "default (1.0: facility overhead not counted)"

#: First back-off delay per kind of failure, in seconds; it doubles with each further failure.
_BACKOFF_BASE: dict[str, float] = {
    "timeout": 60.0,
    "connection": 60.0,
    "server": 60.0,
    "rate-limited": 60.0,
    "malformed": 300.0,
    "no-data": 300.0,
    "http": 600.0,
    "error": 600.0,
    "auth": 3600.0,
    "unknown-zone": 86400.0,
}
_BACKOFF_MAX = 6 * 3600.0
_KEEP_HISTORY_S = 48 * 3600.0

_HINTS: dict[str, str] = {
    "auth": "Check CARBONCTX_ELECTRICITYMAPS_TOKEN and that your plan covers this zone.",
    "unknown-zone": "Check the zone (CARBONCTX_ZONE or the zone argument).",
    "timeout": "Check the network, or the provider's CARBONCTX_<ID>_URL.",
    "connection": "Check the network, or the provider's CARBONCTX_<ID>_URL.",
}


class IntensityWarning(CarbonctxWarning):
    """A carbon-intensity provider failed; figures fall back to cached or tabulated values."""


# --------------------------------------------------------------------------- results


@attrs.frozen
class Co2:
    """Grams of CO2e for an amount of energy over a span of time, and how they were found.

    ``co2_g = energy_kwh * intensity_g_per_kwh * pue``, where the intensity is the time-weighted
    mean of ``periods`` (energy is taken as spread evenly over the span).
    """

    co2_g: float
    energy_kwh: float
    intensity_g_per_kwh: float
    pue: float
    pue_source: str
    zone: ZoneChoice
    periods: tuple[Intensity, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        """The distinct ``source`` values of the periods used, in order of first use."""
        return tuple(dict.fromkeys(p.source for p in self.periods))

    @property
    def notes(self) -> tuple[str, ...]:
        """The distinct notes (why a fallback was used) of the periods used."""
        return tuple(dict.fromkeys(p.note for p in self.periods if p.note))

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form for reports."""
        return {
            "co2_g": self.co2_g,
            "energy_kwh": self.energy_kwh,
            "intensity_g_per_kwh": self.intensity_g_per_kwh,
            "pue": self.pue,
            "pue_source": self.pue_source,
            "zone": self.zone.to_dict(),
            "sources": list(self.sources),
            "periods": [p.to_dict() for p in self.periods],
        }


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


# --------------------------------------------------------------------------- settings


def _parse_pue(value: object, setting: str) -> float:
    try:
        pue = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pue = math.nan
    if not math.isfinite(pue) or pue < 1.0:
        raise ConfigurationError(
            f"{setting}={value!r} is not a usable PUE. PUE is a data centre's total energy over "
            "its IT energy, a number of at least 1: set it to your facility's published figure "
            "(e.g. 1.1), or leave it unset for 1.0 (overhead not counted)."
        )
    return pue


def _parse_providers(value: str | Sequence[str], setting: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        pid = str(item).strip().lower()
        if not pid:
            continue
        if pid not in DEFAULT_URLS:
            raise ConfigurationError(
                f"{setting} names an unknown provider {pid!r}. Known providers: "
                f"{', '.join(PROVIDER_IDS)} (a comma-separated list, e.g. 'gb,dk')."
            )
        if pid not in out:
            out.append(pid)
    return tuple(out)


def _parse_url(value: str, setting: str) -> str:
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{setting}={value!r} is not a base URL. Give the scheme and host (and port), "
            "e.g. 'https://api.electricitymaps.com'; the API paths are added by carbonctx."
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigurationError(f"{setting}={value!r} has an invalid port number.") from None
    return text.rstrip("/")


def _check_token(value: str, setting: str) -> str | None:
    token = value.strip()
    if not token:
        return None
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        # Say nothing of the token itself: it is a secret.
        raise ConfigurationError(
            f"{setting} holds characters that cannot go in an HTTP header (spaces, line breaks "
            "or non-ASCII). Copy the token again from your Electricity Maps account."
        )
    return token


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/carbonctx``, else ``~/.cache/carbonctx``."""
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "carbonctx"


# --------------------------------------------------------------------------- cache state


@attrs.define
class _Failure:
    kind: str
    reason: str
    attempts: int
    until: float

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.define
class _Series:
    """Cached periods of one provider, zone and kind, keyed by the start of each period."""

    periods: dict[float, Intensity] = attrs.field(factory=dict)
    starts: list[float] = attrs.field(factory=list)
    fetched_at: float | None = None
    failure: _Failure | None = None
    hold_until: float = 0.0  # held back by a provider's request limit (not a failure)

    def set_periods(self, periods: dict[float, Intensity]) -> None:
        self.periods = periods
        self.starts = sorted(periods)

    def at(self, t: float) -> Intensity | None:
        i = bisect.bisect_right(self.starts, t) - 1
        if i < 0:
            return None
        p = self.periods[self.starts[i]]
        return p if p.covers(t) else None

    def next_start(self, t: float) -> float | None:
        i = bisect.bisect_right(self.starts, t)
        return self.starts[i] if i < len(self.starts) else None

    def latest_before(self, t: float) -> Intensity | None:
        i = bisect.bisect_right(self.starts, t) - 1
        return self.periods[self.starts[i]] if i >= 0 else None


def _atomic_write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- the service


class IntensityService:
    """Carbon intensity for one zone: live when configured, else the yearly table.

    ``co2()``, ``current()`` and ``forecast()`` never wait for the network and never raise:
    when a cached value is stale they start a background refresh (one daemon thread at a time)
    and answer with the best value at hand. ``refresh(wait=True)`` fetches in the caller's
    thread; pass ``background=False`` to fetch only when asked. Settings are checked at
    construction and raise :class:`carbonctx.errors.ConfigurationError` naming the setting.
    """

    def __init__(
        self,
        *,
        zone: str | None = None,
        pue: float | None = None,
        providers: Sequence[str] | None = None,
        electricitymaps_token: str | None = None,
        urls: Mapping[str, str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        client: httpx.Client | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        background: bool = True,
    ) -> None:
        env = os.environ if env is None else env
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._background = background
        self.zone_choice: ZoneChoice = resolve_zone(zone, env)

        if pue is not None:
            self.pue, self.pue_source = _parse_pue(pue, "pue"), "argument"
        elif env.get("CARBONCTX_PUE", "").strip():
            self.pue = _parse_pue(env["CARBONCTX_PUE"].strip(), "CARBONCTX_PUE")
            self.pue_source = "CARBONCTX_PUE"
        else:
            self.pue, self.pue_source = 1.0, PUE_DEFAULT_SOURCE

        if electricitymaps_token is not None:
            token = _check_token(electricitymaps_token, "electricitymaps_token")
        else:
            token = _check_token(
                env.get("CARBONCTX_ELECTRICITYMAPS_TOKEN", ""), "CARBONCTX_ELECTRICITYMAPS_TOKEN"
            )
        self._secrets = (token,) if token else ()

        if providers is not None:
            ids = _parse_providers(providers, "providers")
        elif env.get("CARBONCTX_PROVIDERS", "").strip():
            ids = _parse_providers(env["CARBONCTX_PROVIDERS"], "CARBONCTX_PROVIDERS")
        else:
            ids = ("electricitymaps",) if token else ()
        self.provider_ids: tuple[str, ...] = ids

        url_args = dict(urls or {})
        for key in url_args:
            if key not in DEFAULT_URLS:
                raise ConfigurationError(
                    f"urls has an unknown provider {key!r}; known: {', '.join(PROVIDER_IDS)}."
                )
        self.urls: dict[str, str] = {}
        for pid, default in DEFAULT_URLS.items():
            var = f"CARBONCTX_{pid.upper()}_URL"
            if pid in url_args:
                self.urls[pid] = _parse_url(url_args[pid], f"urls[{pid!r}]")
            elif env.get(var, "").strip():
                self.urls[pid] = _parse_url(env[var], var)
            else:
                self.urls[pid] = default

        if cache_dir is not None:
            self.cache_dir = Path(cache_dir)
        elif env.get("CARBONCTX_CACHE_DIR", "").strip():
            self.cache_dir = Path(env["CARBONCTX_CACHE_DIR"].strip()).expanduser()
        else:
            self.cache_dir = default_cache_dir(env)

        built: list[Provider] = []
        for pid in ids:
            if pid == "electricitymaps":
                built.append(ElectricityMapsProvider(self.urls[pid], token=token))
            elif pid == "gb":
                built.append(GbProvider(self.urls[pid]))
            else:
                built.append(DkProvider(self.urls[pid], clock=self._clock))
        self._providers: tuple[Provider, ...] = tuple(built)
        zone_code = self.zone_choice.zone
        #: the live provider used for this zone (the first listed that covers it), if any
        self.provider: Provider | None = next((p for p in built if p.covers(zone_code)), None)

        self._table = table_intensity(self.zone_choice)
        self._client = client
        self._owns_client = client is None
        self._series: dict[str, _Series] = {"recent": _Series(), "forecast": _Series()}
        self._want_forecast = False
        self._warned: set[tuple[str, str]] = set()
        self._pending: list[str] = []
        self._closed = False
        self._init_threading()
        if self.provider is not None:
            for kind in self._series:
                self._reload_disk(kind)

    def _init_threading(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()  # guards _series, _pending, _thread
        self._refresh_mutex = threading.Lock()  # one fetch at a time
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"IntensityService(zone={self.zone_choice.zone!r}, rule={self.zone_choice.rule!r}, "
            f"providers={self.provider_ids!r}, pue={self.pue!r})"
        )

    # ------------------------------------------------------------------ public lookups

    def co2(self, energy_j: float, start: float, end: float) -> Co2:
        """CO2 for ``energy_j`` joules used evenly over ``[start, end]`` (Unix seconds).

        Time-resolved over the intensity periods known for that span; the best current value
        fills any part no period covers. Never blocks on the network and never raises.
        """
        try:
            now = self._clock()
            self._housekeeping(now)
            return self._co2(float(energy_j), float(start), float(end), now)
        except Exception as exc:  # never break the measured program
            fallback = table_intensity(
                self.zone_choice, note=f"internal error ({type(exc).__name__}); used the table"
            )
            return self._make_co2(float(energy_j), [(fallback, 1.0)])

    def current(self) -> Intensity:
        """The best value for now, without waiting for the network."""
        try:
            now = self._clock()
            self._housekeeping(now)
            return self._best_current(now)
        except Exception as exc:
            return table_intensity(
                self.zone_choice, note=f"internal error ({type(exc).__name__}); used the table"
            )

    def forecast(self, start: float, end: float) -> list[Intensity] | None:
        """Forecast periods overlapping ``[start, end]`` (Unix seconds), in time order.

        None when no configured provider gives a forecast for this zone, or none has been
        fetched yet (the first call asks for one in the background).
        """
        try:
            prov = self.provider
            if prov is None or not prov.has_forecast:
                return None
            now = self._clock()
            self._want_forecast = True
            self._housekeeping(now)
            with self._lock:
                series = self._series["forecast"]
                fresh = self._fresh(series, now)
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
        except Exception:
            return None

    def refresh(self, *, wait: bool = False, force: bool = False, forecast: bool = False) -> None:
        """Fetch what is stale now: in a background thread, or here when ``wait=True``.

        ``force=True`` fetches even values that are still fresh (back-off after failures and
        the providers' request limits still apply); ``forecast=True`` fetches the forecast too.
        """
        if forecast:
            self._want_forecast = True
        if self.provider is None or self._closed:
            return
        self._check_fork()
        if wait:
            self._run_refresh(force)
            self._emit_warnings(swallow=False)
        else:
            self._start_thread(force)

    def close(self) -> None:
        """Stop refreshing and close the HTTP client if this service made it."""
        self._closed = True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> IntensityService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked: the parent's thread and locks are not ours
            self._init_threading()
            if self._owns_client:
                self._client = None  # its sockets belong to the parent

    def _housekeeping(self, now: float) -> None:
        self._check_fork()
        if self._background and self.provider is not None and not self._closed:
            thread = self._thread
            if (thread is None or not thread.is_alive()) and any(
                self._due(kind, now, False) for kind in self._kinds()
            ):
                self._start_thread(False)
        if self._pending:
            self._emit_warnings(swallow=True)

    def _kinds(self) -> list[str]:
        prov = self.provider
        if prov is not None and prov.has_forecast and self._want_forecast:
            return ["recent", "forecast"]
        return ["recent"]

    def _fresh(self, series: _Series, now: float) -> bool:
        prov = self.provider
        return (
            prov is not None
            and series.fetched_at is not None
            and series.fetched_at <= now < series.fetched_at + prov.ttl_s
        )

    def _due(self, kind: str, now: float, force: bool) -> bool:
        series = self._series[kind]
        if series.failure is not None and now < series.failure.until:
            return False
        if now < series.hold_until:
            return False
        return force or not self._fresh(series, now)

    def _start_thread(self, force: bool) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run_refresh,
                args=(force,),
                name="carbonctx-intensity-refresh",
                daemon=True,
            )
            self._thread.start()

    def _join_refresh(self, timeout: float = 30.0) -> None:
        """Wait for a background refresh to finish (for tests and orderly shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _get_client(self) -> httpx.Client:
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(10.0, connect=5.0),
                headers={"user-agent": "carbonctx"},
            )
        return self._client

    def _run_refresh(self, force: bool) -> None:
        prov = self.provider
        if prov is None:
            return
        with self._refresh_mutex:
            for kind in self._kinds():
                if self._closed:
                    return
                now = self._clock()
                try:
                    self._reload_disk(kind)  # another process may have fetched it already
                    if not self._due(kind, now, force):
                        continue
                    periods = prov.fetch(self._get_client(), self.zone_choice.zone, kind, now)
                except ProviderError as exc:
                    self._record_failure(prov, kind, exc, now)
                except Exception as exc:  # a bug must not kill the thread or the caller
                    err = ProviderError("error", f"{prov.id}: {type(exc).__name__}")
                    self._record_failure(prov, kind, err, now)
                else:
                    self._record_success(kind, periods, now)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _record_failure(self, prov: Provider, kind: str, exc: ProviderError, now: float) -> None:
        if exc.kind == "throttled":  # not a failure: the previous request was moments ago
            with self._lock:
                self._series[kind].hold_until = now + (exc.retry_after or 60.0)
            return
        with self._lock:
            series = self._series[kind]
            attempts = series.failure.attempts + 1 if series.failure is not None else 1
            if exc.retry_after is not None:
                delay = max(1.0, exc.retry_after)
            elif exc.kind == "unknown-zone":
                delay = _BACKOFF_BASE["unknown-zone"]
            else:
                base = _BACKOFF_BASE.get(exc.kind, 600.0)
                delay = min(_BACKOFF_MAX, base * 2.0 ** min(attempts - 1, 20))
            reason = self._scrub(exc.reason)
            series.failure = _Failure(exc.kind, reason, attempts, now + delay)
            if (prov.id, exc.kind) not in self._warned:
                self._warned.add((prov.id, exc.kind))
                hint = _HINTS.get(exc.kind, "")
                what = "forecast" if kind == "forecast" else "live carbon intensity"
                self._pending.append(
                    f"carbonctx: {what} for zone {self.zone_choice.zone} is unavailable: "
                    f"{reason}. Using cached values, then the yearly table; next try in "
                    f"{delay:.0f} s. {hint}".rstrip()
                )
        self._write_disk(kind)

    def _record_success(self, kind: str, periods: list[Intensity], now: float) -> None:
        with self._lock:
            series = self._series[kind]
            merged = dict(series.periods) if kind == "recent" else {}
            for p in periods:
                if p.valid_from is not None:
                    merged[p.valid_from.timestamp()] = p
            horizon = now - _KEEP_HISTORY_S
            merged = {
                s: p
                for s, p in merged.items()
                if p.valid_to is not None and p.valid_to.timestamp() > horizon
            }
            series.set_periods(merged)
            series.fetched_at = now
            series.failure = None
        self._write_disk(kind)

    def _emit_warnings(self, *, swallow: bool) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for message in pending:
            if swallow:
                # co2()/current() never raise, even where warnings are turned into errors;
                # the reason stays in each result's note.
                with contextlib.suppress(Warning):
                    warnings.warn(message, IntensityWarning, stacklevel=4)
            else:
                warnings.warn(message, IntensityWarning, stacklevel=3)

    # ------------------------------------------------------------------ disk cache

    def _cache_path(self, kind: str) -> Path | None:
        prov = self.provider
        if prov is None:
            return None
        return self.cache_dir / f"{prov.id}-{self.zone_choice.zone}-{kind}.json"

    def _write_disk(self, kind: str) -> None:
        path = self._cache_path(kind)
        if path is None:
            return
        with self._lock:
            series = self._series[kind]
            data = {
                "format": 1,
                "provider": self.provider.id if self.provider else None,
                "zone": self.zone_choice.zone,
                "kind": kind,
                "fetched_at": series.fetched_at,
                "failure": series.failure.to_dict() if series.failure else None,
                "periods": [series.periods[s].to_dict() for s in series.starts],
            }
        with contextlib.suppress(OSError):  # a read-only home must not stop measurement
            _atomic_write_json(path, data)

    def _reload_disk(self, kind: str) -> None:
        path = self._cache_path(kind)
        if path is None:
            return
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
            fetched_at = data.get("fetched_at")
            failure = data.get("failure")
            periods = [Intensity.from_dict(d) for d in data.get("periods", [])]
            fail = _Failure(**failure) if isinstance(failure, dict) else None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return
        with self._lock:
            series = self._series[kind]
            if isinstance(fetched_at, (int, float)) and (
                series.fetched_at is None or fetched_at > series.fetched_at
            ):
                merged = dict(series.periods) if kind == "recent" else {}
                for p in periods:
                    if p.valid_from is not None and p.zone == self.zone_choice.zone:
                        merged[p.valid_from.timestamp()] = p
                series.set_periods(merged)
                series.fetched_at = float(fetched_at)
                series.failure = None
            if fail is not None and (series.failure is None or fail.until > series.failure.until):
                series.failure = fail

    # ------------------------------------------------------------------ lookups

    def _mark(self, p: Intensity, series: _Series, now: float) -> Intensity:
        """``p`` as served now: ``"cached"``, with the reason, once its fetch is not fresh."""
        if self._fresh(series, now):
            return p
        if series.failure is not None:
            why = f"kept from an earlier fetch; {series.failure.reason}"
        else:
            why = "kept from an earlier fetch; a refresh is due"
        return attrs.evolve(p, source="cached", note=why)

    def _unavailable(self, now: float) -> str:
        prov = self.provider
        assert prov is not None
        series = self._series["recent"]
        if series.failure is not None:
            return series.failure.reason
        if series.fetched_at is None:
            return f"{prov.id} has not answered yet"
        return f"{prov.id} has no value for now"

    def _best_current(self, now: float) -> Intensity:
        prov = self.provider
        if prov is None:
            return self._table
        with self._lock:
            recent, fc = self._series["recent"], self._series["forecast"]
            p = recent.at(now)
            if p is not None:
                return self._mark(p, recent, now)
            p = fc.at(now)
            if p is not None:
                return self._mark(p, fc, now)
            latest = recent.latest_before(now)
            reason = self._unavailable(now)
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
            self.zone_choice, note=f"live value unavailable ({reason}); used the yearly table"
        )

    def _co2(self, energy_j: float, start: float, end: float, now: float) -> Co2:
        if end < start:
            start, end = end, start
        if self.provider is None:
            return self._make_co2(energy_j, [(self._table, 1.0)])
        segments: list[tuple[Intensity, float]] = []
        with self._lock:  # a consistent view while the refresh thread may update the series
            series_list = [
                s for s in (self._series["recent"], self._series["forecast"]) if s.starts
            ]
            if not (end - start > 0 and math.isfinite(end - start)):
                for series in series_list:
                    p = series.at(start)
                    if p is not None:
                        return self._make_co2(energy_j, [(self._mark(p, series, now), 1.0)])
                return self._make_co2(energy_j, [(self._best_current(now), 1.0)])
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
                        fallback = self._best_current(now)
                    used = fallback
                if seg_end <= t:  # cannot happen with well-formed periods; stay finite anyway
                    seg_end = end
                segments.append((used, seg_end - t))
                t = seg_end
        return self._make_co2(energy_j, segments)

    def _make_co2(self, energy_j: float, segments: list[tuple[Intensity, float]]) -> Co2:
        total = sum(w for _, w in segments)
        mean = sum(p.g_per_kwh * w for p, w in segments) / total if total > 0 else 0.0
        periods: list[Intensity] = []
        for p, _ in segments:
            if not periods or periods[-1] != p:
                periods.append(p)
        energy_kwh = energy_j / 3.6e6
        return Co2(
            co2_g=energy_kwh * mean * self.pue,
            energy_kwh=energy_kwh,
            intensity_g_per_kwh=mean,
            pue=self.pue,
            pue_source=self.pue_source,
            zone=self.zone_choice,
            periods=tuple(periods),
        )


__all__ += ["WORLD", "world_average"]

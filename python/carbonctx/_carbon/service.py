"""Carbon intensity: turn joules into grams of CO2e, and say where the figure came from.

:class:`IntensityService` resolves the zone, keeps live values from the configured providers in
a cache (memory and disk) and refreshes it off the caller's thread. Its lookups never touch the
network and never raise::

    svc = IntensityService(zone="DE")                 # nothing configured: the yearly table
    result = svc.co2(energy_j=3.6e6, start=t0, end=t1)  # 1 kWh
    result.co2_g, result.intensity_g_per_kwh, result.periods[0].source   # ..., 342.06, "table"

Live providers are opt-in: Electricity Maps, ENTSO-E and EIA when a key is given (or listed),
WattTime when its login is given, ``gb`` and ``dk`` when listed. Settings come from arguments
first, then the environment (both validated
in ``carbonctx._config``):

========================================  ==========================================================
``CARBONCTX_ZONE``                        zone code (``DE``, ``DK-DK1``, ``US-CAL-CISO``)
``CARBONCTX_PUE``                         power usage effectiveness, >= 1 (default 1.0)
``CARBONCTX_PROVIDERS``                   comma list of ``electricitymaps``, ``gb``, ``dk``,
                                          ``watttime``, ``entsoe``, ``eia``
``CARBONCTX_SIGNAL``                      ``average`` (default) or ``marginal``: which CO2 uses
``CARBONCTX_ELECTRICITYMAPS_TOKEN``       Electricity Maps API token
``CARBONCTX_ELECTRICITYMAPS_API``         ``v3`` (default) or ``v4``
``CARBONCTX_ENTSOE_TOKEN``                ENTSO-E Transparency Platform security token
``CARBONCTX_EIA_KEY``                     US EIA Open Data API key
``CARBONCTX_WATTTIME_USERNAME``,          WattTime login (marginal ``co2_moer``), and its
``_PASSWORD``, ``_REGION``                region (else found from the coordinates)
``CARBONCTX_LATITUDE``, ``_LONGITUDE``    where the machine is, in degrees: the zone (approximate
                                          boundaries) unless one is given; Electricity Maps and
                                          WattTime are asked by coordinates
``CARBONCTX_INTENSITY_DEADLINE``          seconds one provider request may take (default 20)
``CARBONCTX_<ID>_URL``                    provider base URL (scheme and host)
``CARBONCTX_CACHE_DIR``                   where fetched values are kept between runs
========================================  ==========================================================

Fallbacks, in order: a fresh live value; a cached one (older than the provider's cadence); the
yearly table; the world average. Each :class:`Intensity` says which (``source``) and why
(``note``). Provider failures back off and warn once per provider and kind of failure with an
:class:`IntensityWarning`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from carbonctx import _config
from carbonctx._carbon.cache import CachedSeries, DiskCache
from carbonctx._carbon.intensity import Intensity
from carbonctx._carbon.live import LiveValues
from carbonctx._carbon.providers import Limits, Provider, build_providers
from carbonctx._carbon.refresh import Refresher
from carbonctx._carbon.tables import table_intensity
from carbonctx._carbon.zones import ZoneChoice, resolve_zone
from carbonctx._results.units import J_PER_KWH

if TYPE_CHECKING:
    import threading

    import httpx
    from typing_extensions import Unpack

__all__ = ["Co2", "IntensityService"]


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
    #: the signal the settings chose (``"average"`` or ``"marginal"``); see :attr:`signal`
    signal_chosen: str = "average"
    #: the same energy's CO2 by the other signal, where a source for it is configured (or, for
    #: a marginal figure, the yearly average): the figure not chosen, for comparison
    alternatives: tuple[Co2, ...] = ()

    @property
    def signal(self) -> str:
        """The signal the figure is: ``"average"``, ``"marginal"``, or ``"mixed"`` when a
        marginal series had gaps filled with average values."""
        found = {p.signal for p in self.periods}
        return found.pop() if len(found) == 1 else "mixed"

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
            "signal": self.signal,
            "signal_chosen": self.signal_chosen,
            "alternatives": [
                {
                    "signal": a.signal,
                    "co2_g": a.co2_g,
                    "intensity_g_per_kwh": a.intensity_g_per_kwh,
                    "sources": list(a.sources),
                    "providers": list(dict.fromkeys(p.provider for p in a.periods)),
                }
                for a in self.alternatives
            ],
            "periods": [p.to_dict() for p in self.periods],
        }


class IntensityService:
    """Carbon intensity for one zone: live when configured, else the yearly table.

    ``co2()``, ``current()`` and ``forecast()`` never wait for the network and never raise:
    when a cached value is stale they start a background refresh (one daemon thread at a time,
    see :class:`~carbonctx._carbon.refresh.Refresher`) and answer with the best value at hand.
    ``refresh(wait=True)`` fetches in the caller's thread; pass ``background=False`` to fetch
    only when asked. Settings are checked at construction and raise
    :class:`carbonctx.errors.ConfigurationError` naming the setting.
    """

    def __init__(
        self,
        *,
        zone: str | None = None,
        client: httpx.Client | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        background: bool = True,
        **settings: Unpack[_config.CarbonKwargs],
    ) -> None:
        env = _config.environ(env)
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        cs = _config.carbon_settings(env=env, **settings)
        self.zone_choice: ZoneChoice = resolve_zone(zone, env, coordinates=cs.coordinates)
        self.pue, self.pue_source = cs.pue, cs.pue_source
        self.provider_ids: tuple[str, ...] = cs.provider_ids
        self.urls: dict[str, str] = dict(cs.urls)
        self.cache_dir: Path = cs.cache_dir
        token = cs.electricitymaps_token
        self.signal: str = cs.signal
        limits = Limits(deadline_s=cs.deadline_s, read_s=min(5.0, cs.deadline_s))
        explicit = self.zone_choice.rule in ("argument", "CARBONCTX_ZONE")
        self._providers: tuple[Provider, ...] = build_providers(
            cs, self._clock, limits, by_coordinates=not explicit
        )
        zone_code = self.zone_choice.zone
        covering = [p for p in self._providers if p.covers(zone_code)]
        #: the live provider used for this zone: the first listed that covers it and gives the
        #: chosen signal, else (average is better than nothing) the first that covers it
        self.provider: Provider | None = next(
            (p for p in covering if p.signal == self.signal), covering[0] if covering else None
        )
        #: why the signal used differs from the one chosen, if it does
        self.signal_note: str | None = None
        if self.signal == "marginal" and (
            self.provider is None or self.provider.signal != "marginal"
        ):
            self.signal_note = (
                f"no configured provider gives a marginal intensity for zone {zone_code} "
                "(WattTime does, with a region or coordinates); average used"
            )
        self._table = table_intensity(self.zone_choice, note=self.signal_note)
        secrets = tuple(
            x
            for x in (
                token,
                cs.entsoe_token,
                cs.eia_key,
                cs.watttime_username,
                cs.watttime_password,
            )
            if x
        )

        def live(prov: Provider) -> tuple[Refresher, LiveValues]:
            ref = Refresher(
                prov,
                zone_code,
                DiskCache(self.cache_dir, prov.id, zone_code),
                client=client,
                clock=self._clock,
                background=background,
                secrets=secrets,
            )
            return ref, LiveValues(prov, ref, self.zone_choice)

        self._refresher: Refresher | None = None
        self._live: LiveValues | None = None
        if self.provider is not None:
            self._refresher, self._live = live(self.provider)
        #: a provider of the other signal (average beside marginal), whose figure results
        #: carry as an alternative; with a marginal provider and no live average, the table
        other = next(
            (p for p in covering if self.provider is not None and p.signal != self.provider.signal),
            None,
        )
        self._other: tuple[Refresher, LiveValues] | None = None if other is None else live(other)
        self._other_table = (
            other is None and self.provider is not None and self.provider.signal == "marginal"
        )

    def _refreshers(self) -> list[Refresher]:
        refs = [self._refresher] if self._refresher is not None else []
        return refs + ([self._other[0]] if self._other is not None else [])

    def __repr__(self) -> str:
        return (
            f"IntensityService(zone={self.zone_choice.zone!r}, rule={self.zone_choice.rule!r}, "
            f"providers={self.provider_ids!r}, pue={self.pue!r})"
        )

    # ------------------------------------------------------------------ public lookups

    def now(self) -> float:
        """The service's clock (Unix seconds): the time its lookups take as now."""
        return self._clock()

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
            return self._live.current(now) if self._live is not None else self._table
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
            ref = self._refresher
            if prov is None or ref is None or self._live is None or not prov.has_forecast:
                return None
            now = self._clock()
            ref.want_forecast = True
            self._housekeeping(now)
            return self._live.forecast(start, end, now)
        except Exception:
            return None

    def forecast_unavailable(self) -> str:
        """Why :meth:`forecast` gives nothing, in words: what the provider said when it refused
        or failed, else that no configured provider gives a forecast for this zone."""
        prov, ref = self.provider, self._refresher
        if prov is None or ref is None or not prov.has_forecast:
            return "no configured provider gives one for this zone"
        with ref.lock:
            series = ref.series["forecast"]
            failure, fetched = series.failure, series.fetched_at is not None
        if failure is not None:
            return failure.reason
        if not fetched:
            return f"{prov.name} has not answered yet"
        return f"{prov.name} gave no forecast periods ahead for zone {self.zone_choice.zone}"

    def refresh(self, *, wait: bool = False, force: bool = False, forecast: bool = False) -> None:
        """Fetch what is stale now: in a background thread, or here when ``wait=True``.

        ``force=True`` fetches even values that are still fresh (back-off after failures and
        the providers' request limits still apply); ``forecast=True`` fetches the forecast too.
        """
        for i, ref in enumerate(self._refreshers()):
            if forecast and i == 0:
                ref.want_forecast = True
            ref.refresh(wait=wait, force=force)

    def close(self) -> None:
        """Stop refreshing and close the HTTP client if this service made it."""
        for ref in self._refreshers():
            ref.close()

    def __enter__(self) -> IntensityService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the refresher's state

    @property
    def _series(self) -> dict[str, CachedSeries]:
        """The cached series by kind (empty ones when there is no live provider)."""
        ref = self._refresher
        return (
            ref.series
            if ref is not None
            else {"recent": CachedSeries(), "forecast": CachedSeries()}
        )

    @property
    def _thread(self) -> threading.Thread | None:
        ref = self._refresher
        return ref.thread if ref is not None else None

    def _join_refresh(self, timeout: float = 30.0) -> None:
        """Wait for a background refresh to finish (for tests and orderly shutdown)."""
        if self._refresher is not None:
            self._refresher.join(timeout)

    def _housekeeping(self, now: float) -> None:
        for ref in self._refreshers():
            ref.housekeeping(now)

    def _co2(self, energy_j: float, start: float, end: float, now: float) -> Co2:
        if end < start:
            start, end = end, start
        if self._live is None:
            return self._make_co2(energy_j, [(self._table, 1.0)])
        result = self._make_co2(energy_j, self._live.segments(start, end, now))
        if self._other is not None:
            alt = self._make_co2(energy_j, self._other[1].segments(start, end, now))
        elif self._other_table:
            alt = self._make_co2(energy_j, [(table_intensity(self.zone_choice), 1.0)])
        else:
            return result
        return attrs.evolve(result, alternatives=(alt,))

    def _make_co2(self, energy_j: float, segments: list[tuple[Intensity, float]]) -> Co2:
        """Time-weighted mean intensity over the segments, times the energy and the PUE."""
        total = sum(w for _, w in segments)
        mean = sum(p.g_per_kwh * w for p, w in segments) / total if total > 0 else 0.0
        periods: list[Intensity] = []
        for p, _ in segments:
            if not periods or periods[-1] != p:
                periods.append(p)
        energy_kwh = energy_j / J_PER_KWH
        return Co2(
            co2_g=energy_kwh * mean * self.pue,
            energy_kwh=energy_kwh,
            intensity_g_per_kwh=mean,
            pue=self.pue,
            pue_source=self.pue_source,
            zone=self.zone_choice,
            periods=tuple(periods),
            signal_chosen=self.signal,
        )

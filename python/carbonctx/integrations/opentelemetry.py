"""OpenTelemetry metrics: carbonctx's figures through a ``MeterProvider`` (OTLP or any reader).

::

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from carbonctx.integrations import opentelemetry as carbonctx_otel

    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
    carbonctx_otel.instrument(provider)     # without a provider: the global one
    ...
    carbonctx_otel.shutdown()               # counts what was spent up to now
    provider.shutdown()                     # the last export

The instruments have the names, units and attributes of the Prometheus metrics
(:mod:`carbonctx.integrations.prometheus`), so that dashboards work on either pipeline:

* ``carbonctx_energy_joules_total`` (``J``) and ``carbonctx_co2_grams_total`` (``g``),
  observable counters (cumulative, monotonic) with ``source``, ``region``, ``rank``, ``node``:
  ``region="process"`` per ``source`` (``cpu``, ``dram``, ``gpu``), measured by the process
  itself as back-to-back regions of ``interval`` seconds on a thread of its own, and each region
  name measured with ``track()`` with ``source="total"`` (they overlap ``region="process"``;
  the first ``max_names``, 1000, each on its own and the names past them summed in
  ``region="(other)"``);
* ``carbonctx_device_energy_joules_total`` (``J``), observable counter with ``source``,
  ``device``, ``region``, ``rank``, ``node``: each package, DRAM and GPU (never the domains that
  overlap them) for the process and the first ``max_regions`` region names;
* ``carbonctx_power_watts`` (``W``), observable gauge per ``source``: mean power over the last
  interval;
* ``carbonctx_carbon_intensity_grams_per_kwh`` (``g/kWh``), observable gauge with ``zone``.

A collection never measures: it reads the totals the last interval counted (and the named
regions' totals from ``carbonctx.stats()``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics

import carbonctx
from carbonctx.integrations._meter import KINDS, Meter

__all__ = ["Instruments", "instrument", "instruments", "shutdown"]


class Instruments(Meter):
    """carbonctx's figures as OpenTelemetry instruments on ``meter_provider`` (the global one
    unless given); see the module's documentation. ``interval``, ``region``, ``names``,
    ``max_names`` and ``max_regions`` are the measuring's. :meth:`start` starts measuring;
    :meth:`update` counts what was spent up to now; :meth:`stop` counts the rest and stops (the
    instruments keep reporting the final totals)."""

    def __init__(
        self,
        meter_provider: Any = None,
        *,
        interval: float = 5.0,
        region: str = "process",
        names: bool = True,
        max_regions: int = 20,
        max_names: int = 1000,
    ) -> None:
        super().__init__(
            interval=interval,
            region=region,
            names=names,
            max_regions=max_regions,
            max_names=max_names,
        )
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("carbonctx", carbonctx.__version__)
        self.instruments = [
            meter.create_observable_counter(
                "carbonctx_energy_joules_total",
                callbacks=[self._energy],
                unit="J",
                description="Energy spent (joules), per source and region",
            ),
            meter.create_observable_counter(
                "carbonctx_co2_grams_total",
                callbacks=[self._co2],
                unit="g",
                description="CO2e emitted (grams), per source and region",
            ),
            meter.create_observable_counter(
                "carbonctx_device_energy_joules_total",
                callbacks=[self._devices],
                unit="J",
                description="Energy spent (joules), per source device and region",
            ),
            meter.create_observable_gauge(
                "carbonctx_power_watts",
                callbacks=[self._power],
                unit="W",
                description="Mean power over the last interval",
            ),
            meter.create_observable_gauge(
                "carbonctx_carbon_intensity_grams_per_kwh",
                callbacks=[self._intensity],
                unit="g/kWh",
                description="Carbon intensity used (gCO2e/kWh)",
            ),
        ]

    # ------------------------------------------------------------------ callbacks

    def _totals(self, which: str) -> Iterable[metrics.Observation]:
        snap = self.snapshot()
        values = snap.energy_j if which == "energy" else snap.co2_g
        for src in KINDS.values():
            yield metrics.Observation(values[src], _attrs(snap, source=src, region=snap.region))
        for name, (j, g) in snap.names.items():
            v = j if which == "energy" else g
            if math.isfinite(v):
                yield metrics.Observation(v, _attrs(snap, source="total", region=name))

    def _energy(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return list(self._totals("energy"))

    def _co2(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return list(self._totals("co2"))

    def _devices(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            devices = dict(self.devices)
            rank, node = self.rank, self.node
        return [
            metrics.Observation(
                j, {"source": kind, "device": dev, "region": name, "rank": rank, "node": node}
            )
            for (name, kind, dev), j in devices.items()
        ]

    def _power(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            power = dict(self.power_w)
            rank, node = self.rank, self.node
        return [
            metrics.Observation(w, {"source": src, "rank": rank, "node": node})
            for src, w in power.items()
            if math.isfinite(w)
        ]

    def _intensity(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            ci, zone, rank, node = self.intensity, self.zone, self.rank, self.node
        if ci is None:
            return []
        return [metrics.Observation(ci, {"zone": zone or "", "rank": rank, "node": node})]


def _attrs(snap: Any, **kw: str) -> dict[str, str]:
    return {**kw, "rank": snap.rank, "node": snap.node}


_INSTRUMENTS: Instruments | None = None
_LOCK = threading.Lock()


def instrument(meter_provider: Any = None, **kwargs: Any) -> Instruments:
    """The process's instruments, created on ``meter_provider`` (with ``kwargs``: ``interval``,
    ``region``, ``names``, ``max_names``, ``max_regions``) and started on first use; later
    calls return them as they are. An instrument name is registered once per provider, so one
    set per process."""
    global _INSTRUMENTS
    with _LOCK:
        if _INSTRUMENTS is None:
            _INSTRUMENTS = Instruments(meter_provider, **kwargs).start()
        return _INSTRUMENTS


def instruments() -> Instruments | None:
    """The process's instruments, or None before :func:`instrument`."""
    return _INSTRUMENTS


def shutdown() -> None:
    """Count what was spent up to now and stop measuring. The instruments stay registered with
    their provider and report the final totals; a later :func:`instrument` makes a new set (on
    a new provider: a provider keeps the first instruments of a name)."""
    global _INSTRUMENTS
    with _LOCK:
        ins, _INSTRUMENTS = _INSTRUMENTS, None
    if ins is not None:
        ins.stop()

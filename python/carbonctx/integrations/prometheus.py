"""Prometheus metrics (``prometheus_client``): an endpoint for long jobs, a push for batch jobs.

::

    from carbonctx.integrations import prometheus

    prometheus.start_http_server(9464)                    # serves /metrics; measures the process

    prometheus.exporter()                                 # a batch job: measure from its start
    ...
    prometheus.push_to_gateway("pushgw:9091", job="train")   # ...and push at its end

Metrics (each labelled with ``rank`` and ``node``; outside a distributed job rank is ``0`` and
node the host's name):

* ``carbonctx_energy_joules_total`` and ``carbonctx_co2_grams_total`` (counters), labelled by
  ``source`` and ``region``:

  - ``region="process"``: everything this process's sources spent (its rank's part in a job)
    since the exporter started, with ``source`` ``cpu`` (package), ``dram`` and ``gpu``. The
    exporter measures it itself as back-to-back regions of ``interval`` seconds (5 by default)
    on a thread of its own, so the counters move in steps of ``interval``; a scrape never waits.
  - every region name measured with ``track()``/``@tracked`` (``carbonctx.stats()``): its total
    with ``source="total"`` (statistics keep totals per name, not per source). These overlap
    ``region="process"``: sum over one of them, never over ``region``. The first ``max_names``
    (1000) names have series of their own, those past them are summed in ``region="(other)"``
    (a warning says so), so that the series stay bounded whatever names a program makes. A
    name decoded from bytes that are not UTF-8 has its undecodable bytes escaped
    (``\\udce9``); the exposition escapes quotes, backslashes and newlines.

* ``carbonctx_device_energy_joules_total`` (counter), labelled by ``source`` (its kind),
  ``device`` (the source's id in ``by_source``: ``powercap:intel-rapl:0``, ``nvml:0``...) and
  ``region``: the joules of each package, DRAM and GPU, for ``region="process"`` and for the
  first ``max_regions`` (20) region names. Summed over ``source`` and ``device``, a region's
  series give its energy: the domains that overlap these (core, uncore, psys, module, rail,
  node) are left out, except an AMD APU's socket counted in its CPU package's place (a ``cpu``
  device; that package is then left out). The series are bounded by the hardware and
  ``max_regions``. Named regions are read from the recent window (``carbonctx.recent()``) at
  each interval: a warning says when more regions ended in one interval than the window holds
  (``configure(window=N)``), whose devices are then missing (their totals are not). Reading a
  full window of 1000 regions takes some 30 ms of the exporter's thread each interval;
  ``max_regions=0`` skips it;
* ``carbonctx_power_watts`` (gauge) per ``source``: mean power over the last interval;
* ``carbonctx_carbon_intensity_grams_per_kwh`` (gauge) with the ``zone`` it is for.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import push_to_gateway as _push
from prometheus_client import start_http_server as _serve
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import carbonctx
from carbonctx.integrations._meter import KINDS, Meter

__all__ = ["Exporter", "exporter", "push_to_gateway", "shutdown", "start_http_server"]


class Exporter(Meter):
    """carbonctx's figures as Prometheus metrics (see the module's documentation).

    ``interval`` is the length of the exporter's own regions (seconds); ``region`` their name;
    ``registry`` the ``CollectorRegistry`` it registers with (prometheus_client's default one
    unless given); ``max_names`` how many region names get total series of their own;
    ``max_regions`` how many get per-device series. :meth:`start`
    starts measuring; :meth:`update` counts what was spent up to now; :meth:`stop` counts the
    rest and stops.
    """

    def __init__(
        self,
        *,
        interval: float = 5.0,
        region: str = "process",
        registry: CollectorRegistry | None = None,
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
        self.registry = REGISTRY if registry is None else registry
        self.registry.register(self)

    def close(self) -> None:
        """Stop, and unregister from the registry."""
        self.stop()
        self.registry.unregister(self)

    # ------------------------------------------------------------------ prometheus_client

    def describe(self) -> list[Any]:
        # Registering must not measure: describe the families without their samples.
        return _families()

    def collect(self) -> Iterator[Any]:
        energy, co2, device, power, ci = _families()
        snap = self.snapshot()
        rank, node, region = snap.rank, snap.node, snap.region
        for src in KINDS.values():
            energy.add_metric([src, region, rank, node], snap.energy_j[src])
            co2.add_metric([src, region, rank, node], snap.co2_g[src])
            if math.isfinite(snap.power_w[src]):
                power.add_metric([src, rank, node], snap.power_w[src])
        if snap.intensity is not None:
            ci.add_metric([snap.zone or "", rank, node], snap.intensity)
        for name, (j, g) in snap.names.items():
            if math.isfinite(j):
                energy.add_metric(["total", name, rank, node], j)
            if math.isfinite(g):
                co2.add_metric(["total", name, rank, node], g)
        for (name, kind, dev), j in snap.devices.items():
            device.add_metric([kind, dev, name, rank, node], j)
        yield from (energy, co2, device, power, ci)


def _families() -> list[Any]:
    return [
        CounterMetricFamily(
            "carbonctx_energy_joules",
            "Energy spent (joules), per source and region",
            labels=["source", "region", "rank", "node"],
        ),
        CounterMetricFamily(
            "carbonctx_co2_grams",
            "CO2e emitted (grams), per source and region",
            labels=["source", "region", "rank", "node"],
        ),
        CounterMetricFamily(
            "carbonctx_device_energy_joules",
            "Energy spent (joules), per source device and region",
            labels=["source", "device", "region", "rank", "node"],
        ),
        GaugeMetricFamily(
            "carbonctx_power_watts",
            "Mean power over the last interval",
            labels=["source", "rank", "node"],
        ),
        GaugeMetricFamily(
            "carbonctx_carbon_intensity_grams_per_kwh",
            "Carbon intensity used (gCO2e/kWh)",
            labels=["zone", "rank", "node"],
        ),
    ]


_EXPORTER: Exporter | None = None
_EXPORTER_LOCK = threading.Lock()


def exporter(**kwargs: Any) -> Exporter:
    """The process's exporter, created (with ``kwargs``) and started on first use; later
    calls return it as it is (stopped, if it was stopped)."""
    global _EXPORTER
    with _EXPORTER_LOCK:
        if _EXPORTER is None:
            _EXPORTER = Exporter(**kwargs).start()
        return _EXPORTER


def shutdown() -> None:
    """Stop the process's exporter and unregister it (a later use creates a new one)."""
    global _EXPORTER
    with _EXPORTER_LOCK:
        ex, _EXPORTER = _EXPORTER, None
    if ex is not None:
        ex.close()


def start_http_server(
    port: int,
    addr: str = "0.0.0.0",
    *,
    interval: float = 5.0,
    registry: CollectorRegistry | None = None,
    **kwargs: Any,
) -> tuple[Any, threading.Thread]:
    """Start measuring and serve ``/metrics`` on ``addr:port`` from a daemon thread (port 0
    picks a free one: ``server.server_port``). Returns prometheus_client's (server, thread).
    ``interval`` and ``registry`` are the exporter's (when this creates it); further ``kwargs``
    go to prometheus_client's ``start_http_server`` (TLS files...)."""
    ex = exporter(interval=interval, registry=registry)
    return _serve(port, addr=addr, registry=ex.registry, **kwargs)  # type: ignore[no-any-return]


def push_to_gateway(
    gateway: str,
    job: str,
    *,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float | None = 30,
    **kwargs: Any,
) -> None:
    """Count what was spent up to now and push every metric to a Pushgateway (for a batch
    job, at its end: start the exporter, :func:`exporter`, at its beginning, or its process
    counters hold nothing before the push, and a warning says so). The grouping key gets
    ``rank`` and ``node`` unless given, so that the ranks of a job do not overwrite each
    other's metrics."""
    with _EXPORTER_LOCK:
        started = _EXPORTER is not None
    ex = exporter()
    if not started:
        # Its process counters start now: only the named regions' totals hold the job.
        warnings.warn(
            "carbonctx push_to_gateway: no exporter was running, so the process's counters "
            '(region="process") hold nothing of the job before this push: call '
            "carbonctx.integrations.prometheus.exporter() when the job starts",
            carbonctx.CarbonctxWarning,
            stacklevel=2,
        )
    ex.update()
    key = {"rank": ex.rank, "node": ex.node, **(grouping_key or {})}
    _push(gateway, job=job, registry=ex.registry, grouping_key=key, timeout=timeout, **kwargs)

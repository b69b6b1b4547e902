"""Prometheus metrics (``prometheus_client``): an endpoint for long jobs, a push for batch jobs.

::

    from carbonctx.integrations import prometheus

    prometheus.start_http_server(9464)                    # serves /metrics; measures the process
    ...
    prometheus.push_to_gateway("pushgw:9091", job="train")   # a batch job, at its end

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
    ``region="process"``: sum over one of them, never over ``region``.

* ``carbonctx_power_watts`` (gauge) per ``source``: mean power over the last interval;
* ``carbonctx_carbon_intensity_grams_per_kwh`` (gauge) with the ``zone`` it is for.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import push_to_gateway as _push
from prometheus_client import start_http_server as _serve
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import carbonctx

__all__ = ["Exporter", "exporter", "push_to_gateway", "shutdown", "start_http_server"]

_SOURCES = ("cpu", "dram", "gpu")


class Exporter:
    """carbonctx's figures as Prometheus metrics (see the module's documentation).

    ``interval`` is the length of the exporter's own regions (seconds); ``region`` their name;
    ``registry`` the ``CollectorRegistry`` it registers with (prometheus_client's default one
    unless given). :meth:`start` starts measuring; :meth:`update` counts what was spent up to
    now; :meth:`stop` counts the rest and stops.
    """

    def __init__(
        self,
        *,
        interval: float = 5.0,
        region: str = "process",
        registry: CollectorRegistry | None = None,
        names: bool = True,
    ) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval={interval!r} must be a positive number of seconds")
        self.interval = float(interval)
        self.region = region
        self.names = names
        self.registry = REGISTRY if registry is None else registry
        self.energy_j = dict.fromkeys(_SOURCES, 0.0)
        self.co2_g = dict.fromkeys(_SOURCES, 0.0)
        self.power_w = dict.fromkeys(_SOURCES, math.nan)
        self.intensity: float | None = None
        self.zone: str | None = None
        self.rank = "0"
        self.node = socket.gethostname()
        self._lock = threading.Lock()
        self._split_lock = threading.Lock()
        self._open: Any = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry.register(self)

    # ------------------------------------------------------------------ measuring

    def start(self) -> Exporter:
        """Start measuring the process (idempotent)."""
        with self._split_lock:
            if self._thread is not None:
                return self
            self._open = carbonctx.track(self.region).__enter__()
            self._wake.clear()
            self._thread = threading.Thread(
                target=self._loop, name="carbonctx-prometheus", daemon=True
            )
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._wake.wait(self.interval):
            self.update()

    def update(self) -> None:
        """End the current region, start the next, and add the ended one to the counters
        (waits for the sampler to pass its end)."""
        with self._split_lock:
            ended = self._open
            if ended is None:
                return
            ended.__exit__(None, None, None)
            self._open = carbonctx.track(self.region).__enter__() if self._thread else None
            self._count(ended.result())

    def stop(self) -> None:
        """Count what was spent up to now and stop measuring (the metrics stay served)."""
        thread = self._thread
        if thread is None:
            return
        self._wake.set()
        thread.join()
        with self._split_lock:
            self._thread = None
        self.update()

    def close(self) -> None:
        """Stop, and unregister from the registry."""
        self.stop()
        self.registry.unregister(self)

    def _count(self, m: Any) -> None:
        parts = {"cpu": m.cpu_j, "dram": m.dram_j, "gpu": m.gpu_j}
        with self._lock:
            for src, j in parts.items():
                if not math.isfinite(j):
                    continue
                self.energy_j[src] += j
                if m.co2_g is not None and m.energy_j > 0 and math.isfinite(m.co2_g):
                    self.co2_g[src] += m.co2_g * j / m.energy_j
                self.power_w[src] = j / m.duration_s if m.duration_s > 0 else math.nan
            if m.intensity is not None:
                self.intensity, self.zone = float(m.intensity), m.zone
            if m.rank is not None:
                self.rank = str(m.rank)
            if m.node is not None:
                self.node = str(m.node)

    # ------------------------------------------------------------------ prometheus_client

    def describe(self) -> list[Any]:
        # Registering must not measure: describe the families without their samples.
        return [
            CounterMetricFamily("carbonctx_energy_joules", "", labels=_LABELS),
            CounterMetricFamily("carbonctx_co2_grams", "", labels=_LABELS),
            GaugeMetricFamily("carbonctx_power_watts", "", labels=_GAUGE_LABELS),
            GaugeMetricFamily("carbonctx_carbon_intensity_grams_per_kwh", "", labels=_CI_LABELS),
        ]

    def collect(self) -> Iterator[Any]:
        energy = CounterMetricFamily(
            "carbonctx_energy_joules",
            "Energy spent (joules), per source and region",
            labels=_LABELS,
        )
        co2 = CounterMetricFamily(
            "carbonctx_co2_grams", "CO2e emitted (grams), per source and region", labels=_LABELS
        )
        power = GaugeMetricFamily(
            "carbonctx_power_watts", "Mean power over the last interval", labels=_GAUGE_LABELS
        )
        ci = GaugeMetricFamily(
            "carbonctx_carbon_intensity_grams_per_kwh",
            "Carbon intensity used (gCO2e/kWh)",
            labels=_CI_LABELS,
        )
        with self._lock:
            rank, node = self.rank, self.node
            for src in _SOURCES:
                energy.add_metric([src, self.region, rank, node], self.energy_j[src])
                co2.add_metric([src, self.region, rank, node], self.co2_g[src])
                if math.isfinite(self.power_w[src]):
                    power.add_metric([src, rank, node], self.power_w[src])
            if self.intensity is not None:
                ci.add_metric([self.zone or "", rank, node], self.intensity)
        if self.names:
            for name, st in _stats().items():
                if name == self.region:
                    continue
                if math.isfinite(st.energy_j.total):
                    energy.add_metric(["total", name, rank, node], st.energy_j.total)
                if math.isfinite(st.co2_g):
                    co2.add_metric(["total", name, rank, node], st.co2_g)
        yield from (energy, co2, power, ci)


_LABELS = ["source", "region", "rank", "node"]
_GAUGE_LABELS = ["source", "rank", "node"]
_CI_LABELS = ["zone", "rank", "node"]


def _stats() -> Mapping[str, Any]:
    try:
        return carbonctx.stats()
    except carbonctx.CarbonctxError:
        return {}


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
    job, at its end). The grouping key gets ``rank`` and ``node`` unless given, so that the
    ranks of a job do not overwrite each other's metrics."""
    ex = exporter()
    ex.update()
    key = {"rank": ex.rank, "node": ex.node, **(grouping_key or {})}
    _push(gateway, job=job, registry=ex.registry, grouping_key=key, timeout=timeout, **kwargs)

"""OpenTelemetry metrics with the real SDK: read by an in-memory reader, and exported by the real
OTLP/HTTP exporter to a server on loopback that decodes the protobuf request.

Simulated hardware without a GPU (package 40/120 W square wave, DRAM 6 W): the reported counters
must match the simulated truth over the instruments' life within 1 %, with the names, units and
attributes of the Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx.integrations import opentelemetry as otel
from carbonctx.testing import SimulatedMachine, Wave

# In a pytest process of its own, as the Prometheus tests and for the same reason: the
# instruments measure on a thread of their own.
IN_CHILD = os.environ.get("CARBONCTX_TEST_OTEL_CHILD") == "1"
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in a process of its own (below)")

NAMES = {
    "carbonctx_energy_joules_total": "J",
    "carbonctx_co2_grams_total": "g",
    "carbonctx_device_energy_joules_total": "J",
    "carbonctx_power_watts": "W",
    "carbonctx_carbon_intensity_grams_per_kwh": "g/kWh",
}


@pytest.mark.skipif(IN_CHILD, reason="the child runs the tests themselves")
@pytest.mark.timeout(200)
def test_in_a_process_of_its_own() -> None:
    env = {**os.environ, "CARBONCTX_TEST_OTEL_CHILD": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    print(out.stdout[-4000:], out.stderr[-2000:])
    assert out.returncode == 0, out.stdout[-4000:]


@pytest.fixture
def cpu_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedMachine]:
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)  # exports go over loopback, never a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    yield m
    otel.shutdown()
    _runtime.reset()
    m.close()


def _check_truth(sim: SimulatedMachine, src: str, v: float, t0: int, t1: tuple[int, int]) -> None:
    """``v`` is the truth from ``t0`` (just before the instruments started) to their last
    region's end, which lies between ``t1[0]`` (just before stopping) and ``t1[1]`` (after):
    within 1 % of that bracket."""
    dom = {"cpu": "package", "dram": "dram"}[src]
    lo, hi = (sim.truth_j(dom, 0, t0, t) for t in t1)
    print(f"OpenTelemetry {src}: {v:.3f} J, truth between {lo:.3f} and {hi:.3f} J")
    assert lo * 0.99 <= v <= hi * 1.01


def _points(data: Any) -> dict[str, tuple[Any, list[tuple[dict[str, Any], float]]]]:
    """metric name -> (metric, [(attributes, value)]) from the SDK's MetricsData."""
    out = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                pts = [(dict(p.attributes), p.value) for p in metric.data.data_points]
                out[metric.name] = (metric, pts)
    return out


def _one(pts: list[tuple[dict[str, Any], float]], **labels: str) -> float:
    (v,) = [v for a, v in pts if all(a.get(k) == x for k, x in labels.items())]
    return v


@child_only
def test_in_memory_reader_gets_the_truth_under_the_prometheus_names(
    cpu_sim: SimulatedMachine,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with carbonctx.track("warm-up"):  # the sampler runs before the first region
        pass
    ins = otel.Instruments(provider, interval=0.1)
    t0 = time.monotonic_ns()
    ins.start()
    with carbonctx.track("step"):
        time.sleep(0.6)
    t1 = time.monotonic_ns()
    ins.stop()
    t1b = time.monotonic_ns()
    got = _points(reader.get_metrics_data())
    provider.shutdown()
    assert {n: got[n][0].unit for n in got} == NAMES
    energy, co2 = got["carbonctx_energy_joules_total"], got["carbonctx_co2_grams_total"]
    assert energy[0].data.is_monotonic and co2[0].data.is_monotonic
    for src in ("cpu", "dram"):
        v = _one(energy[1], source=src, region="process")
        _check_truth(cpu_sim, src, v, t0, (t1, t1b))
        assert v == ins.energy_j[src]
    assert _one(energy[1], source="gpu", region="process") == 0.0
    assert _one(co2[1], source="cpu", region="process") > 0
    step = carbonctx.stats()["step"]
    assert _one(energy[1], source="total", region="step") == pytest.approx(step.energy_j.total)
    attrs = next(a for a, _ in energy[1])
    assert attrs["rank"] == "0" and attrs["node"] == ins.node
    # Devices: the step's add up to its total; the process's to the process's.
    devices = got["carbonctx_device_energy_joules_total"][1]
    step_devices = [v for a, v in devices if a["region"] == "step"]
    assert sorted(a["device"] for a, _ in devices if a["region"] == "step") == [
        "powercap:intel-rapl:0",
        "powercap:intel-rapl:0:0",
    ]
    assert sum(step_devices) == pytest.approx(step.energy_j.total, rel=1e-9)
    process = sum(v for a, v in devices if a["region"] == "process")
    assert process == pytest.approx(sum(ins.energy_j.values()), rel=1e-9)
    assert _one(got["carbonctx_power_watts"][1], source="cpu") > 0
    assert _one(got["carbonctx_carbon_intensity_grams_per_kwh"][1], zone="DE") > 0


@child_only
def test_names_are_those_prometheus_exposes(cpu_sim: SimulatedMachine) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from carbonctx.integrations import prometheus

    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(registry=registry)  # not started: every family, no measuring
    ex.intensity, ex.zone = 300.0, "DE"
    ex.power_w["cpu"] = 50.0
    ex.devices[("process", "cpu", "powercap:intel-rapl:0")] = 1.0
    text = prometheus_client.generate_latest(registry).decode()
    exposed = set()
    labels: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            exposed.add(s.name)
            labels[s.name] = set(s.labels)
    ex.close()
    assert exposed == set(NAMES)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    ins = otel.Instruments(provider)  # not started either
    ins.intensity, ins.zone = 300.0, "DE"
    ins.power_w["cpu"] = 50.0
    ins.devices[("process", "cpu", "powercap:intel-rapl:0")] = 1.0
    got = _points(reader.get_metrics_data())
    provider.shutdown()
    assert {n: set(pts[0][0]) for n, (_, pts) in got.items()} == labels


@contextlib.contextmanager
def otlp_collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A loopback OTLP/HTTP receiver answering every export as a collector does: its metrics
    endpoint, and each request it got (path, content type, body), while it runs."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceResponse,
    )

    got: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, self.headers["Content-Type"], body))
            reply = ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/v1/metrics", got
    finally:
        httpd.shutdown()
        httpd.server_close()


@child_only
@pytest.mark.timeout(60)
def test_otlp_http_export_reaches_a_server_that_decodes_it(cpu_sim: SimulatedMachine) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    with otlp_collector() as (endpoint, got):
        exporter = OTLPMetricExporter(endpoint=endpoint, timeout=10)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(metric_readers=[reader])
        with carbonctx.track("warm-up"):
            pass
        ins = otel.Instruments(provider, interval=0.1)
        t0 = time.monotonic_ns()
        ins.start()
        with carbonctx.track("step"):
            time.sleep(0.5)
        t1 = time.monotonic_ns()
        ins.stop()
        t1b = time.monotonic_ns()
        assert provider.force_flush(timeout_millis=20_000)
        provider.shutdown()
    assert got, "no export reached the server"
    path, ctype, body = got[-1]
    assert path == "/v1/metrics" and ctype == "application/x-protobuf"
    req = ExportMetricsServiceRequest()
    req.ParseFromString(body)
    metrics = {
        m.name: m
        for rm in req.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "carbonctx"
        for m in sm.metrics
    }
    assert set(metrics) == set(NAMES)
    energy = metrics["carbonctx_energy_joules_total"]
    assert energy.unit == "J" and energy.sum.is_monotonic
    # Cumulative temporality (AGGREGATION_TEMPORALITY_CUMULATIVE = 2), as Prometheus counters.
    assert energy.sum.aggregation_temporality == 2
    values = {}
    for p in energy.sum.data_points:
        attrs = {a.key: a.value.string_value for a in p.attributes}
        values[(attrs["source"], attrs["region"])] = p.as_double
    for src in ("cpu", "dram"):
        v = values[(src, "process")]
        assert v == ins.energy_j[src]
        _check_truth(cpu_sim, src, v, t0, (t1, t1b))
    assert values[("total", "step")] == pytest.approx(carbonctx.stats()["step"].energy_j.total)
    (ci,) = metrics["carbonctx_carbon_intensity_grams_per_kwh"].gauge.data_points
    assert ci.as_double > 0


@child_only
def test_instrument_makes_one_set_per_process(cpu_sim: SimulatedMachine) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert otel.instruments() is None
    ins = otel.instrument(provider, interval=60)
    assert otel.instrument(provider) is ins and otel.instruments() is ins
    with carbonctx.track("step"):
        time.sleep(0.05)
    otel.shutdown()  # counts what was spent up to now
    assert otel.instruments() is None and ins.energy_j["cpu"] > 0
    got = _points(reader.get_metrics_data())
    provider.shutdown()
    energy = got["carbonctx_energy_joules_total"][1]
    assert _one(energy, source="cpu", region="process") == ins.energy_j["cpu"]

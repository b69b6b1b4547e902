"""Region names the exporters cannot take as they are: quotes, backslashes, newlines, NUL, a
very long name, and a name decoded from bytes that are not UTF-8 (lone surrogates, as
``os.fsdecode`` makes them). Each must reach Prometheus (text format 0.0.4 and OpenMetrics,
scraped by a real Prometheus server when Debian's ``prometheus`` package is installed), a
Pushgateway push and an OTLP export, and must never fail the scrape or the export of the other
series.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client.openmetrics.parser import (  # noqa: E402
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import carbonctx  # noqa: E402
from carbonctx._measure import process as _runtime  # noqa: E402
from carbonctx.integrations import prometheus  # noqa: E402
from carbonctx.testing import SimulatedMachine, Wave  # noqa: E402
from test_integrations_prometheus import (  # noqa: E402  (its fixture and helpers)
    PROMETHEUS,
    _free_port,
    _start,
    _stop,
    _until,
)

# As the other exporter tests: the exporter's regions are made on a thread of its own.
IN_CHILD = os.environ.get("CARBONCTX_TEST_LABELS_CHILD") == "1"
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in a process of its own (below)")

QUOTED = 'say "hi"\\ back\nnext line'
NUL = "nul\x00byte"
LONG = "long-" + "x" * 4000
UNDECODABLE = os.fsdecode(b"caf\xe9-run")  # Latin-1 bytes: 'caf\udce9-run'
#: What each name is exported as (the undecodable byte as its escape).
EXPORTED = {QUOTED: QUOTED, NUL: NUL, LONG: LONG, UNDECODABLE: "caf\\udce9-run"}


@pytest.mark.skipif(IN_CHILD, reason="the child runs the tests themselves")
@pytest.mark.timeout(300)
def test_in_a_process_of_its_own() -> None:
    env = {**os.environ, "CARBONCTX_TEST_LABELS_CHILD": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280, check=False)
    print(out.stdout[-4000:], out.stderr[-2000:])
    assert out.returncode == 0, out.stdout[-4000:]


@pytest.fixture
def cpu_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedMachine]:
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)  # everything goes over loopback, never a proxy
    yield m
    prometheus.shutdown()
    _runtime.reset()
    m.close()


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with _LOOPBACK.open(req, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def _hostile_regions() -> dict[str, float]:
    """Measure a region of each hostile name; their totals, by exported name."""
    for name in EXPORTED:
        with carbonctx.track(name):
            time.sleep(0.02)
    stats = carbonctx.stats()
    return {EXPORTED[n]: stats[n].energy_j.total for n in EXPORTED}


def _named_totals(families: Any) -> dict[str, float]:
    return {
        s.labels["region"]: s.value
        for fam in families
        for s in fam.samples
        if s.name == "carbonctx_energy_joules_total" and s.labels["source"] == "total"
    }


@child_only
def test_the_endpoint_serves_hostile_names_in_both_formats(cpu_sim: SimulatedMachine) -> None:
    totals = _hostile_regions()
    registry = prometheus_client.CollectorRegistry()
    server, _ = prometheus.start_http_server(0, "127.0.0.1", interval=0.1, registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        _until("a first update", lambda: prometheus.exporter().energy_j["cpu"] > 0)
        ctype, text = _get(url)
        om_type, om_text = _get(url, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    finally:
        server.shutdown()
        server.server_close()
    assert ctype.startswith("text/plain; version=0.0.4")
    assert om_type.startswith("application/openmetrics-text")
    assert om_text.endswith("# EOF\n")
    # A label value keeps no raw newline or quote: escaped as the formats say.
    assert '\\"hi\\"\\\\ back\\nnext line' in text
    for got in (
        _named_totals(text_string_to_metric_families(text)),
        _named_totals(openmetrics_families(om_text)),
    ):
        for name, j in totals.items():
            assert got[name] == pytest.approx(j)
        assert got.get("process") is None  # the exporter's own region is not a name


@child_only
def test_a_push_carries_hostile_names(cpu_sim: SimulatedMachine) -> None:
    totals = _hostile_regions()
    got: list[bytes] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        prometheus.exporter(interval=60, registry=prometheus_client.CollectorRegistry())
        prometheus.push_to_gateway(f"127.0.0.1:{httpd.server_port}", job="train")
    finally:
        httpd.shutdown()
        httpd.server_close()
    (body,) = got
    named = _named_totals(text_string_to_metric_families(body.decode()))
    assert named == pytest.approx(totals)


@child_only
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs a Prometheus server: Debian's `prometheus` package (apt-get install "
    "--no-install-recommends prometheus)",
)
def test_a_real_prometheus_server_stores_hostile_names(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    totals = _hostile_regions()
    registry = prometheus_client.CollectorRegistry()
    server, _ = prometheus.start_http_server(0, "127.0.0.1", interval=0.2, registry=registry)
    web = f"127.0.0.1:{_free_port()}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: carbonctx\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.server_port}']\n"
    )
    prom = _start(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={web}",
        ],
        tmp_path,
        "prometheus",
    )

    def named() -> dict[str, float]:
        q = urllib.parse.urlencode({"query": 'carbonctx_energy_joules_total{source="total"}'})
        doc = json.loads(_get(f"http://{web}/api/v1/query?{q}")[1])
        return {r["metric"]["region"]: float(r["value"][1]) for r in doc["data"]["result"]}

    try:
        _until("Prometheus ready", lambda: "Ready" in _get(f"http://{web}/-/ready")[1])
        got = _until("a scrape with every name", lambda: set(totals) <= set(n := named()) and n)
        health = json.loads(_get(f"http://{web}/api/v1/targets")[1])
    finally:
        _stop(prom)
        server.shutdown()
        server.server_close()
    for name, j in totals.items():
        assert got[name] == pytest.approx(j)
    (target,) = health["data"]["activeTargets"]
    assert target["health"] == "up", target["lastError"]


@child_only
@pytest.mark.timeout(60)
def test_an_otlp_export_carries_hostile_names(cpu_sim: SimulatedMachine) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from carbonctx.integrations import opentelemetry as otel
    from test_integrations_opentelemetry import otlp_collector

    totals = _hostile_regions()
    with otlp_collector() as (endpoint, got):
        exporter = OTLPMetricExporter(endpoint=endpoint, timeout=10)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(metric_readers=[reader])
        ins = otel.Instruments(provider, interval=60).start()
        ins.stop()
        provider.force_flush(timeout_millis=20_000)
        provider.shutdown()
    assert got, "no export reached the server"
    req = ExportMetricsServiceRequest()
    req.ParseFromString(got[-1][2])
    named = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name != "carbonctx_energy_joules_total":
                    continue
                for p in m.sum.data_points:
                    attrs = {a.key: a.value.string_value for a in p.attributes}
                    if attrs["source"] == "total":
                        named[attrs["region"]] = p.as_double
    assert named == pytest.approx(totals)


@child_only
def test_names_past_max_names_are_summed_in_one_bounded_series(cpu_sim: SimulatedMachine) -> None:
    # A program that makes a name per batch must not make a series per batch: the first
    # max_names names keep their own, the others add up in region="(other)".
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from carbonctx.integrations import opentelemetry as otel

    for i in range(6):
        with carbonctx.track(f"batch-{i}"):
            time.sleep(0.01)
    order = list(carbonctx.stats())  # the order the statistics first saw the names
    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry, max_names=3)
    with pytest.warns(carbonctx.CarbonctxWarning, match="max_names=3"):
        text = prometheus_client.generate_latest(registry).decode()
    named = _named_totals(text_string_to_metric_families(text))
    stats = carbonctx.stats()
    assert set(named) == {*order[:3], "(other)"}
    for name in order[:3]:
        assert named[name] == pytest.approx(stats[name].energy_j.total)
    rest = sum(stats[n].energy_j.total for n in order[3:])
    assert named["(other)"] == pytest.approx(rest)
    # A later name joins the sum: the counter only grows, and nothing more is said.
    with carbonctx.track("batch-6"):
        time.sleep(0.01)
    text = prometheus_client.generate_latest(registry).decode()
    later = _named_totals(text_string_to_metric_families(text))
    assert set(later) == set(named)
    expected = rest + carbonctx.stats()["batch-6"].energy_j.total
    assert later["(other)"] == pytest.approx(expected)
    ex.close()
    # OpenTelemetry publishes the same bounded set.
    reader = InMemoryMetricReader()
    ins = otel.Instruments(MeterProvider(metric_readers=[reader]), interval=60, max_names=3)
    with pytest.warns(carbonctx.CarbonctxWarning, match="max_names=3"):
        data = reader.get_metrics_data()
    regions = {
        p.attributes["region"]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "carbonctx_energy_joules_total"
        for p in m.data.data_points
        if p.attributes["source"] == "total"
    }
    assert regions == {*order[:3], "(other)"}
    ins.stop()
    with pytest.raises(ValueError, match="max_names"):
        prometheus.Exporter(registry=prometheus_client.CollectorRegistry(), max_names=-1)


def _otel_named(reader: Any) -> dict[str, float]:
    return {
        p.attributes["region"]: p.value
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "carbonctx_energy_joules_total"
        for p in m.data.data_points
        if p.attributes["source"] == "total"
    }


@child_only
def test_named_counters_never_go_down_when_configure_replaces_the_runtime(
    cpu_sim: SimulatedMachine,
) -> None:
    # The new runtime's statistics start empty and see the names in another order: the series
    # must keep the old totals, and the names that had series of their own keep them (a
    # counter that drops reads as a reset, and rate() then counts its whole value again).
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from carbonctx.integrations import opentelemetry as otel

    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry, max_names=2)
    reader = InMemoryMetricReader()
    ins = otel.Instruments(MeterProvider(metric_readers=[reader]), interval=60, max_names=2)
    for name in ("a", "b", "c"):
        with carbonctx.track(name):
            time.sleep(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the max_names warning)
        first = _named_totals(
            text_string_to_metric_families(prometheus_client.generate_latest(registry).decode())
        )
        assert _otel_named(reader) == pytest.approx(first)
    before = carbonctx.stats()
    assert set(first) == {*list(before)[:2], "(other)"}
    carbonctx.configure(window=50)
    for name in ("c", "d", "a"):  # in the new runtime, c comes first
        with carbonctx.track(name):
            time.sleep(0.01)
    after = carbonctx.stats()
    assert list(after) == ["c", "d", "a"]  # (what the runtime replaced forgot)
    text = prometheus_client.generate_latest(registry).decode()
    second = _named_totals(text_string_to_metric_families(text))
    assert set(second) == set(first)
    for key, value in first.items():
        assert second[key] >= value, key
    both = {
        n: before[n].energy_j.total + (after[n].energy_j.total if n in after else 0.0)
        for n in before
    }
    kept = list(before)[:2]
    for n in kept:
        assert second[n] == pytest.approx(both[n], rel=1e-9)
    rest = sum(both[n] for n in before if n not in kept) + after["d"].energy_j.total
    assert second["(other)"] == pytest.approx(rest, rel=1e-9)
    # OpenTelemetry makes the same choice and publishes the same figures.
    assert _otel_named(reader) == pytest.approx(second, rel=1e-9)
    # Two more runtimes between two reads (the first settled by the second's making): each
    # runtime's figures counted once.
    spent = dict.fromkeys(both, 0.0)
    for window in (60, 70):
        carbonctx.configure(window=window)
        with carbonctx.track("a"):
            time.sleep(0.01)
        spent["a"] += carbonctx.stats()["a"].energy_j.total
    text = prometheus_client.generate_latest(registry).decode()
    third = _named_totals(text_string_to_metric_families(text))
    assert third["a"] == pytest.approx(second["a"] + spent["a"], rel=1e-9)
    assert third["(other)"] == pytest.approx(second["(other)"], rel=1e-9)
    assert _otel_named(reader) == pytest.approx(third, rel=1e-9)
    ins.stop()
    ex.close()


@child_only
def test_a_name_spelling_an_escape_out_shares_the_series_of_the_undecodable_one(
    cpu_sim: SimulatedMachine,
) -> None:
    # "caf\udce9-run" (an undecodable byte) is exported as the text 'caf\\udce9-run', which is
    # also a name of its own: one series holding both (two samples with the same labels would
    # fail the whole scrape), never one of them lost.
    spelled = "caf\\udce9-run"
    for name in (UNDECODABLE, spelled, UNDECODABLE):
        with carbonctx.track(name):
            time.sleep(0.01)
    stats = carbonctx.stats()
    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry)
    ex.update()
    text = prometheus_client.generate_latest(registry).decode()
    lines = [ln for ln in text.splitlines() if 'source="total"' in ln and "caf" in ln]
    assert len([ln for ln in lines if ln.startswith("carbonctx_energy_joules_total")]) == 1
    named = _named_totals(text_string_to_metric_families(text))
    both = stats[UNDECODABLE].energy_j.total + stats[spelled].energy_j.total
    assert named[spelled] == pytest.approx(both, rel=1e-9)
    ex.close()

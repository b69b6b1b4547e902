"""Prometheus metrics: the endpoint scraped over loopback, by a real Prometheus server when
Debian's ``prometheus`` package is installed, and pushes to a Pushgateway.

Simulated hardware without a GPU (package 40/120 W square wave, DRAM 6 W): the exported
counters must match the simulated truth over the exporter's life within 1 %.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import carbonctx  # noqa: E402
from carbonctx._measure import process as _runtime  # noqa: E402
from carbonctx.integrations import prometheus  # noqa: E402
from carbonctx.testing import SimulatedMachine, Wave  # noqa: E402

# Run in a pytest process of its own: the exporter makes its regions on a thread of its own, and
# a runtime whose regions were made on another thread outlives carbonctx's reset in this
# process (with the batches it resolved), which later tests that count live objects would see.
IN_CHILD = os.environ.get("CARBONCTX_TEST_PROMETHEUS_CHILD") == "1"
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in a process of its own (below)")


@pytest.mark.skipif(IN_CHILD, reason="the child runs the tests themselves")
@pytest.mark.timeout(300)
def test_in_a_process_of_its_own() -> None:
    env = {**os.environ, "CARBONCTX_TEST_PROMETHEUS_CHILD": "1"}
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
        monkeypatch.delenv(k, raising=False)  # pushes go over loopback, never a proxy
    yield m
    prometheus.shutdown()
    _runtime.reset()
    m.close()


def _truth(sim: SimulatedMachine, t0: int, t1: int) -> dict[str, float]:
    return {"cpu": sim.truth_j("package", 0, t0, t1), "dram": sim.truth_j("dram", 0, t0, t1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def _get(url: str, timeout: float = 5.0) -> str:
    with _LOOPBACK.open(url, timeout=timeout) as r:
        return str(r.read().decode())


def _until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (a generous limit: the machine may be
    loaded; nothing here depends on how fast it is)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (OSError, ValueError, KeyError, IndexError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _series(samples: dict[Any, float], name: str, **labels: str) -> list[float]:
    return [
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    ]


@child_only
def test_endpoint_serves_counters_that_match_the_simulated_truth(
    cpu_sim: SimulatedMachine,
) -> None:
    registry = prometheus_client.CollectorRegistry()
    with carbonctx.track("warm-up"):  # the sampler runs before the exporter's first region
        pass
    t0 = time.monotonic_ns()
    server, _ = prometheus.start_http_server(0, "127.0.0.1", interval=0.1, registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    with carbonctx.track("step"):
        time.sleep(1.0)
    # A few intervals have been counted.
    _until("two updates", lambda: prometheus.exporter().energy_j["cpu"] > 0)
    prometheus.exporter().stop()
    t1 = time.monotonic_ns()
    samples = _samples(_get(url))
    server.shutdown()
    server.server_close()
    truth = _truth(cpu_sim, t0, t1)
    for src in ("cpu", "dram"):
        (got,) = _series(samples, "carbonctx_energy_joules_total", source=src, region="process")
        err = abs(got - truth[src]) / truth[src]
        print(f"Prometheus endpoint {src}: {got:.3f} J, truth {truth[src]:.3f} J: {err:.4%}")
        assert err < 0.01
    (gpu,) = _series(samples, "carbonctx_energy_joules_total", source="gpu", region="process")
    assert gpu == 0.0
    (co2,) = _series(samples, "carbonctx_co2_grams_total", source="cpu", region="process")
    assert co2 > 0
    (step,) = _series(samples, "carbonctx_energy_joules_total", source="total", region="step")
    assert step == pytest.approx(carbonctx.stats()["step"].energy_j.total)
    labels = dict(next(lab for (n, lab) in samples if n == "carbonctx_energy_joules_total"))
    assert labels["rank"] == "0" and labels["node"] == socket.gethostname()
    assert _series(samples, "carbonctx_power_watts", source="cpu")[0] > 0
    (ci,) = _series(samples, "carbonctx_carbon_intensity_grams_per_kwh", zone="DE")
    assert ci > 0


@child_only
def test_push_to_gateway_sends_every_metric(cpu_sim: SimulatedMachine) -> None:
    got: list[tuple[str, str, bytes]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        prometheus.exporter(interval=60, registry=prometheus_client.CollectorRegistry())
        time.sleep(0.2)
        prometheus.push_to_gateway(f"127.0.0.1:{httpd.server_port}", job="train")
    finally:
        httpd.shutdown()
        httpd.server_close()
    ((method, path, body),) = got
    assert method == "PUT"
    assert path.startswith("/metrics/job/train/")
    parts = path.split("/")[4:]
    assert dict(zip(parts[::2], parts[1::2], strict=True)) == {
        "rank": "0",
        "node": socket.gethostname(),
    }
    assert b"carbonctx_energy_joules_total" in body


@child_only
def test_a_push_without_a_running_exporter_says_the_process_counters_start_now(
    cpu_sim: SimulatedMachine,
) -> None:
    # A batch job that only pushes at its end: its process counters cover nothing of it, which
    # must be said; the named regions' totals are pushed whole all the same.
    bodies: list[bytes] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    gateway = f"127.0.0.1:{httpd.server_port}"
    try:
        with carbonctx.track("job"):
            time.sleep(0.3)
        with pytest.warns(carbonctx.CarbonctxWarning, match="no exporter was running"):
            prometheus.push_to_gateway(gateway, job="batch")
        prometheus.push_to_gateway(gateway, job="batch")  # running now: nothing to say
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(bodies) == 2
    samples = _samples(bodies[0].decode())
    (job,) = _series(samples, "carbonctx_energy_joules_total", region="job", source="total")
    assert job == pytest.approx(carbonctx.stats()["job"].energy_j.total) and job > 0
    # The process counters began at the push: far less than the job they were not running in.
    (process,) = _series(samples, "carbonctx_energy_joules_total", region="process", source="cpu")
    assert process < 0.5 * job


PROMETHEUS = shutil.which("prometheus")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")


def _start(cmd: list[str], tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    with open(tmp_path / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


@child_only
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs a Prometheus server: Debian's `prometheus` package (apt-get install "
    "--no-install-recommends prometheus)",
)
def test_a_real_prometheus_server_scrapes_the_truth(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None
    registry = prometheus_client.CollectorRegistry()
    with carbonctx.track("warm-up"):
        pass
    t0 = time.monotonic_ns()
    server, _ = prometheus.start_http_server(0, "127.0.0.1", interval=0.2, registry=registry)
    target = f"127.0.0.1:{server.server_port}"
    web = f"127.0.0.1:{_free_port()}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: carbonctx\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
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
    query = 'sum(carbonctx_energy_joules_total{region="process"})'

    def scraped(query: str = query) -> float | None:
        q = urllib.parse.urlencode({"query": query})
        doc = json.loads(_get(f"http://{web}/api/v1/query?{q}"))
        result = doc["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    try:
        _until("Prometheus ready", lambda: "Ready" in _get(f"http://{web}/-/ready"))
        _until("a first scrape with energy in it", scraped)
        prometheus.exporter().stop()
        t1 = time.monotonic_ns()
        exported = sum(prometheus.exporter().energy_j.values())
        # The server scrapes every second: wait until it holds the final figure.
        final = _until(
            "the final figure scraped",
            lambda: (v := scraped()) is not None and abs(v - exported) < 1e-6 * exported and v,
        )
        # The per-device series (the exporter has stopped: every scrape now holds the same)
        # add up to the same figure.
        devices = scraped('sum(carbonctx_device_energy_joules_total{region="process"})')
    finally:
        _stop(prom)
        server.shutdown()
        server.server_close()
    truth = sum(_truth(cpu_sim, t0, t1).values())
    err = abs(final - truth) / truth
    print(f"Prometheus server: {query} = {final:.3f} J, truth {truth:.3f} J: {err:.4%}")
    assert err < 0.01
    assert devices == pytest.approx(final, rel=1e-9)


@child_only
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    PUSHGATEWAY is None,
    reason="needs Debian's `prometheus-pushgateway` package",
)
def test_a_real_pushgateway_holds_what_was_pushed(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    assert PUSHGATEWAY is not None
    web = f"127.0.0.1:{_free_port()}"
    gw = _start([PUSHGATEWAY, f"--web.listen-address={web}"], tmp_path, "pushgateway")
    try:
        _until("Pushgateway ready", lambda: "OK" in _get(f"http://{web}/-/ready"))
        prometheus.exporter(interval=60, registry=prometheus_client.CollectorRegistry())
        with carbonctx.track("batch"):
            time.sleep(0.2)
        prometheus.push_to_gateway(web, job="nightly")
        samples = _samples(_get(f"http://{web}/metrics"))
    finally:
        _stop(gw)
    pushed = prometheus.exporter().energy_j["cpu"]
    (got,) = _series(
        samples, "carbonctx_energy_joules_total", job="nightly", source="cpu", region="process"
    )
    assert got == pytest.approx(pushed) and got > 0
    (batch,) = _series(samples, "carbonctx_energy_joules_total", job="nightly", region="batch")
    assert batch == pytest.approx(carbonctx.stats()["batch"].energy_j.total)


@pytest.fixture
def rich_sim(tmp_path: Path, fake_nvml: Path) -> Iterator[SimulatedMachine]:
    """Two packages with core and psys zones (which overlap the packages) and one GPU."""
    m = SimulatedMachine(
        tmp_path / "hw",
        packages=2,
        package=Wave(40.0, 120.0, 0.05),
        dram=Wave.constant(6.0),
        core=Wave.constant(20.0),
        psys=Wave.constant(300.0),
        gpus=1,
        nvml_library=fake_nvml,
    )
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    prometheus.shutdown()
    _runtime.reset()
    m.close()


def _devices(registry: Any) -> dict[tuple[str, str, str], float]:
    text = prometheus_client.generate_latest(registry).decode()
    return {
        (dict(lab)["region"], dict(lab)["source"], dict(lab)["device"]): v
        for (n, lab), v in _samples(text).items()
        if n == "carbonctx_device_energy_joules_total"
    }


@child_only
def test_device_series_add_up_to_each_region_without_overlapping_domains(
    rich_sim: SimulatedMachine,
) -> None:
    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry, max_regions=2)
    with carbonctx.track("warm-up"):
        pass
    ex.start()
    for _ in range(3):
        with carbonctx.track("step"):
            time.sleep(0.1)
        with carbonctx.track("other"):
            time.sleep(0.05)
    ex.update()
    with carbonctx.track("step"):
        time.sleep(0.1)
    ex.stop()
    devices = _devices(registry)
    ex.close()
    m = carbonctx.recent()[-1]
    ids = {s.id: s.domain for s in m.by_source.values()}
    # The machine has overlapping zones, and none of them is a series.
    assert {"core", "psys"} <= set(ids.values())
    assert {ids[d] for _, _, d in devices} == {"package", "dram", "gpu"}
    kinds = {"package": "cpu", "dram": "dram", "gpu": "gpu"}
    assert all(kinds[ids[d]] == k for _, k, d in devices)
    per_region: dict[str, float] = {}
    for (region, _, _), v in devices.items():
        per_region[region] = per_region.get(region, 0.0) + v
    # Every package, DRAM and GPU of the process, adding up to what the exporter counted.
    process = {d for r, _, d in devices if r == "process"}
    assert process == {d for d, dom in ids.items() if dom in kinds}
    assert len(process) == 5
    assert per_region["process"] == pytest.approx(sum(ex.energy_j.values()), rel=1e-9)
    # A named region's series add up to its total (both reads of the window counted once);
    # max_regions=2: the third name seen keeps its total only.
    stats = carbonctx.stats()
    for name in ("warm-up", "step"):
        assert per_region[name] == pytest.approx(stats[name].energy_j.total, rel=1e-9)
    assert "other" not in per_region


@child_only
def test_a_window_overrun_is_said_and_totals_stay_exact(cpu_sim: SimulatedMachine) -> None:
    carbonctx.configure(window=4)
    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry).start()
    with carbonctx.track("a"):
        pass
    ex.update()
    for _ in range(10):  # more than the window between two updates
        with carbonctx.track("a"):
            pass
    with pytest.warns(carbonctx.CarbonctxWarning, match="window"):
        ex.update()
    ex.stop()
    devices = _devices(registry)
    broken_down = sum(v for (r, _, _), v in devices.items() if r == "a")
    total = carbonctx.stats()["a"].energy_j.total
    assert 0 < broken_down < total  # the device series miss regions...
    text = prometheus_client.generate_latest(registry).decode()
    (got,) = _series(_samples(text), "carbonctx_energy_joules_total", region="a", source="total")
    assert got == pytest.approx(total)  # ...the total does not
    ex.close()


def _named_series(registry: Any, name: str) -> float:
    return sum(v for (r, _, _), v in _devices(registry).items() if r == name)


@carbonctx.tracked
def _call() -> None:
    pass


class _Busy(prometheus.Exporter):
    """An exporter during whose update another region without an id ends: after its own region
    has ended and before it reads the window, as a thread of the program's may."""

    def _count(self, m: Any) -> None:
        super()._count(m)
        _call()


@child_only
def test_named_regions_are_read_once_among_regions_without_an_id(
    cpu_sim: SimulatedMachine,
) -> None:
    # @tracked calls and step entries, output off, have no id (0): the window's rows are told
    # apart otherwise. Named regions, calls and entries alternate across updates: each named
    # region must be broken down once, no more, no less.
    registry = prometheus_client.CollectorRegistry()
    ex = _Busy(interval=60, registry=registry).start()
    entry = carbonctx.step("entry")
    for _ in range(5):
        with carbonctx.track("named"):
            time.sleep(0.01)
        _call()
        with entry:
            pass
        ex.update()
    with carbonctx.track("named"):
        time.sleep(0.01)
    ex.stop()
    rows = carbonctx.recent()
    assert {m.id for m in rows if m.name in (_call.__qualname__, "entry")} == {0}
    stats = carbonctx.stats()
    assert stats["named"].count == 6
    assert _named_series(registry, "named") == pytest.approx(
        stats["named"].energy_j.total, rel=1e-9
    )
    ex.close()


def _named(name: str) -> None:
    with carbonctx.track(name):
        time.sleep(0.01)


@child_only
def test_a_runtime_replaced_by_configure_loses_no_named_region(cpu_sim: SimulatedMachine) -> None:
    # The new runtime numbers its regions (and gives ids) from the start again: its regions are
    # read from its first, and those the old one ended after the last read are read first.
    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry).start()
    _named("before")
    ex.update()
    _named("before")
    before = sum(m.energy_j for m in carbonctx.recent() if m.name == "before")
    carbonctx.configure(window=50)  # the exporter's region stays open in the old runtime
    _named("after")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex.update()
        _named("after")
        ex.stop()
    assert not [w for w in caught if "window" in str(w.message)]  # nothing was left unread
    assert _named_series(registry, "before") == pytest.approx(before, rel=1e-9)
    after = carbonctx.stats()["after"]
    assert after.count == 2
    assert _named_series(registry, "after") == pytest.approx(after.energy_j.total, rel=1e-9)
    ex.close()


@child_only
def test_a_forked_child_reads_its_own_regions(cpu_sim: SimulatedMachine) -> None:
    # The child's runtime is new (numbers and ids from the start): the exporter it inherited
    # reads that runtime's regions from its first, once, and says of no overrun.
    registry = prometheus_client.CollectorRegistry()
    ex = prometheus.Exporter(interval=60, registry=registry).start()
    _named("parent")
    ex.update()
    inherited = _named_series(registry, "child")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never raise or hang in the child: report and leave
        os.close(r)
        out: dict[str, Any] = {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _named("child")
                _named("child")
                ex.update()
                _named("child")
                ex.update()
            out["warned"] = [str(x.message) for x in caught if "window" in str(x.message)]
            out["series"] = _named_series(registry, "child")
            out["stats"] = [
                carbonctx.stats()["child"].count,
                carbonctx.stats()["child"].energy_j.total,
            ]
        except BaseException as e:
            out["fatal"] = repr(e)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    ex.stop()
    ex.close()
    assert "fatal" not in data, data
    assert inherited == 0.0
    assert data["warned"] == []
    count, total = data["stats"]
    assert count == 3
    assert data["series"] == pytest.approx(total, rel=1e-9)

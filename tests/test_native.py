"""The native sampler (``carbonctx._native``) driven directly against simulated hardware:
accuracy over a square-wave load with fast-wrapping counters, sources that vanish or fail,
a GPU without an energy counter, NVML errors and absence, discovery on the committed fixture
trees, and the hand-written stub against the module."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import carbonctx
from carbonctx import _native
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "rust" / "sampler" / "tests" / "fixtures"

PKG = "powercap:intel-rapl:0"
DRAM = "powercap:intel-rapl:0:0"
GPU = "nvml:0"


def sampler_for(sim: SimulatedMachine, **kw: Any) -> _native.Sampler:
    args = {k: v for k, v in sim.settings().items() if k != "gpu"}
    args.update(kw)
    return _native.Sampler(**args)


@pytest.fixture
def samplers() -> Iterator[list[_native.Sampler]]:
    """Samplers a test starts; stopped at the end whatever happens."""
    made: list[_native.Sampler] = []
    yield made
    for s in made:
        s.stop()


def between(
    s: _native.Sampler, seconds: float
) -> tuple[int, int, dict[str, float], dict[str, float]]:
    """Mark a region of ``seconds``, wait for it to resolve, and return its edges and the
    joules and uncertainty per source id."""
    rid = s.begin()
    time.sleep(seconds)
    s.end(rid)
    assert s.wait(_native.now_ns(), 10.0), "the sampler did not pass the region's end"
    n, ids, _tags, t0, t1, joules, unc = s.drain()
    assert n == 1 and np.frombuffer(ids, dtype=np.uint64)[0] == rid
    names = [src["id"] for src in s.sources]
    j = np.frombuffer(joules, dtype=np.float64).tolist()
    u = np.frombuffer(unc, dtype=np.float64).tolist()
    return (
        int(np.frombuffer(t0, dtype=np.uint64)[0]),
        int(np.frombuffer(t1, dtype=np.uint64)[0]),
        dict(zip(names, j, strict=True)),
        dict(zip(names, u, strict=True)),
    )


def status_of(s: _native.Sampler, sid: str) -> dict[str, Any]:
    for src, st in zip(s.sources, s.status(), strict=True):
        if src["id"] == sid:
            return st
    raise KeyError(sid)


def wait_for(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


# ------------------------------------------------------------------------------------ accuracy


def test_five_seconds_of_square_wave_within_a_thousandth_with_fast_wrapping_counters(
    tmp_path: Path, fake_nvml: Path, samplers: list[_native.Sampler]
) -> None:
    # 80 W mean over a 60 J range: the package counter wraps every 0.75 s (often enough to
    # wrap seven times, rarely enough that a loaded machine does not stall a thread past one).
    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave(40.0, 120.0, 0.05),
        dram=Wave.constant(6.0),
        wrap_uj=60_000_000,
        gpus=1,
        gpu_update_s=0.01,
        nvml_library=fake_nvml,
    ) as sim:
        s = sampler_for(sim, intervals=[("nvml", 0.002)])
        samplers.append(s)
        assert [src["id"] for src in s.sources] == [PKG, DRAM, GPU]
        assert s.sources[0]["wrap"] == 60_000_001
        time.sleep(0.2)  # past the start: the sampler learns each counter's cadence
        t0, t1, joules, unc = between(s, 5.0)
        truth = {
            PKG: sim.truth_j("package", 0, t0, t1),
            DRAM: sim.truth_j("dram", 0, t0, t1),
            GPU: sim.gpu_truth_j(0, t0, t1),
        }
        for sid, want in truth.items():
            # Within a thousandth, or within the bracket the sampler states for the edges (a
            # loaded machine can read a 10 ms GPU counter one update late at an edge).
            assert unc[sid] >= 0
            assert joules[sid] == pytest.approx(want, rel=1e-3, abs=unc[sid]), sid
        assert truth[PKG] > 350  # ~400 J: six or seven wraps of the 60 J counter
        pkg = status_of(s, PKG)
        assert pkg["wraps"] >= 5
        assert pkg["errors"] == 0 and not pkg["failed"] and pkg["resets"] == 0
        for sid in (DRAM, GPU):
            assert status_of(s, sid)["failed"] is False
        # The cumulative timeline never goes backwards across the wraps.
        series = [j for _, j in s.timeline(0, 0, 1_000_000)]
        assert len(series) > 100
        assert all(b >= a for a, b in itertools.pairwise(series))
        s.stop()
        assert not s.running


# ------------------------------------------------------------------------------------ failures


def test_a_vanishing_zone_fails_alone_with_a_clear_error(
    sim: SimulatedMachine, samplers: list[_native.Sampler]
) -> None:
    s = sampler_for(sim)
    samplers.append(s)
    _, _, before, _ = between(s, 0.05)
    assert all(v > 0 for v in before.values())
    sim.remove_zone("dram")
    assert wait_for(lambda: status_of(s, DRAM)["failed"]), status_of(s, DRAM)
    st = status_of(s, DRAM)
    err = st["last_error"]
    assert err and "intel-rapl:0:0" in err, err
    assert st["errors"] >= 1
    # The others keep measuring, accurately.
    t0, t1, after, _ = between(s, 0.1)
    assert math.isnan(after[DRAM])
    assert after[PKG] == pytest.approx(sim.truth_j("package", 0, t0, t1), rel=0.02)
    assert after[GPU] > 0
    assert not status_of(s, PKG)["failed"] and not status_of(s, GPU)["failed"]
    assert s.running


def test_a_region_begun_before_the_sampler_first_read_its_sources_has_no_figures(
    sim: SimulatedMachine, samplers: list[_native.Sampler]
) -> None:
    # Begun (at an instant taken earlier) before any source was first read: no reading
    # brackets its start, so no source has a figure (NaN: the results list them as missing),
    # rather than one counted from the first reading that leaves out what came before it.
    early = _native.now_ns()
    time.sleep(0.05)
    s = sampler_for(sim)
    samplers.append(s)
    rid = s.begin_at(early)
    time.sleep(0.05)
    s.end(rid)
    assert s.wait(_native.now_ns(), 10.0)
    n, _ids, _tags, t0, _t1, joules, unc = s.drain()
    assert n == 1 and int(np.frombuffer(t0, dtype=np.uint64)[0]) == early
    assert all(math.isnan(v) for v in np.frombuffer(joules, dtype=np.float64))
    assert all(math.isnan(v) for v in np.frombuffer(unc, dtype=np.float64))
    # Begun after: measured.
    _, _, after, _ = between(s, 0.05)
    assert all(v > 0 for v in after.values())


def test_a_gpu_without_an_energy_counter_is_integrated_and_labelled(
    tmp_path: Path, fake_nvml: Path, samplers: list[_native.Sampler]
) -> None:
    # A slow wave that the 10 ms power readings follow exactly; the sampler integrates them.
    gpu = GpuSpec(wave=Wave(50.0, 250.0, 0.5), energy_counter=False)
    with SimulatedMachine(
        tmp_path / "hw", gpus=[gpu], gpu_update_s=0.01, nvml_library=fake_nvml
    ) as sim:
        s = sampler_for(sim)
        samplers.append(s)
        (src,) = [x for x in s.sources if x["id"] == GPU]
        assert src["method"] == "integrated-power" and src["domain"] == "gpu"
        assert src["joules_per_unit"] is None
        time.sleep(0.05)
        t0, t1, joules, unc = between(s, 1.0)
        truth = sim.gpu_truth_j(0, t0, t1)
        assert truth == pytest.approx(150.0, rel=0.05)
        # Trapezoids over 20 ms polls miss a step by at most a poll's worth at each of the
        # wave's four steps a second (more where a loaded machine delays a poll: the stated
        # uncertainty then says so).
        assert abs(joules[GPU] - truth) <= max(0.05 * truth, unc[GPU])
        assert unc[GPU] >= 0
        s.stop()


def lose_gpu_soon(sim: SimulatedMachine, in_ms: float) -> None:
    """Make the stand-in NVML's energy reads fail with GPU_IS_LOST (15) from ``in_ms`` on
    (read at nvmlInit: start the sampler before then)."""
    assert sim.nvml_library is not None
    conf = sim.nvml_library.parent / "fake_nvml.conf"
    after_ms = (_native.now_ns() - sim.t0_ns) / 1e6 + in_ms
    conf.write_text(
        conf.read_text() + f"gpu0.energy_error=15\ngpu0.energy_error_after_ms={after_ms:.0f}\n"
    )


def test_nvml_errors_fail_the_gpu_source_cleanly(
    tmp_path: Path, fake_nvml: Path, samplers: list[_native.Sampler]
) -> None:
    with SimulatedMachine(tmp_path / "hw", gpus=1, nvml_library=fake_nvml) as sim:
        lose_gpu_soon(sim, 400)
        s = sampler_for(sim)
        samplers.append(s)
        assert status_of(s, GPU) is not None
        _, _, ok, _ = between(s, 0.05)
        assert ok[GPU] > 0 and not status_of(s, GPU)["failed"]
        assert wait_for(lambda: status_of(s, GPU)["failed"]), status_of(s, GPU)
        err = status_of(s, GPU)["last_error"]
        assert "nvmlDeviceGetTotalEnergyConsumption" in err and "15" in err, err
        assert "lost" in err.lower()
        _, _, later, _ = between(s, 0.05)
        assert math.isnan(later[GPU]) and later[PKG] > 0 and later[DRAM] > 0
        assert not status_of(s, PKG)["failed"] and s.running
        s.stop()


def test_nvml_errors_never_reach_the_users_regions(tmp_path: Path, fake_nvml: Path) -> None:
    with SimulatedMachine(tmp_path / "hw", gpus=1, nvml_library=fake_nvml) as sim:
        lose_gpu_soon(sim, 400)
        carbonctx.configure(**sim.settings())
        with carbonctx.track("before") as before:
            time.sleep(0.02)
        assert before.gpu_j > 0 and before.missing == ()

        def gpu_failed() -> bool:
            (src,) = [x for x in carbonctx.devices()["sources"] if x["id"] == GPU]
            return bool(src["status"]["failed"])

        assert wait_for(gpu_failed)
        # Regions go on, say what is missing, warn once, and never raise.
        with pytest.warns(carbonctx.CarbonctxWarning, match="nvml:0"):
            with carbonctx.track("gpu-lost") as m:
                time.sleep(0.02)
            assert m.missing == (GPU,)
            with carbonctx.track("next"):
                pass
        assert m.cpu_j > 0 and m.gpu_j == 0 and m.by_source[GPU].joules is None
        assert m.by_source[GPU].note
        assert m.energy_j == pytest.approx(m.cpu_j + m.dram_j)
        carbonctx._measure.process.reset()


def test_nvml_absent_is_listed_with_a_hint(tmp_path: Path, samplers: list[_native.Sampler]) -> None:
    with SimulatedMachine(tmp_path / "hw") as sim:
        missing = tmp_path / "nowhere" / "libnvidia-ml.so.1"
        s = sampler_for(sim, nvml_library=str(missing))
        samplers.append(s)
        assert [src["id"] for src in s.sources] == [PKG, DRAM]
        (u,) = [x for x in s.unavailable if x["backend"] == "nvml"]
        assert str(missing) in u["what"] and "cannot load" in u["reason"]
        assert "CARBONCTX_NVML_LIBRARY" in u["hint"]
        _, _, joules, _ = between(s, 0.02)
        assert joules[PKG] > 0
        s.stop()
        # Asked not to read NVML at all, it is not an error either.
        s2 = sampler_for(sim, nvml=False)
        samplers.append(s2)
        assert all(src["backend"] != "nvml" for src in s2.sources)
        s2.stop()


def test_a_sampler_with_nothing_to_read_still_starts_and_stops(
    tmp_path: Path, samplers: list[_native.Sampler]
) -> None:
    s = _native.Sampler(
        sys_root=tmp_path,
        dev_root=tmp_path,
        proc_root=tmp_path,
        nvml_library=tmp_path / "none.so",
        estimate="never",
    )
    samplers.append(s)
    assert s.sources == []
    assert {u["backend"] for u in s.unavailable} >= {"powercap", "perf", "msr", "nvml"}
    rid = s.begin()
    s.end(rid)
    assert s.wait(_native.now_ns(), 5.0)
    n, *_ = s.drain()
    assert n == 1
    s.stop()
    s.stop()  # idempotent
    assert not s.running


def test_the_hub_ends_a_span_and_says_what_is_due(
    tmp_path: Path, samplers: list[_native.Sampler]
) -> None:
    """A decorated call makes one native call after the function: the hub ends the span and
    answers 0 when nothing is due, else the backlog and warnings bits; a hub without a live
    sampler marks nothing."""
    s = _native.Sampler(
        sys_root=tmp_path,
        dev_root=tmp_path,
        proc_root=tmp_path,
        nvml_library=tmp_path / "none.so",
        estimate="never",
    )
    samplers.append(s)
    hub = _native.RegionHub(
        object(),
        strict=False,
        pending={},
        name_tags={},
        tag_of=lambda name: 0,
        drain=lambda: None,
        emit_warnings=lambda: None,
        backlog_high=1 << 15,
    )
    backlog, warnings_due = _native.SPAN_BACKLOG, _native.SPAN_WARNINGS
    assert backlog & warnings_due == 0
    # No sampler yet: nothing is marked, nothing is due.
    assert hub.end_span(_native.now_ns(), 0) == 0
    hub.sampler = s
    t0 = _native.now_ns()
    assert hub.end_span(t0, 7) == 0
    assert s.wait(_native.now_ns(), 5.0)
    n, _ids, tags, t0s, *_ = s.drain()
    assert n == 1 and np.frombuffer(tags, dtype=np.uint32)[0] == 7
    assert np.frombuffer(t0s, dtype=np.uint64)[0] == t0
    # Warnings waiting: said in the same answer, and the span is still marked.
    hub.warn_due = True
    assert hub.end_span(_native.now_ns(), 0) == warnings_due
    hub.warn_due = False
    assert s.wait(_native.now_ns(), 5.0)
    assert s.drain()[0] == 1
    # Nobody drains: once the resolved regions pass the sampler's high mark, the answer says
    # so (the wrapper then wakes the resolver), once until the resolver starts its next pass.
    for _ in range(10_000):
        hub.end_span(_native.now_ns(), 0)
    assert wait_for(lambda: hub.end_span(_native.now_ns(), 0) & backlog or hub.wake_sent)
    assert hub.wake_sent
    assert hub.end_span(_native.now_ns(), 0) == 0
    hub.wake_sent = False  # what the resolver does as it starts a pass
    hub.warn_due = True
    assert hub.end_span(_native.now_ns(), 0) == backlog | warnings_due
    assert hub.end_span(_native.now_ns(), 0) == warnings_due
    # A dead hub (shut down, or inherited by a forked child) marks nothing more.
    begun = s.stats()["regions_begun"]
    hub.dead = True
    assert hub.end_span(_native.now_ns(), 0) == warnings_due
    assert s.stats()["regions_begun"] == begun


# ------------------------------------------------------------------------------------ discovery


def discover_tree(name: str) -> dict[str, list[dict[str, Any]]]:
    root = FIXTURES / name
    return _native.discover(
        sys_root=root / "sys",
        dev_root=root / "dev",
        proc_root=root / "proc",
        nvml_library=root / "no-libnvidia-ml.so.1",
    )


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(e["id"] for e in entries)


def test_discover_the_two_socket_server_fixture() -> None:
    found = discover_tree("intel-server-2s")
    src = {s["id"]: s for s in found["sources"]}
    assert ids(found["sources"]) == sorted(
        [
            "powercap:intel-rapl:0",
            "powercap:intel-rapl:1",
            "powercap:intel-rapl:0:0",
            "powercap:intel-rapl:1:0",
        ]
    )
    assert [src[f"powercap:intel-rapl:{p}"]["domain"] for p in (0, 1)] == ["package"] * 2
    assert [src[f"powercap:intel-rapl:{p}:0"]["domain"] for p in (0, 1)] == ["dram"] * 2
    assert all(s["method"] == "counter" and s["backend"] == "powercap" for s in src.values())
    # Ranges from max_energy_range_uj (the counter wraps after the maximum).
    assert src["powercap:intel-rapl:0"]["wrap"] == 262143328850 + 1
    assert src["powercap:intel-rapl:0:0"]["wrap"] == 65712999613 + 1
    # MSR covers the same domains: alternatives, never double-counted sources.
    assert ids(found["alternatives"]) == sorted(
        ["msr:0:package", "msr:0:dram", "msr:1:package", "msr:1:dram"]
    )
    alt = {a["id"]: a for a in found["alternatives"]}
    # The unit register (ESU 14) for the package, and the server parts' fixed DRAM unit.
    assert alt["msr:0:package"]["joules_per_unit"] == pytest.approx(2.0**-14)
    assert alt["msr:0:dram"]["joules_per_unit"] == pytest.approx(15.3e-6, rel=0.01)
    assert alt["msr:1:package"]["path"].endswith("dev/cpu/2/msr")
    backends = {u["backend"] for u in found["unavailable"]}
    assert {"perf", "nvml"} <= backends
    for u in found["unavailable"]:
        assert u["reason"] and u["what"] and u["hint"], u


def test_discover_the_client_fixture_keeps_overlapping_zones_apart() -> None:
    found = discover_tree("intel-client")
    dom = {s["id"]: s["domain"] for s in found["sources"]}
    assert dom["powercap:intel-rapl:0"] == "package"
    assert dom["powercap:intel-rapl:0:0"] == "core"
    assert dom["powercap:intel-rapl:0:1"] == "uncore"
    assert dom["powercap:intel-rapl:1"] == "psys"
    assert "dram" in dom.values()
    # One package source; the MMIO zone and MSR for the same package are alternatives.
    assert list(dom.values()).count("package") == 1
    assert "powercap:intel-rapl-mmio:0" in ids(found["alternatives"])
    assert "msr:0:package" in ids(found["alternatives"])


def test_discover_the_amd_fixture() -> None:
    found = discover_tree("amd-epyc-2s")
    assert ids(found["sources"]) == ["powercap:intel-rapl:0", "powercap:intel-rapl:1"]
    assert {s["domain"] for s in found["sources"]} == {"package"}
    (msr,) = [u for u in found["unavailable"] if u["backend"] == "msr"]
    assert msr["reason"] and msr["hint"]


def test_discover_measures_every_die_and_each_sockets_psys() -> None:
    dies = discover_tree("intel-clx-ap-2s")
    labels = {s["id"]: s["label"] for s in dies["sources"]}
    assert labels["powercap:intel-rapl:1"] == "package-0-die-1"
    assert labels["powercap:intel-rapl:3:0"] == "dram (package 1 die 1)"
    assert [s["domain"] for s in dies["sources"]].count("package") == 4
    assert not [a for a in dies["alternatives"] if a["backend"] == "powercap"]
    spr = {s["id"]: s for s in discover_tree("intel-spr-2s")["sources"]}
    assert (spr["powercap:intel-rapl:3"]["domain"], spr["powercap:intel-rapl:3"]["index"]) == (
        "psys",
        1,
    )
    amd = discover_tree("amd-zen4-ccd-2s")
    assert ids(amd["sources"]) == ["powercap:intel-rapl:0", "powercap:intel-rapl:8"]
    repeated = [u for u in amd["unavailable"] if "same package counter" in u["reason"]]
    assert len(repeated) == 14 and all(u["hint"] for u in repeated)


def test_discover_honours_the_backend_preference() -> None:
    root = FIXTURES / "intel-server-2s"
    found = _native.discover(
        sys_root=root / "sys",
        dev_root=root / "dev",
        proc_root=root / "proc",
        nvml=False,
        cpu_backends=["msr", "powercap"],
    )
    assert {s["backend"] for s in found["sources"]} == {"msr"}
    assert {a["backend"] for a in found["alternatives"]} == {"powercap"}
    assert all(u["backend"] != "nvml" for u in found["unavailable"])


# ------------------------------------------------------------------------------------ the stub


def test_the_stub_matches_the_module() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "carbonctx._native"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_durations_are_configuration_errors_not_panics() -> None:
    # A value no duration holds (beyond ~584 years, negative, NaN) used to reach a Rust panic.
    for kw in (
        {"intervals": [("powercap", 1e30)]},
        {"intervals": [("nvml", -1.0)]},
        {"quiet_s": float("nan")},
        {"settle_s": -0.5},
    ):
        with pytest.raises(carbonctx.ConfigurationError, match="seconds"):
            _native.Sampler(nvml=False, cpu_backends=[], estimate="never", **kw)  # type: ignore[arg-type]
    with pytest.raises(carbonctx.ConfigurationError, match="estimate"):
        _native.Sampler(nvml=False, estimate="sometimes")


def test_the_core_reads_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Roots, TDP and CUDA variables reach the sampler only as arguments: the settings module
    reads the environment, once; a variable set behind its back changes nothing natively."""
    with SimulatedMachine(tmp_path / "hw") as sim:
        sys_root = sim.settings()["sys_root"]
        monkeypatch.setenv("CARBONCTX_SYSFS_ROOT", sys_root)
        monkeypatch.setenv("CARBONCTX_CPU_TDP_W", "not-a-number")
        found = _native.discover(nvml=False)
        assert not [s for s in found["sources"] if str(sim.root) in str(s["path"] or "")]
        assert not [u for u in found["unavailable"] if "not-a-number" in u["reason"]]
        # The settings module is where the variables are read.
        machine = carbonctx._config.machine(carbonctx._config.build(None, {}))
        assert machine["sys_root"] == sys_root
        assert machine["cpu_tdp_w"] == "not-a-number"
        found = _native.discover(**machine, nvml=False)
        assert [s for s in found["sources"] if str(sim.root) in str(s["path"] or "")]


def test_the_binding_looks_nothing_up_by_name() -> None:
    """Python and the binding meet through typed objects (the region hub), never through a
    module imported or an attribute read by its name."""
    src = "\n".join(p.read_text() for p in sorted((REPO / "rust" / "py" / "src").glob("*.rs")))
    assert "py.import(" not in src and ".import(" not in src
    assert "getattr(" not in src
    assert "std::env" not in src

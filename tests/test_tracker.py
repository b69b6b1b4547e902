"""track() and @tracked against the real native sampler reading simulated hardware."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import statistics
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx.testing import SimulatedMachine


def edges(m: carbonctx.Region) -> tuple[int, int]:
    """The region's CLOCK_MONOTONIC edges, recovered from its result."""
    r = m.result()
    rt = m._rt
    t0 = round((r.start - rt._offset) * 1e9)
    t1 = round((r.end - rt._offset) * 1e9)
    return t0, t1


def test_a_region_measures_every_source_against_the_truth(sim: SimulatedMachine) -> None:
    with carbonctx.track("epoch") as m:
        time.sleep(0.3)
    t0, t1 = edges(m)
    pkg = sim.truth_j("package", 0, t0, t1)
    dram = sim.truth_j("dram", 0, t0, t1)
    gpu = sim.gpu_truth_j(0, t0, t1)
    assert m.cpu_j == pytest.approx(pkg, rel=0.01)
    assert m.dram_j == pytest.approx(dram, rel=0.01)
    # The GPU counter moves every 100 ms: each edge may be off by up to one update's energy.
    assert abs(m.gpu_j - gpu) <= m.by_source["nvml:0"].uncertainty_j + 1.0
    assert m.energy_j == pytest.approx(m.cpu_j + m.dram_j + m.gpu_j)
    assert m.duration_s >= 0.3  # at least the sleep (no upper bound: the machine may be busy)
    assert set(m.by_source) == {"powercap:intel-rapl:0", "powercap:intel-rapl:0:0", "nvml:0"}
    assert {s.method for s in m.by_source.values()} == {"counter"}
    assert m.by_source["powercap:intel-rapl:0"].domain == "package"
    assert not m.estimated and m.missing == ()
    # CO2 with the table figure for the zone set in conftest (DE), PUE 1.
    assert m.zone == "DE"
    assert m.co2_g == pytest.approx(m.energy_j / 3.6e6 * m.intensity)
    assert m.carbon is not None and m.carbon["zone"]["rule"] == "CARBONCTX_ZONE"


def test_contiguous_short_regions_are_accurate_and_sum_to_the_span(sim: SimulatedMachine) -> None:
    with carbonctx.track("warm-up"):
        time.sleep(0.3)  # the sampler learns each counter's update phase
    regions = []
    for _ in range(100):
        with carbonctx.track("step") as m:
            deadline = time.monotonic() + 0.02
            while time.monotonic() < deadline:
                pass
        regions.append(m)
    errors = []
    total = truth_total = stated = 0.0
    for m in regions:
        t0, t1 = edges(m)
        truth = sim.truth_j("package", 0, t0, t1)
        # Beyond what the region states as its uncertainty: a sampler thread kept off the CPU
        # by a loaded machine reads late and says so in the bracket.
        unc = m.result().by_source["powercap:intel-rapl:0"].uncertainty_j or 0.0
        errors.append(max(0.0, abs(m.cpu_j - truth) - unc) / truth)
        total += m.cpu_j
        truth_total += truth
        stated += unc
    a, _ = edges(regions[0])
    _, b = edges(regions[-1])
    span = sim.truth_j("package", 0, a, b)
    errors.sort()
    # Loose bounds: a test must not depend on how busy the machine is. The floors the issue
    # names (median 1 %, worst 5 %, sum 0.2 %) are measured in benches/bench_accuracy.py.
    assert statistics.median(errors) < 0.03, errors
    assert errors[-1] < 0.5, errors
    # Contiguous regions leave tiny gaps between exit and the next enter; the span covers them.
    assert abs(total - truth_total) <= max(0.01 * truth_total, stated)
    assert total <= span * 1.01


def test_regions_nest_and_know_their_parent(sim: SimulatedMachine) -> None:
    with carbonctx.track("outer") as outer:
        with carbonctx.track("inner") as inner:
            assert carbonctx.current() is inner
            time.sleep(0.02)
        time.sleep(0.02)
    assert carbonctx.current() is None
    assert inner.result().parent == outer.result().id
    assert outer.energy_j > inner.energy_j > 0
    assert outer.duration_s > inner.duration_s


def test_regions_overlap_across_threads(sim: SimulatedMachine) -> None:
    results: dict[int, carbonctx.Region] = {}
    # All four inside their regions at once: live threads have distinct ids (a finished
    # thread's id may be reused by the next one started).
    together = threading.Barrier(4, timeout=30)

    def work(i: int) -> None:
        with carbonctx.track(f"thread-{i}") as m:
            time.sleep(0.05)
            together.wait()
        results[i] = m

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    idents = {results[i].result().thread for i in range(4)}
    assert len(idents) == 4
    for m in results.values():
        assert m.cpu_j > 0 and m.result().parent is None


def test_a_region_left_in_another_thread_or_task_stops_being_current(
    sim: SimulatedMachine,
) -> None:
    """Leaving a region in another thread resets that thread's context, not the one it was
    entered in; the entering thread must still stop treating it as open."""
    with carbonctx.track("outer") as outer:
        crossing = carbonctx.track("crossing")
        crossing.__enter__()
        assert carbonctx.current() is crossing
        t = threading.Thread(target=crossing.__exit__, args=(None, None, None))
        t.start()
        t.join()
        assert carbonctx.current() is outer
        with carbonctx.track("after") as after:
            assert carbonctx.current() is after
    assert after.result().parent == outer.id
    assert crossing.result().parent == outer.id
    assert carbonctx.current() is None

    async def main() -> carbonctx.Region:
        async def later(started: asyncio.Event) -> carbonctx.Region:
            await started.wait()
            await asyncio.sleep(0.01)
            async with carbonctx.track("in-task") as m:
                return m

        started = asyncio.Event()
        async with carbonctx.track("spawner"):
            task = asyncio.create_task(later(started))  # outlives the region it began in
        started.set()
        return await task

    in_task = asyncio.run(main())
    assert in_task.result().parent is None


def test_one_tracker_entered_in_several_threads_keeps_each_entrys_span(
    sim: SimulatedMachine,
) -> None:
    """One Tracker object entered concurrently in two threads: each `with` measures its own
    span, whichever thread leaves first (the first to leave used to end the other's entry)."""
    from carbonctx import _native

    shared = carbonctx.track("shared")
    a_in, a_out = threading.Event(), threading.Event()
    got: dict[str, tuple[carbonctx.Region, int, int, bool]] = {}

    def first() -> None:
        t0 = _native.now_ns()
        with shared as m:
            a_in.set()
            b_in.wait(10)
        got["a"] = (m, t0, _native.now_ns(), True)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        t0 = _native.now_ns()
        with shared as m:
            b_in.set()
            a_out.wait(10)
            # The other thread has left its entry: this one is still open here.
            still_open = carbonctx.current() is m and not m.done
        got["b"] = (m, t0, _native.now_ns(), still_open)

    b_in = threading.Event()
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (ma, a0, a1, _), (mb, b0, b1, b_open) = got["a"], got["b"]
    assert ma is not mb and b_open
    for m, lo, hi in ((ma, a0, a1), (mb, b0, b1)):
        t0, t1 = edges(m)
        assert lo <= t0 <= t1 <= hi, (m, lo, t0, t1, hi)
    assert ma.result().thread != mb.result().thread
    assert carbonctx.stats()["shared"].count == 2

    # The same in two tasks of one thread, the first to enter leaving first.
    async def main() -> list[tuple[carbonctx.Region, int, int]]:
        entered, left = asyncio.Event(), asyncio.Event()

        async def one(first: bool) -> tuple[carbonctx.Region, int, int]:
            if not first:
                await entered.wait()
            t0 = _native.now_ns()
            async with shared as m:
                if first:
                    entered.set()
                    await asyncio.sleep(0.01)
                else:
                    await left.wait()
            t1 = _native.now_ns()
            if first:
                left.set()
            return m, t0, t1

        return list(await asyncio.gather(one(True), one(False)))

    for m, lo, hi in asyncio.run(main()):
        t0, t1 = edges(m)
        assert lo <= t0 <= t1 <= hi


def test_one_tracker_reentered_recursively_nests(sim: SimulatedMachine) -> None:
    rec = carbonctx.track("rec")
    entries: list[carbonctx.Region] = []

    def f(depth: int) -> None:
        with rec as m:
            entries.append(m)
            if depth:
                f(depth - 1)
            time.sleep(0.005)

    f(3)
    assert len({id(m) for m in entries}) == 4 and carbonctx.current() is None
    for outer, inner in itertools.pairwise(entries):
        o0, o1 = edges(outer)
        i0, i1 = edges(inner)
        assert o0 <= i0 <= i1 <= o1
        assert inner.result().parent == outer.id


def test_async_regions_follow_their_task_across_awaits(sim: SimulatedMachine) -> None:
    @carbonctx.tracked(name="fetch")
    async def fetch(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    async def main() -> list[carbonctx.Region]:
        async def one(delay: float) -> carbonctx.Region:
            async with carbonctx.track("task") as m:
                await fetch(delay)
            return m

        return list(await asyncio.gather(one(0.05), one(0.1)))

    a, b = asyncio.run(main())
    # Each task's region spans its own awaits (no upper bounds: the machine may be busy), and
    # the shorter sleep's region ends first.
    assert a.duration_s >= 0.05 and b.duration_s >= 0.1
    assert a.result().end < b.result().end
    assert a.result().parent is None and b.result().parent is None
    s = carbonctx.stats()
    assert s["fetch"].count == 2
    assert s["task"].count == 2


def test_tracked_bare_and_with_options(sim: SimulatedMachine) -> None:
    @carbonctx.tracked
    def step(x: int) -> int:
        return x + 1

    @carbonctx.tracked(name="custom", tags={"model": "m"})
    def other() -> None:
        time.sleep(0.01)

    assert step(1) == 2 and step.__name__ == "step"
    for i in range(50):
        step(i)
    other()
    s = carbonctx.stats()
    name = step.__qualname__
    assert s[name].count == 51
    assert s["custom"].count == 1
    st = s[name]
    assert st.energy_j.total >= 0 and st.duration_s.max >= st.duration_s.p95 >= st.duration_s.p50
    assert carbonctx.recent()[-1].tags == {"model": "m"}


def test_tracked_propagates_exceptions_and_still_measures(sim: SimulatedMachine) -> None:
    @carbonctx.tracked(name="boom")
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    with pytest.raises(ZeroDivisionError), carbonctx.track("fails"):
        _ = 1 / 0
    s = carbonctx.stats()
    assert s["boom"].count == 1 and s["fails"].count == 1


def test_stats_are_exact_for_known_values(sim: SimulatedMachine) -> None:
    for _ in range(20):
        with carbonctx.track("s"):
            time.sleep(0.005)
    st = carbonctx.stats()["s"]
    energies = [m.energy_j for m in carbonctx.recent() if m.name == "s"]
    assert st.count == 20
    assert st.energy_j.total == pytest.approx(sum(energies))
    assert st.energy_j.mean == pytest.approx(statistics.mean(energies))
    assert st.energy_j.std == pytest.approx(statistics.stdev(energies))
    assert st.energy_j.p50 == pytest.approx(statistics.median(energies))
    assert st.energy_j.max == pytest.approx(max(energies))
    assert st.co2_g == pytest.approx(sum(m.co2_g or 0 for m in carbonctx.recent() if m.name == "s"))
    rows = carbonctx.stats().to_dicts()
    assert rows[0]["name"] == "s" and rows[0]["count"] == 20
    assert "s" in str(carbonctx.stats())


def test_stats_as_a_dataframe(sim: SimulatedMachine) -> None:
    pd = pytest.importorskip("pandas")
    with carbonctx.track("x"):
        pass
    df = carbonctx.stats().to_pandas()
    assert isinstance(df, pd.DataFrame) and df.loc["x", "count"] == 1


def test_reading_a_running_region_is_a_clear_error(sim: SimulatedMachine) -> None:
    with (
        carbonctx.track("open") as m,
        pytest.raises(carbonctx.CarbonctxError, match="still running"),
    ):
        _ = m.energy_j
    assert m.energy_j >= 0


def test_a_vanishing_zone_warns_once_and_results_say_what_is_missing(
    sim: SimulatedMachine,
) -> None:
    with carbonctx.track("before") as before:
        time.sleep(0.02)
    assert before.missing == ()
    sim.remove_zone("dram", 0)
    time.sleep(0.1)  # let the sampler give up on it
    with pytest.warns(carbonctx.CarbonctxWarning, match="intel-rapl:0:0"):
        with carbonctx.track("after") as after:
            time.sleep(0.02)
        assert after.missing == ("powercap:intel-rapl:0:0",)
        with carbonctx.track("after2"):
            pass
    assert after.by_source["powercap:intel-rapl:0:0"].joules is None
    assert after.cpu_j > 0 and after.dram_j == 0
    # The same region in strict mode raises instead.
    with carbonctx.track("strict", strict=True) as s:
        time.sleep(0.01)
    with pytest.raises(carbonctx.SourceUnavailableError, match="intel-rapl:0:0"):
        _ = s.energy_j


def test_no_source_at_all_degrades_and_strict_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    carbonctx.configure(
        sys_root=str(tmp_path),
        dev_root=str(tmp_path),
        proc_root=str(tmp_path),
        nvml_library=str(tmp_path / "none.so"),
        estimate="never",
    )
    with (
        pytest.warns(carbonctx.CarbonctxWarning, match="no energy source"),
        carbonctx.track("nothing") as m,
    ):
        pass
    assert m.energy_j == 0 and m.by_source == {}
    with (
        pytest.raises(carbonctx.SourceUnavailableError, match="carbonctx devices"),
        carbonctx.track("strict", strict=True),
    ):
        pass
    info = carbonctx.devices()
    backends = {u["backend"] for u in info["unavailable"]}
    assert {"powercap", "msr", "perf", "nvml"} <= backends
    assert all(u["reason"] for u in info["unavailable"])


def test_this_machine_as_it_is_uses_a_labelled_estimate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No counters (the real /proc, empty /sys and /dev): the estimate is used and labelled."""
    carbonctx.configure(
        sys_root=str(tmp_path), dev_root=str(tmp_path), nvml_library=str(tmp_path / "none.so")
    )
    with pytest.warns(carbonctx.CarbonctxWarning, match="estimate"), carbonctx.track("vm") as m:
        time.sleep(0.25)
    assert m.estimated
    (src,) = m.by_source.values()
    assert src.method == "estimate" and "estimate" in src.label
    assert m.cpu_j >= 0


def test_configure_rejects_bad_values_with_clear_errors() -> None:
    with pytest.raises(carbonctx.ConfigurationError, match="cpu_backends"):
        carbonctx.configure(cpu_backends=["rapl"])
    with pytest.raises(carbonctx.ConfigurationError, match="estimate"):
        carbonctx.configure(estimate="sometimes")
    with pytest.raises(carbonctx.ConfigurationError, match="nvml"):
        carbonctx.configure(intervals={"nvml": -1})
    with pytest.raises(TypeError):
        carbonctx.track("")


def test_environment_settings_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    from carbonctx import _config as _settings

    monkeypatch.setenv("CARBONCTX_INTERVALS", "powercap=2,nvml=50")
    monkeypatch.setenv("CARBONCTX_GPU", "off")
    monkeypatch.setenv("CARBONCTX_CPU_BACKENDS", "perf,powercap")
    s = _settings.build(None, {})
    assert s.intervals == {"powercap": 0.002, "nvml": 0.05}
    assert s.gpu is False and s.cpu_backends == ("perf", "powercap")
    monkeypatch.setenv("CARBONCTX_INTERVALS", "powercap=fast")
    with pytest.raises(carbonctx.ConfigurationError, match="CARBONCTX_INTERVALS"):
        _settings.build(None, {})


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def test_many_calls_keep_memory_flat(sim: SimulatedMachine) -> None:
    """Memory reaches a plateau (results wait for the slowest counter, here a GPU that updates
    every 100 ms) and then stays flat however many more regions run."""

    @carbonctx.tracked
    def tiny() -> None:
        pass

    # The plateau's height depends on how far the resolver thread falls behind (a loaded
    # machine lets more regions wait): reach it with as many calls as are then measured.
    for _ in range(1_000_000):
        tiny()
    carbonctx.stats()
    before = _rss_kb()
    for _ in range(1_000_000):
        tiny()
    assert carbonctx.stats()[tiny.__qualname__].count == 2_000_000
    grown_kb = _rss_kb() - before
    # A leak of 16 bytes a region would show as 16 MB here. (The bench measures the issue's
    # figure, from the first call: benches/results/memory.md.)
    assert grown_kb < 16 * 1024, f"resident memory grew by {grown_kb} KiB"
    rt = carbonctx._measure.process.current_runtime()
    assert rt is not None and len(rt.pending) < 1000 and len(rt.recent) <= 1000


def test_with_regions_nobody_holds_are_freed_with_their_batches(sim: SimulatedMachine) -> None:
    """Regions are not collectable (collections over them would cost more than the regions), so
    nothing may hold one in a cycle: once resolved and dropped, a region and the batch that
    resolved it are freed by reference counting alone, with the collector switched off."""
    import gc

    from carbonctx._measure import process as _runtime
    from carbonctx._measure.batch import Batch

    held = []
    gc.collect()
    # Batches an earlier test left (it may hold a runtime alive) are not this test's concern.
    earlier = {id(o) for o in gc.get_objects() if isinstance(o, Batch)}
    gc.disable()
    try:
        for i in range(30_000):
            with carbonctx.track("step") as m:
                pass
            if i % 10_000 == 0:
                held.append(m)  # a few handles kept: their batches stay, the rest go
        carbonctx.flush()
        rt = _runtime.current_runtime()
        assert rt is not None and not rt.pending
        assert not gc.is_tracked(held[-1])
        batches = [o for o in gc.get_objects() if isinstance(o, Batch) and id(o) not in earlier]
        chunks = len(rt.recent._chunks)
        assert len(batches) <= chunks + len(held), (len(batches), chunks)
        assert [h.result().name for h in held] == ["step"] * len(held)
        assert len(carbonctx.recent()) == 1000
        assert carbonctx.stats()["step"].count == 30_000
    finally:
        gc.enable()


def test_reset_frees_a_runtime_whose_region_was_left_in_another_thread(
    sim: SimulatedMachine,
) -> None:
    """A region entered in a thread that lives on and left in another is still that thread's
    context's current value: after reset() it keeps its result but no longer the runtime."""
    import gc
    import weakref

    from carbonctx._measure import process as _runtime

    entered, finish = threading.Event(), threading.Event()
    box: dict[str, carbonctx.Region] = {}

    def holder() -> None:
        box["m"] = carbonctx.track("crossing").__enter__()
        entered.set()
        finish.wait(10)  # lives on, its context holding the region

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert entered.wait(10)
        m = box.pop("m")
        time.sleep(0.02)
        m.__exit__(None, None, None)
        energy = m.energy_j
        rt = weakref.ref(_runtime.current_runtime())  # type: ignore[arg-type]
        _runtime.reset()
        gc.collect()
        assert rt() is None, [type(r) for r in gc.get_referrers(rt())]
        # What was measured stays readable.
        assert m.done and m.energy_j == energy > 0 and m.result().name == "crossing"
        del m
    finally:
        finish.set()
        t.join()


def test_configure_takes_every_setting() -> None:
    """Each field of the settings is a keyword of carbonctx.configure (and nothing else is)."""
    import inspect

    import attrs

    fields = {f.name for f in attrs.fields(carbonctx.Settings)}
    params = set(inspect.signature(carbonctx.configure).parameters)
    assert params == fields, (fields - params, params - fields)
    s = carbonctx.configure(node_sampler=False, node_dir="/tmp/x", cpu_tdp_w=65)
    assert (s.node_sampler, s.node_dir, s.cpu_tdp_w) == (False, "/tmp/x", "65")


def test_the_intensity_service_is_made_once_when_threads_ask_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The resolver's first batch and a run's forecast (on the program's thread) may both ask
    # for it first: one service is made, and every thread gets that one.
    from carbonctx._carbon import service as service_module
    from carbonctx._config import Settings
    from carbonctx._measure.carbon import RegionCarbon

    made: list[object] = []

    class SlowService:
        def __init__(self, **kwargs: object) -> None:
            time.sleep(0.05)
            made.append(self)

    monkeypatch.setattr(service_module, "IntensityService", SlowService)
    carbon = RegionCarbon(Settings(gpu=False), lambda key, message: None)
    barrier = threading.Barrier(4)
    got: list[object] = []

    def ask() -> None:
        barrier.wait()
        got.append(carbon.service())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(made) == 1 and got == made * 4


def test_tracked_calls_with_full_records_are_regions_that_nest(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # With output on, each call is a whole region: its record names its thread and the region
    # it ran in, and regions inside it name it as theirs; a call that raises still ends it.
    carbonctx.configure(output=str(tmp_path / "r.jsonl"))
    seen: list[Any] = []

    @carbonctx.tracked(name="call")
    def call(fail: bool) -> str:
        seen.append(carbonctx.current())
        with carbonctx.track("inside"):
            pass
        if fail:
            raise KeyError("no")
        return "ok"

    with carbonctx.track("outer") as outer:
        assert call(False) == "ok"
        with pytest.raises(KeyError):
            call(fail=True)
    assert carbonctx.current() is None
    assert carbonctx.flush()
    by_name: dict[str, list[Any]] = {}
    for m in carbonctx.recent():
        by_name.setdefault(m.name, []).append(m)
    calls = by_name["call"]
    assert len(calls) == 2 and [c.id for c in calls] == [r.id for r in seen]
    assert all(c.parent == outer.id and c.thread == threading.get_ident() for c in calls)
    assert sorted(m.parent for m in by_name["inside"]) == sorted(c.id for c in calls)


def test_tracked_calls_follow_a_new_runtime(sim: SimulatedMachine) -> None:
    # The native caller keeps the name's tag of the runtime it last ran under; after
    # configure() the new runtime interns names anew (another name first, so the tags differ).
    @carbonctx.tracked(name="step")
    def step() -> None:
        return None

    for _ in range(3):
        step()
    assert carbonctx.stats()["step"].count == 3
    carbonctx.configure(**sim.settings())
    with carbonctx.track("first name"):
        pass
    for _ in range(2):
        step()
    s = carbonctx.stats()
    assert s["step"].count == 2 and s["first name"].count == 1


def test_a_tracked_function_that_refers_to_itself_is_collected(sim: SimulatedMachine) -> None:
    # A recursive function defined in another one refers to its wrapper (through its closure),
    # and the wrapper to the function: the cycle passes through the native caller, which the
    # collector must see through.
    def make() -> Callable[[int], int]:
        @carbonctx.tracked
        def fact(n: int) -> int:
            return 1 if n <= 1 else n * fact(n - 1)

        return fact

    f = make()
    assert f(5) == 120
    ref = weakref.ref(f.__wrapped__)  # type: ignore[attr-defined]
    del f
    gc.collect()
    assert ref() is None


def test_a_tracked_function_lets_a_replaced_runtime_go(sim: SimulatedMachine) -> None:
    # The decorated function keeps nothing of the runtime it ran under: once configure() has
    # replaced it (and a `with` started the next one), the old runtime is freed.
    from carbonctx._measure import process as _runtime

    @carbonctx.tracked
    def f() -> int:
        return 1

    assert f() == 1
    old = weakref.ref(_runtime.current_runtime())  # type: ignore[arg-type]
    carbonctx.configure(**sim.settings())
    with carbonctx.track("x"):
        pass
    for _ in range(3):
        f()
    gc.collect()
    assert old() is None
    assert carbonctx.stats()[f.__qualname__].count == 3


def test_a_recursive_tracked_function_keeps_its_depth(sim: SimulatedMachine) -> None:
    # Two frames a level, as a plain wrapper would take: the function is called from Python,
    # not from native code (which would count a third level against the limit).
    @carbonctx.tracked
    def depth(n: int) -> int:
        return 0 if n == 0 else 1 + depth(n - 1)

    depth(1)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(3000)
    try:
        assert depth(1200) == 1200
    finally:
        sys.setrecursionlimit(limit)
    assert carbonctx.stats()[depth.__qualname__].count == 1203

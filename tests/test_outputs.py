"""What carbonctx writes and hands back: JSON Lines as results resolve, the Chrome trace, CSV,
the recent window, provenance of every figure, and the uncertainty of short regions."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import math
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx._measure.batch import Batch, RecentWindow
from carbonctx._output.csv import CSV_FIELDS, write_csv
from carbonctx._output.jsonl import read_jsonl
from carbonctx.testing import SimulatedMachine

#: Bound on waiting for the resolver thread to write a record (it runs every 20 ms).
WAIT_S = 10.0


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def edges(m: carbonctx.Region) -> tuple[int, int]:
    """The region's CLOCK_MONOTONIC edges, recovered from its result."""
    r = m.result()
    rt = m._rt
    return round((r.start - rt._offset) * 1e9), round((r.end - rt._offset) * 1e9)


def region_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            json.loads(line)  # every complete line parses
    # Records in the full form, whichever form the file holds (compact: _output.compact).
    regions, _power, bad = read_jsonl(str(path))
    assert bad == 0
    return regions


# ------------------------------------------------------------------------------------ JSON Lines


def test_jsonl_records_appear_as_results_resolve(sim: SimulatedMachine, tmp_path: Path) -> None:
    path = tmp_path / "out" / "regions.jsonl"
    carbonctx.configure(output=str(path))
    with carbonctx.track("first", tags={"epoch": 1}):
        busy(0.02)
    # Nobody reads the result or flushes: the resolver thread writes and flushes the record.
    deadline = time.monotonic() + WAIT_S
    recs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        recs = region_records(path)
        if recs:
            break
        time.sleep(0.01)
    assert recs, f"no record in {path} after {WAIT_S} s"
    (rec,) = recs
    assert rec["name"] == "first" and rec["tags"] == {"epoch": 1}
    for key in ("start", "end", "duration_s", "energy_j", "cpu_j", "dram_j", "gpu_j", "co2_g"):
        assert isinstance(rec[key], float), key
    assert rec["start"] == pytest.approx(time.time(), abs=60)
    assert rec["end"] - rec["start"] == pytest.approx(rec["duration_s"], abs=1e-6)
    assert rec["duration_s"] >= 0.02
    assert rec["energy_j"] == pytest.approx(rec["cpu_j"] + rec["dram_j"] + rec["gpu_j"])
    assert rec["co2_g"] > 0 and rec["zone"] == "DE"
    by = rec["by_source"]
    assert set(by) == {"powercap:intel-rapl:0", "powercap:intel-rapl:0:0", "nvml:0"}
    for sid, s in by.items():
        assert s["id"] == sid and s["method"] == "counter" and s["joules"] >= 0
        assert s["domain"] in ("package", "dram", "gpu") and s["backend"] and s["label"]
    assert by["powercap:intel-rapl:0"]["joules"] == pytest.approx(rec["cpu_j"])
    # The record is the result the handle gives.
    assert rec["id"] == carbonctx.recent()[-1].id


def test_jsonl_keeps_records_of_every_name_and_kind(sim: SimulatedMachine, tmp_path: Path) -> None:
    path = tmp_path / "regions.jsonl"
    carbonctx.configure(output=str(path))

    @carbonctx.tracked
    def step() -> None:
        busy(0.001)

    with carbonctx.track("epoch") as epoch:
        for _ in range(10):
            step()
    assert carbonctx.flush()
    recs = region_records(path)
    steps = [r for r in recs if r["name"] == step.__qualname__]
    assert len(steps) == 10
    (ep,) = [r for r in recs if r["name"] == "epoch"]
    assert ep["id"] == epoch.result().id
    # Decorated calls record their thread and enclosing region when output is on.
    assert all(r["parent"] == ep["id"] and r["thread"] == threading.get_ident() for r in steps)
    assert sum(r["energy_j"] for r in steps) <= ep["energy_j"]


def test_a_failed_source_is_recorded_as_missing(sim: SimulatedMachine, tmp_path: Path) -> None:
    path = tmp_path / "regions.jsonl"
    carbonctx.configure(output=str(path))
    with carbonctx.track("warm"):
        busy(0.01)
    carbonctx.flush()
    sim.remove_zone("dram")
    time.sleep(0.1)
    with pytest.warns(carbonctx.CarbonctxWarning, match="intel-rapl:0:0"):
        with carbonctx.track("after") as m:
            busy(0.01)
        assert m.missing == ("powercap:intel-rapl:0:0",)
        with carbonctx.track("next"):  # the warning comes on the user's thread, once
            pass
    carbonctx.flush()
    (rec,) = [r for r in region_records(path) if r["name"] == "after"]
    assert rec["missing"] == ["powercap:intel-rapl:0:0"]
    dram = rec["by_source"]["powercap:intel-rapl:0:0"]
    assert dram["joules"] is None and dram["note"]
    assert rec["cpu_j"] > 0


# ------------------------------------------------------------------------------------ trace


def slices_by_track(doc: dict[str, Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    tracks: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append(e)
    return tracks


def assert_properly_nested(tracks: dict[tuple[int, int], list[dict[str, Any]]]) -> None:
    """Within one track every two slices are disjoint or one contains the other."""
    eps = 1.0  # µs: timestamps are microseconds since 1970 as floats
    for key, events in tracks.items():
        stack: list[dict[str, Any]] = []
        for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] + eps:
                stack.pop()
            if stack:
                outer = stack[-1]
                assert e["ts"] + e["dur"] <= outer["ts"] + outer["dur"] + eps, (
                    f"on track {key}, {e['name']!r} overlaps {outer['name']!r} without nesting"
                )
            stack.append(e)


def track_of(tracks: dict[tuple[int, int], list[dict[str, Any]]], name: str) -> list[Any]:
    return [k for k, evs in tracks.items() for e in evs if e["name"] == name]


def test_write_trace_nests_regions_per_thread(sim: SimulatedMachine, tmp_path: Path) -> None:
    with carbonctx.track("outer"):
        time.sleep(0.2)  # a timeline long enough for a few power points
        with carbonctx.track("inner"):
            busy(0.01)
        busy(0.01)

    def work() -> None:
        with carbonctx.track("worker"), carbonctx.track("worker-inner"):
            time.sleep(0.02)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = tmp_path / "trace.json"
    assert carbonctx.write_trace(str(path)) == str(path)
    doc = json.loads(path.read_text())
    tracks = slices_by_track(doc)
    assert_properly_nested(tracks)
    (outer_track,) = track_of(tracks, "outer")
    (inner_track,) = track_of(tracks, "inner")
    assert inner_track == outer_track  # nested on the same track
    worker_tracks = track_of(tracks, "worker")
    assert len(set(worker_tracks)) == 2 and outer_track not in worker_tracks
    assert sorted(track_of(tracks, "worker-inner")) == sorted(worker_tracks)
    for evs in tracks.values():
        for e in evs:
            assert e["dur"] > 0 and e["args"]["energy_j"] > 0
            assert e["args"]["energy_j"] == pytest.approx(
                e["args"]["cpu_j"] + e["args"]["dram_j"] + e["args"]["gpu_j"]
            )
    # Power per source as counter tracks (watts over the time since the previous point).
    rt = _runtime.current_runtime()
    assert rt is not None
    for sid, domain in (("powercap:intel-rapl:0", "package"), ("powercap:intel-rapl:0:0", "dram")):
        pts = [
            (c["ts"], c["args"][sid])
            for c in doc["traceEvents"]
            if c["ph"] == "C" and sid in c["args"]
        ]
        assert len(pts) >= 5, sid
        # Integrated, the track gives the counter's energy between its first and last points.
        joules = sum(w * (t - t_prev) * 1e-6 for (t_prev, _), (t, w) in itertools.pairwise(pts))
        mono = [round((t * 1e-6 - rt._offset) * 1e9) for t, _ in (pts[0], pts[-1])]
        truth = sim.truth_j(domain, 0, mono[0], mono[1])
        assert joules == pytest.approx(truth, rel=0.02), sid
        # Each point lies within the machine's power levels, give or take one counter update
        # (1 ms) at each end of its window.
        lo, hi = (40.0, 120.0) if domain == "package" else (6.0, 6.0)
        for (t_prev, _), (t, w) in itertools.pairwise(pts):
            slack = 2 * 1e3 / (t - t_prev)  # two 1 ms updates over the window (µs)
            assert lo * (1 - slack) - 1e-6 <= w <= hi * (1 + slack) + 1e-6, (sid, w, t - t_prev)


def test_overlapping_asyncio_tasks_on_one_thread_never_break_nesting(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    async def task(name: str, delay: float, length: float) -> None:
        await asyncio.sleep(delay)
        async with carbonctx.track(name), carbonctx.track(f"{name}-child"):
            await asyncio.sleep(length)

    async def main() -> None:
        # a: [0, 60 ms], b: [20, 80 ms] on one thread: they overlap without nesting.
        await asyncio.gather(task("a", 0.0, 0.06), task("b", 0.02, 0.06))

    asyncio.run(main())
    path = tmp_path / "trace.json"
    carbonctx.write_trace(str(path))
    tracks = slices_by_track(json.loads(path.read_text()))
    assert_properly_nested(tracks)
    (a,) = track_of(tracks, "a")
    (b,) = track_of(tracks, "b")
    assert a != b
    assert track_of(tracks, "a-child") == [a] and track_of(tracks, "b-child") == [b]
    # Both tracks belong to the one thread's process.
    assert a[0] == b[0]


# ------------------------------------------------------------------------------------ CSV


def test_csv_export_of_recent_results(sim: SimulatedMachine) -> None:
    for i in range(3):
        with carbonctx.track(f"r{i}"):
            busy(0.005)
    recs = [m.to_dict() for m in carbonctx.recent()]
    buf = io.StringIO()
    assert write_csv(recs, buf) == 3
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert buf.getvalue().splitlines()[0].split(",") == CSV_FIELDS
    assert [r["name"] for r in rows] == ["r0", "r1", "r2"]
    for row, rec in zip(rows, recs, strict=True):
        for key in ("start", "duration_s", "energy_j", "cpu_j", "co2_g"):
            assert float(row[key]) == pytest.approx(rec[key], rel=1e-12)
        assert row["zone"] == "DE" and row["missing"] == ""


# ------------------------------------------------------------------------------------ recent


def test_recent_is_bounded_by_the_window(sim: SimulatedMachine) -> None:
    carbonctx.configure(window=5)

    @carbonctx.tracked
    def quick() -> None:
        pass

    regions = []
    for i in range(12):
        if i % 2:
            quick()
        with carbonctx.track(f"w{i}") as m:
            pass
        regions.append(m)
    recent = carbonctx.recent()
    assert len(recent) == 5
    # The newest five, oldest first, whatever their kind.
    assert [r.name for r in recent][-1] == "w11"
    ends = [r.end for r in recent]
    assert ends == sorted(ends)
    assert recent[-1].id == regions[-1].result().id
    # Statistics still count everything.
    st = carbonctx.stats()
    assert sum(st[n].count for n in st if n.startswith("w")) == 12
    assert st[quick.__qualname__].count == 6


def test_a_zero_window_keeps_no_recent_results(sim: SimulatedMachine) -> None:
    carbonctx.configure(window=0)
    with carbonctx.track("x") as m:
        pass
    assert m.energy_j >= 0  # a held handle still resolves
    assert carbonctx.recent() == []
    assert carbonctx.stats()["x"].count == 1


def test_the_window_numbers_every_region_that_entered_it() -> None:
    # Rows are numbered in the order they enter, those of a batch cut by the window included:
    # a reader resumes where it stopped, and knows when some left unread.
    w = RecentWindow(4)
    a, b, c = (Batch(*[None] * 9, [], None, False) for _ in range(3))
    w.add(a, range(3))
    assert w.since(0) == (0, 3, [(a, 0), (a, 1), (a, 2)])
    assert w.since(2) == (0, 3, [(a, 2)])
    assert w.since(3) == (0, 3, [])
    w.add(b, [1, 4])  # numbers 3 and 4; a's first row leaves
    assert w.since(3) == (1, 5, [(b, 1), (b, 4)])
    assert w.rows() == [(a, 1), (a, 2), (b, 1), (b, 4)]
    w.add(c, range(6))  # numbers 5-10: the first two are cut, the rest are the window
    first, end, rows = w.since(3)
    assert (first, end, rows) == (7, 11, [(c, 2), (c, 3), (c, 4), (c, 5)])
    assert first > 3  # rows numbered 3-6 left unread
    assert w.since(9) == (7, 11, [(c, 4), (c, 5)])
    assert len(w) == 4 and w.rows() == rows
    none = RecentWindow(0)
    none.add(a, range(3))
    assert none.since(0) == (0, 0, []) and len(none) == 0


def test_recent_regions_are_numbered_whatever_their_id(sim: SimulatedMachine) -> None:
    # @tracked calls and steps' entries have no id with output off; their numbers tell them
    # apart, and the number after the last read says where to resume.
    @carbonctx.tracked
    def quick() -> None:
        pass

    entry = carbonctx.step("entry")
    for _ in range(3):
        quick()
        with entry:
            pass
    carbonctx.flush()
    rt = _runtime.current_runtime()
    assert rt is not None
    first, end, rows = rt.recent_since(0)
    assert (first, end) == (0, 6) and {m.id for m in rows} == {0}
    with carbonctx.track("named"):
        pass
    quick()
    carbonctx.flush()
    first, end, rows = rt.recent_since(end)
    assert (first, end) == (0, 8)
    assert sorted(m.name for m in rows) == sorted(["named", quick.__qualname__])
    assert rt.recent_since(end) == (0, 8, [])
    assert [m.name for m in carbonctx.recent()][-2:] == [m.name for m in rows]


def test_rows_listed_after_others_that_entered_are_numbered_after_them() -> None:
    # A caller that lists only the rows it keeps says how many of the batch entered.
    w = RecentWindow(2)
    a, b = (Batch(*[None] * 9, [], None, False) for _ in range(2))
    w.add(a, [7, 9], entered=5)  # numbers 0-4: the last two are rows 7 and 9
    assert w.since(0) == (3, 5, [(a, 7), (a, 9)])
    assert w.since(4) == (3, 5, [(a, 9)])
    w.add(b, [], entered=0)
    w.add(b, [3])
    assert w.since(4) == (4, 6, [(a, 9), (b, 3)])
    none = RecentWindow(0)
    none.add(a, [], entered=3)
    assert none.since(0) == (0, 0, [])


def test_regions_without_a_name_do_not_enter_the_window(sim: SimulatedMachine) -> None:
    # The sampler's own regions (no tag, nobody waiting) among named ones, the window smaller
    # than a batch: only the named are numbered, the last of them held.
    carbonctx.configure(window=2)
    with carbonctx.track("start"):
        pass
    rt = _runtime.current_runtime()
    assert rt is not None and rt.sampler is not None
    for name in ("a", "b", "c", "d"):
        with carbonctx.track(name):
            rt.sampler.end(rt.sampler.begin())
    carbonctx.flush()
    assert rt.resolver.regions_total == 9  # the sampler's own were resolved too
    first, end, rows = rt.recent_since(4)
    assert (first, end) == (3, 5)  # start, a and b left; c and d held
    assert [m.name for m in rows] == ["d"]
    assert [m.name for m in carbonctx.recent()] == ["c", "d"]


# ------------------------------------------------------------------------------------ provenance


def test_every_result_says_where_its_carbon_figure_came_from(sim: SimulatedMachine) -> None:
    with carbonctx.track("p") as m:
        busy(0.01)
    c = m.carbon
    assert c is not None
    assert c["zone"]["zone"] == "DE" and c["zone"]["rule"] == "CARBONCTX_ZONE"
    (period,) = c["periods"]
    assert period["source"] == "table" and "Ember" in period["dataset"]
    assert period["g_per_kwh"] == pytest.approx(m.intensity)
    assert c["pue"] == 1.0 and c["pue_source"]
    assert m.co2_g == pytest.approx(m.energy_j / 3.6e6 * m.intensity)
    for s in m.by_source.values():
        assert s.method in ("counter", "integrated-power", "estimate")
    assert not m.estimated


def test_a_configured_pue_is_applied_and_said(sim: SimulatedMachine) -> None:
    carbonctx.configure(pue=1.5)
    with carbonctx.track("p") as m:
        busy(0.01)
    assert m.carbon is not None and m.carbon["pue"] == 1.5
    assert m.co2_g == pytest.approx(m.energy_j / 3.6e6 * m.intensity * 1.5)


# ------------------------------------------------------------------------------------ uncertainty


def test_uncertainty_of_short_regions_bounds_their_error(sim: SimulatedMachine) -> None:
    with carbonctx.track("warm-up"):
        time.sleep(0.3)  # the sampler learns each counter's update phase
    regions = []
    for _ in range(30):
        with carbonctx.track("step") as m:
            busy(0.02)
        regions.append(m)
    within = 0
    ratios: list[float] = []
    for m in regions:
        pkg = m.by_source["powercap:intel-rapl:0"]
        assert pkg.uncertainty_j is not None and pkg.joules is not None
        assert m.uncertainty_j is not None and m.uncertainty_j >= pkg.uncertainty_j >= 0
        assert all(s.uncertainty_j is None or s.uncertainty_j >= 0 for s in m.by_source.values())
        t0, t1 = edges(m)
        err = abs(pkg.joules - sim.truth_j("package", 0, t0, t1))
        # The figure is the width of the counter brackets at both edges added: the error stays
        # within it unless a read came late enough to blur an edge.
        assert err <= 2 * pkg.uncertainty_j + 1e-9, (err, pkg.uncertainty_j)
        within += err <= pkg.uncertainty_j
        ratios.append(pkg.uncertainty_j / pkg.joules)
    assert within >= 0.9 * len(regions), within
    # ...and it is informative: typically well below a 20 ms region's energy (0.8 to 2.4 J).
    # (A region whose edge reads came late, on a busy machine, honestly says more.)
    assert statistics.median(ratios) < 0.4, ratios
    assert not any(math.isnan(m.energy_j) for m in regions)


def test_reset_writes_and_closes_the_output(sim: SimulatedMachine, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    carbonctx.configure(output=str(path))
    for i in range(20):
        with carbonctx.track("n", tags={"i": i}):
            pass
    _runtime.reset()
    recs = region_records(path)
    assert sorted(r["tags"]["i"] for r in recs) == list(range(20))


def test_names_made_anew_for_each_region_are_one_name(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # f-strings make a new string object per region: the writer finds the name by its text
    # (each name's first record is its full one, the rest compact lines of the same name).
    path = tmp_path / "regions.jsonl"
    carbonctx.configure(output=str(path))
    for i in range(300):
        with carbonctx.track(f"epoch {i % 3}"):
            pass
    assert carbonctx.flush()
    carbonctx.configure()  # closes the file
    recs = region_records(path)
    assert sorted(r["name"] for r in recs) == sorted(f"epoch {i % 3}" for i in range(300))
    full = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    firsts = [r for r in full if r.get("kind") == "region" and "by_source" in r]
    assert sorted(r["name"] for r in firsts) == ["epoch 0", "epoch 1", "epoch 2"]

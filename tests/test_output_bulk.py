"""Compact region lines formatted a batch at a time (issue 15): what is written is exactly what the
results say, in the order the regions resolved, whatever a batch mixes (overlapping regions of
other threads, regions across a source's gap, tags, first records of a name), and writing a
batch makes no work for Python's cyclic collector."""

from __future__ import annotations

import gc
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx._measure import recorder as _recorder
from carbonctx._measure import runtime as _rt
from carbonctx._output.jsonl import read_jsonl
from carbonctx.testing import SimulatedMachine


def test_a_mixed_batch_is_written_as_the_results_say(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_rt, "RESOLVE_PERIOD_S", 60.0)  # one batch, drained by flush()
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    handles: list[carbonctx.Region] = []
    lock = threading.Lock()

    def inner(i: int) -> None:
        with carbonctx.track("inner", tags={"i": i} if i % 2 else None) as m:
            time.sleep(0.001)
        with lock:
            handles.append(m)

    for i in range(6):
        # An outer region of this thread, with a region of another thread inside it: the other
        # thread's line comes first and this one starts before its end (a negative "t").
        with carbonctx.track("outer") as m:
            t = threading.Thread(target=inner, args=(i,))
            t.start()
            t.join()
            with carbonctx.track("nested") as n:
                pass
        handles += [m, n]
    # A region across a reset of the package counter: its line has a null, between others.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with carbonctx.track("before") as m:
            time.sleep(0.01)
        handles.append(m)
        for _ in range(2):  # the first of a name is written in full, the second compact
            with carbonctx.track("across") as m:
                time.sleep(0.01)
                sim.reset_counter("package")
                time.sleep(0.01)
            handles.append(m)
            for _ in range(2):
                with carbonctx.track("after") as m:
                    time.sleep(0.01)
                handles.append(m)
        assert carbonctx.flush()
    results = {m.id: m.result().to_dict() for m in handles}
    _runtime.reset()

    raw = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]
    compact = [r for r in raw if r.get("kind") == "region" and "j" in r]
    assert any(r["t"] < 0 for r in compact)  # the overlapping case was written
    assert any(None in r["j"] for r in compact)  # and the gap's lines with nulls
    assert any("tags" in r for r in compact)
    assert len({r["th"] for r in compact if "th" in r}) >= 2  # this thread and others

    regions, _power, bad = read_jsonl(str(path))
    assert bad == 0
    by_id = {r["id"]: r for r in regions}
    assert set(by_id) == set(results)
    for rid, want in results.items():
        got = by_id[rid]
        for k in ("name", "thread", "parent", "start", "end", "duration_s", "tags", "missing"):
            assert got[k] == want[k], (k, want["name"])
        for k in ("energy_j", "cpu_j", "dram_j", "gpu_j"):
            assert got[k] == pytest.approx(want[k], abs=3e-6, nan_ok=True), k
        assert got["by_source"].keys() == want["by_source"].keys()
    assert any(r["missing"] for r in results.values())
    # Lines are in the order the regions resolved (by end), each name's first one in full.
    ends = [by_id[r["id"]]["end"] for r in raw if r.get("kind") == "region"]
    assert ends == sorted(ends)


def test_writing_a_batch_makes_no_work_for_the_cyclic_collector(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is made per line that lives through the batch (lists or tuples counted by the
    collector would bring on collections, and promote objects towards full collections, each
    of which stops every thread)."""
    monkeypatch.setattr(_rt, "RESOLVE_PERIOD_S", 60.0)  # the regions wait for flush()
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    calls: list[tuple[int, int]] = []  # (rows, collections during the call)
    seen: list[int] = []
    real = _recorder.RegionRecorder.record

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    def record(self: Any, batch: Any, rows: Any) -> None:
        before = len(seen)
        real(self, batch, rows)
        calls.append((len(rows), len(seen) - before))

    monkeypatch.setattr(_recorder.RegionRecorder, "record", record)
    for _ in range(5000):
        with carbonctx.track("step"):
            pass
    gc.collect()
    gc.callbacks.append(on_gc)
    try:
        assert carbonctx.flush()
    finally:
        gc.callbacks.remove(on_gc)
    rows, collections = max(calls)
    assert rows >= 4000
    # The young generation's threshold is 700 allocations: one object per line would be
    # several collections.
    assert gc.get_threshold()[0] <= 1000
    assert collections <= 1
    _runtime.reset()
    regions, _power, bad = read_jsonl(str(path))
    assert bad == 0 and sum(r["name"] == "step" for r in regions) == 5000

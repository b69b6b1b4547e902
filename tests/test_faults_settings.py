"""Faults and bad input around settings (issue 10, items 4 and 13): ``configure()`` while a
region is open, and settings refused up front with a message that says what to do."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx.testing import SimulatedMachine, Wave


@pytest.fixture
def cpu_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A one-package machine (40/120 W square wave at 50 ms, 6 W DRAM), no GPU, running."""
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()


def names(path: Path) -> list[str]:
    if not path.exists():
        return []
    recs = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln]
    return [r["name"] for r in recs if r.get("kind") == "region"]


# ----------------------------------------------------------------------- item 4: configure()


def test_configure_inside_an_open_region_finishes_and_records_it(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    """The open region is measured to its end by the settings it began under (its output);
    regions that begin after configure() use the new ones. Nothing waits for a timeout."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    carbonctx.configure(output=str(a))
    t = time.monotonic()
    with carbonctx.track("outer") as outer:
        with carbonctx.track("before"):
            pass
        carbonctx.configure(output=str(b))
        with carbonctx.track("inner") as inner:
            time.sleep(0.01)
    assert math.isfinite(outer.energy_j) and outer.energy_j > inner.energy_j > 0
    assert outer.recorded is True and inner.recorded is True
    assert outer.duration_s >= inner.duration_s
    assert time.monotonic() - t < 8  # no result waited for a stopped sampler (10 s)
    assert carbonctx.flush()
    _runtime.reset()  # the runtime in use and every one still finishing are shut down
    assert sorted(names(a)) == ["before", "outer"]
    assert names(b) == ["inner"]


def test_configure_with_a_region_open_in_another_thread(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    carbonctx.configure(output=str(a))
    entered, leave = threading.Event(), threading.Event()
    got: dict[str, Any] = {}

    def work() -> None:
        with carbonctx.track("long") as m:
            entered.set()
            leave.wait(10)
        got["energy"] = m.energy_j
        got["recorded"] = m.recorded

    th = threading.Thread(target=work)
    th.start()
    assert entered.wait(10)
    carbonctx.configure(output=str(b))
    with carbonctx.track("after") as after:
        pass
    leave.set()
    th.join(20)
    assert got["energy"] > 0 and got["recorded"] is True and after.energy_j > 0
    # The replaced runtime shuts itself down once its last region is written.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(rt.finished for rt in _runtime._RETIRING):
        time.sleep(0.05)
    assert _runtime._RETIRING and all(rt.finished for rt in _runtime._RETIRING)
    assert names(a) == ["long"]
    assert names(b) == ["after"]

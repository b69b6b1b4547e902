"""Faults and hostile input (issue 10): nothing finished is lost, nothing is invented, nothing
hangs past a stated bound, nothing raises into the measured loop, and the user gets one clear
message. Hardware is simulated; every wait is bounded and none depends on the machine's speed.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx import _native
from carbonctx._measure import process as _runtime
from carbonctx._output.jsonl import dumps, json_safe
from carbonctx.testing import SimulatedMachine, Wave

#: Bound on waiting for something that takes well under a second: a hang fails the test.
WAIT_S = 30.0


@pytest.fixture
def cpu_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A one-package machine (40/120 W square wave at 50 ms, 6 W DRAM), no GPU, running."""
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON Lines file, each parsed by a strict reader (no NaN)."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {token} in {path}")

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(ln, parse_constant=refuse) for ln in text.splitlines() if ln.strip()]


def regions(path: Path) -> list[dict[str, Any]]:
    return [r for r in lines(path) if r.get("kind") == "region"]


# ----------------------------------------------------------------------- item 1: odd values


def test_odd_tag_values_never_drop_a_batch_nor_raise(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    """A diverged loss, an infinite value, a huge int, odd keys, a circular and an unprintable
    tag: every record is written, and reading results raises nothing."""

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    circular: dict[str, Any] = {}
    circular["self"] = circular
    huge = 7 * 10**5000 + 1
    odd: list[dict[Any, Any]] = [
        {"loss": float("nan")},
        {"loss": float("-inf"), "grad": [1.0, float("inf")]},
        {"big": huge},
        {(1, 2): "tuple key", float("nan"): 1, 10**5000: 2},
        {"circular": circular},
        {"obj": Unprintable()},
    ]
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    handles = []
    for i in range(200):
        tags = odd[(i // 10) % len(odd)] if i % 10 == 0 else {"loss": 0.5, "step": i}
        with carbonctx.track("step", tags=tags) as m:
            pass
        handles.append(m)
    for m in handles:
        assert math.isfinite(m.energy_j)
    assert carbonctx.flush()
    recs = regions(path)
    assert len(recs) == 200
    by_step = {r["tags"].get("step"): r for r in recs if "step" in r["tags"]}
    assert len(by_step) == 180
    tagged = [r["tags"] for r in recs if "step" not in r["tags"]]
    assert {"loss": None} in tagged
    assert {"loss": None, "grad": [1.0, None]} in tagged
    # Every digit kept, as text (str() refuses integers of more than 4300 digits).
    assert {"big": "7" + "0" * 4999 + "1"} in tagged
    assert {"(1, 2)": "tuple key", "nan": 1, "1" + "0" * 5000: 2} in tagged
    assert {"circular": {"self": "<circular>"}} in tagged
    assert {"obj": "<unprintable Unprintable>"} in tagged


def test_a_co2_figure_that_overflows_is_written_as_null() -> None:
    rec = {"kind": "region", "energy_j": 1e308, "co2_g": 1e308 * 10, "nested": [[[math.nan]]]}
    line = dumps(rec)
    assert line.endswith("\n") and "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {
        "kind": "region",
        "energy_j": 1e308,
        "co2_g": None,
        "nested": [[[None]]],
    }


def test_json_safe_bounds_nesting() -> None:
    deep: list[Any] = []
    cur = deep
    for _ in range(10_000):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    out = json.loads(dumps({"deep": deep}))
    depth = 0
    node: Any = out["deep"]
    while isinstance(node, list) and node:
        node = node[0]
        depth += 1
    assert node == "<nested too deeply>" and depth < 100
    assert json_safe({"ok": [1, 2.5, "x", None, True]}) == {"ok": [1, 2.5, "x", None, True]}

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
        assert math.isfinite(m.energy_j) and m.recorded is True
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


# ----------------------------------------------------------------------- item 11: output paths


def test_a_fifo_as_output_warns_once_and_never_hangs(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    carbonctx.configure(output=str(fifo))
    # Opening a FIFO for writing used to wait for a reader: this region never began.
    with pytest.warns(carbonctx.CarbonctxWarning, match="FIFO") as caught:
        with carbonctx.track("first") as m:
            pass
        for _ in range(3):
            with carbonctx.track("more"):
                pass
    assert len([w for w in caught if "FIFO" in str(w.message)]) == 1
    assert math.isfinite(m.energy_j) and m.energy_j > 0
    assert m.recorded is False  # the result says its record was not written
    assert "FIFO" in carbonctx.devices()["notes"]["output"]


def test_a_directory_as_output_warns_and_measures(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    carbonctx.configure(output=str(tmp_path))
    with pytest.warns(carbonctx.CarbonctxWarning, match="regular file"), carbonctx.track("x") as m:
        pass
    assert m.recorded is False and m.energy_j > 0


def test_a_removed_output_directory_stops_recording_with_one_warning(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    path = out_dir / "regions.jsonl"
    carbonctx.configure(output=str(path))
    with carbonctx.track("before") as before:
        pass
    assert before.recorded is True
    assert [r["name"] for r in regions(path)] == ["before"]
    path.unlink()
    out_dir.rmdir()
    with carbonctx.track("after") as after:
        pass
    assert after.recorded is False  # not silently written into the removed file
    with pytest.warns(carbonctx.CarbonctxWarning, match="was removed") as caught:
        for _ in range(3):
            with carbonctx.track("later") as later:
                pass
    assert len(caught) == 1
    assert later.recorded is False
    assert not out_dir.exists()  # nothing recreated behind the user's back


def test_a_write_error_stops_recording_with_one_warning(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    path = tmp_path / "regions.jsonl"
    carbonctx.configure(output=str(path))
    with carbonctx.track("ok") as ok:
        pass
    assert ok.recorded is True
    rec = _runtime.runtime().recorder
    assert rec is not None
    # The disk fills up: the descriptor now writes to /dev/full (ENOSPC).
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, rec._fd)  # type: ignore[arg-type]
    finally:
        os.close(full)
    with carbonctx.track("full") as m:
        pass
    assert m.recorded is False and m.energy_j > 0
    with pytest.warns(carbonctx.CarbonctxWarning, match="cannot write regions") as caught:
        for _ in range(3):
            with carbonctx.track("later"):
                pass
    assert len(caught) == 1


# ----------------------------------------------------------------------- item 6: traces


def test_write_trace_says_what_it_covers_and_warns_once_when_regions_were_dropped(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    carbonctx.configure(window=50)

    @carbonctx.tracked
    def step() -> None:
        pass

    for epoch in range(5):
        with carbonctx.track("epoch", tags={"epoch": epoch}):
            for _ in range(20):
                step()
    trace = tmp_path / "t.json"
    with pytest.warns(carbonctx.CarbonctxWarning, match="most recent 50 of 105 regions"):
        carbonctx.write_trace(str(trace))
    doc = json.loads(trace.read_text())
    cover = doc["otherData"]
    assert cover["regions"] == 50 and cover["regions_ended"] == 105 and cover["dropped"] == 55
    assert "window" in cover["note"]
    assert len([e for e in doc["traceEvents"] if e["ph"] == "X"]) == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        carbonctx.write_trace(str(trace))  # said once


def test_write_trace_of_every_region_says_so_without_warning(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    for _ in range(3):
        with carbonctx.track("epoch"):
            pass
    trace = tmp_path / "t.json"
    carbonctx.write_trace(str(trace))
    cover = json.loads(trace.read_text())["otherData"]
    assert cover["regions"] == cover["regions_ended"] == 3 and "dropped" not in cover


UPDATE_NS = 100_000_000


def test_the_first_trace_power_point_is_not_inflated(tmp_path: Path) -> None:
    """The timeline's baseline is stamped when first read while the counter's value dates from
    its last update: with a counter that moves every 100 ms, power taken against it read up to
    ten times the wave's highest level. Each of several fresh samplers must start right."""
    with SimulatedMachine(
        tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=None, update_period_s=0.1
    ) as sim:
        carbonctx.configure(**sim.settings())
        for attempt in range(5):
            carbonctx.configure(window=10)  # a fresh runtime and sampler each time
            # Start late in an update period, so that the baseline's value is old: the
            # counter moves at sim.t0_ns + k * 100 ms.
            phase = (_native.now_ns() - sim.t0_ns) % UPDATE_NS
            time.sleep(((UPDATE_NS * 7 // 10 - phase) % UPDATE_NS) * 1e-9)
            with carbonctx.track("run"):
                # Three counter updates: two intervals between changes.
                rt = _runtime.runtime()
                assert rt.sampler is not None
                deadline = time.monotonic() + WAIT_S
                while len(rt.sampler.timeline(0, 0, 100)) < 4:
                    assert time.monotonic() < deadline, "the simulated counter stopped moving"
                    time.sleep(0.01)
            doc = _runtime.runtime().trace()
            watts = [
                e["args"]["powercap:intel-rapl:0"]
                for e in doc["traceEvents"]
                if e["ph"] == "C" and "powercap:intel-rapl:0" in e["args"]
            ]
            assert watts, attempt
            # Over whole update periods the wave averages between its levels.
            assert all(40 * 0.8 <= w <= 120 * 1.1 for w in watts), (attempt, watts)
    _runtime.reset()


# ----------------------------------------------------------------------- items 8 and 9: settings


@pytest.mark.parametrize("seconds", [2e19, 1e300, math.inf, math.nan, 3601.0, 0.0, -1.0])
def test_intervals_no_sampler_can_use_are_refused_up_front(seconds: float) -> None:
    with pytest.raises(carbonctx.ConfigurationError, match=r"intervals\['powercap'\]"):
        carbonctx.configure(intervals={"powercap": seconds})


@pytest.mark.parametrize("value", ["powercap=2e22", "powercap=inf", "nvml=nan", "nvml=4e6"])
def test_interval_variables_no_sampler_can_use_are_refused_up_front(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARBONCTX_INTERVALS", value)
    with pytest.raises(carbonctx.ConfigurationError, match=r"CARBONCTX_INTERVALS.*at most"):
        carbonctx.configure()


@pytest.mark.parametrize("gpu", [0, 1, "no", 0.0])
def test_gpu_must_be_a_bool(gpu: object) -> None:
    with pytest.raises(carbonctx.ConfigurationError, match=r"gpu=.*True or False"):
        carbonctx.configure(gpu=gpu)


def test_without_a_sampler_results_say_so_and_never_raise(
    cpu_sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampler that cannot start (here: the native side refuses its arguments) costs the
    figures, never the program: one warning, results full of NaN, missing says why."""

    def refuse(**kwargs: Any) -> None:
        raise carbonctx.SamplerError("the sampler refused to start (simulated)")

    monkeypatch.setattr(_native, "Sampler", refuse)
    with pytest.warns(carbonctx.CarbonctxWarning, match="could not start"):
        with carbonctx.track("x", tags={"k": 1}) as m:
            pass
        assert m.missing == ("sampler",)
        assert math.isnan(m.energy_j) and math.isnan(m.duration_s) and m.co2_g is None
        assert m.result().tags == {"k": 1} and m.by_source == {}
    # strict still raises
    with pytest.raises(carbonctx.SamplerError, match="refused"), carbonctx.track("y", strict=True):
        pass


# ----------------------------------------------------------------------- item 15: friction


def configure_nothing_to_measure(empty: Path, **settings: Any) -> None:
    """Configures a machine with nothing to measure with (no sysfs, devices, /proc or NVML
    under the new, empty folder `empty`; no estimate), and `settings`."""
    empty.mkdir()
    carbonctx.configure(
        sys_root=str(empty),
        dev_root=str(empty),
        proc_root=str(empty),
        nvml_library=str(empty / "none.so"),
        estimate="never",
        **settings,
    )


def test_warnings_point_at_the_users_line(tmp_path: Path) -> None:
    """A region entered inside carbonctx's own code (a decorated function with tags goes
    through a `with` in the decorator) warns at the user's call, not at carbonctx's file."""
    configure_nothing_to_measure(tmp_path / "empty")

    @carbonctx.tracked(tags={"k": 1})
    def step() -> None:
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _line() + 1
        step()
    (w,) = [w for w in caught if issubclass(w.category, carbonctx.CarbonctxWarning)]
    assert "no energy source" in str(w.message)
    assert (w.filename, w.lineno) == (__file__, line)


def _line() -> int:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_the_demo_writes_a_fresh_file_each_run(tmp_path: Path) -> None:
    from carbonctx._cli.demo import run_demo

    out = tmp_path / "demo.jsonl"
    out.write_text('{"kind": "region", "name": "an earlier run"}\n')
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", carbonctx.CarbonctxWarning)
            assert run_demo(steps=3, epochs=1, simulate="yes", output=str(out), trace=None) == 0
    names = [r["name"] for r in regions(out)]
    assert names.count("epoch") == 1 and names.count("train_step") == 3
    assert "an earlier run" not in names

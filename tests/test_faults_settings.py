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


def test_exit_records_the_current_runtime_when_a_replaced_one_fails_to_close(
    cpu_sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime replaced by configure() that fails at exit (its output's disk is full) does
    not cost the runtime in use its records: each is shut down, the failure said on stderr."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    carbonctx.configure(output=str(a))
    entered, leave = threading.Event(), threading.Event()

    def work() -> None:
        with carbonctx.track("long"):
            entered.set()
            leave.wait(20)

    th = threading.Thread(target=work, daemon=True)
    th.start()
    assert entered.wait(10)
    carbonctx.configure(output=str(b))
    with carbonctx.track("after"):
        pass
    assert _runtime._RETIRING
    old = _runtime._RETIRING[-1]
    assert old.recorder is not None

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(old.recorder, "close", full)
    try:
        _runtime._at_exit(summary=False)
    finally:
        leave.set()
        th.join(20)
        monkeypatch.setattr(_runtime, "_EXITING", False)
    assert names(b) == ["after"]


# ----------------------------------------------------------------------- item 13: validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output": 123}, "output=123: give a path"),
        ({"output": b"x.jsonl"}, "give a path"),
        ({"cache_dir": 5}, "cache_dir=5: give a path"),
        ({"strict": "no"}, "strict='no': give True or False"),
        ({"strict": 0}, "give True or False"),
        ({"summary_at_exit": "no"}, "give True or False"),
        ({"window": True}, "window=True"),
        ({"zone": "Narnia"}, "is not a zone code"),
        ({"zone": 5}, "zone=5: give a string"),
        ({"electricitymaps_token": 5}, "give a string"),
        ({"urls": {"gb": 5}}, "give a mapping of provider id to base URL"),
        ({"urls": "http://127.0.0.1"}, "give a mapping"),
        ({"providers": "gb,narnia"}, "unknown provider 'narnia'"),
        ({"cpu_backends": "powercap,rapl"}, "unknown value 'rapl'"),
        ({"intervals": [("nvml", 0.02)]}, "give a mapping of backend to seconds"),
        ({"gpus": 1.5}, "give a list of device numbers"),
        # Named providers without the credential their service requires, as for watttime.
        ({"providers": "electricitymaps"}, "needs CARBONCTX_ELECTRICITYMAPS_TOKEN"),
        ({"providers": ["gb", "entsoe"]}, "needs CARBONCTX_ENTSOE_TOKEN"),
        ({"providers": "eia"}, "needs CARBONCTX_EIA_KEY"),
        ({"providers": "watttime"}, "needs CARBONCTX_WATTTIME_USERNAME"),
    ],
)
def test_bad_settings_are_refused_by_configure_not_at_the_first_region(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(carbonctx.ConfigurationError, match=match):
        carbonctx.configure(**kwargs)


@pytest.mark.parametrize(
    "key",
    [
        "electricitymaps_token",
        "entsoe_token",
        "eia_key",
        "watttime_username",
        "watttime_password",
        "redfish_user",
        "redfish_password",
    ],
)
def test_a_credential_of_the_wrong_type_is_refused_without_being_quoted(key: str) -> None:
    # bytes where text belongs (a token read from a file in binary mode): refused as a
    # ConfigurationError naming the setting, never showing the secret.
    with pytest.raises(carbonctx.ConfigurationError, match=f"{key}: give a string") as e:
        carbonctx.configure(**{key: b"s3cr3t-value"})
    assert "s3cr3t" not in str(e.value)
    with pytest.raises(carbonctx.ConfigurationError, match=f"{key}: give a string"):
        carbonctx.configure(**{key: 12345})


def test_a_provider_behind_a_proxy_may_go_without_its_token() -> None:
    s = carbonctx.configure(
        providers="electricitymaps", urls={"electricitymaps": "http://127.0.0.1:9"}
    )
    assert s.providers == ("electricitymaps",)
    assert carbonctx.configure(providers="eia", eia_key="k").providers == ("eia",)


def test_a_bad_zone_variable_is_refused_like_the_other_carbon_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CARBONCTX_ZONE", "Narnia")
    with pytest.raises(carbonctx.ConfigurationError, match="CARBONCTX_ZONE='Narnia'"):
        carbonctx.configure(gpu=False)
    monkeypatch.setenv("CARBONCTX_ZONE", "DE")
    monkeypatch.setenv("CARBONCTX_PUE", "0.5")
    with pytest.raises(carbonctx.ConfigurationError, match="CARBONCTX_PUE"):
        carbonctx.configure(gpu=False)


def test_one_name_is_one_item_not_its_letters(tmp_path: Path) -> None:
    s = carbonctx.configure(
        providers="gb", cpu_backends="powercap", output=tmp_path / "o.jsonl", cache_dir=tmp_path
    )
    assert s.providers == ("gb",)
    assert s.cpu_backends == ("powercap",)
    assert s.output == str(tmp_path / "o.jsonl") and s.cache_dir == str(tmp_path)
    s = carbonctx.configure(providers=["GB", "dk", "gb"], cpu_backends=("msr", "perf"))
    assert s.providers == ("gb", "dk") and s.cpu_backends == ("msr", "perf")


def test_decorators_over_classmethods_and_staticmethods_measure_them(
    cpu_sim: SimulatedMachine,
) -> None:
    class Model:
        scale = 3

        @carbonctx.tracked
        @classmethod
        def step(cls, x: int) -> int:
            return cls.scale * x

        @carbonctx.tracked(name="helper")
        @staticmethod
        def helper(x: int) -> int:
            return x + 1

        @carbonctx.track("load")
        @classmethod
        def load(cls) -> type:
            return cls

    assert Model.step(2) == 6 and Model().step(3) == 9
    assert Model.helper(1) == 2 and Model().helper(2) == 3
    assert Model.load() is Model
    st = carbonctx.stats()
    assert st[next(k for k in st if k.endswith("Model.step"))].count == 2
    assert st["helper"].count == 2 and st["load"].count == 1


@pytest.mark.parametrize("thing", [property(lambda self: 1), 5, "name"])
def test_decorating_what_is_no_function_fails_at_once(thing: Any) -> None:
    with pytest.raises(TypeError, match="decorate"):
        carbonctx.tracked(thing)
    with pytest.raises(TypeError, match="decorate"):
        carbonctx.tracked(name="x")(thing)
    with pytest.raises(TypeError, match="decorate"):
        carbonctx.track("x")(thing)

"""The metrics exporters' meter reads the named regions that ended since its last read from the
recent window: those without an id of their own (a `@tracked` call or a step's entry with output
off: id 0) are told apart too."""

from __future__ import annotations

from typing import Any

import pytest

import carbonctx
from carbonctx._results.counted import counted_domain
from carbonctx.integrations._meter import KINDS, Meter
from carbonctx.testing import SimulatedMachine


def test_regions_without_an_id_are_read_once_each(sim: SimulatedMachine) -> None:
    handle = carbonctx.step("s")

    @carbonctx.tracked(name="f")
    def f() -> None:
        pass

    meter = Meter(interval=3600)  # read by hand below, not started
    for _ in range(3):
        for _ in range(5):
            with handle:
                pass
            f()
        assert carbonctx.flush()
        meter._read_named()
        window = carbonctx.recent()
        assert {m.id for m in window} == {0}  # spans: no id of their own
        for name in ("s", "f"):
            got = sum(v for (n, _, _), v in meter.devices.items() if n == name)
            want = sum(
                src.joules
                for m in window
                if m.name == name
                for src in m.by_source.values()
                if src.joules is not None and counted_domain(src) in KINDS
            )
            assert got > 0 and abs(got - want) <= 1e-9 * want


def _device_j(m: Any) -> float:
    return sum(
        src.joules
        for src in m.by_source.values()
        if src.joules is not None and counted_domain(src) in KINDS
    )


def _read_j(meter: Meter, name: str) -> float:
    return sum(v for (n, _, _), v in meter.devices.items() if n == name)


def test_a_runtime_made_and_replaced_between_two_reads_is_read(sim: SimulatedMachine) -> None:
    # configure() twice within one interval: the regions of the runtime in between are read.
    meter = Meter(interval=3600).start()
    try:
        with carbonctx.track("first"):
            pass
        meter.update()
        carbonctx.configure(window=50)
        with carbonctx.track("between") as between:
            pass
        carbonctx.configure(window=60)
        with carbonctx.track("last") as last:
            pass
        meter.update()
    finally:
        meter.stop()
    for name, handle in (("between", between), ("last", last)):
        want = _device_j(handle.result())
        assert want > 0 and _read_j(meter, name) == pytest.approx(want, rel=1e-9)


def test_a_region_open_across_configure_is_read_when_it_ends(sim: SimulatedMachine) -> None:
    # It is measured in the runtime it began in, which configure() replaced: that runtime is
    # read again, to its last region, after the reads have moved on to the new one.
    meter = Meter(interval=3600).start()
    try:
        with carbonctx.track("long") as long:
            carbonctx.configure(window=50)
            with carbonctx.track("inner"):
                pass
            meter.update()  # "long" is still open
        meter.update()
        meter.update()  # read once, not again
    finally:
        meter.stop()
    want = _device_j(long.result())
    assert want > 0 and _read_j(meter, "long") == pytest.approx(want, rel=1e-9)
    assert meter._retired == []  # its runtime is let go once it has shut down

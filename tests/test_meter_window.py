"""The metrics exporters' meter reads the named regions that ended since its last read from the
recent window: those without an id of their own (a `@tracked` call or a step's entry with output
off: id 0) are told apart too."""

from __future__ import annotations

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

"""When the BMC's readings stood: with ``redfish_lag_s`` set, a reading is placed at the instant
it stands for, not when it arrived, against the real HTTPS server (``redfish_server``) and the
real native sampler; without (the default), it is placed when read and nothing waits for the
BMC, and the result says so.

A power step served by a BMC that answers ``DELAY_S`` after it read its sensor: with the
sensor's ``ReadingTime`` the step is placed at that time (a region around it gets the energy of
the step where it happened), without one mid-request, and a ``ReadingTime`` hours off this
host's clock is not trusted (placed mid-request, said once in the result's note). A mean over a
window (``PowerMetrics.AverageConsumedWatts`` over ``IntervalInMin``) is placed at the window's
middle as far back as the feed's lag allows. Before this placement every reading stood where it
arrived: the step ``DELAY_S`` late, the mean ``lag_s`` late.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._bmc import Reading
from carbonctx._bmc.payload import _time
from carbonctx._bmc.timing import CLOCK_TOLERANCE_S, Fetch, place
from carbonctx._config import MAX_REDFISH_LAG_S, Settings, build, from_env
from carbonctx._measure import process as _process
from carbonctx._native import Sampler, now_ns
from carbonctx.errors import ConfigurationError

pytest.importorskip("cryptography")
from redfish_server import CHASSIS, RedfishServer
from test_redfish import NODE, cert, configure, machine, wait_for  # noqa: F401

SENSORS = f"{CHASSIS}/Sensors"
TOTAL = f"{SENSORS}/TotalPower"
LOW_W, HIGH_W = 200.0, 600.0
#: How long the BMC takes to answer after reading its sensor.
DELAY_S = 0.8
#: The BMC is read every 3 s: requests may take 3 s, and the feed lags ``LAG_S`` (the most
#: ``redfish_lag_s`` may be) where the placement is tested.
PERIOD_S = 3.0
LAG_S = MAX_REDFISH_LAG_S


def _iso(posix_s: float) -> str:
    when = datetime.datetime.fromtimestamp(posix_s, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds")


class Step:
    """A BMC whose power steps from LOW_W to HIGH_W at the first reading after ``arm()``;
    ``at``: when it read that reading (monotonic s), ``answered``: when it answered."""

    def __init__(self) -> None:
        self.armed = False
        self.at: float | None = None
        self.answered: float | None = None

    def arm(self) -> None:
        self.armed = True

    def watts(self, t: float) -> float:
        if self.armed and self.at is None:
            self.at = t
        return HIGH_W if self.at is not None else LOW_W

    def done(self) -> None:
        if self.at is not None and self.answered is None:
            self.answered = time.monotonic()


def sensor_server(
    cert: tuple[Path, Path],  # noqa: F811
    step: Step,
    stamp: Callable[[float], str | None],
) -> RedfishServer:
    """A chassis whose only reading is the ``TotalPower`` sensor, answered ``DELAY_S`` after it
    is read, with ``ReadingTime`` ``stamp(wall time of the reading)`` (None: not given)."""
    srv = RedfishServer(cert, layout="sensors")
    srv.docs[SENSORS] = {
        "@odata.id": SENSORS,
        "@odata.type": "#SensorCollection.SensorCollection",
        "Members@odata.count": 1,
        "Members": [{"@odata.id": TOTAL}],
    }

    def total(t: float) -> dict[str, Any]:
        wall = time.time() - (time.monotonic() - t)
        doc = {
            "@odata.id": TOTAL,
            "@odata.type": "#Sensor.v1_7_0.Sensor",
            "ReadingType": "Power",
            "ReadingUnits": "W",
            "PhysicalContext": "Chassis",
            "Reading": step.watts(t),
        }
        if (when := stamp(wall)) is not None:
            doc["ReadingTime"] = when
        time.sleep(DELAY_S)
        step.done()
        return doc

    srv.docs[TOTAL] = total
    return srv


def around_the_step(step: Step) -> tuple[float, float, float]:
    """A region from before the step to well after its answer: (measured J, start, end)."""
    rt = _process.runtime()
    bmc = rt.bmc
    assert bmc is not None
    with carbonctx.track("step") as t:
        t0 = time.monotonic()
        n = bmc.readings
        step.arm()
        wait_for(lambda: step.answered is not None and bmc.readings > n, "the step's reading")
        time.sleep(0.5)
        t1 = time.monotonic()
    node = t.result().by_source[NODE]
    assert node.joules is not None
    return node.joules, t0, t1


def step_error(joules: float, t0: float, t1: float, at: float) -> float:
    """The measured energy less that of a step at ``at`` in ``[t0, t1]``."""
    assert t0 < at < t1
    return joules - (LOW_W * (at - t0) + HIGH_W * (t1 - at))


def error_around_the_step(step: Step, later_s: float = 0.0) -> float:
    """A region around the step (see ``around_the_step``): its measured energy less that of
    a step ``later_s`` after the BMC's time of it."""
    joules, t0, t1 = around_the_step(step)
    assert step.at is not None
    return step_error(joules, t0, t1, step.at + later_s)


def warm_up(
    srv: RedfishServer,
    machine: Any,  # noqa: F811
    cert: tuple[Path, Path],  # noqa: F811
    lag_s: float | None = LAG_S,
) -> None:
    """Configured (``redfish_lag_s=lag_s``; None: left unset) and read twice."""
    kw = {} if lag_s is None else {"redfish_lag_s": lag_s}
    configure(srv, machine, cert, redfish_period_s=PERIOD_S, **kw)
    with carbonctx.track("warm-up"):
        pass
    bmc = _process.runtime().bmc
    assert bmc is not None and bmc.feed.lag_s == (lag_s or 0.0)
    wait_for(lambda: bmc.readings >= 2, "two BMC readings")


def behind_s() -> tuple[float, float]:
    """How far the node's timeline, and the sampler's frontier (up to where regions resolve),
    stand behind the newest point of the other sources (read by the same thread), in s."""
    rt = _process.runtime()
    s = rt.sampler
    assert isinstance(s, Sampler)
    since = now_ns() - 5 * 10**9
    newest = {
        src["backend"]: max((t for t, _ in s.timeline(i, since)), default=0)
        for i, src in enumerate(rt.sources)
    }
    node = newest.pop("redfish")
    frontier = s.stats()["frontier_ns"]
    others = max(newest.values())
    return (others - node) * 1e-9, (others - frontier) * 1e-9


# ---------------------------------------------------------------------------- the sampler


def test_a_step_is_placed_at_the_bmcs_reading_time(
    cert: tuple[Path, Path],  # noqa: F811
    machine: Any,  # noqa: F811
) -> None:
    # Placed at ReadingTime: off by the sampler's read spacing (0.1 s) and the time's
    # milliseconds, at most; where it arrived (the old placement) it is DELAY_S late, an
    # error of (HIGH_W - LOW_W) x 0.8 s = 320 J. The bound is a quarter of that.
    step = Step()
    with sensor_server(cert, step, _iso) as srv:
        warm_up(srv, machine, cert)
        err = error_around_the_step(step)
        assert abs(err) < (HIGH_W - LOW_W) * DELAY_S / 4, f"{err:.0f} J off"
        bmc = _process.runtime().bmc
        assert bmc is not None and bmc.basis == "reading-time" and bmc.skew_s is None
        assert "ReadingTime" in bmc.provenance() and "not trusted" not in bmc.provenance()
        assert "placed when read" not in bmc.provenance()
        assert bmc.feed.late == 0 and bmc.feed.clamped == 0
        # The price: the node's timeline, and with it every region's resolution, is kept the
        # lag behind the other sources (against the default's few tenths: the next test).
        node, frontier = behind_s()
        assert node > LAG_S - 0.5 and frontier > LAG_S - 0.5, (node, frontier)


def test_by_default_a_reading_is_placed_when_read_and_no_result_waits_for_it(
    cert: tuple[Path, Path],  # noqa: F811
    machine: Any,  # noqa: F811
) -> None:
    # redfish_lag_s unset: the feed has no lag, so the sampler's frontier (where regions
    # resolve) keeps up with its other sources as without a BMC; the step is placed where it
    # arrived (at least DELAY_S late: (HIGH_W - LOW_W) x 0.8 s = 320 J short), the ReadingTime
    # still read and the result saying both.
    step = Step()
    with sensor_server(cert, step, _iso) as srv:
        warm_up(srv, machine, cert, lag_s=None)
        rt = _process.runtime()
        assert rt.settings.redfish_lag_s == 0 and rt._lag_s() == 0.0  # no wait at exit
        node, frontier = behind_s()
        assert node < 1.0 and frontier < 1.0, (node, frontier)
        err = error_around_the_step(step)
        assert err < -(HIGH_W - LOW_W) * DELAY_S * 0.9, f"{err:.0f} J off"
        bmc = rt.bmc
        assert bmc is not None and bmc.feed.lag_s == 0.0 and bmc.basis == "reading-time"
        assert DELAY_S * 0.9 < bmc.moved_s < DELAY_S + 5.0, bmc.moved_s
        note = bmc.provenance()
        assert "placed when read" in note and "set redfish_lag_s" in note.lower(), note
        assert re.search(r"the latest stood \d\.\d s before it was read, at the time the BMC", note)
        assert bmc.source_dict is not None and bmc.source_dict["note"] == note
        info = bmc.describe()
        assert (info["lag_s"], info["placed_by"], info["stood_by"]) == (0.0, "read", "reading-time")
        assert bmc.feed.late == 0 and bmc.feed.clamped == 0


def test_a_reading_time_hours_off_is_not_trusted(
    cert: tuple[Path, Path],  # noqa: F811
    machine: Any,  # noqa: F811
) -> None:
    # A BMC clock three hours behind: placed mid-request instead (DELAY_S / 2 after the step
    # was read, give or take the request's own time), said once in the result's note.
    step = Step()
    with sensor_server(cert, step, lambda wall: _iso(wall - 3 * 3600)) as srv:
        warm_up(srv, machine, cert)
        err = error_around_the_step(step, DELAY_S / 2)
        assert abs(err) < (HIGH_W - LOW_W) * DELAY_S / 4, f"{err:.0f} J off"
        bmc = _process.runtime().bmc
        assert bmc is not None and bmc.basis == "request"
        assert bmc.skew_s is not None and -3 * 3600 - 5 < bmc.skew_s < -3 * 3600 + 5
        note = bmc.provenance()
        assert note.count("not trusted") == 1 and re.search(r"found -10[78]\d\d s off", note)
        assert bmc.source_dict is not None and bmc.source_dict["note"] == note


def test_without_a_reading_time_a_step_is_placed_mid_request(
    cert: tuple[Path, Path],  # noqa: F811
    machine: Any,  # noqa: F811
) -> None:
    step = Step()
    with sensor_server(cert, step, lambda wall: None) as srv:
        warm_up(srv, machine, cert)
        err = error_around_the_step(step, DELAY_S / 2)
        assert abs(err) < (HIGH_W - LOW_W) * DELAY_S / 4, f"{err:.0f} J off"
        bmc = _process.runtime().bmc
        assert bmc is not None and bmc.basis == "request" and bmc.skew_s is None
        assert "middle of its request" in bmc.provenance()


def test_a_mean_over_a_window_is_placed_back_as_far_as_the_lag_allows(
    cert: tuple[Path, Path],  # noqa: F811
    machine: Any,  # noqa: F811
) -> None:
    # AverageConsumedWatts over the last minute stands 30 s back, further than the feed's
    # 2 s lag: it is placed 1.8 s before it arrived (the lag less two of the sampler's reads),
    # where the old placement put it on arrival ((HIGH_W - LOW_W) x 1.8 s = 720 J off).
    step = Step()
    power = f"{CHASSIS}/Power"
    with RedfishServer(cert, layout="power") as srv:

        def doc(t: float) -> dict[str, Any]:
            w = step.watts(t)
            step.done()
            return {
                "@odata.id": power,
                "@odata.type": "#Power.v1_7_1.Power",
                "PowerControl": [{"PowerMetrics": {"IntervalInMin": 1, "AverageConsumedWatts": w}}],
            }

        srv.docs[power] = doc
        warm_up(srv, machine, cert)
        joules, t0, t1 = around_the_step(step)
        assert step.answered is not None
        err = step_error(joules, t0, t1, step.answered - 1.8)
        assert abs(err) < (HIGH_W - LOW_W) * 0.5, f"{err:.0f} J off"
        bmc = _process.runtime().bmc
        assert bmc is not None and bmc.basis == "request+window"
        assert 27.0 < bmc.moved_s < 30.0
        note = bmc.provenance()
        assert "mean over" in note and "placed 2 s back" in note and "lags changes" in note


# ---------------------------------------------------------------------------- the setting


@pytest.mark.parametrize("value", [-0.5, 2.5, math.nan, math.inf, "1", True])
def test_redfish_lag_s_out_of_range_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"redfish_lag_s=.*0 to 2 \(default 0"):
        build(None, {"redfish_lag_s": value}, env={})


def test_redfish_lag_s_from_its_variable() -> None:
    assert Settings().redfish_lag_s == 0
    assert build(None, {}, env={"CARBONCTX_REDFISH_LAG_S": "1.5"}).redfish_lag_s == 1.5
    assert from_env({"CARBONCTX_REDFISH_LAG_S": "0"}) == {"redfish_lag_s": 0.0}
    with pytest.raises(ConfigurationError, match=r"CARBONCTX_REDFISH_LAG_S='soon'.*0 to 2"):
        from_env({"CARBONCTX_REDFISH_LAG_S": "soon"})
    with pytest.raises(ConfigurationError, match=r"\(CARBONCTX_REDFISH_LAG_S\).*0 to 2"):
        build(None, {}, env={"CARBONCTX_REDFISH_LAG_S": "3"})


def test_the_lag_is_capped_by_the_request_deadline() -> None:
    # Read every second, a request may take 1 s: the timeline need not lag further.
    from carbonctx._bmc import BmcSource

    def lag(period_s: float, lag_s: float) -> float:
        src = BmcSource(
            "https://127.0.0.1:9",
            None,
            None,
            verify=True,
            period_s=period_s,
            note=lambda key, text: None,
            lag_s=lag_s,
        )
        return src.feed.lag_s

    assert (lag(1.0, 2.0), lag(5.0, 2.0), lag(5.0, 0.5), lag(5.0, 0.0)) == (1.0, 2.0, 0.5, 0.0)


# ---------------------------------------------------------------------------- placement


def test_reading_times_are_trusted_within_the_request_and_a_tolerance() -> None:
    f = Fetch(10_000_000_000, 10_400_000_000, offset_ns=1_700_000_000_000_000_000)
    wall = lambda mono_ns: (mono_ns + f.offset_ns) * 1e-9  # noqa: E731
    mid = place(Reading(300.0), f)
    assert (mid.at_ns, mid.basis, mid.skew_s) == (10_200_000_000, "request", None)
    inside = place(Reading(300.0, read_at=wall(9_000_000_000)), f)
    assert inside.basis == "reading-time" and abs(inside.at_ns - 9_000_000_000) < 1_000
    edge = round(CLOCK_TOLERANCE_S * 1e9) + 1_000_000
    for off in (f.started_ns - edge, f.done_ns + edge, f.done_ns + 3600 * 10**9):
        far = place(Reading(300.0, read_at=wall(off)), f)
        assert far.basis == "request" and far.at_ns == 10_200_000_000
        assert far.skew_s is not None and abs(far.skew_s) > CLOCK_TOLERANCE_S
    mean = place(Reading(300.0, window_s=60.0, read_at=wall(10_300_000_000)), f)
    assert mean.basis == "reading-time+window"
    assert abs(mean.at_ns - (10_300_000_000 - 30 * 10**9)) < 1_000
    searched = place(Reading(300.0), Fetch(1, 5, searched=True))
    assert searched.at_ns == 5


def test_reading_times_are_read_with_their_offset() -> None:
    assert _time("2026-11-30T07:32:49Z") == _time("2026-11-30T08:32:49+01:00")
    assert _time("2026-11-30T07:32:49.250+00:00") == pytest.approx(1796023969.25)
    assert _time("2026-11-30T02:32:49.2500001-05:00") == pytest.approx(1796023969.25)
    assert _time("2026-11-30T07:32:49.5Z") == pytest.approx(1796023969.5)
    assert _time("2026-11-30T13:02:49+05:30") == _time("2026-11-30T07:32:49Z")
    # No offset (a local time of unknown zone, which DateTimeOffset does not allow), or a leap
    # second (which POSIX time cannot hold): no time; the reading is placed mid-request.
    for bad in ("2026-11-30T07:32:49", "2016-12-31T23:59:60Z", "yesterday", "", None, 5):
        assert _time(bad) is None


# ---------------------------------------------------------------------------- at exit


@pytest.mark.parametrize("lag_s", [LAG_S, None])
def test_a_region_ending_at_exit_keeps_the_bmcs_last_seconds(
    cert: tuple[Path, Path],  # noqa: F811
    machine: Any,  # noqa: F811
    lag_s: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With redfish_lag_s=2 the node's timeline is kept 2 s behind the sampler's reads: a
    # region that ends just before the process leaves (the atexit shutdown stops the sampler
    # at once) must still get the BMC's power up to its end, not its timeline's end (2 s x
    # LOW_W = 400 J short, and said nowhere): the exit waits for it. Without a lag there is
    # nothing to wait for, and nothing lost.
    # The exit runs once per process: each run here is a process's first (and later tests'
    # exits are not skipped).
    monkeypatch.setattr(_process, "_EXITING", False)
    step = Step()
    with sensor_server(cert, step, _iso) as srv:
        warm_up(srv, machine, cert, lag_s=lag_s)
        assert _process.runtime()._lag_s() == (lag_s or 0.0)
        with carbonctx.track("last") as t:
            time.sleep(2.5)
        _process._at_exit(summary=False)  # what the interpreter's exit runs
        m = t.result(timeout=0.0)
        node = m.by_source[NODE]
        assert node.joules is not None
        assert abs(node.joules - LOW_W * m.duration_s) < LOW_W * 0.5, (
            f"{node.joules:.0f} J over {m.duration_s:.2f} s"
        )

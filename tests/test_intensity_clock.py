"""The system clock set back while a process runs (by hand, or NTP correcting a skew): a back-off
or a request limit keeps the time it had left, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, closed_port_url, service

TOKEN = "em-T0ken-7f3a9c"


def make(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, provider: str
) -> IntensityService:
    zone = {"electricitymaps": "DE", "gb": "GB", "dk": "DK-DK1"}[provider]
    return service(
        server,
        tmp_path,
        client,
        clock,
        zone=zone,
        providers=[provider],
        electricitymaps_token=TOKEN,
    )


def test_a_backoff_keeps_the_time_it_had_left_when_the_clock_is_set_back(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/intensity/"] = "500"
    s = make(server, tmp_path, client, clock, "gb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntensityWarning)
        s.refresh(wait=True)
    assert server.count("/intensity/") == 1
    clock.advance(-2 * 3600)  # two hours back: the 60 s back-off must not become 2 h
    s.refresh(wait=True)
    assert server.count("/intensity/") == 1  # still within its 60 s
    server.modes.clear()
    clock.advance(61)
    s.refresh(wait=True)
    assert server.count("/intensity/") == 2
    assert s.current().source == "live"


def test_a_clock_set_back_by_days_keeps_the_backoff_without_a_false_warning(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/intensity/"] = "500"
    s = make(server, tmp_path, client, clock, "gb")
    with pytest.warns(IntensityWarning, match="HTTP 500"):
        s.refresh(wait=True)
    clock.advance(-3 * 86400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # this process's own file is no "unusable cache"
        s.refresh(wait=True)
        assert server.count("/intensity/") == 1
        server.modes.clear()
        clock.advance(61)
        s.refresh(wait=True)
    assert server.count("/intensity/") == 2 and s.current().source == "live"


@pytest.mark.parametrize("step_s", [0.5, 600.0])
def test_dk_request_limit_is_not_stretched_by_a_clock_set_back_nor_broken(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, step_s: float
) -> None:
    # One request per dataset per minute from an address. After the clock is set back (by an
    # NTP step of half a second, or by ten minutes) how long ago the last request was is
    # unknown: it may have been a moment ago, so the minute counts from the step; it is not
    # stretched by the step either.
    s = make(server, tmp_path, client, clock, "dk")
    s.refresh(wait=True)
    assert server.count("/dataset/CO2Emis") == 1
    clock.advance(-step_s)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # held back, not a failure
        s.refresh(wait=True)
    assert server.count("/dataset/CO2Emis") == 1  # not asked again within the minute
    held = s.current()
    assert held.provider == "dk" and held.source == "cached"  # what came, meanwhile
    clock.advance(61)
    s.refresh(wait=True, force=True)  # a minute after the step: asked, not held 11 minutes
    assert server.count("/dataset/CO2Emis") == 2
    assert s.current().source == "live"


@pytest.mark.parametrize("back_h", [2, 8])
def test_em_refused_history_is_asked_again_after_its_hold_despite_a_clock_set_back(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, back_h: int
) -> None:
    server.modes["/v3/carbon-intensity/history"] = "403"
    s = make(server, tmp_path, client, clock, "electricitymaps")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntensityWarning)
        s.refresh(wait=True)
        assert server.count("/history") == 1
        clock.advance(-back_h * 3600)  # the hour's hold would have become three, or nine
        s.refresh(wait=True, force=True)
    assert server.count("/history") == 2


def test_a_backoff_written_before_the_clock_was_set_back_is_not_stretched_in_a_new_process(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # A process that failed and ended before the clock went back (NTP correcting a clock that
    # ran hours ahead) left its back-off on disk; the next process reads it after the step.
    gone = service(
        None, tmp_path, client, clock, zone="GB", providers=["gb"], urls={"gb": closed_port_url()}
    )
    with pytest.warns(IntensityWarning, match="could not connect"):
        gone.refresh(wait=True)
    gone.close()
    clock.advance(-5 * 3600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clock step is no damaged file
        s = make(server, tmp_path, client, clock, "gb")
        s.refresh(wait=True)
        assert server.count("/intensity/") == 0  # its 60 s back-off holds
        clock.advance(61)
        s.refresh(wait=True)  # not five hours and a minute
    assert server.count("/intensity/") == 1 and s.current().source == "live"

"""Providers' documented "nothing to give" answers, against the local server speaking their
formats: each is a failure that is said once (no-data), never a silent empty success and never
a "malformed" answer, and the lookup falls back as for any failure."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, service

TOKEN = "em-T0ken-7f3a9c"


def make(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, provider: str
) -> IntensityService:
    zone = {"electricitymaps": "DE", "gb": "GB"}[provider]
    return service(
        server, tmp_path, client, clock, zone=zone, providers=[provider],
        electricitymaps_token=TOKEN,
    )  # fmt: skip


def failure_kind(s: IntensityService, kind: str = "recent") -> str | None:
    f = s._series[kind].failure
    return None if f is None else f.kind


def test_gb_answer_without_data_is_no_data(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # The API answers {"data": []} for a window it has nothing for.
    server.modes["/intensity/"] = "empty"
    s = make(server, tmp_path, client, clock, "gb")
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True, forecast=True)
    said = sorted(str(w.message) for w in rec)
    assert len(said) == 2
    assert "no intensity values for GB" in said[0] and "no forecast values for GB" in said[1]
    assert failure_kind(s) == "no-data" and failure_kind(s, "forecast") == "no-data"
    assert s.current().source == "table"
    assert s.forecast(clock(), clock() + 3600) is None
    # values again: live, and the failure forgotten
    server.modes.clear()
    clock.advance(3 * 3600)
    s.refresh(wait=True)
    assert s.current().source == "live" and failure_kind(s) is None


def test_em_latest_without_a_value_is_no_data(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # A zone Electricity Maps knows, with "carbonIntensity": null for now.
    server.value = lambda provider, t: None  # type: ignore[assignment,return-value]
    s = make(server, tmp_path, client, clock, "electricitymaps")
    with pytest.warns(IntensityWarning, match="Electricity Maps latest: no value for DE now"):
        s.refresh(wait=True)
    assert failure_kind(s) == "no-data"
    assert s.current().source == "table"


def test_em_empty_forecast_is_no_data(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/carbon-intensity/forecast"] = "empty"
    s = make(server, tmp_path, client, clock, "electricitymaps")
    with pytest.warns(IntensityWarning, match="forecast: no values for DE") as rec:
        s.refresh(wait=True, forecast=True)
    assert len(rec) == 1
    assert failure_kind(s, "forecast") == "no-data" and failure_kind(s) is None
    assert s.current().source == "live"  # the latest value is untouched


def test_em_direct_emission_factors_are_said_in_the_result(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # Lifecycle is the default; an account set to direct emissions answers with those.
    server.em_factor_type = "direct"
    s = make(server, tmp_path, client, clock, "electricitymaps")
    s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "live" and "direct emissions, not lifecycle" in cur.dataset
    r = s.co2(3.6e6, clock() - 7200, clock())
    assert all("direct emissions" in p.dataset for p in r.periods)
    server.em_factor_type = "lifecycle"
    s2 = make(server, tmp_path / "2", client, clock, "electricitymaps")
    s2.refresh(wait=True)
    assert "direct" not in s2.current().dataset


def test_em_estimated_hours_name_their_estimation_method(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # The current hour is not measured yet: Electricity Maps answers it with "isEstimated":
    # true and the method ("TIME_SLICER_AVERAGE", a nowcast); measured hours have neither.
    server.em_estimated = "TIME_SLICER_AVERAGE"
    s = make(server, tmp_path, client, clock, "electricitymaps")
    s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "live" and cur.is_estimated is True
    assert "(estimated: TIME_SLICER_AVERAGE)" in cur.dataset
    past = [p for p in s.co2(3.6e6, clock() - 7200, clock()).periods if p.valid_to is not None]
    older = [p for p in past if p.valid_to.timestamp() <= clock() - 600]
    assert older and all(p.is_estimated is False and "estimated" not in p.dataset for p in older)


def test_em_an_estimation_method_of_control_characters_names_nothing(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # what is quoted of a provider's word is its printable part; none left, nothing is named
    server.em_estimated = "\x1b[2J\x07"
    s = make(server, tmp_path, client, clock, "electricitymaps")
    s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "live" and cur.is_estimated is True
    assert "\x1b" not in cur.dataset and "estimated: [2J" in cur.dataset
    server.em_estimated = "\x1b\x07\t"
    s2 = make(server, tmp_path / "2", client, clock, "electricitymaps")
    s2.refresh(wait=True)
    assert s2.current().is_estimated is True and "estimated" not in s2.current().dataset

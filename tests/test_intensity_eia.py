"""US EIA Open Data v2 (hourly generation by fuel per balancing authority) against a real HTTP
server on 127.0.0.1 that answers in its documented format, failures included."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.providers.entsoe import lifecycle_factors
from carbonctx._carbon.service import IntensityService
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, service

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 10, 40, tzinfo=UTC).timestamp()
KEY = "eia-K3y-0001"
# 600 MWh gas (490 g), 200 solar (48 g), 200 onshore wind (11 g); the battery left out
MIX = (600 * 490 + 200 * 48 + 200 * 11) / 1000


def make(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, **kw: object
) -> IntensityService:
    kw.setdefault("zone", "US-CAL-CISO")
    kw.setdefault("eia_key", KEY)
    return service(server, tmp_path, client, clock, **kw)


def test_hourly_generation_by_fuel_becomes_a_live_intensity(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock)
    assert s.provider_ids == ("eia",) and s.provider is not None
    s.refresh(wait=True)
    req = server.last("/v2/")
    assert req.query["facets[respondent][]"] == ["CISO"]
    assert req.query["frequency"] == ["hourly"] and req.query["data[0]"] == ["value"]
    assert req.query["end"] == ["2026-06-01T10"]
    cur = s.current()
    assert cur.provider == "eia" and cur.signal == "average"
    assert cur.g_per_kwh == pytest.approx(MIX)
    # Published three hours late; the newest hour (07:00, only gas so far) is left out, so the
    # value is for 05:00-06:00 (hour ending 06), and says how old it is.
    assert cur.valid_from == datetime(2026, 6, 1, 5, 0, tzinfo=UTC)
    assert cur.note is not None and "newest eia value is for 2026-06-01 05:00Z" in cur.note
    r = s.co2(3.6e6, clock() - 60, clock())
    assert r.co2_g == pytest.approx(MIX)
    assert "EIA-930" in r.periods[0].dataset


def test_bad_key_quotes_the_error_and_never_shows_the_key(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, eia_key="wrong-K3y-77")
    with pytest.warns(IntensityWarning, match="HTTP 403.*An invalid api_key was supplied") as rec:
        s.refresh(wait=True)
    message = str(rec[0].message)
    assert "CARBONCTX_EIA_KEY" in message and "wrong-K3y-77" not in message
    cache = "".join(p.read_text() for p in (tmp_path / "cache").glob("*"))
    assert "wrong-K3y-77" not in cache
    assert "wrong-K3y-77" not in repr(s.provider)
    # EIA has no plans: its 403 for a key is the credentials refused
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "auth" and "API_KEY_INVALID" in failure.reason
    assert "Check CARBONCTX_EIA_KEY." in message


def test_unknown_authority_has_no_data(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, zone="US-SW-XXXX")
    with pytest.warns(IntensityWarning, match="no complete hour of generation for XXXX"):
        s.refresh(wait=True)
    assert s.current().source == "table"
    assert make(server, tmp_path, client, clock, zone="DE").provider is None


def test_every_documented_energy_source_is_weighed_or_left_out_as_storage(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # EIA-930's energy sources: solar and wind with integrated batteries are solar and wind;
    # battery, pumped, other and unknown energy storage give back energy counted before.
    server.eia_mwh = {
        "NG": "600",
        "SUN": 120,
        "SNB": "80",
        "WND": 150,
        "WNB": 50,
        "BAT": 30,
        "PS": "40",
        "OES": 20,
        "UES": 10,
    }
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert cur.provider == "eia" and cur.source == "live"
    assert cur.g_per_kwh == pytest.approx(MIX)


def test_negative_net_generation_is_a_report_of_nothing_not_a_missing_one(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # EIA-930 reports net generation: solar plants draw a little at night, so SUN is below zero
    # in the dark hours. With four fuels, counting those hours as unreported would leave every
    # night hour short of 80% and push "now" back to the last sunlit hour.
    server.eia_mwh = {
        "NG": 600,
        "WND": 200,
        "WAT": "100",
        "SUN": lambda t: 300.0 if 14 <= t.hour <= 23 else "-4.5",
    }
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert (cur.provider, cur.source) == ("eia", "live")
    f = lifecycle_factors()
    assert cur.valid_from == datetime(2026, 6, 1, 5, 0, tzinfo=UTC)  # hour ending 06, night
    assert cur.g_per_kwh == pytest.approx((600 * f["B04"] + 200 * f["B19"] + 100 * f["B12"]) / 900)

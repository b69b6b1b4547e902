"""Live providers against a real HTTP server on 127.0.0.1 that answers in each one's format."""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx.errors import CarbonctxWarning, ConfigurationError, IntensityWarning
from intensity_server import FakeClock, FakeServer, closed_port_url, service

UTC = timezone.utc
# 2026-06-01 10:10 UTC: ten minutes into an hour, inside a half hour, on a 5-minute step.
T0 = datetime(2026, 6, 1, 10, 10, tzinfo=UTC).timestamp()
CLIENT_TIMEOUT = 0.3
TOKEN = "em-T0ken-7f3a9c"


def make(
    provider: str,
    url: str,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    **kw: object,
) -> IntensityService:
    zone = {"electricitymaps": "DE", "gb": "GB", "dk": "DK-DK1"}[provider]
    kw.setdefault("zone", zone)
    kw.setdefault("urls", {provider: url})
    return service(
        None,
        tmp_path,
        client,
        clock,
        providers=[provider],
        electricitymaps_token=TOKEN,
        **kw,
    )


def _cache_text(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / "cache").glob("*")))


# --------------------------------------------------------------------------- Electricity Maps


def test_em_live_value_is_used_cached_and_not_fetched_again_within_ttl(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 123.0
    s = make("electricitymaps", server.url, tmp_path, client, clock, background=True)
    s.refresh(wait=True)
    assert server.count("/latest") == 1 and server.count("/history") == 1
    req = server.last("/latest")
    assert req.headers["auth-token"] == TOKEN
    assert req.query == {"zone": ["DE"]}

    now = s.current()
    assert (now.g_per_kwh, now.source, now.provider, now.zone) == (
        123.0,
        "live",
        "electricitymaps",
        "DE",
    )
    assert now.dataset == "Electricity Maps v3 latest" and now.is_estimated is False
    assert now.valid_from == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)

    for _ in range(5):  # inside the TTL: no request, no background thread
        clock.advance(60)
        assert s.co2(3.6e6, clock() - 30, clock()).co2_g == pytest.approx(123.0)
    s._join_refresh()
    assert server.count("/latest") == 1

    # A second service (another process) finds the value on disk and does not ask either.
    s2 = make("electricitymaps", server.url, tmp_path, client, clock, background=True)
    assert s2.current().source == "live"
    s2._join_refresh()
    assert server.count("/latest") == 1

    # Past the TTL a lookup answers at once and refreshes in the background.
    clock.advance(3600)
    assert s.current().g_per_kwh == 123.0
    s._join_refresh()
    assert server.count("/latest") == 2
    s.close()
    s2.close()


def test_em_server_down_uses_cached_value_then_table(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 150.0
    make("electricitymaps", server.url, tmp_path, client, clock).refresh(wait=True)

    # The provider is gone (connection refused); a new run starts from the disk cache.
    clock.advance(3600)  # 11:10: the 10:00-11:00 value is past its TTL and its period
    down = make("electricitymaps", closed_port_url(), tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="could not connect") as rec:
        down.refresh(wait=True)
    assert TOKEN not in str(rec[0].message)
    cached = down.current()
    assert (cached.g_per_kwh, cached.source) == (150.0, "cached")
    assert cached.note is not None and "could not connect" in cached.note

    r = down.co2(3.6e6, clock() - 60, clock())
    assert r.co2_g == pytest.approx(150.0) and r.sources == ("cached",)

    clock.advance(7 * 3600)  # too old to stand in for now: the yearly table
    table = down.current()
    assert (table.source, table.g_per_kwh) == ("table", 342.06)
    assert table.note is not None and "could not connect" in table.note
    json.dumps(down.co2(1.0, clock() - 1, clock()).to_dict())


def test_time_weighted_co2_across_a_change_of_intensity(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    nine = datetime(2026, 6, 1, 9, 0, tzinfo=UTC).timestamp()
    server.value = lambda provider, t: 100.0 if t < nine else 300.0
    s = make("electricitymaps", server.url, tmp_path, client, clock)
    s.refresh(wait=True)
    # 15 minutes at 100 g/kWh, then 45 minutes at 300 g/kWh, 2 kWh spread evenly.
    r = s.co2(7.2e6, nine - 900, nine + 2700)
    assert r.intensity_g_per_kwh == pytest.approx((100 * 15 + 300 * 45) / 60)
    assert r.co2_g == pytest.approx(2 * 250.0)
    assert [p.g_per_kwh for p in r.periods] == [100.0, 300.0]
    assert [p.dataset for p in r.periods] == ["Electricity Maps v3 history"] * 2
    # A single-period region uses that period only.
    assert s.co2(3.6e6, nine + 60, nine + 120).intensity_g_per_kwh == 300.0


FAILURES = [
    ("401", "auth", "HTTP 401"),
    ("403", "forbidden", "HTTP 403"),
    ("429", "rate-limited", "HTTP 429"),
    ("500", "server", "HTTP 500"),
    ("malformed", "malformed", "not JSON"),
    ("unknown-zone", "unknown-zone", "zone not known"),
    ("timeout", "timeout", "timed out"),
]


@pytest.mark.parametrize(("mode", "kind", "text"), FAILURES)
def test_em_failures_warn_once_back_off_and_fall_back(
    mode: str,
    kind: str,
    text: str,
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
) -> None:
    server.modes["/v3/"] = mode
    s = make("electricitymaps", server.url, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match=text) as rec:
        s.refresh(wait=True)
    assert len(rec) == 1 and issubclass(rec[0].category, CarbonctxWarning)
    message = str(rec[0].message)
    assert TOKEN not in message and "zone DE" in message
    assert server.count("/latest") == 1

    fallback = s.current()
    assert fallback.source == "table" and fallback.g_per_kwh == 342.06
    assert fallback.note is not None and text in fallback.note and TOKEN not in fallback.note

    # Backed off: an immediate retry sends nothing.
    s.refresh(wait=True, force=True)
    assert server.count("/latest") == 1
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == kind
    delay = failure.until - clock()
    if mode == "429":
        assert delay == 7.0  # Retry-After honoured
    # After the back-off it tries again; the same failure does not warn twice
    # (warnings are errors in this suite, so a second warning would fail the test).
    clock.advance(delay + 1)
    s.refresh(wait=True)
    assert server.count("/latest") == 2
    second = s._series["recent"].failure
    assert second is not None and second.attempts == 2
    if kind not in ("unknown-zone",) and mode != "429":
        assert second.until - clock() == pytest.approx(2 * delay)  # exponential

    # The token is nowhere: reprs, results, cache files.
    assert TOKEN not in repr(s) and TOKEN not in repr(s.provider)
    assert TOKEN not in json.dumps(s.co2(1.0, clock() - 1, clock()).to_dict())
    assert TOKEN not in _cache_text(tmp_path)
    assert kind in _cache_text(tmp_path)  # failures are cached on disk too

    # Recovery: the server answers again, and live values come back after the back-off.
    server.modes.clear()
    clock.advance(second.until - clock() + 1)
    s.refresh(wait=True)
    assert s.current().source == "live"
    s.close()


def test_failure_backoff_is_shared_through_the_disk_cache(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "500"
    with pytest.warns(IntensityWarning):
        make("electricitymaps", server.url, tmp_path, client, clock).refresh(wait=True)
    make("electricitymaps", server.url, tmp_path, client, clock).refresh(wait=True)
    assert server.count() == 1


def test_em_forecast(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make("electricitymaps", server.url, tmp_path, client, clock)
    assert s.forecast(clock(), clock() + 6 * 3600) is None  # none fetched yet
    s.refresh(wait=True)  # forecast() asked for one: the refresh includes it
    fc = s.forecast(clock(), clock() + 6 * 3600)
    assert fc is not None and len(fc) == 7  # 10:00 .. 16:00 overlap 10:10 .. 16:10
    assert all(p.is_estimated and p.source == "live" for p in fc)
    assert fc[0].dataset == "Electricity Maps v3 forecast"
    assert server.count("/forecast") == 1


def test_background_thread_fetches_and_warnings_never_raise_from_lookups(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "500"
    s = make("electricitymaps", server.url, tmp_path, client, clock, background=True)
    first = s.current()  # starts the refresh; answers from the table at once
    assert first.source == "table"
    s._join_refresh()
    assert server.count("/latest") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = s.co2(3.6e6, clock() - 10, clock())  # the pending warning must not raise here
    assert r.periods[0].source == "table"
    assert r.periods[0].note is not None and "HTTP 500" in r.periods[0].note
    s.close()


# --------------------------------------------------------------------------- GB


def test_gb_actual_for_the_past_forecast_for_now(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 200.0
    s = make("gb", server.url, tmp_path, client, clock)
    s.refresh(wait=True, forecast=True)
    assert server.count("/intensity/2026-05-31T10:10Z/2026-06-01T10:10Z") == 1
    assert server.count("/intensity/2026-06-01T10:10Z/fw48h") == 1
    now = s.current()  # the current half hour has no actual yet: its forecast, marked
    assert (now.g_per_kwh, now.is_estimated, now.provider) == (205.0, True, "gb")
    assert "forecast" in now.dataset
    past = s.co2(3.6e6, T0 - 3600, T0 - 1800)  # 09:10-09:40: actuals
    assert past.intensity_g_per_kwh == 200.0
    assert all("actual" in p.dataset and p.is_estimated is False for p in past.periods)
    fc = s.forecast(T0, T0 + 3 * 3600)
    assert fc is not None and len(fc) == 7 and fc[0].g_per_kwh == 205.0


def test_gb_malformed_and_empty(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/intensity/"] = "malformed"
    s = make("gb", server.url, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="GB carbon intensity API: the answer is not JSON"):
        s.refresh(wait=True)
    assert s.current().source == "table"


# --------------------------------------------------------------------------- DK


def test_dk_values_and_request_shape(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 80.0 if t < T0 - 1800 else 120.0
    s = make("dk", server.url, tmp_path, client, clock, zone="DK-DK2")
    s.refresh(wait=True)
    req = server.last("/dataset/CO2Emis")
    assert json.loads(req.query["filter"][0]) == {"PriceArea": ["DK2"]}
    assert req.query["start"] == ["2026-05-31T10:10"] and req.query["timezone"] == ["UTC"]
    assert req.query["sort"] == ["Minutes5UTC ASC"]
    r = s.co2(3.6e6, T0 - 3600, T0 - 600)  # 09:10-10:00: 30 min at 80, then 20 min at 120
    assert r.intensity_g_per_kwh == pytest.approx((80 * 30 + 120 * 20) / 50)
    assert r.periods[0].dataset == "Energi Data Service CO2Emis (CC BY 4.0)"
    # CO2Emis lags by one step: the newest value stands in for now.
    now = s.current()
    assert (now.g_per_kwh, now.source) == (120.0, "live")
    assert now.note is not None and "newest dk value" in now.note


def test_dk_at_most_one_request_per_dataset_per_minute(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make("dk", server.url, tmp_path, client, clock)
    s.refresh(wait=True, force=True, forecast=True)
    clock.advance(30)
    s.refresh(wait=True, force=True, forecast=True)
    s.refresh(wait=True, force=True, forecast=True)

    def counts() -> tuple[int, int]:
        prog = server.count("/dataset/CO2EmisProg")
        return server.count("/dataset/CO2Emis") - prog, prog

    assert counts() == (1, 1)
    clock.advance(31)
    s.refresh(wait=True, force=True, forecast=True)
    assert counts() == (2, 2)
    fc = s.forecast(clock(), clock() + 3600)
    assert fc is not None and all(
        p.dataset.startswith("Energi Data Service CO2EmisProg") for p in fc
    )


def test_dk_no_records_is_reported(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/dataset/"] = "empty"
    s = make("dk", server.url, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="no CO2Emis records for DK1"):
        s.refresh(wait=True)
    assert s.current().g_per_kwh == 143.3  # Ember Denmark


def test_dk_request_limit_holds_back_a_retry_without_warning(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/dataset/"] = "429"
    server.retry_after = "5"
    s = make("dk", server.url, tmp_path, client, clock, background=True)
    with pytest.warns(IntensityWarning, match="HTTP 429"):
        s.refresh(wait=True)
    clock.advance(6)  # Retry-After has passed, but the last request was 6 s ago
    server.modes.clear()
    s.refresh(wait=True)  # held back by the one-request-per-minute limit: nothing sent
    assert server.count("/dataset/CO2Emis") == 1
    s.current()  # and lookups do not keep starting threads meanwhile
    assert s._thread is None
    clock.advance(60)
    assert s.current().source == "table"  # answers at once, refreshes in the background
    s._join_refresh()
    assert server.count("/dataset/CO2Emis") == 2
    assert s.current().source == "live"
    s.close()


def test_dk_429_from_another_process_at_the_address_holds_back_a_minute_not_five(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # The service takes one request per dataset per minute from an address and answers more
    # with 429, without Retry-After. This process kept to the minute, so another process at the
    # address asked: the minute passes, it is asked again then (doubling while it lasts), not
    # held 5 minutes by a ban the service does not document.
    server.modes["/dataset/"] = "429"
    server.retry_after = None
    s = make("dk", server.url, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="HTTP 429.*one request per dataset per minute"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "rate-limited"
    assert failure.until - clock() == pytest.approx(60.0)
    clock.advance(61)
    s.refresh(wait=True)  # still refused: asked once more, then twice as long
    assert server.count("/dataset/CO2Emis") == 2
    failure = s._series["recent"].failure
    assert failure is not None and failure.until - clock() == pytest.approx(120.0)
    server.modes.clear()
    clock.advance(60)
    s.refresh(wait=True)  # within the doubled back-off: nothing sent
    assert server.count("/dataset/CO2Emis") == 2
    clock.advance(61)
    s.refresh(wait=True)
    assert server.count("/dataset/CO2Emis") == 3 and s.current().source == "live"


def test_em_v4_beside_v3(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 210.0
    s = make("electricitymaps", server.url, tmp_path, client, clock, electricitymaps_api="v4")
    s.refresh(wait=True, forecast=True)
    req = server.last("/v4/carbon-intensity/latest")
    assert req.query == {"zone": ["DE"], "temporalGranularity": ["hourly"]}
    assert req.headers["auth-token"] == TOKEN
    assert server.count("/v3/") == 0 and server.count("/v4/carbon-intensity/history") == 1
    cur = s.current()
    assert cur.g_per_kwh == 210.0 and cur.dataset == "Electricity Maps v4 latest"
    fc = s.forecast(clock(), clock() + 3 * 3600)
    assert fc is not None and fc[0].dataset == "Electricity Maps v4 forecast"
    with pytest.raises(ConfigurationError, match="'v3' or 'v4'"):
        IntensityService(env={"CARBONCTX_ELECTRICITYMAPS_API": "v5"})

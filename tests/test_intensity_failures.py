"""Every way a live provider fails, as a user would expect it handled (issue 13, item 4):
against a real HTTP server on 127.0.0.1 that answers in Electricity Maps' format."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import stat
import time
import warnings
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx._cli.intensity import run
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, service
from test_intensity_cli import parse

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 10, 10, tzinfo=UTC).timestamp()
TOKEN = "em-T0ken-7f3a9c"
CLIENT_TIMEOUT = 0.5
# What Electricity Maps answers a free plan asking for more than ``latest``.
PLAN_REFUSAL = {
    "status": "error",
    "message": "Your plan does not include access to this endpoint for zone DE.",
}


def server_value(provider: str, t: float) -> float:
    """What the shared ``server`` fixture answers."""
    return 200.0


def make(
    server: FakeServer, tmp_path: Path, client: httpx.Client | None, clock: FakeClock, **kw: object
) -> IntensityService:
    kw.setdefault("zone", "DE")
    kw.setdefault("providers", ["electricitymaps"])
    kw.setdefault("electricitymaps_token", TOKEN)
    return service(server, tmp_path, client, clock, **kw)


def messages(rec: pytest.WarningsRecorder) -> list[str]:
    return [str(w.message) for w in rec if issubclass(w.category, IntensityWarning)]


# --------------------------------------------------------------------------- refused endpoints


def test_free_plan_latest_is_used_history_and_forecast_refusals_say_why(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/carbon-intensity/history"] = "403"
    server.modes["/v3/carbon-intensity/forecast"] = "403"
    server.error_body = PLAN_REFUSAL
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True, forecast=True)
    said = messages(rec)
    assert len(said) == 2, said  # one for history, one for the forecast
    history = next(m for m in said if "history" in m)
    assert "HTTP 403" in history and "Your plan does not include access" in history
    assert "The values that came are used" in history
    forecast = next(m for m in said if "forecast" in m and "history" not in m)
    assert "HTTP 403" in forecast and "Your plan does not include" in forecast
    assert all(TOKEN not in m for m in said)

    # The latest value counts, live; the current series is not backed off.
    cur = s.current()
    assert cur.source == "live" and cur.g_per_kwh == 200.0 and cur.dataset.endswith("latest")
    assert s._series["recent"].failure is None
    r = s.co2(3.6e6, clock() - 60, clock())
    assert r.co2_g == pytest.approx(200.0) and r.sources == ("live",)

    # Each hour latest is asked again (and works); history is held back an hour after its
    # first refusal, then two; the same refusal is not warned again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clock.advance(3601)
        s.refresh(wait=True)
        assert server.count("/latest") == 2 and server.count("/history") == 2
        clock.advance(3601)
        s.refresh(wait=True)
        assert server.count("/latest") == 3 and server.count("/history") == 2
        clock.advance(3601)
        s.refresh(wait=True)  # asked again, refused again: still not news
        assert server.count("/history") == 3

    # History comes back, then is refused again: that is news.
    del server.modes["/v3/carbon-intensity/history"]
    clock.advance(4 * 3600 + 1)
    s.refresh(wait=True)
    assert server.count("/history") == 4
    server.modes["/v3/carbon-intensity/history"] = "403"
    clock.advance(3601)
    with pytest.warns(IntensityWarning, match="history .*HTTP 403"):
        s.refresh(wait=True)


def test_cli_forecast_message_gives_the_providers_reason(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/carbon-intensity/forecast"] = "403"
    server.error_body = PLAN_REFUSAL | {"echo": TOKEN, "message": f"plan refused for {TOKEN}"}
    factory = functools.partial(make, server, tmp_path, client, clock)
    out = io.StringIO()
    with pytest.warns(IntensityWarning):
        code = run(parse("--zone", "DE", "--forecast"), service_factory=factory, out=out)
    text = out.getvalue()
    assert code == 1
    assert "no configured provider" not in text
    assert "No forecast: Electricity Maps forecast: HTTP 403" in text
    assert "plan refused for ***" in text and TOKEN not in text
    assert "Now: 200.0 gCO2e/kWh (live;" in text

    out = io.StringIO()
    args = parse("--zone", "DE", "--forecast", "--json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refusal is held in the cache: no new request
        assert run(args, service_factory=factory, out=out) == 1
    doc = json.loads(out.getvalue())
    assert doc["forecast"] is None and "HTTP 403" in doc["forecast_unavailable"]
    assert TOKEN not in out.getvalue()


def test_forecast_404_is_not_an_unknown_zone_and_leaves_latest_alone(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/carbon-intensity/forecast"] = "404"
    server.error_body = {"status": "error", "message": "Forecast is not available for DE."}
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="Forecast is not available for DE") as rec:
        s.refresh(wait=True, forecast=True)
    assert len(messages(rec)) == 1
    fc = s._series["forecast"].failure
    assert fc is not None and fc.kind == "http" and fc.until - clock() < 3600
    assert s._series["recent"].failure is None and s.current().source == "live"
    assert "not known" not in s.forecast_unavailable()


def test_history_timeout_keeps_the_latest_value(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/carbon-intensity/history"] = "timeout"
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="history .* timed out"):
        s.refresh(wait=True)
    assert s.current().source == "live" and s.current().g_per_kwh == 200.0


def test_unknown_zone_on_latest_still_backs_off_a_day(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "unknown-zone"
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match=r"zone not known: \"Zone 'DE' does not exist.\""):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "unknown-zone"
    assert failure.until - clock() == 86400.0


# --------------------------------------------------------------------------- warnings


def test_a_later_token_revocation_is_warned(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.error_body = {"status": "error", "message": "Invalid auth-token."}
    s = make(server, tmp_path, client, clock)
    server.modes["/v3/carbon-intensity/forecast"] = "401"
    with pytest.warns(IntensityWarning, match="forecast.*HTTP 401"):
        s.refresh(wait=True, forecast=True)
    assert s.current().source == "live"

    # Later the token is revoked: the current series fails the same way, and that is news.
    server.modes["/v3/"] = "401"
    clock.advance(3601)
    with pytest.warns(IntensityWarning, match="live carbon intensity .* HTTP 401") as rec:
        s.refresh(wait=True)
    said = messages(rec)
    assert len(said) == 1 and "Invalid auth-token." in said[0]
    assert "CARBONCTX_ELECTRICITYMAPS_TOKEN" in said[0] and TOKEN not in said[0]

    # Restored, then revoked again: warned again.
    del server.modes["/v3/"]
    clock.advance(2 * 3600 + 1)
    s.refresh(wait=True)
    assert s._series["recent"].failure is None
    server.modes["/v3/"] = "401"
    clock.advance(3601)
    with pytest.warns(IntensityWarning, match="HTTP 401"):
        s.refresh(wait=True)


# --------------------------------------------------------------------------- Retry-After


def _http_date(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "delay"),
    [
        ("inf", 3600.0),
        ("nan", 3600.0),
        ("1e12", 3600.0),
        ("-5", 1.0),
        ("120", 120.0),
        ("past", 1.0),
        ("future", 600.0),
        ("not a date", 60.0),
    ],
)
def test_retry_after_is_capped_and_read_safely(
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    header: str,
    delay: float,
) -> None:
    server.modes["/v3/"] = "429"
    server.retry_after = {
        "past": _http_date(T0 - 86400),
        "future": _http_date(T0 + 600),
    }.get(header, header)
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="HTTP 429"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "rate-limited"
    assert failure.until - clock() == pytest.approx(delay)
    clock.advance(delay + 1)
    s.refresh(wait=True)  # asked again once the (capped) delay is over
    assert server.count("/latest") == 2


# --------------------------------------------------------------------------- slow and huge answers


def test_a_byte_every_so_often_cannot_hold_a_request_past_its_deadline(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "slow"
    server.slow_interval = 0.1  # always faster than the client's read timeout (0.5 s)
    s = make(server, tmp_path, client, clock, deadline_s=1.0)
    t = time.monotonic()
    with pytest.warns(IntensityWarning, match="no complete answer within 1 s"):
        s.refresh(wait=True)
    assert time.monotonic() - t < 1.0 + 0.5 + 0.5
    assert s.current().source == "table"


def test_close_does_not_wait_for_a_slow_fetch(
    server: FakeServer, tmp_path: Path, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "slow"
    server.slow_interval = 0.1
    s = make(server, tmp_path, None, clock, deadline_s=3.0, background=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.current()  # starts the background fetch
        time.sleep(0.2)
        thread = s._thread
        assert thread is not None and thread.is_alive()
        t = time.monotonic()
        s.close()
        assert time.monotonic() - t < 1.5
        thread.join(5)  # the daemon ends within the request's deadline, closing its client
        assert not thread.is_alive()


@pytest.mark.parametrize("mode", ["huge", "huge-declared"])
def test_an_endless_answer_is_cut_at_the_size_limit(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, mode: str
) -> None:
    server.modes["/v3/"] = mode
    s = make(server, tmp_path, client, clock, deadline_s=10.0)
    with pytest.warns(IntensityWarning, match="larger than 4096 KiB"):
        s.refresh(wait=True)
    assert server.sent_bytes < 32 * 1024 * 1024  # it stopped reading long before 600 MB
    assert s.current().source == "table"


# --------------------------------------------------------------------------- values checked


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (-1.0, "unexpected answer"),
        (5000.0, "unexpected answer"),
        ("200", "unexpected answer"),
        (None, "no value for DE now"),  # null: no value yet, not a broken answer
        (True, "unexpected answer"),
    ],
)
def test_implausible_live_values_are_refused(
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    bad: object,
    said: str,
) -> None:
    server.value = lambda provider, t: bad  # type: ignore[assignment,return-value]
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match=said):
        s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "table" and math.isfinite(cur.g_per_kwh)


def test_history_entries_without_a_usable_value_are_skipped(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    an_hour_ago = clock() - 3600
    server.value = lambda provider, t: -3.0 if t < an_hour_ago - 3600 else 150.0
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    periods = s._series["recent"].periods.values()
    assert periods and all(p.g_per_kwh == 150.0 for p in periods)


def _poison(tmp_path: Path, kind: str, text: str) -> None:
    d = tmp_path / "cache"
    d.mkdir(exist_ok=True)
    (d / f"electricitymaps-DE-{kind}.json").write_text(text)


def _cache_doc(kind: str, **period: object) -> dict[str, object]:
    t = datetime.fromtimestamp(T0, UTC).replace(minute=0)
    p: dict[str, object] = {
        "g_per_kwh": 100.0,
        "zone": "DE",
        "source": "live",
        "provider": "electricitymaps",
        "dataset": "Electricity Maps v3 latest",
        "valid_from": t.isoformat(),
        "valid_to": (t + timedelta(hours=1)).isoformat(),
        "fetched_at": t.isoformat(),
        "is_estimated": False,
        "note": None,
    } | period
    return {
        "format": 1,
        "provider": "electricitymaps",
        "zone": "DE",
        "kind": kind,
        "fetched_at": T0 - 10,
        "failure": None,
        "periods": [p],
    }


POISONS = {
    "nan": json.dumps(_cache_doc("recent", g_per_kwh=math.nan)),
    "negative": json.dumps(_cache_doc("recent", g_per_kwh=-50.0)),
    "huge": json.dumps(_cache_doc("recent", g_per_kwh=1e9)),
    "string": json.dumps(_cache_doc("recent", g_per_kwh="100")),
    "nested": "[" * 200_000 + "]" * 200_000,
    "list": "[1, 2, 3]",
    "bad-failure": json.dumps(
        _cache_doc("recent") | {"failure": {"kind": 1, "reason": None, "attempts": "x", "until": 1}}
    ),
    "fetched-nan": json.dumps(_cache_doc("recent") | {"fetched_at": math.nan}),
    "other-zone": json.dumps(_cache_doc("recent", zone="FR")),
    "garbage": "\x00\xff not json",
}


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_cache_is_ignored_with_one_warning(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, poison: str
) -> None:
    _poison(tmp_path, "recent", POISONS[poison])
    _poison(tmp_path, "forecast", POISONS[poison].replace('"recent"', '"forecast"'))
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="ignored an unusable intensity cache file") as rec:
        cur = s.current()
    assert len(messages(rec)) == 1
    assert cur.source == "table" and cur.g_per_kwh == 342.06
    s.forecast(clock(), clock() + 3600)
    r = s.co2(3.6e6, clock() - 60, clock())
    assert math.isfinite(r.co2_g) and r.co2_g > 0
    # The next fetch replaces it with a good file, which a new service reads without a word.
    s.refresh(wait=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = make(server, tmp_path, client, clock)
        assert again.current().source == "live" and again.current().g_per_kwh == 200.0


def test_a_cached_back_off_cannot_hold_for_ever(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    doc = _cache_doc("recent") | {
        "fetched_at": None,
        "periods": [],
        "failure": {"kind": "rate-limited", "reason": "x", "attempts": 1, "until": T0 + 1e9},
    }
    _poison(tmp_path, "recent", json.dumps(doc))
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="a back-off of more than a day"):
        s.refresh(wait=True)
    assert server.count("/latest") == 1 and s.current().source == "live"


def test_interpreter_exit_does_not_wait_for_a_slow_fetch(
    server: FakeServer, tmp_path: Path
) -> None:
    import subprocess
    import sys
    import textwrap

    server.modes["/v3/"] = "slow"
    server.slow_interval = 0.2
    code = textwrap.dedent(
        f"""
        import time, warnings
        warnings.simplefilter("ignore")
        from carbonctx._carbon.service import IntensityService
        s = IntensityService(zone="DE", providers=["electricitymaps"],
            electricitymaps_token="t0k", urls={{"electricitymaps": {server.url!r}}},
            cache_dir={str(tmp_path / "c")!r}, env={{}})
        s.current()          # starts the background fetch, which the server holds
        time.sleep(0.5)
        s.close()            # as configure() and exit do
        """
    )
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert (
        time.monotonic() - t < 8.0
    )  # interpreter start and import included; not the 20 s deadline


# --------------------------------------------------------------------------- cache paths


def test_a_fifo_as_cache_file_is_ignored_with_one_warning_and_never_waited_on(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    d = tmp_path / "cache"
    d.mkdir()
    for kind in ("recent", "forecast"):
        os.mkfifo(d / f"electricitymaps-DE-{kind}.json")  # no writer: a plain open waits
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="not a regular file") as rec:
        cur = s.current()
    assert len(messages(rec)) == 1
    assert cur.source == "table"
    # A fetch replaces the FIFO with a file, which a new service reads without a word.
    s.refresh(wait=True)
    assert (d / "electricitymaps-DE-recent.json").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make(server, tmp_path, client, clock).current().source == "live"


def test_the_cache_directory_is_private_under_any_umask(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    old = os.umask(0)
    try:
        s = make(server, tmp_path / "xdg", client, clock)  # its cache: xdg/cache
        s.refresh(wait=True)
    finally:
        os.umask(old)
    for d in (tmp_path / "xdg", tmp_path / "xdg" / "cache"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = list((tmp_path / "xdg" / "cache").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)

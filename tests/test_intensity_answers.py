"""Every failure handled, continued: how answers arrive (compressed, cut, inflating, in an
encoding not asked for), what error answers say, and values checked for each provider."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, service

TOKEN = "em-T0ken-7f3a9c"
CLIENT_TIMEOUT = 1.0


def em(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, **kw: object
) -> IntensityService:
    kw.setdefault("zone", "DE")
    return service(
        server,
        tmp_path,
        client,
        clock,
        providers=["electricitymaps"],
        electricitymaps_token=TOKEN,
        **kw,
    )


# --------------------------------------------------------------------------- how answers arrive


def test_a_gzip_answer_is_read(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "gzip"
    server.value = lambda provider, t: 187.0
    s = em(server, tmp_path, client, clock)
    s.refresh(wait=True)
    assert server.last("/latest").headers["accept-encoding"] == "gzip"
    now = s.current()
    assert (now.g_per_kwh, now.source) == (187.0, "live")
    s.close()


def test_a_gzip_bomb_is_cut_at_the_size_limit(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "gzip-bomb"  # about 64 KiB that inflate to 64 MiB
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="larger than 4096 KiB"):
        s.refresh(wait=True)
    assert s.current().source == "table"
    s.close()


def test_an_encoding_not_asked_for_is_refused(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "br"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="unsupported content-encoding 'br'"):
        s.refresh(wait=True)
    assert s.current().source == "table"
    s.close()


def test_a_cut_answer_is_a_connection_failure_and_keeps_the_cached_value(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 140.0
    s = em(server, tmp_path, client, clock)
    s.refresh(wait=True)
    assert s.current().source == "live"
    clock.advance(3700)  # past the hour the value counts as fresh
    server.modes["/v3/"] = "cut"
    with pytest.warns(IntensityWarning, match="the answer was cut|could not connect"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "connection"
    cur = s.current()  # the last good value, still within the provider's max age
    assert (cur.g_per_kwh, cur.source) == (140.0, "cached")
    s.close()


def test_503_retry_after_is_honoured(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "503"
    server.retry_after = "240"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match=r'HTTP 503 server error: "maintenance"'):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.until - clock() == pytest.approx(240.0)
    clock.advance(120)
    s.refresh(wait=True)  # still inside the provider's Retry-After: not asked
    assert server.count("/latest") == 1
    s.close()


# --------------------------------------------------------------------------- what errors say


@pytest.mark.parametrize(
    ("mode", "said", "kind"),
    [
        ("401", "Token expired on 2026-05-31; renew it in the portal.", "credentials were refused"),
        ("403", "Zone DE is not included in your plan.", "access refused"),
        ("429", "slow down", "request limit reached"),
    ],
)
def test_a_warning_quotes_what_the_provider_said(
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    mode: str,
    said: str,
    kind: str,
) -> None:
    server.modes["/v3/"] = mode
    server.error_body = {"status": "error", "message": said}
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    messages = [str(w.message) for w in rec if issubclass(w.category, IntensityWarning)]
    assert len(messages) == 1
    expected = said if mode != "429" else "slow down"
    assert kind in messages[0] and expected in messages[0], messages[0]
    assert TOKEN not in messages[0]
    s.close()


# --------------------------------------------------------------------------- values, per provider


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_in_json_are_refused(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, bad: float
) -> None:
    server.value = lambda provider, t: bad  # the server writes NaN / Infinity literals
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="not JSON|unexpected answer"):
        s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "table" and math.isfinite(cur.g_per_kwh)
    s.close()


@pytest.mark.parametrize(
    ("provider", "zone", "extra"),
    [
        ("gb", "GB", {}),
        ("dk", "DK-DK1", {}),
        (
            "watttime",
            "US-CAL-CISO",
            {
                "watttime_username": "wt-user",
                "watttime_password": "wt-Pa55word",
                "watttime_region": "CAISO_NORTH",
                "signal": "marginal",
            },
        ),
    ],
)
@pytest.mark.parametrize("bad", [-20.0, 1e7])
def test_every_provider_refuses_implausible_values(
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    provider: str,
    zone: str,
    extra: dict[str, str],
    bad: float,
) -> None:
    server.value = lambda p, t: bad
    s = service(server, tmp_path, client, clock, zone=zone, providers=[provider], **extra)
    with pytest.warns(IntensityWarning):
        s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "table" and 0 <= cur.g_per_kwh < 2000
    s.close()


def test_a_slow_watttime_login_is_held_to_the_deadline(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    import time

    server.modes["/login"] = "slow"
    server.slow_interval = 0.1
    s = service(
        server,
        tmp_path,
        client,
        clock,
        zone="US-CAL-CISO",
        providers=["watttime"],
        watttime_username="wt-user",
        watttime_password="wt-Pa55word",
        watttime_region="CAISO_NORTH",
        signal="marginal",
        deadline_s=1.0,
    )
    t = time.monotonic()
    with pytest.warns(IntensityWarning, match="WattTime login: no complete answer within 1 s"):
        s.refresh(wait=True)
    assert time.monotonic() - t < 3.0
    assert s.current().source == "table"
    s.close()


def test_an_endless_entsoe_answer_is_cut_at_the_size_limit(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/api"] = "huge"
    s = service(server, tmp_path, client, clock, zone="DE", entsoe_token="entsoe-S3cret-T0ken")
    with pytest.warns(IntensityWarning, match="larger than 4096 KiB"):
        s.refresh(wait=True)
    assert server.sent_bytes < 32 * 1024 * 1024
    assert s.current().source == "table"
    s.close()

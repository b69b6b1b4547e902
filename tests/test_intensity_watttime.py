"""WattTime v3 (marginal ``co2_moer``) and the average/marginal setting, against a real HTTP
server on 127.0.0.1 that speaks WattTime's login flow and answers."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx._config.carbon import carbon_settings
from carbonctx.errors import ConfigurationError, IntensityWarning
from intensity_server import FakeClock, FakeServer, service

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 10, 10, tzinfo=UTC).timestamp()
USER, PASSWORD = "wt-user", "wt-Pa55word"
G = 1000.0 * 0.45359237  # 1000 lbs/MWh in g/kWh


def server_value(provider: str, t: float) -> float:
    """What the shared ``server`` fixture answers: 1000 lbs/MWh marginal, 300 g/kWh average."""
    return 1000.0 if provider == "watttime" else 300.0


def make(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, **kw: object
) -> IntensityService:
    kw.setdefault("zone", "US-CAL-CISO")
    kw.setdefault("providers", ["watttime"])
    kw.setdefault("signal", "marginal")
    kw.setdefault("watttime_username", USER)
    kw.setdefault("watttime_password", PASSWORD)
    return service(server, tmp_path, client, clock, **kw)


def test_login_then_marginal_value_reaches_co2_with_its_signal(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, watttime_region="CAISO_NORTH")
    s.refresh(wait=True)
    assert server.count("/login") == 1
    assert server.last("/login").headers["authorization"].startswith("Basic ")
    req = server.last("/v3/forecast")
    assert req.headers["authorization"].startswith("Bearer wt-jwt-")
    assert req.query == {
        "region": ["CAISO_NORTH"],
        "signal_type": ["co2_moer"],
        "horizon_hours": ["0"],
    }
    cur = s.current()
    assert cur.source == "live" and cur.signal == "marginal" and cur.provider == "watttime"
    assert cur.g_per_kwh == pytest.approx(G)
    assert cur.dataset == "WattTime v3 co2_moer CAISO_NORTH"
    r = s.co2(3.6e6, clock() - 60, clock())
    assert r.co2_g == pytest.approx(G) and r.signal == "marginal"
    d = r.to_dict()
    assert d["signal"] == "marginal" and d["signal_chosen"] == "marginal"
    assert d["periods"][0]["signal"] == "marginal"  # type: ignore[index]

    # The token is reused within its life; an expired one means one new login.
    clock.advance(301)
    s.refresh(wait=True)
    assert server.count("/login") == 1 and server.count("/v3/forecast") == 2
    server.watttime_tokens.clear()
    clock.advance(301)
    s.refresh(wait=True)
    assert server.count("/login") == 2 and s.current().source == "live"


def test_forecast_is_marginal(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, watttime_region="CAISO_NORTH")
    s.refresh(wait=True, forecast=True)
    periods = s.forecast(clock(), clock() + 6 * 3600)
    assert periods is not None and len(periods) > 60
    assert all(p.signal == "marginal" and p.is_estimated for p in periods)
    assert "horizon_hours" not in server.last("/v3/forecast").query


def test_region_from_coordinates(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, latitude=37.87, longitude=-122.27)
    s.refresh(wait=True)
    req = server.last("/v3/region-from-loc")
    assert req.query["latitude"] == ["37.8700"] and req.query["signal_type"] == ["co2_moer"]
    assert server.last("/v3/forecast").query["region"] == ["CAISO_NORTH"]
    clock.advance(301)
    s.refresh(wait=True)
    assert server.count("/v3/region-from-loc") == 1  # found once


def test_coordinates_in_no_region_are_said_to_be_the_coordinates(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, latitude=47.0, longitude=-30.0)  # mid-Atlantic
    with pytest.warns(IntensityWarning, match="zone not known.*Coordinates not in a region"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "unknown-zone"
    assert server.count("/v3/forecast") == 0 and s.current().source == "table"


def test_wrong_password_is_reported_without_it(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(
        server, tmp_path, client, clock, watttime_region="CAISO_NORTH", watttime_password="nope-X9"
    )
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    (message,) = [str(w.message) for w in rec]
    assert "WattTime login: HTTP 403, the credentials were refused" in message
    assert "Invalid username or password" in message
    assert "Check CARBONCTX_WATTTIME_USERNAME and CARBONCTX_WATTTIME_PASSWORD." in message
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "auth"
    assert server.count("/login") == 1 and server.count("/v3/") == 0  # nothing else asked
    assert "nope-X9" not in message and USER not in message
    assert s.current().source == "table"
    cache = "".join(p.read_text() for p in (tmp_path / "cache").glob("*"))
    assert "nope-X9" not in cache and USER not in cache
    assert "nope-X9" not in repr(s.provider) and "nope-X9" not in repr(s)


def test_free_plan_region_says_only_the_index_is_given(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, watttime_region="PJM_DC")
    with pytest.warns(IntensityWarning, match="HTTP 403") as rec:
        s.refresh(wait=True)
    message = str(rec[0].message)
    assert "does not include access to co2_moer for PJM_DC" in message
    assert "only the signal index for PJM_DC (percentile 43 now)" in message
    cur = s.current()
    assert cur.source == "table" and "HTTP 403" in (cur.note or "")
    for token in server.watttime_tokens:
        assert token not in message


def test_signal_setting_chooses_the_provider(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    both = ["electricitymaps", "watttime"]
    kw = {"providers": both, "electricitymaps_token": "em-tok", "watttime_region": "CAISO_NORTH"}
    avg = make(server, tmp_path, client, clock, signal="average", **kw)  # type: ignore[arg-type]
    assert avg.provider is not None and avg.provider.id == "electricitymaps"
    marg = make(server, tmp_path, client, clock, signal="marginal", **kw)  # type: ignore[arg-type]
    assert marg.provider is not None and marg.provider.id == "watttime"
    assert marg.signal_note is None

    # Marginal asked for, none configured: the average is used, and says so.
    only_em = make(
        server, tmp_path, client, clock, providers=["electricitymaps"], electricitymaps_token="t"
    )
    assert only_em.provider is not None and only_em.provider.id == "electricitymaps"
    assert only_em.signal_note is not None and "average used" in only_em.signal_note
    table = IntensityService(zone="DE", signal="marginal", env={}, background=False)
    r = table.co2(3.6e6, T0 - 60, T0)
    assert r.signal == "average" and r.signal_chosen == "marginal"
    assert any("no configured provider gives a marginal" in n for n in r.notes)


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CARBONCTX_SIGNAL"):
        IntensityService(env={"CARBONCTX_SIGNAL": "lowest"})
    with pytest.raises(ConfigurationError, match="CARBONCTX_WATTTIME_PASSWORD"):
        IntensityService(env={"CARBONCTX_PROVIDERS": "watttime"})
    with pytest.raises(ConfigurationError, match="both latitude and longitude"):
        IntensityService(env={"CARBONCTX_LATITUDE": "40"})
    with pytest.raises(ConfigurationError, match="CARBONCTX_LONGITUDE"):
        IntensityService(env={"CARBONCTX_LATITUDE": "40", "CARBONCTX_LONGITUDE": "200"})
    env = {
        "CARBONCTX_WATTTIME_USERNAME": USER,
        "CARBONCTX_WATTTIME_PASSWORD": PASSWORD,
        "CARBONCTX_WATTTIME_REGION": "CAISO_NORTH",
        "CARBONCTX_SIGNAL": "Marginal",
        "CARBONCTX_CACHE_DIR": str(tmp_path),
    }
    s = IntensityService(zone="US-CAL-CISO", env=env, background=False)
    assert s.provider_ids == ("watttime",) and s.signal == "marginal"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PASSWORD not in repr(s) and PASSWORD not in repr(s.provider)


def test_results_carry_the_other_signal_too(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    kw = {
        "providers": ["electricitymaps", "watttime"],
        "electricitymaps_token": "em-tok",
        "watttime_region": "CAISO_NORTH",
    }
    for chosen, other, g, g_other in (
        ("marginal", "average", G, 300.0),
        ("average", "marginal", 300.0, G),
    ):
        s = make(server, tmp_path, client, clock, signal=chosen, **kw)  # type: ignore[arg-type]
        s.refresh(wait=True)
        r = s.co2(3.6e6, clock() - 60, clock())
        assert (r.signal, r.co2_g) == (chosen, pytest.approx(g))
        (alt,) = r.alternatives
        assert (alt.signal, alt.co2_g) == (other, pytest.approx(g_other))
        d = r.to_dict()["alternatives"][0]  # type: ignore[index]
        assert d["signal"] == other and d["sources"] == ["live"]

    # Marginal from WattTime alone: the yearly average comes beside it.
    s = make(server, tmp_path, client, clock, watttime_region="CAISO_NORTH")
    s.refresh(wait=True)
    r = s.co2(3.6e6, clock() - 60, clock())
    (alt,) = r.alternatives
    assert r.signal == "marginal" and alt.signal == "average" and alt.sources == ("table",)
    # Average alone: nothing beside it.
    avg = make(
        server,
        tmp_path,
        client,
        clock,
        providers=["electricitymaps"],
        electricitymaps_token="t",
        signal="average",
    )
    assert avg.co2(3.6e6, clock() - 60, clock()).alternatives == ()


def test_cli_shows_the_signal(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    import functools
    import io
    import json

    from carbonctx._cli.intensity import run
    from test_intensity_cli import parse

    factory = functools.partial(make, server, tmp_path, client, clock)
    out = io.StringIO()
    args = parse("--zone", "US-CAL-CISO")
    factory_wt = functools.partial(factory, watttime_region="CAISO_NORTH")
    assert run(args, service_factory=factory_wt, out=out) == 0
    text = out.getvalue()
    assert f"Now: {G:.1f} gCO2e/kWh (live; WattTime v3 co2_moer CAISO_NORTH; marginal)" in text
    out = io.StringIO()
    assert run(parse("--zone", "DE", "--json"), service_factory=factory, out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["signal_chosen"] == "marginal" and doc["current"]["signal"] == "average"
    assert "no configured provider gives a marginal" in doc["current"]["note"]


@pytest.mark.parametrize("password", [" pass word ", "pässwörd\t"])
def test_a_password_is_sent_as_given_spaces_and_all(
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    password: str,
) -> None:
    # Basic auth carries any character: a password's spaces were stripped, or refused as
    # unfit for an HTTP header, and the login failed with a password that is right.
    server.watttime_login = (USER, password)
    s = make(
        server, tmp_path, client, clock, watttime_region="CAISO_NORTH", watttime_password=password
    )
    s.refresh(wait=True)
    assert s.current().provider == "watttime"
    env = {"CARBONCTX_WATTTIME_USERNAME": USER, "CARBONCTX_WATTTIME_PASSWORD": password}
    assert carbon_settings(env=env).watttime_password == password

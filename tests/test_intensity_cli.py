"""``carbonctx intensity``, through a throwaway argparse parser."""

from __future__ import annotations

import argparse
import functools
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx._cli.intensity import register, run
from intensity_server import FakeClock, FakeServer

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 0, 10, tzinfo=UTC).timestamp()  # 00:10 UTC


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="carbonctx")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["intensity", *argv])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "CARBONCTX_ZONE",
        "CARBONCTX_PROVIDERS",
        "CARBONCTX_ELECTRICITYMAPS_TOKEN",
        "CARBONCTX_PUE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "GOOGLE_CLOUD_REGION",
        "FUNCTION_REGION",
        "REGION_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CARBONCTX_CACHE_DIR", str(tmp_path / "cache"))


def test_current_value_from_the_table(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--zone", "DE")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Zone DE (chosen by argument)" in out
    assert "342.1 gCO2e/kWh (table; Ember yearly 2024 (CC BY 4.0): Germany; average)" in out


def test_json_output(clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("--zone", "dk-dk1", "--json")
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["zone"]["zone"] == "DK-DK1" and doc["zone"]["rule"] == "argument"
    assert doc["current"]["g_per_kwh"] == 143.3 and doc["current"]["source"] == "table"
    assert "forecast" not in doc


def test_forecast_without_a_provider_says_how_to_get_one(
    clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse("--zone", "DE", "--forecast")
    assert args.func(args) == 1
    assert "No forecast" in capsys.readouterr().out


def test_bad_setting_exits_2(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CARBONCTX_PUE", "0.5")
    args = parse("--zone", "DE")
    assert args.func(args) == 2
    assert "CARBONCTX_PUE" in capsys.readouterr().err


def test_hours_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--hours", "-3")
    assert exc.value.code == 2
    assert "--hours" in capsys.readouterr().err


def server_value(provider: str, t: float) -> float:
    """What the shared ``server`` fixture answers: a synthetic forecast of 250 g/kWh, except 90
    between 03:00 and 09:00 (the GB forecast is the value + 5)."""
    three, nine = (datetime(2026, 6, 1, h, 0, tzinfo=UTC).timestamp() for h in (3, 9))
    return 85.0 if three <= t < nine else 245.0


def test_lowest_carbon_window_on_a_synthetic_forecast(
    server: FakeServer, clock: FakeClock, client: httpx.Client, tmp_path: Path
) -> None:
    factory = functools.partial(
        IntensityService,
        providers=["gb"],
        urls={"gb": server.url},
        client=client,
        env={},
        clock=clock,
        cache_dir=tmp_path,
    )
    out = io.StringIO()
    code = run(
        parse("--zone", "GB", "--forecast", "--hours", "6"), service_factory=factory, out=out
    )
    text = out.getvalue()
    assert code == 0, text
    assert "Zone GB (chosen by argument)" in text
    assert "Lowest-carbon 6 h window" in text
    assert "start 2026-06-01 03:00 UTC, end 2026-06-01 09:00 UTC, mean 90.0 gCO2e/kWh" in text
    # Starting now (00:10) instead: 2 h 50 min at 250, then 3 h 10 min at 90.
    assert f"starting now instead: mean {(250 * 170 + 90 * 190) / 360:.1f}" in text

    clock.advance(120)  # a second run, two minutes later
    out = io.StringIO()
    args = parse("--zone", "GB", "--forecast", "--hours", "2", "--json")
    assert run(args, service_factory=factory, out=out) == 0
    doc = json.loads(out.getvalue())
    window = doc["forecast"]["window"]
    assert window["start"] == "2026-06-01T03:00:00+00:00"
    assert window["mean_g_per_kwh"] == pytest.approx(90.0)
    assert doc["forecast"]["provider"] == "gb"
    assert doc["current"]["provider"] == "gb" and doc["current"]["source"] == "live"

"""Carbon intensity without the network: zone rules, the bundled table, settings, CO2 arithmetic."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

import carbonctx
from carbonctx._carbon.intensity import Intensity
from carbonctx._carbon.service import IntensityService
from carbonctx._carbon.windows import Window, lowest_carbon_window, mean_over
from carbonctx._carbon.zones import ZoneChoice, resolve_zone
from carbonctx.errors import ConfigurationError

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
DATA = Path(__file__).resolve().parents[1] / "python" / "carbonctx" / "data"


def _no_network_client() -> httpx.Client:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected network request to {request.url}")

    return httpx.Client(transport=httpx.MockTransport(refuse))


def svc(**kw: object) -> IntensityService:
    kw.setdefault("env", {})
    kw.setdefault("client", _no_network_client())
    kw.setdefault("background", False)
    return IntensityService(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- zone rules


def test_explicit_zone_wins_and_is_normalized() -> None:
    assert resolve_zone("dk-dk1", {"CARBONCTX_ZONE": "FR", "AWS_REGION": "eu-west-1"}) == (
        ZoneChoice("DK-DK1", "argument")
    )


def test_carbonctx_zone_beats_cloud_and_time_zone() -> None:
    env = {"CARBONCTX_ZONE": "fr", "AWS_REGION": "eu-west-1", "TZ": "Europe/Berlin"}
    assert resolve_zone(None, env) == ZoneChoice("FR", "CARBONCTX_ZONE")


@pytest.mark.parametrize(
    ("env", "zone", "rule", "cloud"),
    [
        ({"AWS_REGION": "eu-west-1"}, "IE", "cloud region (AWS_REGION=eu-west-1)", "aws"),
        (
            {"AWS_DEFAULT_REGION": "eu-central-1"},
            "DE",
            "cloud region (AWS_DEFAULT_REGION=eu-central-1)",
            "aws",
        ),
        (
            {"GOOGLE_CLOUD_REGION": "europe-west1"},
            "BE",
            "cloud region (GOOGLE_CLOUD_REGION=europe-west1)",
            "gcp",
        ),
        ({"REGION_NAME": "West Europe"}, "NL", "cloud region (REGION_NAME=West Europe)", "azure"),
    ],
)
def test_cloud_region_rule(env: dict[str, str], zone: str, rule: str, cloud: str) -> None:
    choice = resolve_zone(None, {**env, "TZ": "Asia/Tokyo"})
    assert (choice.zone, choice.rule, choice.cloud) == (zone, rule, cloud)


def test_unknown_cloud_region_falls_through_to_time_zone() -> None:
    choice = resolve_zone(None, {"AWS_REGION": "mars-north-1", "TZ": "Europe/Berlin"})
    assert choice == ZoneChoice("DE", "time zone Europe/Berlin")


def test_time_zone_from_tz_variable() -> None:
    assert resolve_zone(None, {"TZ": ":Europe/Copenhagen"}) == ZoneChoice(
        "DK", "time zone Europe/Copenhagen"
    )


def test_time_zone_from_localtime_symlink(tmp_path: Path) -> None:
    link = tmp_path / "localtime"
    os.symlink("/usr/share/zoneinfo/Asia/Tokyo", link)
    choice = resolve_zone(None, {}, localtime=link, timezone_file=tmp_path / "none")
    assert choice == ZoneChoice("JP", "time zone Asia/Tokyo")


def test_time_zone_from_etc_timezone_and_embedded_map(tmp_path: Path) -> None:
    (tmp_path / "timezone").write_text("America/Chicago\n")
    choice = resolve_zone(
        None,
        {},
        localtime=tmp_path / "missing",
        timezone_file=tmp_path / "timezone",
        zoneinfo_dir=str(tmp_path),  # no zone.tab here: the embedded map answers
    )
    assert choice == ZoneChoice("US", "time zone America/Chicago")


def test_world_average_when_nothing_is_known(tmp_path: Path) -> None:
    choice = resolve_zone(None, {"TZ": "UTC"})
    assert choice == ZoneChoice("WORLD", "world average")
    none = resolve_zone(None, {}, localtime=tmp_path / "x", timezone_file=tmp_path / "y")
    assert none.rule == "world average"


def test_bad_zone_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="CARBONCTX_ZONE"):
        resolve_zone(None, {"CARBONCTX_ZONE": "not a zone!"})


# --------------------------------------------------------------------------- the yearly table

# Figures copied from the shared reference files (../shared/data/intensity/*.csv).
TABLE_CASES = [
    ("DE", 342.06, "Ember yearly 2024"),  # ember-yearly.csv: DE,DEU,Germany,2024,342.06
    ("DK-DK1", 143.3, "Ember yearly 2024"),  # DK,DNK,Denmark,2024,143.3
    ("GB", 215.79, "United Kingdom"),  # GB,GBR,United Kingdom,2024,215.79
    ("IND", 708.96, "India"),  # IN,IND,India,2024,708.96 (alpha-3 works too)
    ("US-MIDA-PJM", 383.55, "United States"),  # US,USA,United States,2024,383.55
    ("US-CAL-CISO", 179.06, "eGRID2023"),  # us-states-egrid2023.csv: CA,California,2023,179.06
    ("US-TEX-ERCO", 349.8, "Texas"),  # TX,Texas,2023,349.8
    ("US-NY", 211.65, "New York"),  # NY,New York,2023,211.65
]


@pytest.mark.parametrize(("zone", "g", "dataset_part"), TABLE_CASES)
def test_table_figures_match_the_reference_files(zone: str, g: float, dataset_part: str) -> None:
    i = svc(zone=zone).current()
    assert i.g_per_kwh == g
    assert i.source == "table" and i.provider == "table"
    assert dataset_part in i.dataset
    assert i.note is None


def test_gcp_region_uses_the_google_cloud_row() -> None:
    # gcp-regions-2024.csv: europe-west1,Belgium,0.84,103.37
    i = svc(env={"GOOGLE_CLOUD_REGION": "europe-west1"}).current()
    assert (i.g_per_kwh, i.zone) == (103.37, "BE")
    assert "Google Cloud" in i.dataset and "2024" in i.dataset


def test_world_average_and_unknown_zone() -> None:
    # ember-yearly.csv: ,,World,2024,472.94
    world = svc(zone="world").current()
    assert (world.g_per_kwh, world.source) == (472.94, "world-average")
    unknown = svc(zone="XX").current()
    assert (unknown.g_per_kwh, unknown.source) == (472.94, "world-average")
    assert unknown.note is not None and "XX" in unknown.note


def test_bundled_data_carries_its_attribution() -> None:
    sources = (DATA / "SOURCES.md").read_text()
    for name in (
        "ember-yearly.csv",
        "us-states-egrid2023.csv",
        "gcp-regions-2024.csv",
        "cloud-region-zones.csv",
        "entsoe-lifecycle-factors.csv",
    ):
        assert (DATA / name).is_file()
        assert name in sources
    for licence in ("CC BY 4.0", "public domain", "Apache-2.0", "IPCC"):
        assert licence in sources
    licence_file = (DATA.parent.parent.parent / "LICENSE").read_text(encoding="utf-8")
    assert "entsoe-lifecycle-factors.csv" in licence_file


# --------------------------------------------------------------------------- settings


def test_pue_precedence_and_default() -> None:
    assert (svc().pue, svc().pue_source) == (1.0, "default (1.0: facility overhead not counted)")
    assert (svc(env={"CARBONCTX_PUE": "1.5"}).pue_source) == "CARBONCTX_PUE"
    s = svc(pue=1.2, env={"CARBONCTX_PUE": "1.5"})
    assert (s.pue, s.pue_source) == (1.2, "argument")


@pytest.mark.parametrize("value", ["0.9", "abc", "nan", "inf", "-1"])
def test_bad_pue_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CARBONCTX_PUE") as exc:
        svc(env={"CARBONCTX_PUE": value})
    assert "at least 1" in str(exc.value)


def test_unknown_provider_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"CARBONCTX_PROVIDERS.*'wattage'.*gb"):
        svc(env={"CARBONCTX_PROVIDERS": "gb,wattage"})
    with pytest.raises(ConfigurationError, match="providers"):
        svc(providers=["nope"])


@pytest.mark.parametrize("url", ["ftp://example.com", "localhost:8000", "http://", "http://h/?q=1"])
def test_malformed_url_names_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError, match="CARBONCTX_GB_URL"):
        svc(env={"CARBONCTX_GB_URL": url, "CARBONCTX_PROVIDERS": "gb"})


def test_url_precedence() -> None:
    s = svc(urls={"dk": "http://127.0.0.1:9/"}, env={"CARBONCTX_DK_URL": "http://127.0.0.1:8"})
    assert s.urls["dk"] == "http://127.0.0.1:9"
    assert svc(env={"CARBONCTX_DK_URL": "http://127.0.0.1:8"}).urls["dk"] == "http://127.0.0.1:8"
    assert svc().urls == {
        "electricitymaps": "https://api.electricitymaps.com",
        "gb": "https://api.carbonintensity.org.uk",
        "dk": "https://api.energidataservice.dk",
        "watttime": "https://api.watttime.org",
        "entsoe": "https://web-api.tp.entsoe.eu",
        "eia": "https://api.eia.gov",
    }


def test_live_providers_are_opt_in() -> None:
    assert svc(zone="DE").provider is None
    token_only = svc(zone="DE", env={"CARBONCTX_ELECTRICITYMAPS_TOKEN": "t0k"})
    assert token_only.provider is not None and token_only.provider.id == "electricitymaps"
    # A provider serves only the zones it covers.
    assert svc(zone="DE", providers=["gb", "dk"]).provider is None
    assert svc(zone="GB", providers=["dk", "gb"]).provider.id == "gb"  # type: ignore[union-attr]
    assert svc(zone="DK-DK2", providers=["gb", "dk"]).provider.id == "dk"  # type: ignore[union-attr]


def test_no_configuration_means_no_network_and_no_files(tmp_path: Path) -> None:
    s = svc(zone="DE", cache_dir=tmp_path / "cache", background=True)
    s.refresh(wait=True)
    s.refresh()
    assert s.current().source == "table"
    assert s.co2(1000.0, T0, T0 + 10).periods[0].source == "table"
    assert s.forecast(T0, T0 + 3600) is None
    assert not (tmp_path / "cache").exists()
    s.close()


def test_cache_dir_default_follows_xdg(tmp_path: Path) -> None:
    assert svc(env={"XDG_CACHE_HOME": str(tmp_path)}).cache_dir == tmp_path / "carbonctx"
    assert svc(env={"HOME": str(tmp_path)}).cache_dir == tmp_path / ".cache" / "carbonctx"
    assert svc(env={"CARBONCTX_CACHE_DIR": str(tmp_path / "c")}).cache_dir == tmp_path / "c"


def test_token_with_bad_characters_is_refused_without_echoing_it() -> None:
    secret = "abc def\nSECRET"
    with pytest.raises(ConfigurationError) as exc:
        svc(electricitymaps_token=secret)
    assert "SECRET" not in str(exc.value) and "abc" not in str(exc.value)
    with pytest.raises(ConfigurationError, match="CARBONCTX_ELECTRICITYMAPS_TOKEN") as exc2:
        svc(env={"CARBONCTX_ELECTRICITYMAPS_TOKEN": secret})
    assert "SECRET" not in str(exc2.value)


def test_reprs_hide_the_token() -> None:
    s = svc(zone="DE", electricitymaps_token="sup3r-s3cret")
    assert "sup3r-s3cret" not in repr(s)
    assert "sup3r-s3cret" not in repr(s.provider)
    assert "sup3r-s3cret" not in repr(vars(s).get("_providers"))


# --------------------------------------------------------------------------- CO2 arithmetic


def test_co2_from_the_table_with_pue() -> None:
    r = svc(zone="DE", pue=1.5).co2(3.6e6, T0, T0 + 60)  # 1 kWh
    assert r.energy_kwh == 1.0
    assert r.intensity_g_per_kwh == 342.06
    assert r.co2_g == pytest.approx(342.06 * 1.5)
    assert (r.pue, r.pue_source, r.zone.rule) == (1.5, "argument", "argument")
    d = r.to_dict()
    json.dumps(d)  # JSON-safe
    assert d["sources"] == ["table"]
    assert d["zone"] == {"zone": "DE", "rule": "argument", "cloud": None, "cloud_region": None}


def test_co2_never_raises_on_odd_input() -> None:
    s = svc(zone="DE")
    for args in [(math.nan, T0, T0 + 1), (1.0, T0 + 5, T0), (1.0, T0, T0), (1.0, -math.inf, 0.0)]:
        r = s.co2(*args)
        assert r.periods


def _period(start_h: float, hours: float, g: float) -> Intensity:
    a = datetime.fromtimestamp(T0 + start_h * 3600, UTC)
    return Intensity(
        g_per_kwh=g,
        zone="GB",
        source="live",
        provider="gb",
        dataset="test",
        valid_from=a,
        valid_to=a + timedelta(hours=hours),
        fetched_at=None,
    )


def _brute_force_min(periods: list[Intensity], hours: float, not_before: float) -> float:
    best = math.inf
    end = max(p.valid_to.timestamp() for p in periods if p.valid_to)
    t = not_before
    while t + hours * 3600 <= end + 1e-6:
        m = mean_over(periods, t, t + hours * 3600)
        if m is not None:
            best = min(best, m)
        t += 60.0
    return best


def test_lowest_carbon_window_matches_a_brute_force_scan() -> None:
    values = [300, 250, 90, 80, 120, 60, 400, 410, 50, 55, 350, 300]
    periods = [_period(h, 1, g) for h, g in enumerate(values)]
    for hours in (1, 1.5, 2, 3.25):
        w = lowest_carbon_window(periods, hours, not_before=T0)
        assert isinstance(w, Window)
        assert w.mean_g_per_kwh == pytest.approx(_brute_force_min(periods, hours, T0), abs=1e-6)
        assert (w.end - w.start).total_seconds() == pytest.approx(hours * 3600)
    w2 = lowest_carbon_window(periods, 2, not_before=T0)
    assert w2 is not None
    assert w2.start == datetime.fromtimestamp(T0 + 8 * 3600, UTC)  # 50 and 55
    assert w2.mean_g_per_kwh == pytest.approx(52.5)


def test_lowest_carbon_window_respects_not_before_and_gaps() -> None:
    periods = [_period(0, 1, 10), _period(1, 1, 500), _period(3, 1, 20), _period(4, 1, 30)]
    # The 2-hour window cannot straddle the gap 2h-3h; the cheapest inside one run is 3h-5h.
    w = lowest_carbon_window(periods, 2, not_before=T0)
    assert w is not None and w.start == datetime.fromtimestamp(T0 + 3 * 3600, UTC)
    # Too long for any run.
    assert lowest_carbon_window(periods, 3, not_before=T0) is None
    # Starting no earlier than 30 minutes in, the first run's best 1-hour window is gone.
    w1 = lowest_carbon_window(periods, 1, not_before=T0 + 1800)
    assert w1 is not None and w1.start == datetime.fromtimestamp(T0 + 3 * 3600, UTC)
    assert lowest_carbon_window(periods, 0) is None


@pytest.mark.parametrize(
    ("env", "zone", "table"),
    [
        ({"AWS_REGION": "us-west-2"}, "US-NW-BPAT", "Oregon"),  # Boardman: BPA; the state row
        ({"GOOGLE_CLOUD_REGION": "us-west1"}, "US-NW-BPAT", None),  # Google's own 2024 row
        ({"REGION_NAME": "West US 2"}, "US-NW-GCPD", "Washington"),  # Quincy, WA
        ({"REGION_NAME": "West US 3"}, "US-SW-AZPS", "Arizona"),
        ({"REGION_NAME": "North Central US"}, "US-MIDA-PJM", "Illinois"),  # Chicago: PJM
        ({"AWS_REGION": "eu-central-2"}, "CH", "Switzerland"),  # opened since the CCF table
        ({"AWS_REGION": "ap-southeast-4"}, "AU-VIC", "Victoria"),  # the state's own row
        ({"REGION_NAME": "Italy North"}, "IT-NO", "Italy"),
        ({"GOOGLE_CLOUD_REGION": "me-west1"}, "IL", None),  # Google's own row
    ],
)
def test_cloud_regions_map_to_their_grid(env: dict[str, str], zone: str, table: str | None) -> None:
    s = svc(env=env)
    assert s.zone_choice.zone == zone
    if table is not None:
        assert s.current().dataset.endswith(table)


def test_carbon_settings_reach_configure_and_are_checked_there() -> None:
    """The live providers' settings are configure() keywords, checked when given."""
    with pytest.raises(carbonctx.ConfigurationError, match="signal"):
        carbonctx.configure(signal="bogus")
    s = carbonctx.configure(signal="marginal", latitude=55.7, longitude=12.6, deadline_s=5.0)
    kw = s.intensity_kwargs()
    assert (kw["signal"], kw["latitude"], kw["longitude"], kw["deadline_s"]) == (
        "marginal",
        55.7,
        12.6,
        5.0,
    )
    secret = "tok-" + "x" * 12
    s = carbonctx.configure(entsoe_token=secret)
    assert secret not in repr(s)

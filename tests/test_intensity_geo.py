"""Zones from coordinates: offline by the embedded boundaries (approximate, and said so), live by
asking the providers that accept coordinates, and bad coordinates refused with a clear error."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest

import carbonctx
from carbonctx._carbon.geo import zone_at
from carbonctx._carbon.service import IntensityService
from carbonctx._carbon.zones import resolve_zone
from carbonctx.errors import ConfigurationError
from intensity_server import FakeClock, FakeServer, service

TOKEN = "em-T0ken-7f3a9c"

# Places (a data centre town or a city) and the finest zone the embedded tables know there.
PLACES = [
    ("Ashburn, Virginia", 39.04, -77.49, "US-VA"),
    ("Boardman, Oregon", 45.84, -119.70, "US-OR"),
    ("Quincy, Washington", 47.23, -119.85, "US-WA"),
    ("Des Moines, Iowa", 41.59, -93.62, "US-IA"),
    ("San Francisco", 37.77, -122.42, "US-CA"),  # on the bay: inside the simplified coast
    ("Honolulu", 21.31, -157.86, "US-HI"),  # the coast cut off by the simplification
    ("Montreal", 45.50, -73.57, "CA-QC"),
    ("Toronto", 43.65, -79.38, "CA-ON"),
    ("Calgary", 51.05, -114.07, "CA-AB"),
    ("Sydney", -33.87, 151.21, "AU-NSW"),
    ("Canberra", -35.28, 149.13, "AU-NSW"),  # the Capital Territory is in NSW's grid
    ("Melbourne", -37.81, 144.96, "AU-VIC"),
    ("Frankfurt", 50.11, 8.68, "DE"),
    ("Paris", 48.86, 2.35, "FR"),  # France and Norway have no ISO code in Natural Earth
    ("Oslo", 59.91, 10.75, "NO"),
    ("Zurich", 47.37, 8.54, "CH"),
    ("Luxembourg", 49.61, 6.13, "LU"),
    ("Dublin", 53.35, -6.26, "IE"),
    ("Belfast", 54.60, -5.93, "GB-NIR"),  # the all-island grid, not Great Britain's
    ("Derry", 55.00, -7.32, "GB-NIR"),
    ("Land's End", 50.07, -5.70, "GB"),
    ("Stranraer", 54.90, -5.02, "GB"),
    ("Campbeltown (Kintyre)", 55.42, -5.60, "GB"),
    ("Copenhagen", 55.68, 12.57, "DK-DK2"),  # Zealand: east of the Great Belt
    ("Aarhus", 56.16, 10.20, "DK-DK1"),  # Jutland: west of it
    ("Odense", 55.40, 10.39, "DK-DK1"),  # Funen
    ("Bornholm (Ronne)", 55.10, 14.70, "DK-DK2"),
    ("Singapore", 1.35, 103.82, "SG"),
    ("Hong Kong", 22.30, 114.17, "HK"),
    ("Maseru, Lesotho (inside South Africa)", -29.31, 27.48, "LS"),
    ("Johannesburg", -26.20, 28.04, "ZA"),
    ("Tokyo", 35.68, 139.77, "JP"),
    ("Sao Paulo", -23.55, -46.63, "BR"),
]


@pytest.mark.parametrize(("place", "lat", "lon", "zone"), PLACES, ids=[p[0] for p in PLACES])
def test_coordinates_resolve_to_the_finest_zone_the_tables_know(
    place: str, lat: float, lon: float, zone: str
) -> None:
    area = zone_at(lat, lon)
    assert area is not None and area.zone == zone, place


def test_open_sea_is_in_no_area_and_the_next_rule_decides() -> None:
    assert zone_at(40.0, -30.0) is None  # mid-Atlantic
    assert zone_at(0.0, 0.0) is None  # Gulf of Guinea
    choice = resolve_zone(None, {"TZ": "Europe/Lisbon"}, coordinates=(40.0, -30.0))
    assert (choice.zone, choice.rule) == ("PT", "time zone Europe/Lisbon")


def test_coordinates_rank_below_an_explicit_zone_and_above_cloud_and_time_zone() -> None:
    env = {"AWS_REGION": "eu-west-1", "TZ": "Asia/Tokyo"}
    by_coords = resolve_zone(None, env, coordinates=(39.04, -77.49))
    assert by_coords.zone == "US-VA"
    assert by_coords.rule.startswith("coordinates 39.04, -77.49 (Virginia")
    assert "approximate" in by_coords.rule
    assert resolve_zone("FR", env, coordinates=(39.04, -77.49)).zone == "FR"
    assert resolve_zone(None, {"CARBONCTX_ZONE": "SE"}, coordinates=(39.04, -77.49)).zone == "SE"


def test_coordinates_choose_the_table_row_offline(tmp_path: Path) -> None:
    env = {"CARBONCTX_LATITUDE": "39.04", "CARBONCTX_LONGITUDE": "-77.49"}
    with IntensityService(env=env, cache_dir=tmp_path, background=False) as s:
        now = s.current()
    assert (now.zone, now.source) == ("US-VA", "table")
    assert "eGRID2023" in now.dataset and "Virginia" in now.dataset
    # Australia's states have their own yearly rows.
    with IntensityService(latitude=-31.95, longitude=115.86, env={}, cache_dir=tmp_path) as s:
        wa = s.current()
    assert (wa.zone, wa.g_per_kwh) == ("AU-WA", 510.0)
    assert "National Greenhouse Accounts Factors 2024" in wa.dataset
    assert "South West Interconnected System" in wa.dataset
    # A province the yearly tables do not hold uses its country's row, and says which.
    with IntensityService(latitude=45.5, longitude=-73.57, env={}, cache_dir=tmp_path) as s:
        qc = s.current()
    assert qc.zone == "CA-QC" and qc.source == "table" and "Canada" in qc.dataset
    # Canada is not California (whose eGRID key is "CA" too).
    with IntensityService(zone="CA", env={}, cache_dir=tmp_path) as s:
        assert s.current().dataset.endswith(": Canada")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"latitude": 91.0, "longitude": 0.0}, "latitude=91.0: give degrees between -90 and 90"),
        ({"latitude": 0.0, "longitude": -180.5}, "between -180 and 180"),
        ({"latitude": math.nan, "longitude": 0.0}, "latitude=nan"),
        ({"latitude": 0.0, "longitude": math.inf}, "longitude=inf"),
        ({"latitude": "north", "longitude": 0.0}, "latitude='north'"),
        ({"latitude": True, "longitude": 0.0}, "latitude=True"),
        ({"latitude": 10.0}, "Give both latitude and longitude"),
    ],
)
def test_bad_coordinates_are_refused_with_the_setting_named(
    kw: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        IntensityService(env={}, cache_dir=tmp_path, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        carbonctx.configure(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CARBONCTX_LATITUDE": "95", "CARBONCTX_LONGITUDE": "0"}, "CARBONCTX_LATITUDE='95'"),
        ({"CARBONCTX_LATITUDE": "1", "CARBONCTX_LONGITUDE": "east"}, "CARBONCTX_LONGITUDE="),
        ({"CARBONCTX_LATITUDE": "nan", "CARBONCTX_LONGITUDE": "0"}, "CARBONCTX_LATITUDE='nan'"),
        ({"CARBONCTX_LONGITUDE": "0"}, "Give both"),
    ],
)
def test_bad_coordinate_variables_are_refused(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        IntensityService(env=env, cache_dir=tmp_path)


def test_zone_at_checks_its_arguments() -> None:
    for lat, lon in ((91.0, 0.0), (0.0, 181.0), (math.nan, 0.0), (True, 0.0)):
        with pytest.raises(ConfigurationError, match="degrees between"):
            zone_at(lat, lon)


# --------------------------------------------------------------------------- live, by coordinates


@pytest.mark.parametrize("api", ["v3", "v4"])
def test_electricity_maps_is_asked_by_coordinates_and_names_the_zone_it_found(
    api: str, server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 321.0
    server.em_zones_at[("39.0400", "-77.4900")] = "US-MIDA-PJM"
    s = service(
        server,
        tmp_path,
        client,
        clock,
        providers=["electricitymaps"],
        electricitymaps_token=TOKEN,
        electricitymaps_api=api,
        latitude=39.04,
        longitude=-77.49,
    )
    assert s.zone_choice.zone == "US-VA"
    s.refresh(wait=True, forecast=True)
    for endpoint in ("latest", "history", "forecast"):
        q = server.last(f"/{api}/carbon-intensity/{endpoint}").query
        assert "zone" not in q and (q["lat"], q["lon"]) == (["39.0400"], ["-77.4900"])
        # No fallback to the caller's IP address: a wrong place is worse than no value.
        no_ip = {
            "v3": ("shouldUseFallbackCallerLookup", "false"),
            "v4": ("disableCallerLookup", "true"),
        }
        key, value = no_ip[api]
        assert q[key] == [value]
    now = s.current()
    assert (now.g_per_kwh, now.source, now.zone) == (321.0, "live", "US-VA")
    assert now.dataset == f"Electricity Maps {api} latest for zone US-MIDA-PJM at 39.04, -77.49"
    assert s.co2(3.6e6, clock() - 60, clock()).co2_g == pytest.approx(321.0)
    s.close()


def test_an_explicit_zone_keeps_electricity_maps_on_the_zone(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = service(
        server,
        tmp_path,
        client,
        clock,
        zone="DE",
        providers=["electricitymaps"],
        electricitymaps_token=TOKEN,
        latitude=39.04,
        longitude=-77.49,
    )
    s.refresh(wait=True)
    assert server.last("/v3/carbon-intensity/latest").query == {"zone": ["DE"]}
    assert s.current().zone == "DE"
    s.close()


def test_coordinates_electricity_maps_does_not_know_fall_back_to_the_table(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = service(
        server,
        tmp_path,
        client,
        clock,
        providers=["electricitymaps"],
        electricitymaps_token=TOKEN,
        latitude=-37.81,
        longitude=144.96,
    )
    with pytest.warns(carbonctx.IntensityWarning, match="zone not known") as rec:
        s.refresh(wait=True)
    assert "Check the coordinates (CARBONCTX_LATITUDE" in str(rec[0].message)
    now = s.current()
    assert (now.zone, now.source) == ("AU-VIC", "table")
    assert now.note is not None and "No zone found for coordinates" in now.note
    s.close()


def test_the_boundaries_carry_their_source() -> None:
    data = Path(carbonctx.__file__).parent / "data"
    sources = (data / "SOURCES.md").read_text()
    assert "boundaries-naturalearth.tsv" in sources and "Natural Earth" in sources
    first = (data / "boundaries-naturalearth.tsv").read_text().splitlines()[0]
    assert first.startswith("#") and "Natural Earth" in first


def test_danish_coordinates_reach_the_price_area_provider(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 95.0
    s = service(server, tmp_path, client, clock, providers=["dk"], latitude=55.68, longitude=12.57)
    assert s.zone_choice.zone == "DK-DK2" and "Great Belt" in s.zone_choice.rule
    s.refresh(wait=True)
    assert '"DK2"' in server.last("/dataset/").query["filter"][0]
    now = s.current()
    assert (now.g_per_kwh, now.source, now.zone) == (95.0, "live", "DK-DK2")
    s.close()


def test_antimeridian_points_keep_their_country_and_state() -> None:
    # Fiji and Chukotka lie on both sides of 180 degrees; so do the Aleutians (Alaska).
    for lat, lon in ((-16.8, 179.99), (-16.8, -179.99), (-18.2, -178.8)):
        assert zone_at(lat, lon).zone == "FJ", (lat, lon)
    for lon in (179.9, 180.0, -180.0, -175.0):
        assert zone_at(66.0, lon).zone == "RU", lon
    assert zone_at(51.8, -176.6).zone == "US-AK"  # Adak, east of 180
    kiska = zone_at(52.0, 179.5)  # west of 180: Alaska still, not the whole United States
    assert kiska is not None and kiska.zone == "US-AK"


@pytest.mark.parametrize("text", ["52,52", "52.52,13.40"])
def test_a_comma_in_coordinates_is_explained(text: str, tmp_path: Path) -> None:
    env = {"CARBONCTX_LATITUDE": text, "CARBONCTX_LONGITUDE": "13.4"}
    with pytest.raises(ConfigurationError, match=r"CARBONCTX_LATITUDE=.*decimal point"):
        IntensityService(env=env, cache_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="decimal point"):
        carbonctx.configure(latitude=text, longitude=13.4)  # type: ignore[arg-type]


def test_us_territories_east_of_0_degrees_are_not_alaska() -> None:
    # Natural Earth draws Guam and the Northern Mariana Islands as their own countries; only the
    # Aleutians west of 180 degrees are United States land east of 0 degrees.
    assert zone_at(13.44, 144.79).zone == "GU"  # Hagatna, Guam
    assert zone_at(15.18, 145.75).zone == "MP"  # Saipan
    assert zone_at(-14.28, -170.70).zone == "AS"  # Pago Pago, American Samoa (west of 0)
    assert zone_at(52.93, 173.18).zone == "US-AK"  # Attu

"""The cloud-region table, region by region: each AWS, Azure and Google Cloud region maps to a
zone the tables know, in the country (and state or province) of the provider's published
location, and its yearly figure is the finest the tables hold."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import carbonctx
from carbonctx._carbon.geo import zone_at
from carbonctx._carbon.service import IntensityService
from carbonctx._carbon.zones import normalize_zone

DATA = Path(carbonctx.__file__).parent / "data"
ROWS = list(csv.DictReader((DATA / "cloud-region-zones.csv").read_text().splitlines()))
ENV_VAR = {"aws": "AWS_REGION", "gcp": "GOOGLE_CLOUD_REGION", "azure": "REGION_NAME"}
STATES = {
    r["state"] for r in csv.DictReader((DATA / "us-states-egrid2023.csv").read_text().splitlines())
}
COUNTRIES = {
    r["iso2"] for r in csv.DictReader((DATA / "ember-yearly.csv").read_text().splitlines())
}


def test_the_table_has_every_region_once_with_a_published_location() -> None:
    keys = [(r["provider"], r["region"]) for r in ROWS]
    assert len(keys) == len(set(keys))
    for cloud, count in (("aws", 35), ("azure", 60), ("gcp", 40)):
        assert sum(1 for r in ROWS if r["provider"] == cloud) >= count, cloud
    for r in ROWS:
        assert r["location"].strip(), r
        assert -90 <= float(r["latitude"]) <= 90 and -180 <= float(r["longitude"]) <= 180
    # Every provider's source is documented.
    sources = (DATA / "SOURCES.md").read_text()
    for where in ("AWS Regions and Availability Zones", "Azure regions list", "Google Cloud"):
        assert where in sources


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['provider']}:{r['region']}" for r in ROWS])
def test_region_maps_to_a_known_zone_in_its_published_location(row: dict[str, str]) -> None:
    zone = normalize_zone(row["zone"], "cloud-region-zones.csv")
    country = zone.split("-")[0]
    assert country in COUNTRIES, f"{zone}: no yearly row for its country"
    # The published location lies in the zone's country, and in the state given for it.
    area = zone_at(float(row["latitude"]), float(row["longitude"]))
    assert area is not None, row["location"]
    assert area.zone.split("-")[0] == country, f"{row['location']} is in {area.name}, not {zone}"
    if "-" in area.zone:  # a country whose states the tables or providers know
        assert row["state"] == area.zone, f"{row['location']} is in {area.name}"
    else:
        assert not row["state"]
    if zone.startswith(("CA-", "AU-")):  # provinces and states are grid zones there
        assert zone == row["state"]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r['provider']}:{r['region']}" for r in ROWS])
def test_region_gets_the_finest_yearly_figure(row: dict[str, str], tmp_path: Path) -> None:
    env = {ENV_VAR[row["provider"]]: row["region"]}
    with IntensityService(env=env, cache_dir=tmp_path, background=False) as s:
        assert s.zone_choice.zone == row["zone"]
        assert s.zone_choice.cloud_region is not None
        now = s.current()
    assert now.source == "table", now.note
    if row["provider"] == "gcp" and "Google Cloud region" in now.dataset:
        return  # Google's own figure for the region
    if row["state"].startswith("US-"):
        assert row["state"][3:] in STATES
        assert "eGRID" in now.dataset, f"{row['region']}: {now.dataset}"
    elif row["state"].startswith("AU-"):
        assert "National Greenhouse Accounts" in now.dataset, now.dataset
    else:
        assert "Ember" in now.dataset


@pytest.mark.parametrize(
    ("cloud", "region", "zone", "figure"),
    [
        # Grids a neighbouring or country-wide zone would get wrong.
        ("azure", "westcentralus", "US-NW-WACM", "Wyoming"),  # Cheyenne: WAPA Rocky Mountain
        ("azure", "eastus3", "US-SE-SOCO", "Georgia"),  # Atlanta, not PJM
        ("gcp", "us-central2", "US-CENT-SWPP", None),  # Pryor: SPP, not MISO
        ("gcp", "us-east1", "US-CAR-SC", None),  # Berkeley County: Santee Cooper, not SCEG
        ("aws", "us-east-1", "US-MIDA-PJM", "Virginia"),  # the state, not all of the US
        ("aws", "us-east-2", "US-MIDA-PJM", "Ohio"),
        ("azure", "centralus", "US-MIDW-MISO", "Iowa"),
        ("azure", "southcentralus", "US-TEX-ERCO", "Texas"),
        ("aws", "ca-west-1", "CA-AB", "Canada"),
        ("azure", "norwaywest", "NO-NO2", "Norway"),  # Stavanger: NO2, not Oslo's NO1
        ("azure", "australiacentral", "AU-NSW", "Australian Capital Territory"),  # NSW's grid
    ],
)
def test_regions_that_were_wrong_or_coarse(
    cloud: str, region: str, zone: str, figure: str | None, tmp_path: Path
) -> None:
    env = {ENV_VAR[cloud]: region}
    with IntensityService(env=env, cache_dir=tmp_path, background=False) as s:
        assert s.zone_choice.zone == zone
        if figure is not None:
            assert s.current().dataset.endswith(figure)


@pytest.mark.parametrize(
    ("region_name", "zone", "figure"),
    [
        # App Service's REGION_NAME is the display name; Azure Government and Azure China too.
        ("USGov Virginia", "US-MIDA-PJM", "Virginia"),
        ("USGov Texas", "US-TEX-ERCO", "Texas"),
        ("USGov Arizona", "US-SW-AZPS", "Arizona"),
        ("China North 3", "CN", "China"),
        ("chinaeast2", "CN", "China"),
    ],
)
def test_azure_government_and_china_regions(
    region_name: str, zone: str, figure: str, tmp_path: Path
) -> None:
    env = {"REGION_NAME": region_name}
    with IntensityService(env=env, cache_dir=tmp_path, background=False) as s:
        assert s.zone_choice.zone == zone
        assert s.zone_choice.cloud == "azure"
        assert s.current().dataset.endswith(figure)

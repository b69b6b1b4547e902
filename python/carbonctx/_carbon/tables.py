"""The bundled yearly tables of carbon intensity (countries, sub-national zones, the world)."""

from __future__ import annotations

import functools

import attrs

from carbonctx._carbon.intensity import Intensity
from carbonctx._carbon.zones import WORLD, ZoneChoice, cloud_region_states, read_bundled_csv

__all__ = ["table_intensity", "world_average"]


@attrs.frozen
class _Row:
    g_per_kwh: float
    dataset: str
    label: str


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, _Row], dict[str, _Row], dict[str, _Row], _Row]:
    countries: dict[str, _Row] = {}
    world: _Row | None = None
    for r in read_bundled_csv("ember-yearly.csv"):
        row = _Row(float(r["g_co2e_per_kwh"]), f"Ember yearly {r['year']} (CC BY 4.0)", r["name"])
        if r["iso2"]:
            countries[r["iso2"].upper()] = row
        if r["iso3"]:
            countries[r["iso3"].upper()] = row
        if r["name"] == "World":
            world = row
    states = {
        r["state"].upper(): _Row(
            float(r["g_co2e_per_kwh"]), f"EPA eGRID{r['year']} (public domain)", r["name"]
        )
        for r in read_bundled_csv("us-states-egrid2023.csv")
        if len(r["state"]) == 2
    }
    gcp = {
        r["Google Cloud Region"].strip().lower(): _Row(
            float(r["Grid carbon intensity (gCO2eq / kWh)"]),
            "Google Cloud region carbon info 2024, operational (Apache-2.0)",
            r["Google Cloud Region"].strip(),
        )
        for r in read_bundled_csv("gcp-regions-2024.csv")
        if r["Grid carbon intensity (gCO2eq / kWh)"].strip()
    }
    if world is None:  # pragma: no cover - the bundled file has it
        raise RuntimeError("the bundled ember-yearly.csv has no World row")
    # States of other countries, by zone code (``AU-NSW``): added to the US states' dict,
    # whose two-letter keys cannot collide with them.
    for r in read_bundled_csv("au-states-nga2024.csv"):
        states[r["state"].upper()] = _Row(
            float(r["g_co2e_per_kwh"]),
            "Australian National Greenhouse Accounts Factors 2024, scope 2, operational "
            "(CC BY 4.0)",
            r["name"],
        )
    return countries, states, gcp, world


# Electricity Maps US balancing-authority zones that lie (almost) wholly within one state.
_US_BA_STATE: tuple[tuple[str, str], ...] = (
    ("US-CAL-", "CA"),
    ("US-TEX-ERCO", "TX"),
    ("US-NY-NYIS", "NY"),
    ("US-FLA-", "FL"),
    ("US-NW-GCPD", "WA"),
    ("US-NW-CHPD", "WA"),
    ("US-NW-DOPD", "WA"),
    ("US-NW-SCL", "WA"),
    ("US-NW-TPWR", "WA"),
    ("US-NW-PSEI", "WA"),
    ("US-NW-PGE", "OR"),
    ("US-NW-NEVP", "NV"),
    ("US-SW-AZPS", "AZ"),
    ("US-SW-SRP", "AZ"),
    ("US-SW-TEPC", "AZ"),
    ("US-CAR-SCEG", "SC"),
    ("US-CAR-SC", "SC"),
    ("US-MIDW-LGEE", "KY"),
)
_COUNTRY_ALIASES = {"UK": "GB"}


def _table_row(choice: ZoneChoice) -> _Row | None:
    countries, states, gcp, _world = _tables()
    zone = choice.zone
    if choice.cloud == "gcp" and choice.cloud_region and choice.cloud_region in gcp:
        return gcp[choice.cloud_region]
    if choice.cloud and choice.cloud_region:
        # A region's grid zone may span several states; its published location's state is
        # finer where the table has it (AWS us-east-1, Ashburn: Virginia, not all of PJM).
        state = cloud_region_states().get((choice.cloud, choice.cloud_region), "")
        if state.startswith("US-") and state[3:] in states:
            return states[state[3:]]
        if "-" in state and state in states:
            return states[state]
    if "-" in zone and zone in states:  # a state of another country (AU-NSW)
        return states[zone]
    if zone.startswith("US-"):
        rest = zone[3:]
        if len(rest) == 2 and rest in states:
            return states[rest]
        for prefix, state in _US_BA_STATE:
            if zone == prefix or (prefix.endswith("-") and zone.startswith(prefix)):
                return states[state]
    country = zone.split("-", 1)[0]
    country = _COUNTRY_ALIASES.get(country, country)
    return countries.get(country)


def world_average(note: str | None = None) -> Intensity:
    """Ember's World figure."""
    row = _tables()[3]
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        zone=WORLD,
        source="world-average",
        provider="table",
        dataset=f"{row.dataset}: World",
        valid_from=None,
        valid_to=None,
        fetched_at=None,
        note=note,
    )


def table_intensity(choice: ZoneChoice, note: str | None = None) -> Intensity:
    """The yearly-table figure for a zone; the world average (and a note) when it has none."""
    if choice.zone == WORLD:
        return world_average(note)
    row = _table_row(choice)
    if row is None:
        why = f"the yearly table has no figure for zone {choice.zone}; using the world average"
        return world_average(why if note is None else f"{note}; {why}")
    dataset = f"{row.dataset}: {row.label}"
    return Intensity(
        g_per_kwh=row.g_per_kwh,
        zone=choice.zone,
        source="table",
        provider="table",
        dataset=dataset,
        valid_from=None,
        valid_to=None,
        fetched_at=None,
        note=note,
    )

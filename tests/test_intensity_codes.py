"""Country codes in the bundled tables: ISO 3166-1 alpha-2, each naming one country.

The yearly table's codes are checked against ISO 3166 (user-assigned ``XK`` for Kosovo, as the
table and Electricity Maps use it); ``NA`` (Namibia) is a code, never a missing value."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from carbonctx._carbon.geo import zone_at
from carbonctx._carbon.tables import table_intensity
from carbonctx._carbon.zones import ZoneChoice, resolve_zone

DATA = Path(__file__).resolve().parents[1] / "python" / "carbonctx" / "data"


def _ember() -> list[dict[str, str]]:
    with (DATA / "ember-yearly.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_each_alpha2_code_names_one_row() -> None:
    codes = [r["iso2"] for r in _ember() if r["iso2"]]
    assert len(codes) == len(set(codes)), sorted({c for c in codes if codes.count(c) > 1})


@pytest.mark.parametrize(
    ("zone", "name", "g"),
    [
        ("CY", "Cyprus", 512.24),  # ember-yearly.csv: CYP,Cyprus,2024,512.24
        ("KY", "Cayman Islands", 642.86),  # CYM,Cayman Islands,2023,642.86 (ISO 3166: KY)
        ("NA", "Namibia", 47.62),  # NAM,Namibia,2023,47.62
        ("XK", "Kosovo", 958.72),  # XKX,Kosovo,2024,958.72
    ],
)
def test_table_figure_by_code(zone: str, name: str, g: float) -> None:
    got = table_intensity(resolve_zone(zone, {}))
    assert got.zone == zone
    assert got.source == "table"
    assert got.g_per_kwh == pytest.approx(g)
    assert got.dataset.endswith(name)


def test_coordinates_in_the_cayman_islands_namibia_and_kosovo() -> None:
    assert zone_at(19.30, -81.38).zone == "KY"  # George Town, Grand Cayman
    assert zone_at(-22.56, 17.08).zone == "NA"  # Windhoek
    assert zone_at(42.66, 21.17).zone == "XK"  # Pristina
    got = table_intensity(ZoneChoice("KY", "coordinates"))
    assert got.g_per_kwh == pytest.approx(642.86)

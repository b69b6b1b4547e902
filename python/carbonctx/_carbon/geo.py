"""Which zone a point lies in, by the embedded boundaries: approximate, and said to be.

``boundaries-naturalearth.tsv`` holds, one area a line, ``zone<TAB>name<TAB>rings``: the states
of the US (``US-CA``), the provinces and territories of Canada (``CA-QC``) and the states of
Australia (``AU-NSW``; the Capital Territory is in New South Wales' grid) from Natural Earth's
1:50m first-order divisions, then every country from its 1:50m countries, both simplified to
within about 3 km (0.03 degree); public domain, see ``data/SOURCES.md``. Rings are points in
hundredths of a degree (longitude, latitude), the first as ``x,y`` and each next one as its step
from the one before, separated by ``|``; a point is in an area when it is inside an odd number
of its rings. The first area that holds the point wins, so a state comes before its country.
Denmark is split into its two price areas (DK1, DK2) along the Great Belt, and Northern Ireland
(on the island of Ireland's grid) from Great Britain.

At this scale a border can be some kilometres off: a point near one may land in the neighbour.
A point outside every area but within :data:`COAST_REACH_DEG` of one (a harbour city the
simplified coast cuts off, a small island) takes the nearest; farther out at sea it is in none
(then the zone is found by the next rule). Results say they are approximate.

>>> zone_at(48.14, 11.58)
Area(zone='DE', name='Germany')
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import attrs

from carbonctx.errors import ConfigurationError

__all__ = ["BOUNDARIES", "Area", "check_coordinates", "zone_at"]

#: How far off a coast (degrees) a point still counts as the nearest area's: simplified
#: coastlines cut off harbour cities and small islands.
COAST_REACH_DEG = 0.15
#: What the boundaries are, for rules and notes.
BOUNDARIES = "approximate boundaries: Natural Earth 1:50m, within about 3 km"


@attrs.frozen
class Area:
    """A zone and the name of the area that gave it."""

    zone: str
    name: str


@attrs.frozen
class _Shape:
    area: Area
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in hundredths of a degree
    rings: tuple[tuple[tuple[int, int], ...], ...]


def _ring(text: str) -> tuple[tuple[int, int], ...]:
    """``x,y dx,dy dx,dy ...``: the first point, then each as a step from the one before."""
    points = []
    x = y = 0
    for pair in text.split(" "):
        dx, dy = pair.split(",")
        x, y = x + int(dx), y + int(dy)
        points.append((x, y))
    return tuple(points)


@functools.lru_cache(maxsize=1)
def _shapes() -> tuple[_Shape, ...]:
    text = (
        resources.files("carbonctx")
        .joinpath("data")
        .joinpath("boundaries-naturalearth.tsv")
        .read_text(encoding="utf-8")
    )
    shapes = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        zone, name, rings_text = line.split("\t")
        rings = tuple(_ring(r) for r in rings_text.split("|"))
        xs = [x for r in rings for x, _ in r]
        ys = [y for r in rings for _, y in r]
        shapes.append(_Shape(Area(zone, name), (min(xs), min(ys), max(xs), max(ys)), rings))
    return tuple(shapes)


def _inside(x: float, y: float, ring: tuple[tuple[int, int], ...]) -> bool:
    """Even-odd ray cast towards +x."""
    inside = False
    x0, y0 = ring[-1]
    for x1, y1 in ring:
        if (y1 > y) != (y0 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
        x0, y0 = x1, y1
    return inside


def _distance2(x: float, y: float, ring: tuple[tuple[int, int], ...]) -> float:
    """Squared distance (in hundredths of a degree, unscaled) from the point to the ring."""
    best = math.inf
    x0, y0 = ring[-1]
    for x1, y1 in ring:
        dx, dy = x1 - x0, y1 - y0
        seg = dx * dx + dy * dy
        t = 0.0 if seg == 0 else max(0.0, min(1.0, ((x - x0) * dx + (y - y0) * dy) / seg))
        px, py = x0 + t * dx - x, y0 + t * dy - y
        best = min(best, px * px + py * py)
        x0, y0 = x1, y1
    return best


def _split(area: Area, latitude: float, longitude: float) -> Area:
    """A country whose grid is split in zones that a line describes well enough.

    The United Kingdom: Northern Ireland is on the all-island grid of Ireland (``GB-NIR``),
    apart from Great Britain's (``GB``, the zone of the GB carbon intensity API).

    Denmark: price area DK1 is Jutland and Funen, west of the Great Belt; DK2 is Zealand,
    Lolland-Falster and Bornholm, east of it (Energinet). The Great Belt runs along about
    11.0 degrees east."""
    if area.zone == "GB" and 53.9 < latitude < 55.2 and longitude < -5.4:
        # Northern Ireland: on the island of Ireland's grid, not Great Britain's. No part of
        # Great Britain lies west of 5.4 degrees west between 53.9 and 55.2 degrees north.
        return Area("GB-NIR", "Northern Ireland")
    if area.zone == "US" and longitude > 0:
        # The Aleutian Islands west of the antimeridian (Amchitka, Kiska, Attu): Alaska, whose
        # outline the state boundaries draw east of it only. No other US state lies east of 0.
        return Area("US-AK", "Alaska (Aleutian Islands west of the antimeridian)")
    if area.zone == "DK":
        west = longitude < 11.0
        return Area(
            "DK-DK1" if west else "DK-DK2",
            f"{area.name}, {'west' if west else 'east'} of the Great Belt",
        )
    return area


def check_coordinates(latitude: object, longitude: object, setting: str = "coordinates") -> None:
    """Raise ConfigurationError unless both are finite degrees in range."""
    for value, name, limit in ((latitude, "latitude", 90.0), (longitude, "longitude", 180.0)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        x = float(value) if number and isinstance(value, (int, float)) else math.nan
        if not (math.isfinite(x) and -limit <= x <= limit):
            raise ConfigurationError(
                f"{setting}: {name}={value!r}; give degrees between -{limit:g} and {limit:g}."
            )


def zone_at(latitude: float, longitude: float) -> Area | None:
    """The zone of the first embedded area holding the point, or None (sea, a small island,
    or a territory the boundaries leave out). Raises ConfigurationError for bad coordinates."""
    check_coordinates(latitude, longitude)
    x, y = float(longitude) * 100.0, float(latitude) * 100.0
    near: tuple[float, Area] | None = None
    reach = COAST_REACH_DEG * 100.0
    for shape in _shapes():
        x0, y0, x1, y1 = shape.box
        if not (x0 - reach <= x <= x1 + reach and y0 - reach <= y <= y1 + reach):
            continue
        if x0 <= x <= x1 and y0 <= y <= y1 and sum(_inside(x, y, r) for r in shape.rings) % 2:
            return _split(shape.area, latitude, longitude)
        d2 = min(_distance2(x, y, r) for r in shape.rings)
        if d2 <= reach * reach and (near is None or d2 < near[0]):
            near = (d2, shape.area)
    # Outside every simplified area but close to one: a coast the simplification cut off.
    return _split(near[1], latitude, longitude) if near is not None else None

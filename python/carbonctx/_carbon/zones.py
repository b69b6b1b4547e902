"""Which electricity zone this process runs in, and why we think so.

A zone is an Electricity Maps-style code (``DE``, ``DK-DK1``, ``US-CAL-CISO``, ``GB``). The first
rule that gives an answer wins:

1. an explicit argument;
2. ``CARBONCTX_ZONE``;
3. coordinates (``CARBONCTX_LATITUDE``/``_LONGITUDE``, or the settings), through the embedded
   approximate boundaries of ``_carbon.geo``: a US state (``US-VA``), Canadian province
   (``CA-QC``), Australian state (``AU-NSW``) or else a country; the rule says it is approximate;
4. a cloud region from the environment (``AWS_REGION``, ``AWS_DEFAULT_REGION``,
   ``GOOGLE_CLOUD_REGION``, ``FUNCTION_REGION``, Azure App Service's ``REGION_NAME``), through the
   bundled region table;
5. the system time zone (``TZ``, ``/etc/localtime``, ``/etc/timezone``) mapped to its country;
6. the world average.

No IP geolocation: it silently picks a wrong country behind proxies and firewalls.

>>> resolve_zone(env={"CARBONCTX_ZONE": "dk-dk1"})
ZoneChoice(zone='DK-DK1', rule='CARBONCTX_ZONE', cloud=None, cloud_region=None)
"""

from __future__ import annotations

import csv
import functools
import os
import re
import stat
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import attrs

from carbonctx import _config
from carbonctx._carbon.geo import BOUNDARIES, zone_at
from carbonctx.errors import ConfigurationError

__all__ = [
    "WORLD",
    "ZoneChoice",
    "cloud_region_states",
    "cloud_region_zones",
    "normalize_zone",
    "read_bundled_csv",
    "resolve_zone",
]

#: The zone code used when nothing better is known.
WORLD = "WORLD"

_ZONE_RE = re.compile(r"^[A-Z]{2,3}(-[A-Z0-9]+)*$")

# (environment variable, cloud) in the order they are consulted.
_CLOUD_VARS: tuple[tuple[str, str], ...] = (
    ("AWS_REGION", "aws"),  # Lambda, ECS, CodeBuild set it
    ("AWS_DEFAULT_REGION", "aws"),  # AWS CLI / SDK configuration
    ("GOOGLE_CLOUD_REGION", "gcp"),  # set by users and some tooling
    ("FUNCTION_REGION", "gcp"),  # Cloud Functions (older runtimes)
    ("REGION_NAME", "azure"),  # App Service / Functions, e.g. "West Europe"
)

# Used only where the system's zone.tab / zone1970.tab cannot be read.
_TZ_FALLBACK: dict[str, str] = {
    "Europe/London": "GB",
    "Europe/Dublin": "IE",
    "Europe/Lisbon": "PT",
    "Europe/Madrid": "ES",
    "Europe/Paris": "FR",
    "Europe/Brussels": "BE",
    "Europe/Amsterdam": "NL",
    "Europe/Luxembourg": "LU",
    "Europe/Berlin": "DE",
    "Europe/Zurich": "CH",
    "Europe/Vienna": "AT",
    "Europe/Rome": "IT",
    "Europe/Copenhagen": "DK",
    "Europe/Oslo": "NO",
    "Europe/Stockholm": "SE",
    "Europe/Helsinki": "FI",
    "Europe/Warsaw": "PL",
    "Europe/Prague": "CZ",
    "Europe/Budapest": "HU",
    "Europe/Athens": "GR",
    "Europe/Istanbul": "TR",
    "Europe/Kyiv": "UA",
    "Europe/Kiev": "UA",
    "America/New_York": "US",
    "America/Chicago": "US",
    "America/Denver": "US",
    "America/Phoenix": "US",
    "America/Los_Angeles": "US",
    "America/Anchorage": "US",
    "Pacific/Honolulu": "US",
    "America/Toronto": "CA",
    "America/Vancouver": "CA",
    "America/Montreal": "CA",
    "America/Mexico_City": "MX",
    "America/Sao_Paulo": "BR",
    "America/Argentina/Buenos_Aires": "AR",
    "America/Santiago": "CL",
    "Asia/Tokyo": "JP",
    "Asia/Seoul": "KR",
    "Asia/Shanghai": "CN",
    "Asia/Hong_Kong": "HK",
    "Asia/Taipei": "TW",
    "Asia/Singapore": "SG",
    "Asia/Kolkata": "IN",
    "Asia/Calcutta": "IN",
    "Asia/Jakarta": "ID",
    "Asia/Dubai": "AE",
    "Asia/Jerusalem": "IL",
    "Australia/Sydney": "AU",
    "Australia/Melbourne": "AU",
    "Australia/Brisbane": "AU",
    "Australia/Perth": "AU",
    "Pacific/Auckland": "NZ",
    "Africa/Johannesburg": "ZA",
    # Legacy names whose link now crosses a border (tzdata 2022b and later).
    "Iceland": "IS",
    "Atlantic/Reykjavik": "IS",
    "Europe/Belfast": "GB",
}

# The most bytes read from a file that may be a compiled zone (tzdata's largest: under 4 KiB).
_TZIF_MAX = 1 << 20

# Names of no place: the zone rule passes them to the next rule (never a guessed country).
_NO_PLACE = frozenset(
    {"UTC", "UCT", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich", "Universal", "Zulu"}
)


@attrs.frozen
class ZoneChoice:
    """The zone used for carbon intensity, and the rule that chose it.

    ``rule`` is one of ``"argument"``, ``"CARBONCTX_ZONE"``,
    ``"coordinates 48.14, 11.58 (Germany; approximate boundaries: ...)"``,
    ``"cloud region (AWS_REGION=eu-west-1)"``, ``"time zone Europe/Berlin"``, ``"world average"``.
    ``cloud`` and ``cloud_region`` are set when a cloud region chose the zone.
    """

    zone: str
    rule: str
    cloud: str | None = None
    cloud_region: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "zone": self.zone,
            "rule": self.rule,
            "cloud": self.cloud,
            "cloud_region": self.cloud_region,
        }


def normalize_zone(value: str, setting: str) -> str:
    """Upper-case and check a zone code; ``setting`` names where it came from for the error."""
    zone = value.strip().upper()
    if zone in ("WORLD", "WORLD-AVERAGE"):
        return WORLD
    if not _ZONE_RE.match(zone):
        raise ConfigurationError(
            f"{setting}={value!r} is not a zone code. Use an Electricity Maps zone such as "
            "'DE', 'GB', 'DK-DK1' or 'US-CAL-CISO' (a country's ISO 3166 code works), or unset "
            "it to detect the zone."
        )
    return zone


def read_bundled_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("carbonctx").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@functools.lru_cache(maxsize=1)
def cloud_region_zones() -> dict[tuple[str, str], str]:
    """``(cloud, normalized region) -> zone`` from the bundled ``cloud-region-zones.csv``."""
    return {
        (row["provider"], _norm_region(row["provider"], row["region"])): row["zone"]
        for row in read_bundled_csv("cloud-region-zones.csv")
    }


@functools.lru_cache(maxsize=1)
def cloud_region_states() -> dict[tuple[str, str], str]:
    """``(cloud, normalized region) -> state`` (``US-VA``, ``CA-QC``, ``AU-NSW``) for the
    regions in a country whose states the tables or providers know: the published location's
    state, which the yearly tables may hold where the grid zone spans several states."""
    return {
        (row["provider"], _norm_region(row["provider"], row["region"])): row["state"]
        for row in read_bundled_csv("cloud-region-zones.csv")
        if row.get("state")
    }


def _norm_region(cloud: str, region: str) -> str:
    region = region.strip().lower()
    if cloud == "azure":  # "West Europe", "westeurope" and "WestEurope" are one region
        region = region.replace(" ", "").replace("-", "")
    return region


def _zone_from_cloud(env: Mapping[str, str]) -> ZoneChoice | None:
    table = cloud_region_zones()
    for var, cloud in _CLOUD_VARS:
        raw = env.get(var, "").strip()
        if not raw:
            continue
        zone = table.get((cloud, _norm_region(cloud, raw)))
        if zone is not None:
            return ZoneChoice(
                zone=zone,
                rule=f"cloud region ({var}={raw})",
                cloud=cloud,
                cloud_region=_norm_region(cloud, raw),
            )
    return None


def _tz_name(
    env: Mapping[str, str], localtime: Path, timezone_file: Path, zoneinfo_dir: str
) -> str | None:
    tz = env.get("TZ", "").strip().lstrip(":")
    if tz:
        if "zoneinfo/" in tz:  # TZ=/usr/share/zoneinfo/Europe/Berlin
            tz = tz.split("zoneinfo/", 1)[1]
        elif tz.startswith("/"):  # TZ=:/etc/localtime (set in containers to spare a stat)
            # /etc/timezone describes /etc/localtime only: another file is known by its own
            # link or bytes.
            named = timezone_file if Path(tz) == localtime else None
            return _tz_of_file(Path(tz), named, zoneinfo_dir)
        tz = _strip_tree(tz)
        return tz if "/" in tz else None  # POSIX rules ("CET-1CEST", "EST5EDT") name no place
    return _tz_of_file(localtime, timezone_file, zoneinfo_dir)


def _tz_of_file(localtime: Path, timezone_file: Path | None, zoneinfo_dir: str) -> str | None:
    try:
        target = os.readlink(localtime)
    except (OSError, ValueError):
        target = ""
    if "zoneinfo/" in target:
        return _strip_tree(target.split("zoneinfo/", 1)[1])
    name = ""
    if timezone_file is not None:
        try:
            name = timezone_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
    # /etc/localtime copied rather than linked (some images and minimal distributions): the
    # zone whose compiled file has the same bytes.
    return name or _tz_by_contents(localtime, zoneinfo_dir)


def _strip_tree(name: str) -> str:
    """``posix/Europe/Berlin`` and ``right/Europe/Berlin`` (leap-second tree) are that zone."""
    for tree in ("posix/", "right/"):
        if name.startswith(tree):
            return name[len(tree) :]
    return name


def _tz_by_contents(localtime: Path, zoneinfo_dir: str) -> str | None:
    # Opened without following a link and without blocking (a FIFO named by TZ), read only if a
    # regular file no larger than any compiled zone (a few KiB; /dev/zero or a huge file is not).
    try:
        fd = os.open(localtime, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except (OSError, ValueError):
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > _TZIF_MAX:
                return None
            data = f.read(_TZIF_MAX + 1)
    except OSError:
        return None
    if len(data) > _TZIF_MAX or not data.startswith(b"TZif"):
        return None
    countries = _tz_countries(zoneinfo_dir)
    found: dict[str, str] = {}  # country -> first zone name with these bytes
    for name in sorted(countries):
        path = Path(zoneinfo_dir) / name
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                found.setdefault(countries[name], name)
        except OSError:
            continue
    # Zones of two countries compiled to the same bytes (a link build): no guess.
    return next(iter(found.values())) if len(found) == 1 else None


@functools.lru_cache(maxsize=4)
def _tz_countries(zoneinfo_dir: str) -> dict[str, str]:
    """tz name -> ISO country from the system tz database (zone.tab, then zone1970.tab)."""
    mapping: dict[str, str] = {}
    # zone1970.tab first, so that zone.tab's one-country-per-line entries override it.
    for name in ("zone1970.tab", "zone.tab"):
        try:
            lines = (Path(zoneinfo_dir) / name).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) >= 3:
                # zone1970.tab lists several countries; the first is where the zone's city is.
                mapping[fields[2]] = fields[0].split(",")[0]
    return mapping


def country_for_tz(tz: str, zoneinfo_dir: str = "/usr/share/zoneinfo") -> str | None:
    """ISO 3166 alpha-2 country of an IANA time zone name, or None (``UTC``, ``Etc/GMT+5``).

    A backward-compatible link name (``Asia/Calcutta``, ``US/Eastern``) is followed one step at
    a time, through the tz tree's symbolic links and the ``L`` lines of its ``tzdata.zi``, until
    a name the tables place; a name the tables place is never followed (since 2022 some links
    join zones across countries: ``Atlantic/Reykjavik`` links to ``Africa/Abidjan``)."""
    countries = _tz_countries(zoneinfo_dir)
    links = _tz_links(zoneinfo_dir)
    seen: set[str] = set()
    name: str | None = _strip_tree(tz)
    while name is not None and name not in seen:
        seen.add(name)
        country = countries.get(name) or _TZ_FALLBACK.get(name)
        if country or name.startswith("Etc/") or name in _NO_PLACE:
            return country
        name = _link_target(name, zoneinfo_dir) or links.get(name)
    return None


def _link_target(name: str, zoneinfo_dir: str) -> str | None:
    """The zone a symbolic link in the tz tree points to, as a name relative to the tree."""
    path = Path(zoneinfo_dir) / name
    try:
        target = os.readlink(path)
    except (OSError, ValueError):
        return None
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
    root = os.path.normpath(zoneinfo_dir) + os.sep
    return _strip_tree(resolved[len(root) :]) if resolved.startswith(root) else None


@functools.lru_cache(maxsize=4)
def _tz_links(zoneinfo_dir: str) -> dict[str, str]:
    """link name -> target from ``tzdata.zi`` (``L TARGET LINK`` lines), where installed."""
    try:
        lines = (Path(zoneinfo_dir) / "tzdata.zi").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    return {f[2]: f[1] for f in (line.split() for line in lines) if len(f) == 3 and f[0] == "L"}


def resolve_zone(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    coordinates: tuple[float, float] | None = None,
    localtime: str | os.PathLike[str] = "/etc/localtime",
    timezone_file: str | os.PathLike[str] = "/etc/timezone",
    zoneinfo_dir: str = "/usr/share/zoneinfo",
) -> ZoneChoice:
    """Choose the zone by the rules in the module docstring (first match wins)."""
    env = _config.environ(env)
    if explicit is not None:
        return ZoneChoice(normalize_zone(explicit, "zone"), "argument")
    from_env = env.get("CARBONCTX_ZONE", "").strip()
    if from_env:
        return ZoneChoice(normalize_zone(from_env, "CARBONCTX_ZONE"), "CARBONCTX_ZONE")
    if coordinates is not None:
        lat, lon = coordinates
        area = zone_at(lat, lon)
        if area is not None:
            return ZoneChoice(
                normalize_zone(area.zone, "coordinates"),
                f"coordinates {lat:g}, {lon:g} ({area.name}; {BOUNDARIES})",
            )
    cloud = _zone_from_cloud(env)
    if cloud is not None:
        return cloud
    tz = _tz_name(env, Path(localtime), Path(timezone_file), zoneinfo_dir)
    if tz:
        country = country_for_tz(tz, zoneinfo_dir)
        if country:
            return ZoneChoice(country, f"time zone {tz}")
    return ZoneChoice(WORLD, "world average")

"""The time-zone rule on real tz database layouts: link names, copied /etc/localtime, UTC.

Each test builds its own small zoneinfo tree the way tzdata installs it (zone.tab, zone1970.tab,
tzdata.zi with ``L`` link lines, backward names as symbolic links, compiled TZif files)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from carbonctx._carbon.zones import ZoneChoice, country_for_tz, resolve_zone

ZONE_TAB = """# tzdb timezone descriptions (deprecated version)
CI\t+0519-00402\tAfrica/Abidjan
DE\t+5230+01322\tEurope/Berlin\tmost of Germany
DK\t+5540+01235\tEurope/Copenhagen
GB\t+513030-0000731\tEurope/London
IN\t+2232+08822\tAsia/Kolkata
IS\t+6409-02151\tAtlantic/Reykjavik
US\t+404251-0740023\tAmerica/New_York\tEastern (most areas)
"""
ZONE1970_TAB = """# tzdb timezone descriptions
CI,BF,GH,GM,GN,IS,ML,MR,SH,SL,SN,TG\t+0519-00402\tAfrica/Abidjan
DE,DK,NO,SE,SJ\t+5230+01322\tEurope/Berlin\tmost of Germany
GB,GG,IM,JE\t+513030-0000731\tEurope/London
IN\t+2232+08822\tAsia/Kolkata
US\t+404251-0740023\tAmerica/New_York\tEastern (most areas)
"""
TZDATA_ZI = """# version 2025b
Z Europe/Berlin 0:53:28 - LMT 1893 Ap
L America/New_York US/Eastern
L Asia/Kolkata Asia/Calcutta
L Africa/Abidjan Iceland
L Europe/London GB
"""


def _tzif(tag: str) -> bytes:
    return b"TZif2" + bytes(15) + tag.encode() * 20


def _tree(root: Path, *, links_as_symlinks: bool) -> Path:
    (root / "Europe").mkdir(parents=True)
    (root / "Asia").mkdir()
    (root / "America").mkdir()
    (root / "Africa").mkdir()
    (root / "Atlantic").mkdir()
    (root / "Etc").mkdir()
    (root / "US").mkdir()
    (root / "zone.tab").write_text(ZONE_TAB, encoding="utf-8")
    (root / "zone1970.tab").write_text(ZONE1970_TAB, encoding="utf-8")
    (root / "tzdata.zi").write_text(TZDATA_ZI, encoding="utf-8")
    for name in ("Europe/Berlin", "Europe/London", "Asia/Kolkata", "America/New_York"):
        (root / name).write_bytes(_tzif(name))
    (root / "Africa/Abidjan").write_bytes(_tzif("Africa/Abidjan"))
    (root / "Etc/UTC").write_bytes(_tzif("UTC"))
    if links_as_symlinks:
        os.symlink("../America/New_York", root / "US/Eastern")
        os.symlink("Kolkata", root / "Asia/Calcutta")
        os.symlink("Etc/UTC", root / "UTC")
        os.symlink("../Africa/Abidjan", root / "Atlantic/Reykjavik")
        os.symlink("Africa/Abidjan", root / "Iceland")
    return root


def test_link_names_follow_symbolic_links_in_the_tree(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "zi", links_as_symlinks=True))
    (tmp_path / "zi" / "tzdata.zi").unlink()  # only the symbolic links tell
    assert country_for_tz("US/Eastern", tree) == "US"
    assert country_for_tz("Asia/Calcutta", tree) == "IN"


def test_link_names_follow_tzdata_zi_where_links_are_not_symlinks(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "zi", links_as_symlinks=False))
    assert country_for_tz("US/Eastern", tree) == "US"
    assert country_for_tz("Asia/Calcutta", tree) == "IN"
    choice = resolve_zone(None, {"TZ": ":US/Eastern"}, zoneinfo_dir=tree)
    assert choice == ZoneChoice("US", "time zone US/Eastern")


def test_a_link_that_crosses_a_border_is_not_followed(tmp_path: Path) -> None:
    """Since tzdata 2022b Iceland's names link to Africa/Abidjan: still Iceland, never CI."""
    tree = str(_tree(tmp_path / "zi", links_as_symlinks=True))
    assert country_for_tz("Atlantic/Reykjavik", tree) == "IS"
    assert country_for_tz("Iceland", tree) == "IS"


def test_utc_is_no_country(tmp_path: Path) -> None:
    """UTC is the zone of no place: never Great Britain (whose zone shares its offset)."""
    tree = str(_tree(tmp_path / "zi", links_as_symlinks=True))
    for name in ("UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/GMT+5", "Zulu"):
        assert country_for_tz(name, tree) is None, name
    link = tmp_path / "localtime"
    os.symlink(str(tmp_path / "zi" / "UTC"), link)
    choice = resolve_zone(
        None, {}, localtime=link, timezone_file=tmp_path / "no", zoneinfo_dir=tree
    )
    assert choice == ZoneChoice("WORLD", "world average")


def test_localtime_in_the_posix_and_right_trees(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "zi", links_as_symlinks=True))
    for sub in ("posix", "right"):
        link = tmp_path / f"localtime-{sub}"
        os.symlink(f"/usr/share/zoneinfo/{sub}/Europe/Berlin", link)
        choice = resolve_zone(
            None, {}, localtime=link, timezone_file=tmp_path / "no", zoneinfo_dir=tree
        )
        assert choice == ZoneChoice("DE", "time zone Europe/Berlin"), sub
    choice = resolve_zone(None, {"TZ": "right/Asia/Kolkata"}, zoneinfo_dir=tree)
    assert choice == ZoneChoice("IN", "time zone Asia/Kolkata")
    assert country_for_tz("posix/Asia/Kolkata", tree) == "IN"
    assert country_for_tz("right/US/Eastern", tree) == "US"


def test_copied_localtime_is_matched_by_its_bytes(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "zi", links_as_symlinks=True)
    copied = tmp_path / "localtime"
    copied.write_bytes((tree / "Asia/Kolkata").read_bytes())
    choice = resolve_zone(
        None, {}, localtime=copied, timezone_file=tmp_path / "no", zoneinfo_dir=str(tree)
    )
    assert choice == ZoneChoice("IN", "time zone Asia/Kolkata")
    # /etc/timezone, where present, names the zone without reading the tree.
    (tmp_path / "timezone").write_text("Europe/London\n", encoding="utf-8")
    choice = resolve_zone(
        None, {}, localtime=copied, timezone_file=tmp_path / "timezone", zoneinfo_dir=str(tree)
    )
    assert choice == ZoneChoice("GB", "time zone Europe/London")


def test_copied_localtime_of_utc_or_of_two_countries_is_no_guess(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "zi", links_as_symlinks=True)
    copied = tmp_path / "localtime"
    copied.write_bytes((tree / "Etc/UTC").read_bytes())
    none = resolve_zone(
        None, {}, localtime=copied, timezone_file=tmp_path / "no", zoneinfo_dir=str(tree)
    )
    assert none == ZoneChoice("WORLD", "world average")
    # A link build: Copenhagen compiled to Berlin's bytes. Denmark or Germany? No guess.
    (tree / "Europe/Copenhagen").write_bytes((tree / "Europe/Berlin").read_bytes())
    copied.write_bytes((tree / "Europe/Berlin").read_bytes())
    none = resolve_zone(
        None, {}, localtime=copied, timezone_file=tmp_path / "no", zoneinfo_dir=str(tree)
    )
    assert none.rule == "world average"


def test_posix_tz_strings_name_no_place(tmp_path: Path) -> None:
    tree = str(_tree(tmp_path / "zi", links_as_symlinks=True))
    for tz in ("EST5EDT", "CET-1CEST,M3.5.0,M10.5.0/3", "<+0530>-5:30"):
        assert resolve_zone(None, {"TZ": tz}, zoneinfo_dir=tree).rule == "world average", tz


def test_tz_naming_a_file_reads_that_file(tmp_path: Path) -> None:
    """``TZ=:/etc/localtime`` (containers set it to spare a stat per call) is that file's zone."""
    tree = _tree(tmp_path / "zi", links_as_symlinks=True)
    link = tmp_path / "localtime"
    os.symlink("/usr/share/zoneinfo/Europe/Berlin", link)
    choice = resolve_zone(None, {"TZ": f":{link}"}, zoneinfo_dir=str(tree))
    assert choice == ZoneChoice("DE", "time zone Europe/Berlin")
    copied = tmp_path / "copied"
    copied.write_bytes((tree / "America/New_York").read_bytes())
    choice = resolve_zone(
        None, {"TZ": str(copied)}, timezone_file=tmp_path / "no", zoneinfo_dir=str(tree)
    )
    assert choice == ZoneChoice("US", "time zone America/New_York")


def test_tz_naming_another_file_is_not_described_by_etc_timezone(tmp_path: Path) -> None:
    """/etc/timezone names /etc/localtime's zone, not the zone of a file TZ names elsewhere."""
    tree = _tree(tmp_path / "zi", links_as_symlinks=True)
    timezone = tmp_path / "timezone"
    timezone.write_text("Asia/Kolkata\n", encoding="utf-8")
    copied = tmp_path / "copied"
    copied.write_bytes((tree / "America/New_York").read_bytes())
    choice = resolve_zone(
        None,
        {"TZ": f":{copied}"},
        localtime=tmp_path / "localtime",
        timezone_file=timezone,
        zoneinfo_dir=str(tree),
    )
    assert choice == ZoneChoice("US", "time zone America/New_York")
    # TZ naming /etc/localtime itself: /etc/timezone still describes it.
    localtime = tmp_path / "localtime"
    localtime.write_bytes(b"TZif2" + bytes(15) + b"not a zone of the tree")
    choice = resolve_zone(
        None,
        {"TZ": f":{localtime}"},
        localtime=localtime,
        timezone_file=timezone,
        zoneinfo_dir=str(tree),
    )
    assert choice == ZoneChoice("IN", "time zone Asia/Kolkata")


def test_tz_naming_a_huge_file_a_fifo_or_a_device_reads_a_bounded_amount(
    tmp_path: Path,
) -> None:
    """No zone, no hang, and no more read than a compiled zone's size (a sparse 512 MiB file)."""
    tree = _tree(tmp_path / "zi", links_as_symlinks=True)
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.write(b"TZif2")
        f.truncate(512 << 20)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (huge, fifo, Path("/dev/zero")):
        tracemalloc.start()
        try:
            choice = resolve_zone(
                None,
                {"TZ": f":{path}"},
                timezone_file=tmp_path / "no",
                zoneinfo_dir=str(tree),
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert choice.rule == "world average", path
        assert peak < 16 << 20, (path, peak)


def test_a_cycle_of_links_in_the_tree_names_no_country(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "zi", links_as_symlinks=True)
    os.symlink("Loop2", tree / "US/Loop1")
    os.symlink("../US/Loop1", tree / "US/Loop2")
    (tree / "tzdata.zi").write_text(TZDATA_ZI + "L US/Zi2 US/Zi1\nL US/Zi1 US/Zi2\n")
    assert country_for_tz("US/Loop1", str(tree)) is None
    assert country_for_tz("US/Zi1", str(tree)) is None
    localtime = tmp_path / "localtime"
    os.symlink(tmp_path / "localtime2", localtime)
    os.symlink(localtime, tmp_path / "localtime2")
    choice = resolve_zone(
        None, {}, localtime=localtime, timezone_file=tmp_path / "no", zoneinfo_dir=str(tree)
    )
    assert choice.rule == "world average"

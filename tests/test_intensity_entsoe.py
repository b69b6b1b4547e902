"""ENTSO-E Transparency Platform (A75 generation per production type, XML) against a real HTTP
server on 127.0.0.1 that answers in its documented format, failures included."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.providers.entsoe import BIDDING_ZONES, lifecycle_factors
from carbonctx._carbon.service import IntensityService
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, service

UTC = timezone.utc
T0 = datetime(2026, 6, 1, 10, 40, tzinfo=UTC).timestamp()
TOKEN = "entsoe-S3cret-T0ken"
# 300 MW gas (490 g), 100 MW onshore wind (11 g), 100 MW solar (48 g); pumping left out
MIX = (300 * 490 + 100 * 11 + 100 * 48) / 500


def make(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, **kw: object
) -> IntensityService:
    kw.setdefault("zone", "DE")
    kw.setdefault("entsoe_token", TOKEN)
    return service(server, tmp_path, client, clock, **kw)


def test_factors_are_bundled_with_every_production_type() -> None:
    f = lifecycle_factors()
    assert {f"B{n:02d}" for n in range(1, 21)} <= set(f)
    assert f["B14"] == 12 and f["B04"] == 490 and f["B19"] == 11


_EIC_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-"


def _eic_check_character(code: str) -> str:
    """The 16th character of an EIC code, from its first 15 (the EIC reference manual: values
    0-9, A-Z as 10-35, '-' as 36, weighted 16 down to 2; 36 - ((sum - 1) mod 37))."""
    total = sum(_EIC_CHARS.index(c) * (16 - i) for i, c in enumerate(code[:15]))
    return _EIC_CHARS[36 - (total - 1) % 37]


def test_every_area_code_is_a_well_formed_eic_code() -> None:
    # A mistyped code is not refused by the platform: it answers "no matching data" and the
    # zone falls to the yearly table without a sign of why. The check character catches one.
    assert _eic_check_character("10YDE-VE-------2") == "2"  # 50Hertz, as the list gives it
    assert _eic_check_character("10Y1001A1001A17M") != "M"  # 71M with two digits swapped
    for zone, code in BIDDING_ZONES.items():
        assert len(code) == 16 and set(code) <= set(_EIC_CHARS), zone
        assert code[2] == "Y", f"{zone}: {code} is not an area code"
        assert _eic_check_character(code) == code[15], f"{zone}: {code}"


def test_generation_mix_becomes_a_live_intensity(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock)
    assert s.provider_ids == ("entsoe",) and s.provider is not None
    s.refresh(wait=True)
    req = server.last("/api")
    assert req.query["documentType"] == ["A75"] and req.query["processType"] == ["A16"]
    assert req.query["in_Domain"] == ["10Y1001A1001A82H"]
    assert req.query["periodStart"] == ["202605311000"]
    assert req.query["periodEnd"] == ["202606011100"]
    cur = s.current()
    assert cur.provider == "entsoe" and cur.signal == "average"
    assert cur.g_per_kwh == pytest.approx(MIX)
    assert "ENTSO-E" in cur.dataset and "IPCC AR5" in cur.dataset
    # 10:00-10:30 lacks the hourly gas figure (not published yet): left out, so "now" is the
    # newest complete step, 09:45-10:00.
    assert cur.valid_from == datetime(2026, 6, 1, 9, 45, tzinfo=UTC)
    assert cur.source == "live"
    r = s.co2(3.6e6, clock() - 60, clock())
    assert r.co2_g == pytest.approx(MIX)


def test_no_data_acknowledgement_is_reported(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, zone="FR")
    with pytest.warns(IntensityWarning, match="reason 999.*No matching data found") as rec:
        s.refresh(wait=True)
    assert len(rec) == 1 and TOKEN not in str(rec[0].message)
    assert s.current().source == "table"


def test_bad_token_is_refused_and_never_shown(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    s = make(server, tmp_path, client, clock, entsoe_token="wrong-T0ken-42")
    with pytest.warns(IntensityWarning, match="HTTP 401") as rec:
        s.refresh(wait=True)
    message = str(rec[0].message)
    assert "CARBONCTX_ENTSOE_TOKEN" in message and "wrong-T0ken-42" not in message
    assert "wrong-T0ken-42" not in repr(s.provider)
    cache = "".join(p.read_text() for p in (tmp_path / "cache").glob("*"))
    assert "wrong-T0ken-42" not in cache and "securityToken" not in cache


def test_not_xml_and_zones_not_covered(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/api"] = "malformed"
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="not XML"):
        s.refresh(wait=True)
    assert make(server, tmp_path, client, clock, zone="GB").provider is None
    assert make(server, tmp_path, client, clock, zone="US-CAL-CISO").provider is None


@pytest.mark.parametrize("status", [200, 400])
def test_no_matching_data_with_either_status_is_no_data(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, status: int
) -> None:
    # The platform sends its acknowledgement with HTTP 200 or 400; either way it is read.
    server.entsoe_ack = (status, "No matching data found for Data item ACTUAL_GENERATION")
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="reason 999.*No matching data found") as rec:
        s.refresh(wait=True)
    assert len(rec) == 1 and TOKEN not in str(rec[0].message)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "no-data"
    assert s.current().source == "table"


def test_a_refusal_sent_with_http_400_is_quoted(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    text = "The amount of requested data exceeds allowed limit. Allowed: 100, requested: 105."
    server.entsoe_ack = (400, text)
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="HTTP 400, reason 999.*requested data exceeds"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "http"
    # an error page that is no acknowledgement keeps the generic message
    server.entsoe_ack = None
    server.modes["/api"] = "404"
    clock.advance(86400)
    s.refresh(wait=True, force=True)  # the same kind of failure: warned once already
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "http" and "HTTP 404" in failure.reason


def test_energy_storage_is_not_generation(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # B25 (energy storage) gives back energy generated, and counted, before: left out of the
    # mix, and not a type whose figure the completeness of a step waits for.
    server.entsoe_mw["B25"] = 400.0
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "live" and cur.g_per_kwh == pytest.approx(MIX)


def test_a_401_acknowledgement_is_a_refused_token_with_its_reason(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.entsoe_ack = (401, f"Unauthorized. Missing or invalid security token {TOKEN}")
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="HTTP 401, reason 999.*Unauthorized") as rec:
        s.refresh(wait=True)
    message = str(rec[0].message)
    assert "CARBONCTX_ENTSOE_TOKEN" in message and TOKEN not in message
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "auth"


def test_resolutions_in_hours_and_unusable_ones(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # PT1H is PT60M written in hours: read alike.
    server.entsoe_resolution = {60: "PT1H"}
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert cur.source == "live" and cur.g_per_kwh == pytest.approx(MIX)
    assert cur.valid_from == datetime(2026, 6, 1, 9, 45, tzinfo=UTC)
    # A resolution finer than the 15 min step (or unreadable) leaves its periods out, not the
    # whole answer: here only the hourly gas is left, too few types for a complete mix.
    server.entsoe_resolution = {15: "PT5M"}
    s = make(server, tmp_path / "b", client, clock)
    with pytest.warns(IntensityWarning, match="no complete generation mix for DE"):
        s.refresh(wait=True)


@pytest.mark.parametrize(
    ("zone", "eic"),
    [
        ("IT-NO", "10Y1001A1001A73I"),
        ("IT-CNO", "10Y1001A1001A70O"),
        ("IT-CSO", "10Y1001A1001A71M"),
        ("IT-SO", "10Y1001A1001A788"),
        ("IT-SIC", "10Y1001A1001A75E"),
        ("IT-SAR", "10Y1001A1001A74G"),
        ("SE-SE3", "10Y1001A1001A46L"),
        ("NO-NO5", "10Y1001A1001A48H"),
        ("ME", "10YCS-CG-TSO---S"),
        ("MK", "10YMK-MEPSO----8"),
        ("BA", "10YBA-JPCC-----D"),
        ("GB-NIR", "10Y1001A1001A59C"),
        ("LU", "10Y1001A1001A82H"),
        ("AL", "10YAL-KESH-----5"),
        ("XK", "10Y1001C--00100H"),
        ("CY", "10YCY-1001A0003J"),
        ("MD", "10Y1001A1001A990"),
        ("SE", "10YSE-1--------K"),  # Sweden: SvK control area, the country's market balance area
        ("NO", "10YNO-0--------C"),  # Norway: Statnett control area
        ("DK", "10Y1001A1001A65H"),  # Denmark: the country area (A75 takes a country too)
    ],
)
def test_electricity_maps_zone_keys_ask_their_bidding_zone(
    server: FakeServer,
    tmp_path: Path,
    client: httpx.Client,
    clock: FakeClock,
    zone: str,
    eic: str,
) -> None:
    server.entsoe_domains = {eic}
    s = make(server, tmp_path, client, clock, zone=zone)
    assert s.provider_ids == ("entsoe",)
    s.refresh(wait=True)
    assert server.last("/api").query["in_Domain"] == [eic]
    cur = s.current()
    assert cur.source == "live" and cur.zone == zone
    assert cur.g_per_kwh == pytest.approx(MIX)


def test_the_ban_after_its_request_limit_is_waited_out(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # Past 400 requests a minute the platform answers 429, without Retry-After, and bans the
    # token for 10 minutes.
    server.modes["/api"] = "429"
    server.retry_after = None
    server.rate_limit_body = (
        b"Max allowed requests per minute from each unique IP is max up to 400 only"
    )
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="HTTP 429.*max up to 400 only.*10 minutes") as rec:
        s.refresh(wait=True)
    assert TOKEN not in str(rec[0].message)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "rate-limited"
    assert failure.until - clock() == pytest.approx(600.0)
    server.modes.clear()
    clock.advance(300)
    s.refresh(wait=True)  # still banned: nothing sent
    assert server.count("/api") == 1
    clock.advance(301)
    s.refresh(wait=True)
    assert server.count("/api") == 2 and s.current().source == "live"


@pytest.mark.parametrize("how", ["whole", "split"])
def test_a_zipped_answer_is_read_as_its_xml_documents(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock, how: str
) -> None:
    # The platform answers some queries with a zip archive of XML documents (one, or one per
    # time series); the files in it that are not XML are left alone.
    server.entsoe_zip = how
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert (cur.source, cur.provider) == ("live", "entsoe")
    assert cur.g_per_kwh == pytest.approx(MIX)  # pumping left out in either form
    assert cur.valid_from == datetime(2026, 6, 1, 9, 45, tzinfo=UTC)


def test_a_zip_that_cannot_be_read_is_malformed(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.entsoe_zip = "corrupt"
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="zip archive that could not be read"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "malformed"
    assert s.current().source == "table"


def test_generation_below_zero_is_a_report_of_nothing_not_a_missing_one(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # Generation units that draw more than they make in a step (solar at night, a plant's own
    # use) are published as negative generation of their type. With three types, counting such
    # a type as unreported would leave every step short of 80%, and the zone without a value.
    server.entsoe_mw = {"B04": 300.0, "B19": 100.0, "B16": -3.0}
    s = make(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert (cur.source, cur.provider) == ("live", "entsoe")
    assert cur.g_per_kwh == pytest.approx((300 * 490 + 100 * 11) / 400)


def _archive(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def test_a_zip_member_not_deflated_is_refused_before_it_is_inflated(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # bzip2 (zip method 12) inflates a whole read of input at once, whatever was asked for:
    # this member is 24 MiB of zeros in a few hundred bytes. It is refused unread; reading it
    # and checking the size afterwards would hold all of it in memory first.
    bomb = b"<GL_MarketDocument>" + bytes(24 << 20) + b"</GL_MarketDocument>"
    server.entsoe_zip = _archive([("A75.xml", bomb)], zipfile.ZIP_BZIP2)
    del bomb
    s = make(server, tmp_path, client, clock)
    tracemalloc.start()
    try:
        with pytest.warns(IntensityWarning, match="compressed with method 12"):
            s.refresh(wait=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "malformed"
    assert s.current().source == "table"


def test_a_zip_with_a_name_that_is_not_utf8_is_malformed(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # the archive flags its names as UTF-8 (bit 11) and one is not: zipfile raises a
    # UnicodeDecodeError, which is the answer's fault, said as such
    good = _archive([("A75_\u00e9.xml", b"<GL_MarketDocument/>")])
    server.entsoe_zip = good.replace("\u00e9".encode(), b"\xff\xfe")
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="zip archive that could not be read"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "malformed"


def test_a_zip_of_thousands_of_documents_is_refused(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # a day's answer holds a document per time series (dozens); past 1000 each would be parsed
    doc = b"<GL_MarketDocument/>"
    server.entsoe_zip = _archive([(f"A75_{k}.xml", doc) for k in range(1001)])
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="more than 1000 XML documents"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "malformed"


def test_a_deflated_zip_bomb_stops_at_the_size_limit_while_inflating(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # 32 MiB of zeros deflate to about 32 KiB: reading stops past the 4 MiB limit, not after
    bomb = b"<GL_MarketDocument>" + bytes(32 << 20) + b"</GL_MarketDocument>"
    server.entsoe_zip = _archive([("A75.xml", bomb)])
    del bomb
    s = make(server, tmp_path, client, clock)
    tracemalloc.start()
    try:
        with pytest.warns(IntensityWarning, match="the unzipped answer is over 4096 KiB"):
            s.refresh(wait=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert s.current().source == "table"

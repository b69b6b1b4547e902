"""ENTSO-E Transparency Platform: actual generation per production type (document A75, process
A16) for a European bidding zone, turned into an average lifecycle intensity.

``GET /api?securityToken=T&documentType=A75&processType=A16&in_Domain=EIC&periodStart=
yyyyMMddHHmm&periodEnd=...`` answers a ``GL_MarketDocument`` (XML): one ``TimeSeries`` per
production type (``MktPSRType/psrType``, ``B01``..``B20``, ``B25``), each with ``Period``s of
``Point``s (``position``, ``quantity`` in MW) at a ``resolution`` (``PT15M``, ``PT30M``,
``PT60M``). Series with an ``outBiddingZone_Domain`` are consumption (pumping) and are left
out, and so is ``B25`` (energy storage): what it gives back was generated, and counted, before
it was stored (as the EIA provider leaves out batteries). No data, or a request refused, is an
``Acknowledgement_MarketDocument`` whose ``Reason/code`` (``999``, "errors not specifically
identified", for nearly everything) and ``Reason/text`` say why, sent with HTTP 200 or 400:
"No matching data found ..." is no data, any other reason a refusal; either way it is quoted.
Past 400 requests a minute the platform answers 429 and bans the token for 10 minutes, which
is waited out. An answer that is a zip archive (the platform zips some) is read as the XML
documents in it.

Intensity of each step: the generation-weighted mean of the lifecycle factors per production
type in ``carbonctx/data/entsoe-lifecycle-factors.csv`` (IPCC AR5 medians, with the
assumptions it names). A step where fewer than 80% of the types have reported yet is left out;
a value below zero (units drawing more than they make) is a type that reported nothing.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar
from xml.etree import ElementTree

import attrs

from carbonctx._carbon.intensity import Intensity, parse_time, utc_from_timestamp
from carbonctx._carbon.providers.base import Fetched, ProviderError
from carbonctx._carbon.providers.http import (
    DEFAULT_LIMITS,
    Limits,
    get_bytes,
    intensity_number,
    malformed,
)
from carbonctx._carbon.zones import read_bundled_csv

if TYPE_CHECKING:
    import httpx

__all__ = ["BIDDING_ZONES", "EntsoeProvider", "lifecycle_factors"]

#: carbonctx zone (Electricity Maps' zone keys) -> ENTSO-E area (EIC code) whose generation per
#: type is published: the bidding zone (Italy's and the Nordic countries' by market area;
#: Luxembourg in DE-LU and Northern Ireland in the all-island SEM, as they trade), else, for a
#: country given whole, its control area (``SE``, ``NO``) or country area (``DK``): A75 takes a
#: bidding zone, a control area or a country. Every code's 16th character checks the other 15.
BIDDING_ZONES: dict[str, str] = {
    "AL": "10YAL-KESH-----5",
    "AT": "10YAT-APG------L",
    "BA": "10YBA-JPCC-----D",
    "BE": "10YBE----------2",
    "BG": "10YCA-BULGARIA-R",
    "CH": "10YCH-SWISSGRIDZ",
    "CY": "10YCY-1001A0003J",
    "CZ": "10YCZ-CEPS-----N",
    "DE": "10Y1001A1001A82H",  # DE-LU
    "DK": "10Y1001A1001A65H",
    "DK-DK1": "10YDK-1--------W",
    "DK-DK2": "10YDK-2--------M",
    "EE": "10Y1001A1001A39I",
    "ES": "10YES-REE------0",
    "FI": "10YFI-1--------U",
    "FR": "10YFR-RTE------C",
    "GB-NIR": "10Y1001A1001A59C",  # IE(SEM)
    "GR": "10YGR-HTSO-----Y",
    "HR": "10YHR-HEP------M",
    "HU": "10YHU-MAVIR----U",
    "IE": "10Y1001A1001A59C",  # IE(SEM)
    "IT": "10YIT-GRTN-----B",
    "IT-CNO": "10Y1001A1001A70O",  # Centre-North
    "IT-CSO": "10Y1001A1001A71M",  # Centre-South
    "IT-NO": "10Y1001A1001A73I",  # North
    "IT-SAR": "10Y1001A1001A74G",  # Sardinia
    "IT-SIC": "10Y1001A1001A75E",  # Sicily
    "IT-SO": "10Y1001A1001A788",  # South
    "LT": "10YLT-1001A0008Q",
    "LU": "10Y1001A1001A82H",  # DE-LU
    "LV": "10YLV-1001A00074",
    "MD": "10Y1001A1001A990",
    "ME": "10YCS-CG-TSO---S",
    "MK": "10YMK-MEPSO----8",
    "NL": "10YNL----------L",
    "NO": "10YNO-0--------C",
    "NO-NO1": "10YNO-1--------2",
    "NO-NO2": "10YNO-2--------T",
    "NO-NO3": "10YNO-3--------J",
    "NO-NO4": "10YNO-4--------9",
    "NO-NO5": "10Y1001A1001A48H",
    "PL": "10YPL-AREA-----S",
    "PT": "10YPT-REN------W",
    "RO": "10YRO-TEL------P",
    "RS": "10YCS-SERBIATSOV",
    "SE": "10YSE-1--------K",
    "SE-SE1": "10Y1001A1001A44P",
    "SE-SE2": "10Y1001A1001A45N",
    "SE-SE3": "10Y1001A1001A46L",
    "SE-SE4": "10Y1001A1001A47J",
    "SI": "10YSI-ELES-----O",
    "SK": "10YSK-SEPS-----K",
    "XK": "10Y1001C--00100H",
}


def _resolution_s(text: str | None) -> int | None:
    """An ISO 8601 duration of hours and minutes (``PT15M``, ``PT60M``, ``PT1H``) in seconds."""
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", (text or "").strip())
    if m is None or not any(m.groups()):
        return None
    return 3600 * int(m.group(1) or 0) + 60 * int(m.group(2) or 0)


#: every series is read in steps of this many seconds, so that types published at different
#: resolutions (15 min, 1 h) add up step by step
_STEP = 900
_COMPLETE = 0.8
#: production types that are not generation of their own (energy storage)
_NOT_GENERATION = frozenset({"B25"})
_DATASET = "ENTSO-E Transparency A75 x IPCC AR5 lifecycle factors"


@functools.lru_cache(maxsize=1)
def lifecycle_factors() -> dict[str, float]:
    """psrType -> lifecycle gCO2e/kWh, from the bundled table."""
    return {
        r["psr_type"]: float(r["g_co2e_per_kwh"])
        for r in read_bundled_csv("entsoe-lifecycle-factors.csv")
    }


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ElementTree.Element, *names: str) -> ElementTree.Element | None:
    for name in names:
        found = next((c for c in el if _local(c.tag) == name), None)
        if found is None:
            return None
        el = found
    return el


def _text(el: ElementTree.Element, *names: str) -> str | None:
    found = _child(el, *names)
    return None if found is None or found.text is None else found.text.strip()


#: a zipped answer holds a document, or one per time series (a few dozen for a day); tens of
#: thousands of tiny ones (or entries that share one's bytes) would each be parsed
_ZIP_MAX_DOCUMENTS = 1000


def _unzipped(body: bytes, name: str, limits: Limits) -> list[bytes]:
    """The ``.xml`` members of a zip archive, with ``limits.max_bytes`` applied to what comes
    out (all members together) while it is decompressed.

    Only stored and deflated members are read: deflate stops at the bytes asked for, whereas
    bzip2 and LZMA inflate a whole read of compressed input at once (a few KiB of bzip2 make
    gigabytes), before any limit could be checked."""
    import io
    import struct
    import zipfile
    import zlib

    out: list[bytes] = []
    left = limits.max_bytes
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            for info in archive.infolist():
                if not info.filename.lower().endswith(".xml"):  # a folder ends with "/"
                    continue
                if len(out) == _ZIP_MAX_DOCUMENTS:
                    raise malformed(
                        name, f"a zip archive of more than {_ZIP_MAX_DOCUMENTS} XML documents"
                    )
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise malformed(
                        name,
                        f"a zip archive compressed with method {info.compress_type}, "
                        "not deflate (8) or none (0)",
                    )
                with archive.open(info) as member:
                    data = member.read(left + 1)
                if len(data) > left:
                    raise malformed(
                        name, f"the unzipped answer is over {limits.max_bytes // 1024} KiB"
                    )
                left -= len(data)
                out.append(data)
    except (
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        OSError,
        EOFError,
        ValueError,  # a bad offset ("negative seek value"), a name that is not UTF-8
        IndexError,
        struct.error,
    ):
        raise malformed(name, "a zip archive that could not be read") from None
    return out


@attrs.define(repr=False)
class EntsoeProvider:
    """ENTSO-E Transparency Platform REST API (security token in the query, never logged)."""

    base_url: str
    _token: str | None = attrs.field(default=None, alias="token")
    limits: Limits = attrs.field(default=DEFAULT_LIMITS, kw_only=True)

    id: ClassVar[str] = "entsoe"
    name: ClassVar[str] = "ENTSO-E"
    ttl_s: ClassVar[float] = 900.0
    max_age_s: ClassVar[float] = 3 * 3600.0  # publication lags up to about an hour
    has_forecast: ClassVar[bool] = False
    signal: ClassVar[str] = "average"
    credentials: ClassVar[str] = "CARBONCTX_ENTSOE_TOKEN"

    def __repr__(self) -> str:
        return f"EntsoeProvider(base_url={self.base_url!r}, token={'***' if self._token else None})"

    def covers(self, zone: str) -> bool:
        return bool(self._token) and zone in BIDDING_ZONES

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        t = utc_from_timestamp(now).replace(minute=0, second=0, microsecond=0)
        start, end = t - timedelta(hours=24), t + timedelta(hours=1)
        params = {
            "securityToken": self._token or "",
            "documentType": "A75",
            "processType": "A16",
            "in_Domain": BIDDING_ZONES[zone],
            "periodStart": start.strftime("%Y%m%d%H%M"),
            "periodEnd": end.strftime("%Y%m%d%H%M"),
        }
        try:
            body = get_bytes(
                client,
                f"{self.base_url}/api",
                name=self.name,
                now=now,
                params=params,
                limits=self.limits,
                explain=self._explain,
            )
        except ProviderError as exc:
            if exc.kind == "rate-limited" and exc.retry_after is None:
                # past 400 requests a minute the token is banned for 10 minutes (its 429
                # says so only in words): asking sooner is refused again
                exc = ProviderError(
                    exc.kind, f"{exc.reason}; the platform bans the token for 10 minutes", 600.0
                )
            raise self._scrubbed(exc) from None
        return Fetched(self._parse(body, zone, now))

    def _explain(self, status: int, body: bytes) -> ProviderError | None:
        """An error answer that is an acknowledgement: its reason, with the HTTP status."""
        try:
            root = ElementTree.fromstring(body)
        except (ElementTree.ParseError, ValueError):
            return None
        if _local(root.tag) != "Acknowledgement_MarketDocument":
            return None
        kind = {401: "auth", 403: "forbidden"}.get(status)
        return self._ack_error(root, f"HTTP {status}, ", kind)

    def _ack_error(
        self, root: ElementTree.Element, prefix: str = "", kind: str | None = None
    ) -> ProviderError:
        code = _text(root, "Reason", "code") or "?"
        text = (_text(root, "Reason", "text") or "").replace(self._token or "\0", "***")
        text = re.sub(r"\s+", " ", text)[:200]
        if kind is None:
            kind = "no-data" if "no matching data" in text.lower() else "http"
        return ProviderError(kind, f'{self.name}: {prefix}reason {code}: "{text}"')

    def _scrubbed(self, exc: ProviderError) -> ProviderError:
        if self._token and self._token in exc.reason:
            return ProviderError(exc.kind, exc.reason.replace(self._token, "***"), exc.retry_after)
        return exc

    def _documents(self, body: bytes) -> list[ElementTree.Element]:
        """The documents of an answer: one XML document, or the XML files of a zip archive
        (the platform zips some answers); an acknowledgement among them is raised."""
        parts = _unzipped(body, self.name, self.limits) if body[:4] == b"PK\x03\x04" else [body]
        roots = []
        for part in parts:
            try:
                root = ElementTree.fromstring(part)
            except (ElementTree.ParseError, ValueError) as exc:
                raise malformed(self.name, f"not XML ({type(exc).__name__})") from None
            if _local(root.tag) == "Acknowledgement_MarketDocument":
                raise self._ack_error(root)
            if _local(root.tag) != "GL_MarketDocument":
                raise malformed(self.name, f"unexpected document {_local(root.tag)!r}")
            roots.append(root)
        if not roots:
            raise malformed(self.name, "a zip archive without XML documents")
        return roots

    def _parse(self, body: bytes, zone: str, now: float) -> list[Intensity]:
        roots = self._documents(body)
        factors = lifecycle_factors()
        # step start -> {psrType: MW}, and each step's length
        steps: dict[float, dict[str, float]] = {}
        length: dict[float, float] = {}
        types: set[str] = set()
        for ts in (c for root in roots for c in root if _local(c.tag) == "TimeSeries"):
            if _child(ts, "outBiddingZone_Domain.mRID") is not None:
                continue  # consumption (pumping), not generation
            psr = _text(ts, "MktPSRType", "psrType")
            if psr is None or psr in _NOT_GENERATION:
                continue
            types.add(psr)
            for period in (c for c in ts if _local(c.tag) == "Period"):
                self._read_period(period, psr, _text(ts, "curveType"), steps, length)
        out: list[Intensity] = []
        fetched = utc_from_timestamp(now)
        for s in sorted(steps):
            mix = steps[s]
            total = sum(mix.values())
            if len(mix) < _COMPLETE * len(types) or total <= 0 or s + length[s] > now + 1:
                continue
            g = sum(mw * factors.get(psr, factors["B20"]) for psr, mw in mix.items()) / total
            begin = utc_from_timestamp(s)
            out.append(
                Intensity(
                    g_per_kwh=intensity_number(g),
                    zone=zone,
                    source="live",
                    provider=self.id,
                    dataset=_DATASET,
                    valid_from=begin,
                    valid_to=begin + timedelta(seconds=length[s]),
                    fetched_at=fetched,
                    is_estimated=False,
                )
            )
        if not out:
            raise ProviderError("no-data", f"{self.name}: no complete generation mix for {zone}")
        return out

    def _read_period(
        self,
        period: ElementTree.Element,
        psr: str,
        curve: str | None,
        steps: dict[float, dict[str, float]],
        length: dict[float, float],
    ) -> None:
        try:
            start = parse_time(_text(period, "timeInterval", "start")).timestamp()
            end = parse_time(_text(period, "timeInterval", "end")).timestamp()
        except ValueError as exc:
            raise malformed(self.name, f"period: {exc}") from None
        step = _resolution_s(_text(period, "resolution"))
        if step is None or not 0 < step <= 86400 or step % _STEP:
            return  # finer than the step, longer than a day, or none: nothing usable here
        points: dict[int, float] = {}
        for p in (c for c in period if _local(c.tag) == "Point"):
            try:
                pos = int(_text(p, "position") or "")
                mw = float(_text(p, "quantity") or "")
            except ValueError:
                continue
            if math.isfinite(mw) and 1 <= pos <= 10_000:
                # below zero: a type's units drew more than they made (station use), reported
                # as generation; a report of nothing generated, not a missing report
                points[pos] = max(0.0, mw)
        count = int((end - start) // step)
        last: float | None = None
        for pos in range(1, min(count, 10_000) + 1):
            got = points.get(pos)
            if got is None and curve == "A03":
                got = last  # curve A03: a value holds until the next point given
            if got is None:
                continue
            last = got
            first = start + (pos - 1) * step
            for k in range(step // _STEP):
                s = first + k * _STEP
                mix = steps.setdefault(s, {})
                mix[psr] = mix.get(psr, 0.0) + got
                length[s] = _STEP

"""A local HTTP server that answers like the carbon-intensity providers, failures included.

It speaks the documented request and response shapes of Electricity Maps v3, the GB carbon
intensity API and Energi Data Service, with values from ``value(provider, t)`` around the time
given by a shared :class:`FakeClock`. ``modes`` makes a path fail on purpose::

    with FakeServer(clock) as srv:
        srv.modes["/v3/"] = "500"          # every Electricity Maps request gets HTTP 500
        srv.count("/v3/carbon-intensity/latest")

The provider tests share its fixtures (``tests/conftest.py`` loads this module as a plugin):
``clock`` (starting at the test module's ``T0``), ``server`` (values from the module's
``server_value(provider, t)``, if it has one) and ``client`` (an ``httpx.Client`` with the
module's ``CLIENT_TIMEOUT``, default 2 s); :func:`service` builds an intensity service on them.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from carbonctx._carbon.service import IntensityService

UTC = timezone.utc
#: The fake clock's start unless a test module sets ``T0``: ten minutes into an hour, inside a
#: half hour, on a five-minute step.
T0 = datetime(2026, 6, 1, 10, 10, tzinfo=UTC).timestamp()

#: modes a path can be put in
MODES = (
    "ok",
    "timeout",
    "401",
    "403",
    "404",
    "429",
    "500",
    "malformed",
    "unknown-zone",
    "empty",
    "slow",  # headers, then one byte every ``slow_interval`` seconds
    "huge",  # a 200 answer without Content-Length that never ends (``huge_bytes`` at most)
    "huge-declared",  # a 200 answer announcing ``huge_bytes`` in Content-Length
    "gzip",  # the usual answer, gzip-compressed (Content-Encoding: gzip)
    "gzip-bomb",  # a small gzip body that inflates to ``bomb_bytes``
    "br",  # an answer in an encoding that was not asked for
    "cut",  # the connection closes a few bytes into a longer declared answer
    "503",  # service unavailable, with ``retry_after``
    "redirect",  # 301 to the same path and query under /moved/ on this server (then answered)
    "redirect-away",  # 308 to the same path on another host (localhost instead of 127.0.0.1)
    "redirect-loop",  # 302 to the same address, again and again
    "redirect-loop-slow",  # the same, each 302 after 0.4 s
    "redirect-https-port",  # 302 to https on this host at another port (1)
    "redirect-odd",  # 302 to another host, its path a line break (%0A) and 3000 characters long
    "redirect-badname",  # 302 to a host name that is not valid IDNA (xn--zz.invalid)
    "redirect-badurl",  # 302 to an address that is no URL (an IPv6 host left open)
    "html",  # a 200 answer that is an HTML page (a proxy's or a captive portal's)
    "html-502",  # a gateway's HTML error page, with HTTP 502
    "html-bom",  # a 200 HTML page after a UTF-8 byte order mark, character references in its title
    "gzip-cut",  # the usual answer gzip-compressed, its last bytes missing (length to match)
)


class FakeClock:
    """A settable Unix-seconds clock shared by the server and the code under test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def closed_port_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Request:
    def __init__(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> None:
        self.path = path
        self.query = query
        self.headers = headers


def _z(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _gb(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


def _parse_gb(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)


def _floor(t: datetime, minutes: int) -> datetime:
    t = t.replace(second=0, microsecond=0)
    return t - timedelta(minutes=t.minute % minutes)


class _Raw:
    """A body sent as it is (XML, HTML), not as JSON."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.content_type = content_type


def _entsoe_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


def _entsoe_series(
    psr: str,
    start: datetime,
    end: datetime,
    minutes: int,
    points: list[tuple[int, float]],
    curve: str,
    out_domain: str | None = None,
) -> str:
    domain = (
        f'<outBiddingZone_Domain.mRID codingScheme="A01">{out_domain}</outBiddingZone_Domain.mRID>'
        if out_domain
        else '<inBiddingZone_Domain.mRID codingScheme="A01">X</inBiddingZone_Domain.mRID>'
    )
    pts = "".join(
        f"<Point><position>{pos}</position><quantity>{mw:g}</quantity></Point>"
        for pos, mw in points
    )
    return (
        f"<TimeSeries><mRID>{psr}</mRID><businessType>A01</businessType>{domain}"
        f"<quantity_Measure_Unit.name>MAW</quantity_Measure_Unit.name><curveType>{curve}</curveType>"
        f"<MktPSRType><psrType>{psr}</psrType></MktPSRType><Period><timeInterval>"
        f"<start>{_entsoe_time(start)}</start><end>{_entsoe_time(end)}</end></timeInterval>"
        f"<resolution>PT{minutes}M</resolution>{pts}</Period></TimeSeries>"
    )


def _entsoe_ack(code: str, text: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:'
        'acknowledgementdocument:7:0"><mRID>ack</mRID>'
        f"<Reason><code>{code}</code><text>{text}</text></Reason>"
        "</Acknowledgement_MarketDocument>"
    ).encode()


def _zipped(doc: str, series: list[str], how: str) -> bytes:
    """A zip archive of GL_MarketDocuments: the whole ``doc``, or one per time series."""
    if how == "corrupt":
        return b"PK\x03\x04" + b"\x00garbage" * 20
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        if how == "whole":
            z.writestr("A75_generation.xml", doc)
        else:
            head, tail = doc.split("<TimeSeries>", 1)[0], "</GL_MarketDocument>"
            for k, one in enumerate(series):
                z.writestr(f"A75_{k:03d}.xml", head + one + tail)
        z.writestr("README.txt", "not a document")
    return buf.getvalue()


class FakeServer:
    def __init__(self, clock: FakeClock, value: Callable[[str, float], float] | None = None):
        self.clock = clock
        self.value: Callable[[str, float], float] = value or (lambda provider, t: 100.0)
        self.modes: dict[str, str] = {}
        #: the Retry-After header of 429 and 503 answers (None: no header)
        self.retry_after: str | None = "7"
        #: the body of 429 answers (bytes: sent as text)
        self.rate_limit_body: object = {"error": "slow down"}
        #: the body of 401/403/404 answers (each provider documents its own)
        self.error_body: object = {"error": "nope"}
        self.slow_interval = 0.2
        self.huge_bytes = 600 * 1024 * 1024
        self.bomb_bytes = 64 * 1024 * 1024
        self.sent_bytes = 0
        #: WattTime: the account, the tokens it has issued (clear to expire them), the regions
        #: its plan gives co2_moer for (a free plan: CAISO_NORTH only)
        self.watttime_login = ("wt-user", "wt-Pa55word")
        self.watttime_tokens: set[str] = set()
        self.watttime_regions = {"CAISO_NORTH"}
        #: ENTSO-E: the security token it accepts, and MW per production type
        self.entsoe_token = "entsoe-S3cret-T0ken"
        self.entsoe_mw = {"B04": 300.0, "B19": 100.0, "B16": 100.0}
        #: ENTSO-E: (HTTP status, reason text) of an acknowledgement sent instead of the data
        self.entsoe_ack: tuple[int, str] | None = None
        #: send documents as a zip archive of XML files: "whole" (one), "split" (one per
        #: production type), "corrupt" (a zip header, then garbage); bytes: this archive
        self.entsoe_zip: str | bytes | None = None
        #: ENTSO-E: how a resolution of so many minutes is written, where not PT<n>M
        self.entsoe_resolution: dict[int, str] = {}
        #: ENTSO-E: the areas (EIC codes) it has generation for
        self.entsoe_domains = {"10Y1001A1001A82H", "10YDK-1--------W"}
        #: US EIA: the API key it accepts, MWh per fuel each hour, how late hours are published
        self.eia_key = "eia-K3y-0001"
        self.eia_mwh: dict[str, object] = {"NG": "600", "SUN": 200, "WND": 200.0, "BAT": -50}
        self.eia_lag_h = 3
        #: Electricity Maps: the zone found at ("lat", "lon") as sent (4 decimals)
        self.em_zones_at: dict[tuple[str, str], str] = {}
        #: Electricity Maps: the emission factors of the account ("lifecycle" or "direct")
        self.em_factor_type = "lifecycle"
        #: the estimation method of the hours not measured yet (the current one), None: none
        self.em_estimated: str | None = None
        self.requests: list[Request] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def count(self, path_part: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if path_part in r.path)

    def last(self, path_part: str = "") -> Request:
        with self._lock:
            return [r for r in self.requests if path_part in r.path][-1]

    # ------------------------------------------------------------------ dispatch

    def _mode(self, path: str) -> str:
        for prefix, mode in sorted(self.modes.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(prefix):
                return mode
        return "ok"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        req = Request(
            parts.path, parse_qs(parts.query), {k.lower(): v for k, v in h.headers.items()}
        )
        with self._lock:
            self.requests.append(req)
        moved = parts.path.startswith("/moved/")
        if moved:  # where mode "redirect" sends a request: answered as at its old address
            parts = parts._replace(path=parts.path[len("/moved") :])
            req.path = parts.path
        mode = self._mode(parts.path)
        if mode == "redirect" and moved:
            mode = "ok"
        elif mode.startswith("redirect"):
            return self._redirect(h, mode, parts.path, parts.query)
        if mode == "timeout":
            self.release.wait(10)
            return
        if mode in ("401", "403", "404"):
            return self._send(h, int(mode), self.error_body)
        if mode == "500":
            return self._send(h, 500, {"error": "nope"})
        if mode == "slow":
            return self._slow(h)
        if mode in ("huge", "huge-declared"):
            return self._huge(h, declared=mode == "huge-declared")
        if mode == "429":
            ra = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            if isinstance(self.rate_limit_body, bytes):  # a text answer
                return self._send_raw(h, 429, self.rate_limit_body, ra, "text/plain")
            return self._send(h, 429, self.rate_limit_body, ra)
        if mode == "malformed":
            return self._send_raw(h, 200, b"{not json")
        if mode == "html-502":
            page = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"
            return self._send_raw(h, 502, page, content_type="text/html")
        if mode == "html-bom":
            page = "\ufeff<html><head><title>Sign in &amp; accept&#10;the terms</title></head>"
            return self._send_raw(h, 200, page.encode(), content_type="text/html")
        if mode == "html":
            page = (
                b"<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head></html>"
            )
            return self._send_raw(h, 200, page, content_type="text/html")
        if mode == "503":
            ra = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return self._send(h, 503, {"message": "maintenance"}, ra)
        if mode == "gzip-bomb":
            bomb = gzip.compress(b" " * self.bomb_bytes, compresslevel=9)
            return self._send_raw(h, 200, bomb, {"Content-Encoding": "gzip"})
        if mode == "br":
            return self._send_raw(h, 200, b"\x1b\x03\x00\xf8", {"Content-Encoding": "br"})
        if mode == "cut":
            return self._cut(h)
        try:
            status, body = self._answer(req, mode)
        except LookupError as exc:
            return self._send(h, 404, {"error": str(exc)})
        if isinstance(body, _Raw):
            return self._send_raw(h, status, body.data, content_type=body.content_type)
        if mode == "gzip-cut":
            data = gzip.compress(json.dumps(body).encode())
            return self._send_raw(
                h, status, data[: len(data) * 2 // 3], {"Content-Encoding": "gzip"}
            )
        if mode == "gzip":
            data = gzip.compress(json.dumps(body).encode())
            return self._send_raw(h, status, data, {"Content-Encoding": "gzip"})
        self._send(h, status, body)

    def _send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: object,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send_raw(h, status, json.dumps(body).encode(), headers)

    def _send_raw(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass

    def _redirect(self, h: BaseHTTPRequestHandler, mode: str, path: str, query: str) -> None:
        tail = f"{path}?{query}" if query else path
        if mode == "redirect":
            status, where = 301, f"/moved{tail}"  # relative, as servers often send it
        elif mode == "redirect-away":
            status, where = 308, self.url.replace("127.0.0.1", "localhost") + tail
        elif mode == "redirect-https-port":
            status, where = 302, f"https://127.0.0.1:1{tail}"
        elif mode == "redirect-odd":
            away = self.url.replace("127.0.0.1", "localhost")
            status, where = 302, f"{away}/%0Aa-second-line{'x' * 3000}{tail}"
        elif mode == "redirect-badname":
            status, where = 302, f"https://xn--zz.invalid{tail}"
        elif mode == "redirect-badurl":
            status, where = 302, f"http://[::1{tail}"
        else:
            status, where = 302, tail
            if mode == "redirect-loop-slow":
                self.release.wait(0.4)
        self._send_raw(h, status, b"<html>Moved</html>", {"Location": where}, "text/html")

    def _slow(self, h: BaseHTTPRequestHandler) -> None:
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "100000")
            h.end_headers()
            while not self.release.wait(self.slow_interval):
                h.wfile.write(b" ")
                h.wfile.flush()
        except OSError:
            pass

    def _cut(self, h: BaseHTTPRequestHandler) -> None:
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "5000")
            h.end_headers()
            h.wfile.write(b'{"zone": "DE", "carbonIn')
            h.wfile.flush()
        except OSError:
            pass
        h.close_connection = True

    def _huge(self, h: BaseHTTPRequestHandler, declared: bool) -> None:
        chunk = b"[" * 65536
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            if declared:
                h.send_header("Content-Length", str(self.huge_bytes))
            else:
                h.send_header("Connection", "close")
            h.end_headers()
            sent = 0
            while sent < self.huge_bytes and not self.release.is_set():
                h.wfile.write(chunk)
                sent += len(chunk)
                with self._lock:
                    self.sent_bytes = sent
        except OSError:
            pass
        h.close_connection = True

    # ------------------------------------------------------------------ provider answers

    def _answer(self, req: Request, mode: str) -> tuple[int, object]:
        now = datetime.fromtimestamp(self.clock(), UTC)
        p = req.path
        if p == "/login" or (p.startswith("/v3/") and not p.startswith("/v3/carbon-intensity")):
            return self._watttime(req, now)
        if p == "/api":
            return self._entsoe(req, now)
        if p == "/v2/electricity/rto/fuel-type-data/data/":
            return self._eia(req, now)
        if p.startswith(("/v3/carbon-intensity/", "/v4/carbon-intensity/")):
            zone = req.query.get("zone", [""])[0]
            if "lat" in req.query:  # by coordinates: the zone Electricity Maps finds there
                where = (req.query["lat"][0], req.query.get("lon", [""])[0])
                if where not in self.em_zones_at:
                    return 404, {"status": "error", "message": "No zone found for coordinates."}
                zone = self.em_zones_at[where]
            if mode == "unknown-zone":
                # Electricity Maps answers a zone it does not know with a client error.
                return 404, {"status": "error", "message": f"Zone '{zone}' does not exist."}
            hour = _floor(now, 60)
            # v4 adds the granularity asked for to each answer and entry.
            v4 = {"temporalGranularity": "hourly"} if p.startswith("/v4/") else {}
            if p.endswith("/latest"):
                return 200, self._em_item(zone, hour, now) | {"zone": zone} | v4
            if p.endswith("/history"):
                items = [
                    self._em_item(zone, hour - timedelta(hours=k), now) | v4
                    for k in range(24, 0, -1)
                ]
                return 200, {"zone": zone, "history": items} | v4
            if p.endswith("/forecast"):
                items = [
                    {
                        "carbonIntensity": self.value(
                            "electricitymaps", (hour + timedelta(hours=k)).timestamp()
                        ),
                        "datetime": _z(hour + timedelta(hours=k)),
                    }
                    for k in range(24)
                ]
                if mode == "empty":
                    items = []
                body: dict[str, object] = {"zone": zone, "forecast": items, "updatedAt": _z(now)}
                if p.startswith("/v4/"):
                    body["temporalGranularity"] = req.query.get("temporalGranularity", ["?"])[0]
                return 200, body
        if p.startswith("/intensity/"):
            segs = p.split("/")[2:]
            start = _parse_gb(segs[0])
            if segs[1] == "fw48h":
                end, forecast_only = start + timedelta(hours=48), True
            else:
                end, forecast_only = _parse_gb(segs[1]), False
            t = _floor(start, 30)
            data = []
            while t < end if forecast_only else t <= end:
                v = self.value("gb", t.timestamp())
                past = t + timedelta(minutes=30) <= now and not forecast_only
                data.append(
                    {
                        "from": _gb(t),
                        "to": _gb(t + timedelta(minutes=30)),
                        "intensity": {
                            "forecast": v + 5,
                            "actual": v if past else None,
                            "index": "moderate",
                        },
                    }
                )
                t += timedelta(minutes=30)
            return 200, {"data": [] if mode == "empty" else data}
        if p.startswith("/dataset/"):
            dataset = p.rsplit("/", 1)[1]
            flt = json.loads(req.query["filter"][0])
            start = datetime.fromisoformat(req.query["start"][0]).replace(tzinfo=UTC)
            end = datetime.fromisoformat(req.query["end"][0]).replace(tzinfo=UTC)
            t = _floor(start, 5)
            records = []
            while t < end:
                if dataset == "CO2EmisProg" or t + timedelta(minutes=5) <= now:
                    for area in flt["PriceArea"]:
                        records.append(
                            {
                                "Minutes5UTC": t.strftime("%Y-%m-%dT%H:%M:%S"),
                                "Minutes5DK": (t + timedelta(hours=1)).strftime(
                                    "%Y-%m-%dT%H:%M:%S"
                                ),
                                "PriceArea": area,
                                "CO2Emission": self.value("dk", t.timestamp()),
                            }
                        )
                t += timedelta(minutes=5)
            if mode == "empty":
                records = []
            return 200, {
                "total": len(records),
                "limit": 1000,
                "dataset": dataset,
                "records": records,
            }
        raise LookupError(f"no route {p}")

    def _entsoe(self, req: Request, now: datetime) -> tuple[int, object]:
        """ENTSO-E A75: XML documents, an acknowledgement when there is no data."""
        q = {k: v[0] for k, v in req.query.items()}
        if q.get("securityToken") != self.entsoe_token:
            return 401, _Raw(b"<html><body><h1>Unauthorized</h1></body></html>", "text/html")
        if q.get("documentType") != "A75" or q.get("processType") != "A16":
            return 400, _Raw(_entsoe_ack("999", "Invalid document type"), "text/xml")
        domain = q.get("in_Domain", "")
        if self.entsoe_ack is not None:
            return self.entsoe_ack[0], _Raw(_entsoe_ack("999", self.entsoe_ack[1]), "text/xml")
        if domain not in self.entsoe_domains:
            text = f"No matching data found for Data item ACTUAL_GENERATION [{domain}]"
            return 200, _Raw(_entsoe_ack("999", text), "text/xml")
        start = datetime.strptime(q["periodStart"], "%Y%m%d%H%M").replace(tzinfo=UTC)
        end = min(
            datetime.strptime(q["periodEnd"], "%Y%m%d%H%M").replace(tzinfo=UTC), _floor(now, 15)
        )
        series = []
        for psr, mw in self.entsoe_mw.items():
            hourly = psr == "B04"
            step = 60 if hourly else 15
            stop = _floor(end, 60) if hourly else end
            n = int((stop - start).total_seconds() // (step * 60))
            # curve A03 (B16): only changes are given
            points = [(1, mw)] if psr == "B16" else [(k + 1, mw) for k in range(n)]
            series.append(
                _entsoe_series(psr, start, stop, step, points, "A03" if psr == "B16" else "A01")
            )
        # pumping: consumption, to be left out
        series.append(_entsoe_series("B10", start, end, 15, [(1, 500.0)], "A03", out_domain=domain))
        doc = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<GL_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0">'
            "<mRID>fake</mRID><type>A75</type><process.processType>A16</process.processType>"
            + "".join(series)
            + "</GL_MarketDocument>"
        )
        for minutes, text in self.entsoe_resolution.items():
            doc = doc.replace(f">PT{minutes}M<", f">{text}<")
        if isinstance(self.entsoe_zip, bytes):
            return 200, _Raw(self.entsoe_zip, "application/zip")
        if self.entsoe_zip is not None:
            return 200, _Raw(_zipped(doc, series, self.entsoe_zip), "application/zip")
        return 200, _Raw(doc.encode(), "text/xml")

    def _eia(self, req: Request, now: datetime) -> tuple[int, object]:
        """US EIA v2 fuel-type-data: hour-ending periods, newest first."""
        q = {k: v[0] for k, v in req.query.items()}
        if q.get("api_key") != self.eia_key:
            return 403, {
                "error": {
                    "code": "API_KEY_INVALID",
                    "message": "An invalid api_key was supplied. Get one at https://api.eia.gov:443",
                }
            }
        respondent = q.get("facets[respondent][]", "")
        data: list[dict[str, object]] = []
        if respondent in ("CISO", "PJM"):
            newest = _floor(now, 60) - timedelta(hours=self.eia_lag_h)
            start = datetime.strptime(q["start"], "%Y-%m-%dT%H").replace(tzinfo=UTC)
            t = newest
            while t > start:
                for fuel, mwh in self.eia_mwh.items():
                    if t == newest and fuel != "NG":
                        continue  # the newest hour: only gas has reported yet
                    data.append(
                        {
                            "period": t.strftime("%Y-%m-%dT%H"),
                            "respondent": respondent,
                            "respondent-name": "California Independent System Operator",
                            "fueltype": fuel,
                            "type-name": fuel,
                            "value": mwh(t) if callable(mwh) else mwh,
                            "value-units": "megawatthours",
                        }
                    )
                t -= timedelta(hours=1)
        return 200, {
            "response": {
                "total": str(len(data)),  # EIA writes the count as a string
                "dateFormat": 'YYYY-MM-DD"T"HH24',
                "frequency": "hourly",
                "data": data,
                "description": "Hourly net generation by balancing authority and energy source.",
            },
            "request": {"command": "/v2/electricity/rto/fuel-type-data/data/"},
            "apiVersion": "2.1.8",
        }

    def _watttime(self, req: Request, now: datetime) -> tuple[int, object]:
        """WattTime v3: basic-auth login for a bearer token, then data with the token."""
        import base64

        p = req.path
        if p == "/login":
            user, password = self.watttime_login
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if req.headers.get("authorization") != expected:
                return 403, {"error": "Forbidden", "message": "Invalid username or password."}
            with self._lock:
                token = f"wt-jwt-{len(self.watttime_tokens) + len(self.requests)}"
                self.watttime_tokens.add(token)
            return 200, {"token": token}
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.watttime_tokens:
            return 401, {"error": "Unauthorized", "message": "Token is invalid or expired."}
        q = {k: v[0] for k, v in req.query.items()}
        if p == "/v3/region-from-loc":
            lat, lon = float(q["latitude"]), float(q["longitude"])
            if not (36 < lat < 42 and -125 < lon < -119):
                return 400, {"error": "Bad Request", "message": "Coordinates not in a region."}
            return 200, {
                "region": "CAISO_NORTH",
                "region_full_name": "California ISO Northern",
                "signal_type": q["signal_type"],
            }
        region = q.get("region", "")
        t = _floor(now, 5)
        meta = {
            "region": region,
            "signal_type": q.get("signal_type"),
            "data_point_period_seconds": 300,
            "generated_at": _z(t),
            "model": {"date": "2026-01-01"},
        }
        if p == "/v3/signal-index":
            point = {"point_time": t.isoformat(), "value": 43.0}
            return 200, {"data": [point], "meta": meta | {"units": "percentile"}}
        if p == "/v3/forecast":
            if region not in self.watttime_regions:
                return 403, {
                    "error": "Forbidden",
                    "message": f"Your plan does not include access to co2_moer for {region}.",
                }
            n = 1 if q.get("horizon_hours") == "0" else 24 * 12
            data = [
                {
                    "point_time": (t + timedelta(minutes=5 * k)).isoformat(),
                    "value": self.value("watttime", (t + timedelta(minutes=5 * k)).timestamp()),
                }
                for k in range(n)
            ]
            return 200, {"data": data, "meta": meta | {"units": "lbs_co2_per_mwh"}}
        raise LookupError(f"no route {p}")

    def _em_item(self, zone: str, t: datetime, now: datetime) -> dict[str, object]:
        est = self.em_estimated is not None and t >= _floor(now, 60)
        return {
            "zone": zone,
            "carbonIntensity": self.value("electricitymaps", t.timestamp()),
            "datetime": _z(t),
            "updatedAt": _z(now),
            "createdAt": _z(t),
            "emissionFactorType": self.em_factor_type,
            "isEstimated": est,
            "estimationMethod": self.em_estimated if est else None,
        }


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> FakeClock:
    return FakeClock(getattr(request.module, "T0", T0))


@pytest.fixture
def server(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[FakeServer]:
    with FakeServer(clock, getattr(request.module, "server_value", None)) as srv:
        yield srv


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=getattr(request.module, "CLIENT_TIMEOUT", 2.0), trust_env=False) as c:
        yield c


def service(
    server: FakeServer | None,
    tmp_path: Path,
    client: httpx.Client | None,
    clock: FakeClock,
    **kw: Any,
) -> IntensityService:
    """An intensity service whose providers all live at ``server``, with no environment, a cache
    in ``tmp_path`` and the fake clock; fetching only when asked unless ``background=True``."""
    kw.setdefault("background", False)
    if server is not None:
        kw.setdefault("urls", {pid: server.url for pid in _PROVIDERS})
    return IntensityService(cache_dir=tmp_path / "cache", client=client, env={}, clock=clock, **kw)


_PROVIDERS = ("electricitymaps", "gb", "dk", "watttime", "entsoe", "eia")

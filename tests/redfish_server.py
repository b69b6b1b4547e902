"""A local HTTPS server that answers like a BMC's Redfish service, failures included.

It speaks DMTF Redfish's documented resources: the service root, the ``Chassis`` collection and
a chassis whose power is in one of ``layout``:

- ``"environment"``: ``EnvironmentMetrics`` with ``PowerWatts`` and ``EnergykWh`` (the counter
  integrates the served power exactly);
- ``"power"``: the legacy ``Power`` resource, ``PowerControl[0].PowerConsumedWatts`` and
  ``PowerMetrics``;
- ``"subsystem"``: the chassis links ``Power`` but it answers 404; ``PowerSubsystem`` has two
  power supplies whose ``Metrics`` give ``InputPowerWatts`` (``split`` of the served power);
- ``"both"``: ``EnvironmentMetrics`` and ``Power``;
- ``"sensors"``: only the ``Sensors`` collection: a temperature, one supply's power, and the
  chassis's total power and energy (``EnergyJoules``).

Authentication: ``POST /redfish/v1/SessionService/Sessions`` returns 201 with ``X-Auth-Token``
and ``Location`` (``sessions=False``: 404, so clients use HTTP Basic), and every resource but the
service root wants the token or Basic credentials (401 with ``@Message.ExtendedInfo`` else).

``modes[path] = mode`` makes a path fail: ``"401"``, ``"404"``, ``"503"`` (with
``Retry-After: retry_after``), ``"malformed"`` (not JSON), ``"trickle"`` (headers, then a byte
every ``trickle_s``), ``"null"`` (the reading is ``null``), ``"redirect:LOCATION"`` (301 to
LOCATION). ``docs[path]`` serves a document as given (a vendor's payload shape), before the
layout's. The power served at monotonic time
``t`` is ``power(t)``; every request is recorded (``log``: time, method, path, and headers with
lower-case names).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHASSIS = "/redfish/v1/Chassis/1U"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem): the cert is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test BMC")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "bmc-cert.pem"
    key_path = directory / "bmc-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _error(message_id: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "Base.1.8.GeneralError",
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [
                {
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": message_id,
                    "Message": message,
                    "Severity": "Critical",
                    "Resolution": "None.",
                }
            ],
        }
    }


class RedfishServer:
    """The BMC. Use as a context manager; ``url`` is its base URL."""

    def __init__(
        self,
        cert: tuple[Path, Path],
        *,
        layout: str = "environment",
        power: Callable[[float], float] = lambda t: 400.0,
        user: str = "carbon-admin",
        password: str = "s3cr3t-Pa55word!",
        sessions: bool = True,
        split: tuple[float, float] = (0.6, 0.4),
        power_watts_offset: float = 0.0,
    ) -> None:
        self.layout = layout
        self.power = power
        self.user = user
        self.password = password
        self.sessions = sessions
        self.split = split
        #: Added to the served PowerWatts (not to the energy counter): tells them apart.
        self.power_watts_offset = power_watts_offset
        self.modes: dict[str, str] = {}
        #: Documents served as given, before the layout's (a callable gets the monotonic time):
        #: a vendor's payload shape, verbatim.
        self.docs: dict[str, Any] = {}
        self.retry_after = 2
        self.trickle_s = 0.5
        self.tokens: dict[str, str] = {}  # token -> session path
        self.issued: list[str] = []  # every token handed out
        self.deleted: list[str] = []
        self.log: list[tuple[float, str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        # The counter integrates the served power from the server's start (trapezoid at 1 ms).
        self._t_last = time.monotonic()
        self._energy_j = 1.0e9  # a counter that has run for a while
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RedfishServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def energy_j(self) -> float:
        """The counter now: the served power integrated (fine steps: exact for steps)."""
        with self.lock:
            now = time.monotonic()
            t = self._t_last
            while t < now:
                dt = min(0.001, now - t)
                self._energy_j += self.power(t + dt / 2) * dt
                t += dt
            self._t_last = now
            return self._energy_j

    def requests(self, path: str) -> list[float]:
        """When ``path`` was asked for (monotonic seconds)."""
        with self.lock:
            return [t for t, _, p, _ in self.log if p == path]

    # ------------------------------------------------------------------ resources

    def resource(self, path: str) -> dict[str, Any] | None:
        t = time.monotonic()
        if path in self.docs:
            doc = self.docs[path]
            return doc(t) if callable(doc) else doc
        null = self.modes.get(path) == "null"
        if path in ("/redfish/v1", "/redfish/v1/"):
            return {
                "@odata.id": "/redfish/v1",
                "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot",
                "Id": "RootService",
                "RedfishVersion": "1.15.0",
                "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
                "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
            }
        if path == "/redfish/v1/Chassis":
            return {
                "@odata.id": "/redfish/v1/Chassis",
                "@odata.type": "#ChassisCollection.ChassisCollection",
                "Members@odata.count": 2,
                "Members": [
                    {"@odata.id": "/redfish/v1/Chassis/Enclosure"},
                    {"@odata.id": CHASSIS},
                ],
            }
        if path == "/redfish/v1/Chassis/Enclosure":
            return {
                "@odata.id": path,
                "@odata.type": "#Chassis.v1_21_0.Chassis",
                "Id": "Enclosure",
                "ChassisType": "Enclosure",
                "Links": {"Contains": [{"@odata.id": CHASSIS}]},
                # The enclosure's power holds other nodes' too: never the one to read.
                "EnvironmentMetrics": {"@odata.id": "/redfish/v1/Chassis/Enclosure/Env"},
            }
        if path == "/redfish/v1/Chassis/Enclosure/Env":
            return {
                "@odata.id": path,
                "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
                "Id": "EnvironmentMetrics",
                "PowerWatts": {"Reading": 5000.0},
            }
        if path == CHASSIS:
            doc: dict[str, Any] = {
                "@odata.id": CHASSIS,
                "@odata.type": "#Chassis.v1_21_0.Chassis",
                "Id": "1U",
                "Name": "Computer System Chassis",
                "ChassisType": "RackMount",
                "Sensors": {"@odata.id": f"{CHASSIS}/Sensors"},
            }
            if self.layout in ("environment", "both"):
                doc["EnvironmentMetrics"] = {"@odata.id": f"{CHASSIS}/EnvironmentMetrics"}
            if self.layout in ("power", "subsystem", "both"):
                doc["Power"] = {"@odata.id": f"{CHASSIS}/Power"}
            if self.layout == "subsystem":
                doc["PowerSubsystem"] = {"@odata.id": f"{CHASSIS}/PowerSubsystem"}
            return doc
        if path == f"{CHASSIS}/EnvironmentMetrics" and self.layout in ("environment", "both"):
            return {
                "@odata.id": path,
                "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
                "Id": "EnvironmentMetrics",
                "Name": "Chassis Environment Metrics",
                "PowerWatts": {
                    "DataSourceUri": f"{CHASSIS}/Sensors/TotalPower",
                    "Reading": None if null else self.power(t) + self.power_watts_offset,
                },
                "EnergykWh": {
                    "DataSourceUri": f"{CHASSIS}/Sensors/TotalEnergy",
                    "Reading": None if null else self.energy_j() / 3.6e6,
                },
            }
        if path == f"{CHASSIS}/Power" and self.layout in ("power", "both"):
            return {
                "@odata.id": path,
                "@odata.type": "#Power.v1_7_1.Power",
                "Id": "Power",
                "Name": "Power",
                "PowerControl": [
                    {
                        "@odata.id": f"{path}#/PowerControl/0",
                        "MemberId": "0",
                        "Name": "System Power Control",
                        "PowerConsumedWatts": None if null else self.power(t),
                        "PowerCapacityWatts": 1600,
                        "PowerMetrics": {
                            "IntervalInMin": 1,
                            "MinConsumedWatts": 100,
                            "MaxConsumedWatts": 700,
                            "AverageConsumedWatts": 380,
                        },
                        "Status": {"State": "Enabled", "Health": "OK"},
                    }
                ],
            }
        if self.layout == "sensors":
            sens = f"{CHASSIS}/Sensors"
            if path == sens:
                names = ("CPU1Temp", "PSU0InputPower", "TotalPower", "TotalEnergy")
                return {
                    "@odata.id": sens,
                    "@odata.type": "#SensorCollection.SensorCollection",
                    "Members@odata.count": len(names),
                    "Members": [{"@odata.id": f"{sens}/{n}"} for n in names],
                }
            sensor: dict[str, Any] = {"@odata.id": path, "@odata.type": "#Sensor.v1_7_0.Sensor"}
            if path == f"{sens}/CPU1Temp":
                return {**sensor, "ReadingType": "Temperature", "Reading": 61.0}
            if path == f"{sens}/PSU0InputPower":  # one supply's: not the chassis's total
                return {
                    **sensor,
                    "ReadingType": "Power",
                    "ReadingUnits": "W",
                    "PhysicalContext": "PowerSupply",
                    "Reading": 999.0,
                }
            if path == f"{sens}/TotalPower":
                return {
                    **sensor,
                    "ReadingType": "Power",
                    "ReadingUnits": "W",
                    "PhysicalContext": "Chassis",
                    "ElectricalContext": "Total",
                    "Reading": None if null else self.power(t) + self.power_watts_offset,
                }
            if path == f"{sens}/TotalEnergy":
                return {
                    **sensor,
                    "ReadingType": "EnergyJoules",
                    "ReadingUnits": "J",
                    "PhysicalContext": "Chassis",
                    "Reading": None if null else self.energy_j(),
                }
        if self.layout == "subsystem":
            sub = f"{CHASSIS}/PowerSubsystem"
            if path == sub:
                return {
                    "@odata.id": sub,
                    "@odata.type": "#PowerSubsystem.v1_1_0.PowerSubsystem",
                    "Id": "PowerSubsystem",
                    "CapacityWatts": 2000,
                    "PowerSupplies": {"@odata.id": f"{sub}/PowerSupplies"},
                }
            if path == f"{sub}/PowerSupplies":
                return {
                    "@odata.id": path,
                    "@odata.type": "#PowerSupplyCollection.PowerSupplyCollection",
                    "Members@odata.count": 2,
                    "Members": [{"@odata.id": f"{path}/{i}"} for i in ("0", "1")],
                }
            for i in (0, 1):
                psu = f"{sub}/PowerSupplies/{i}"
                if path == psu:
                    return {
                        "@odata.id": psu,
                        "@odata.type": "#PowerSupply.v1_5_0.PowerSupply",
                        "Id": str(i),
                        "Metrics": {"@odata.id": f"{psu}/Metrics"},
                    }
                if path == f"{psu}/Metrics":
                    return {
                        "@odata.id": path,
                        "@odata.type": "#PowerSupplyMetrics.v1_1_0.PowerSupplyMetrics",
                        "Id": "Metrics",
                        "InputPowerWatts": {
                            "Reading": None if null else self.power(t) * self.split[i]
                        },
                    }
        return None

    # ------------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("OData-Version", "4.0")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _record(self) -> str:
                path = self.path.split("?")[0].rstrip("/") or "/"
                if self.path in server.docs:  # a page of a collection: ``?$skip=20``
                    path = self.path
                with server.lock:
                    server.log.append(
                        (
                            time.monotonic(),
                            self.command,
                            path,
                            {k.lower(): v for k, v in self.headers.items()},
                        )
                    )
                return path

            def _authed(self) -> bool:
                token = self.headers.get("X-Auth-Token")
                if token is not None:
                    return token in server.tokens
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    expected = f"{server.user}:{server.password}".encode()
                    return base64.b64decode(auth[6:]) == expected
                return False

            def _unauthorized(self) -> None:
                self._send(
                    401,
                    _error(
                        "Base.1.8.NoValidSession",
                        "There is no valid session established with the implementation.",
                    ),
                    {"WWW-Authenticate": 'Basic realm="Redfish"'},
                )

            def do_POST(self) -> None:
                path = self._record()
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                if path != "/redfish/v1/SessionService/Sessions" or not server.sessions:
                    self._send(404, _error("Base.1.8.ResourceMissingAtURI", "Not found."))
                    return
                try:
                    creds = json.loads(raw)
                except ValueError:
                    self._send(400, _error("Base.1.8.MalformedJSON", "Malformed JSON."))
                    return
                if (creds.get("UserName"), creds.get("Password")) != (
                    server.user,
                    server.password,
                ) or server.modes.get(path) == "401":
                    self._send(
                        401,
                        _error(
                            "Base.1.8.ResourceAtUriUnauthorized",
                            "While accessing the resource at /redfish/v1/SessionService/"
                            "Sessions, the service received an authorization error "
                            "'Unauthorized'.",
                        ),
                    )
                    return
                with server.lock:
                    token = f"tok{len(server.issued)}-{time.monotonic_ns()}"
                    sid = f"/redfish/v1/SessionService/Sessions/{len(server.issued)}"
                    server.tokens[token] = sid
                    server.issued.append(token)
                self._send(
                    201,
                    {
                        "@odata.id": sid,
                        "@odata.type": "#Session.v1_6_0.Session",
                        "Id": sid.rsplit("/", 1)[1],
                        "UserName": server.user,
                    },
                    {"X-Auth-Token": token, "Location": sid},
                )

            def do_DELETE(self) -> None:
                path = self._record()
                if not self._authed():
                    self._unauthorized()
                    return
                with server.lock:
                    server.deleted.append(path)
                    for tok, sid in list(server.tokens.items()):
                        if sid == path:
                            del server.tokens[tok]
                self._send(204, b"")

            def do_GET(self) -> None:
                path = self._record()
                mode = server.modes.get(path)
                if path not in ("/redfish/v1", "/redfish/v1/") and not self._authed():
                    self._unauthorized()
                    return
                if mode == "401":
                    self._unauthorized()
                    return
                if mode is not None and mode.startswith("redirect:"):  # "redirect:LOCATION"
                    self._send(301, {}, {"Location": mode.split(":", 1)[1]})
                    return
                if mode == "404":
                    self._send(404, _error("Base.1.8.ResourceMissingAtURI", "Not found."))
                    return
                if mode == "503":
                    self._send(
                        503,
                        _error("Base.1.8.ServiceTemporarilyUnavailable", "Try again later."),
                        {"Retry-After": str(server.retry_after)},
                    )
                    return
                if mode == "malformed":
                    self._send(200, b'{"@odata.id": "' + path.encode() + b'", "Power')
                    return
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(100_000):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(server.trickle_s)
                    except OSError:
                        pass
                    return
                if server.layout == "subsystem" and path == f"{CHASSIS}/Power":
                    self._send(404, _error("Base.1.8.ResourceMissingAtURI", "Not found."))
                    return
                doc = server.resource(path)
                if doc is None:
                    self._send(404, _error("Base.1.8.ResourceMissingAtURI", "Not found."))
                    return
                self._send(200, doc)

        return Handler

"""HTTPS to a BMC: one bounded request at a time, its failures as :class:`RedfishError`, and the
session or Basic credentials it carries, which no message, repr or exception ever shows.

Every request is bounded: ``Limits.deadline_s`` from the request to the last byte of the answer,
however slowly the bytes come (the body is streamed and the deadline checked after every read;
one read waits at most what is left of it), and ``Limits.max_bytes`` on the answer's size.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import httpx

__all__ = ["Limits", "RedfishError", "Transport", "scrub"]

#: A ``Retry-After`` longer than this counts as this.
RETRY_AFTER_MAX_S = 600.0


@attrs.frozen
class Limits:
    """Bounds on one request: seconds in all (``deadline_s``) and the largest answer read."""

    deadline_s: float = 5.0
    max_bytes: int = 1024 * 1024


class RedfishError(Exception):
    """A BMC request failed. ``status`` is the HTTP status (None: no answer); ``retry_after``
    the delay the BMC asked for (HTTP 503 with ``Retry-After``); ``permanent`` when trying
    again cannot help (credentials refused, no power reading anywhere)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.permanent = permanent


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (password, session token, user name) replaced by ``***``."""
    for s in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def _said(body: bytes) -> str:
    """What a Redfish error answer says: its ``@Message.ExtendedInfo`` messages, else
    ``error.message``, briefly; "" when it says nothing readable."""
    try:
        doc = json.loads(body[:65536].decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return ""
    msgs: list[str] = []
    info = err.get("@Message.ExtendedInfo")
    if isinstance(info, list):
        msgs = [
            m["Message"] for m in info if isinstance(m, dict) and isinstance(m.get("Message"), str)
        ]
    if not msgs and isinstance(err.get("message"), str):
        msgs = [err["message"]]
    text = " ".join(m.strip() for m in msgs if m.strip())
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:200] + ("..." if len(text) > 200 else "")


def _retry_after(value: str) -> float | None:
    try:
        s = float(value.strip())
    except ValueError:
        import email.utils

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        s = when.timestamp() - time.time()
    if math.isnan(s):
        return RETRY_AFTER_MAX_S
    return min(RETRY_AFTER_MAX_S, max(0.0, s))


class Transport:
    """Requests to one BMC with its credentials: a Redfish session (``X-Auth-Token``) where
    the service grants one, else HTTP Basic. Not thread-safe: one poller thread uses it."""

    def __init__(
        self,
        base_url: str,
        user: str | None,
        password: str | None,
        *,
        verify: bool | str = True,
        limits: Limits = Limits(),
        client: httpx.Client | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.host = httpx.URL(self.base_url).host
        self._user = user
        self._password = password
        self._token: str | None = None
        self._session_url: str | None = None
        self._basic = False
        self.limits = limits
        self._client = client or httpx.Client(verify=_tls(verify), follow_redirects=False)

    def __repr__(self) -> str:
        return f"<carbonctx Redfish transport to {self.host}>"

    def _scrub(self, text: str) -> str:
        return scrub(text, (self._password, self._token, self._user))

    def error(self, message: str, **kw: Any) -> RedfishError:
        return RedfishError(self._scrub(message), **kw)

    def _headers(self) -> dict[str, str]:
        h = {"accept": "application/json", "odata-version": "4.0"}
        if self._token is not None:
            h["x-auth-token"] = self._token
        return h

    def _auth(self) -> tuple[str, str] | None:
        if self._basic and self._user is not None:
            return (self._user, self._password or "")
        return None

    def _url(self, method: str, path: str) -> str:
        """The URL of a path the BMC gave (a link, a session's ``Location``): on this BMC only,
        so that a link elsewhere never receives the credentials."""
        import httpx

        if path.startswith("/") and not path.startswith("//"):
            return self.base_url + path
        base = httpx.URL(self.base_url)
        try:
            url: httpx.URL | None = httpx.URL(path)
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise self.error(
                f"{method}: the BMC at {self.host} links to a resource elsewhere; not followed"
            )
        return str(url)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        authed: bool = True,
        hops: int = 1,
        start: float | None = None,
    ) -> tuple[int, Any, httpx.Headers]:
        """One request: (status, decoded JSON or None, headers) of a 2xx answer; anything else
        is a RedfishError that says what the BMC said (never the credentials). A GET that the
        BMC redirects (301, 302, 307, 308: ``/redfish/v1`` to ``/redfish/v1/``) is followed
        once where the new address is on this BMC (same scheme, host and port); elsewhere
        (``http`` to ``https``) it is not, and the error says where to point ``redfish_url``. The
        redirected request counts within the first one's deadline (``start``)."""
        import httpx

        url = self._url(method, path)
        start = time.monotonic() if start is None else start
        lim = self.limits

        def left() -> float:
            return lim.deadline_s - (time.monotonic() - start)

        too_slow = self.error(
            f"{method} {path}: no complete answer from the BMC within {lim.deadline_s:g} s"
        )
        chunks: list[bytes] = []
        size = 0
        try:
            with self._client.stream(
                method,
                url,
                headers=self._headers() if authed else {"accept": "application/json"},
                auth=self._auth() if authed else None,
                json=body,
                timeout=httpx.Timeout(max(0.001, left())),
            ) as r:
                status = r.status_code
                cap = lim.max_bytes if status < 300 else 65536
                stream = r.iter_raw()
                while True:
                    if left() <= 0:
                        raise too_slow
                    try:
                        chunk = next(stream)
                    except StopIteration:
                        break
                    size += len(chunk)
                    if size > cap:
                        if status < 300:
                            raise self.error(
                                f"{method} {path}: the answer is larger than "
                                f"{lim.max_bytes // 1024} KiB"
                            )
                        break
                    chunks.append(chunk)
                headers = r.headers
        except httpx.TimeoutException:
            raise too_slow from None
        except httpx.TransportError as e:
            # The OS's or TLS library's words: they never hold headers or credentials.
            raise self.error(
                f"could not reach the BMC at {self.host} ({type(e).__name__}: {e})"
            ) from None
        data = b"".join(chunks)
        where = headers.get("location", "")
        moved = status in (301, 302, 307, 308) and method == "GET" and where
        if moved:
            where = str(httpx.URL(url).join(where))  # a relative Location is on this BMC
            try:
                self._url(method, where)
            except RedfishError:
                raise self.error(
                    f"{method} {path}: HTTP {status}, the BMC redirects to {where[:200]}: not "
                    "followed (the credentials go to this address only); give redfish_url "
                    "the address it redirects to",
                    status=status,
                    permanent=True,
                ) from None
            if hops > 0:
                return self.request(method, where, body, authed=authed, hops=hops - 1, start=start)
        if status >= 300:
            said = _said(data)
            quoted = f': "{said}"' if said else ""
            ra = _retry_after(headers.get("retry-after", "")) if status in (429, 503) else None
            tail = f"; it asks to retry after {ra:.0f} s" if ra is not None else ""
            what = {
                401: "the credentials were refused",
                403: "access refused for this account",
                404: "no such resource",
                503: "the service is unavailable",
            }.get(status, f"redirected again, to {where[:200]}" if moved else "the request failed")
            raise self.error(
                f"{method} {path}: HTTP {status}, {what}{quoted}{tail}",
                status=status,
                retry_after=ra,
            )
        if not data.strip():
            return status, None, headers
        try:
            doc = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise self.error(f"{method} {path}: the answer is not JSON") from None
        return status, doc, headers

    def get(self, path: str) -> dict[str, Any]:
        """GET a resource, logging in first where the service wants a session; a 401 on a
        session that has expired logs in again once."""
        if self._token is None and not self._basic and self._user is not None:
            self.login()
        try:
            try:
                _, doc, _ = self.request("GET", path)
            except RedfishError as e:
                if e.status != 401 or self._token is None:
                    raise
                self._token = None  # the session expired: log in again, once
                self.login()
                _, doc, _ = self.request("GET", path)
        except RedfishError as e:
            if e.status != 401 or e.permanent:  # a refused login says what to do already
                raise
            raise self._refused(e) from None
        if not isinstance(doc, dict):
            raise self.error(f"GET {path}: the answer is not a Redfish resource (a JSON object)")
        return doc

    def _refused(self, e: RedfishError) -> RedfishError:
        """A 401 that a new session cannot cure, as a permanent error that says what to do."""
        if self._user is None:
            todo = (
                "this BMC wants credentials: set redfish_user and redfish_password "
                "(CARBONCTX_REDFISH_USER, CARBONCTX_REDFISH_PASSWORD)"
            )
        else:
            how = "a new session" if self._token is not None else "HTTP Basic"
            todo = (
                f"the credentials were refused with {how}; check redfish_user and "
                "redfish_password (CARBONCTX_REDFISH_USER, CARBONCTX_REDFISH_PASSWORD) and "
                "the account's rights on the BMC"
            )
        return self.error(f"{e.message}. {todo}", status=401, permanent=True)

    def login(self) -> None:
        """Open a session (POST SessionService/Sessions, the token in ``X-Auth-Token``); where
        the service has none, use HTTP Basic. Refused credentials are permanent."""
        path = "/redfish/v1/SessionService/Sessions"
        creds = {"UserName": self._user, "Password": self._password or ""}
        try:
            _, doc, headers = self.request("POST", path, creds, authed=False)
        except RedfishError as e:
            if e.status in (401, 403):
                raise self.error(
                    f"the BMC at {self.host} refused the credentials (HTTP {e.status}); check "
                    "redfish_user and redfish_password (CARBONCTX_REDFISH_USER, "
                    "CARBONCTX_REDFISH_PASSWORD)",
                    status=e.status,
                    permanent=True,
                ) from None
            if e.status in (404, 405, 501):
                self._basic = True  # no session service: Basic on every request
                return
            raise
        token = headers.get("x-auth-token")
        if not token:
            self._basic = True
            return
        self._token = token
        loc = headers.get("location") or (doc or {}).get("@odata.id")
        self._session_url = loc if isinstance(loc, str) else None

    def close(self) -> None:
        """End the session (bounded, best effort) and the connection."""
        if self._token is not None and self._session_url:
            old = self.limits
            self.limits = Limits(deadline_s=min(1.0, old.deadline_s), max_bytes=65536)
            try:
                self.request("DELETE", self._session_url)
            except RedfishError:
                pass
            finally:
                self.limits = old
        self._token = None
        self._client.close()


def _tls(verify: bool | str) -> ssl.SSLContext | bool:
    """True (the system's CAs), False (not verified), or a context trusting a CA bundle file
    or a directory of CA certificates."""
    if isinstance(verify, bool):
        return verify
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")

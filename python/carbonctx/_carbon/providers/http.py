"""HTTP for providers: GET with an overall deadline and a size limit, decode the answer, and map
every failure to a :class:`ProviderError` that says what the provider said.

A redirect is followed (three at most) while it stays with the same origin (scheme, host and
port; http on port 80 to https on 443 included); one elsewhere is refused with its address, since
the credentials (a header, a query parameter, basic auth) are for the configured origin only.

Every request is bounded twice over: ``Limits.deadline_s`` counts from the request to the last
byte of the answer, however slowly the bytes arrive (the body is streamed and the deadline checked
after every read; one read waits at most ``Limits.read_s``, so a request ends by
``deadline_s + read_s`` at the latest); ``Limits.max_bytes`` stops
an answer that grows past it (announced or not).
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from carbonctx._carbon.intensity import MAX_G_PER_KWH, UTC
from carbonctx._carbon.providers.base import ProviderError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_LIMITS",
    "RETRY_AFTER_MAX_S",
    "Limits",
    "error_message",
    "get_bytes",
    "get_json",
    "intensity_number",
    "malformed",
    "retry_after",
]

#: A ``Retry-After`` longer than this (or unreadable as a finite delay) counts as this.
RETRY_AFTER_MAX_S = 3600.0
#: How much of a provider's error answer a message quotes.
_QUOTE_CHARS = 200


@attrs.frozen
class Limits:
    """Bounds on one request: total seconds (``deadline_s``), seconds per read (``read_s``),
    and the largest answer read (``max_bytes``)."""

    deadline_s: float = 20.0
    read_s: float = 5.0
    max_bytes: int = 4 * 1024 * 1024


DEFAULT_LIMITS = Limits()


def retry_after(response: httpx.Response, now: float) -> float | None:
    """The ``Retry-After`` delay in seconds, in ``[0, RETRY_AFTER_MAX_S]``; None when absent or
    unreadable. ``inf`` and huge values are capped; negative ones and past dates count as 0."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return RETRY_AFTER_MAX_S
    return min(RETRY_AFTER_MAX_S, max(0.0, seconds))


def error_message(data: bytes) -> str:
    """What a provider's error answer says, quoted briefly: a JSON ``message``/``error``/
    ``detail`` field where there is one, else the first line of text; "" when it says nothing."""
    text = data[:4096].decode("utf-8-sig", "replace")  # a byte order mark is no part of it
    said: object = None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        for key in ("message", "error", "detail", "error_description", "reason"):
            v = doc.get(key)
            if isinstance(v, dict):
                v = v.get("message")
            if isinstance(v, str) and v.strip():
                said = v
                break
    elif doc is None and not text.lstrip().startswith("<"):
        said = text.strip().splitlines()[0] if text.strip() else None
    elif doc is None:  # markup: an HTML error page (a proxy's, a gateway's) says it in its title
        said = _title(text)
    if not isinstance(said, str):
        return ""
    clean = "".join(c if c.isprintable() else " " for c in said).strip()
    return clean[:_QUOTE_CHARS] + ("..." if len(clean) > _QUOTE_CHARS else "")


def _status_error(
    status: int,
    body: bytes,
    response: httpx.Response,
    *,
    name: str,
    now: float,
    unknown_zone: Callable[[int, str], bool] | None,
) -> ProviderError:
    said = error_message(body)
    quoted = f': "{said}"' if said else ""
    if status == 401:
        return ProviderError("auth", f"{name}: HTTP 401, the credentials were refused{quoted}")
    if status == 403:
        return ProviderError(
            "forbidden", f"{name}: HTTP 403, access refused (plan, zone or token){quoted}"
        )
    if status == 429:
        ra = retry_after(response, now)
        tail = f"; retry after {ra:.0f} s" if ra is not None else ""
        return ProviderError(
            "rate-limited", f"{name}: HTTP 429, request limit reached{quoted}{tail}", ra
        )
    if status >= 500:
        ra = retry_after(response, now) if status == 503 else None
        return ProviderError("server", f"{name}: HTTP {status} server error{quoted}", ra)
    if unknown_zone is not None and unknown_zone(status, said):
        return ProviderError("unknown-zone", f"{name}: HTTP {status}, zone not known{quoted}")
    return ProviderError("http", f"{name}: HTTP {status}, request refused{quoted}")


def get_bytes(
    client: httpx.Client,
    url: str,
    *,
    name: str,
    now: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    unknown_zone: Callable[[int, str], bool] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    explain: Callable[[int, bytes], ProviderError | None] | None = None,
) -> bytes:
    """GET ``url`` and return the body of a 2xx answer; every failure is a ProviderError.

    ``explain(status, body)`` reads a provider's own error document (the first 4 KiB of it) on
    a 4xx answer other than 429; None leaves the generic error."""
    import httpx  # only live providers need it; keep it off the import path

    start = time.monotonic()

    def left() -> float:
        return limits.deadline_s - (time.monotonic() - start)

    def timeout() -> httpx.Timeout:
        base = client.timeout
        cap = max(0.001, min(left(), limits.read_s))

        def lim(x: float | None) -> float:
            return cap if x is None else min(x, cap)

        return httpx.Timeout(
            connect=lim(base.connect),
            read=lim(base.read),
            write=lim(base.write),
            pool=lim(base.pool),
        )

    too_slow = ProviderError(
        "timeout", f"{name}: no complete answer within {limits.deadline_s:g} s"
    )
    sent = {"accept-encoding": "gzip", **(headers or {})}
    answered = False  # the status line and headers came: a failure after it cut the answer
    try:
        for _hop in range(_MAX_REDIRECTS + 1):
            chunks: list[bytes] = []
            answered = False
            with client.stream(
                "GET", url, params=params, headers=sent, auth=auth, timeout=timeout()
            ) as response:
                answered = True
                status = response.status_code
                _read(response, chunks, limits, name, left, too_slow)
                moved = _redirect(response, name) if status in _REDIRECTS else None
            if moved is None:
                break
            url, params = moved, None  # the new address carries its own query
        else:
            raise ProviderError(
                "http", f"{name}: more than {_MAX_REDIRECTS} redirects in a row, not followed"
            )
    except httpx.TimeoutException:
        raise (
            too_slow if left() <= 0 else ProviderError("timeout", f"{name}: the request timed out")
        ) from None
    except UnicodeError as exc:
        # a 3xx whose Location names a host that is no valid IDNA name ("xn--zz"): httpx reads
        # it while building the next request (not sent), and raises idna's error as it is
        raise ProviderError(
            "http", f"{name}: the answer redirects to an address that cannot be read ({exc})"[:300]
        ) from None
    except (httpx.TransportError, httpx.StreamError) as exc:
        # The message is the OS's or the protocol's ("[Errno 111] Connection refused", "peer
        # closed connection without sending complete message body"); it never holds headers.
        if answered:
            raise ProviderError(
                "connection", f"{name}: the answer was cut ({type(exc).__name__}: {exc})"
            ) from None
        if isinstance(exc, httpx.RemoteProtocolError):  # reached, but no HTTP answer to read
            # (a status line that is not HTTP; a 3xx whose Location is no URL, which httpx reads
            # while building the next request: "Invalid URL in location header")
            raise ProviderError(
                "connection", f"{name}: the answer could not be read as HTTP ({exc})"
            ) from None
        raise ProviderError("connection", f"{name}: could not connect ({exc})") from None
    body = b"".join(chunks)
    if explain is not None and 400 <= status < 500 and status != 429:
        own = explain(status, body)
        if own is not None:
            raise own
    if status >= 300:
        raise _status_error(status, body, response, name=name, now=now, unknown_zone=unknown_zone)
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding and encoding != "identity":
        body = _decode(body, encoding, name, limits)
    return body


#: statuses that move a request elsewhere (RFC 9110 section 15.4), followed within one origin
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 3


def _read(
    response: httpx.Response,
    chunks: list[bytes],
    limits: Limits,
    name: str,
    left: Callable[[], float],
    too_slow: ProviderError,
) -> None:
    """Read the body into ``chunks``: all of a 2xx answer (within the limits), the first 4 KiB
    of any other (enough for a message)."""
    status = response.status_code
    declared = response.headers.get("content-length", "")
    if status < 300 and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(name, limits)
    cap = limits.max_bytes if status < 300 else 4096
    size = 0
    stream = response.iter_raw()
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
                raise _too_large(name, limits)
            chunks.append(chunk[: len(chunk) - (size - cap)])
            break
        chunks.append(chunk)
    if left() <= 0 and status < 300:
        raise too_slow


def _redirect(response: httpx.Response, name: str) -> str | None:
    """Where a redirect leads, when it stays with the same origin (scheme, host and port; or
    from http to https on the default ports): credentials go nowhere else. None when it names
    no place (the 3xx is then reported as it is); a ProviderError that says where, for another
    origin."""
    location = response.headers.get("location", "").strip()
    if not location:
        return None
    import httpx

    here = response.request.url
    try:
        there = here.join(location)
        host = there.host  # an IDNA name is checked here (idna.IDNAError is a ValueError)
        netloc = there.netloc.decode("ascii")
        path = there.raw_path.split(b"?", 1)[0].decode("ascii")
    except (httpx.InvalidURL, ValueError):  # unreadable: reported as the 3xx it came with
        return None
    # the same origin (scheme, host, port), or the upgrade of http to https on their default
    # ports: an https port other than 443 may be another service of that machine
    same = host == here.host and (
        (there.scheme, there.port) == (here.scheme, here.port)
        or (here.scheme, here.port, there.scheme, there.port) == ("http", None, "https", None)
    )
    if same:
        return str(there)
    # the query is left out of the message (it may hold a token); the path stays as sent,
    # percent-encoded (a decoded %0A would break the line), and is shortened
    where = f"{there.scheme}://{netloc}{path}"
    where = where if len(where) <= 120 else f"{where[:117]}..."
    raise ProviderError(
        "http",
        f"{name}: HTTP {response.status_code}, moved to another host, port or scheme ({where}), "
        "not followed (credentials stay with the configured address); if that is the "
        "provider's, set CARBONCTX_<PROVIDER>_URL (or urls=) to it",
    )


def _too_large(name: str, limits: Limits) -> ProviderError:
    return ProviderError(
        "malformed", f"{name}: the answer is larger than {limits.max_bytes // 1024} KiB"
    )


def _decode(body: bytes, encoding: str, name: str, limits: Limits) -> bytes:
    """Undo gzip/deflate with the size limit applied to what comes out."""
    import zlib

    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise ProviderError("malformed", f"{name}: unsupported content-encoding {encoding!r}")
    d = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    try:
        out = d.decompress(body, limits.max_bytes + 1)
    except zlib.error:
        raise ProviderError("malformed", f"{name}: the answer could not be decompressed") from None
    if len(out) > limits.max_bytes:
        raise _too_large(name, limits)
    if not d.eof:  # the stream stops before its end: a part of the answer is missing
        raise ProviderError("malformed", f"{name}: the compressed answer ends early (cut)")
    return out


def get_json(
    client: httpx.Client,
    url: str,
    *,
    name: str,
    now: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    unknown_zone: Callable[[int, str], bool] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    explain: Callable[[int, bytes], ProviderError | None] | None = None,
) -> Any:
    """GET and decode JSON (see :func:`get_bytes`); NaN, infinities and deep nesting are
    refused as malformed."""
    body = get_bytes(
        client,
        url,
        name=name,
        now=now,
        params=params,
        headers=headers,
        auth=auth,
        unknown_zone=unknown_zone,
        limits=limits,
        explain=explain,
    )
    return parse_json(body, name)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def parse_json(body: bytes, name: str) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise ProviderError("malformed", f"{name}: the answer is {_not_json(body)}") from None


def _not_json(body: bytes) -> str:
    """What an answer that is not JSON is, in words: an HTML page (a proxy's, a captive
    portal's, an error page) is named by its title."""
    head = body[:4096].decode("utf-8-sig", "replace")
    if not head.lstrip().startswith("<"):
        return "not JSON" if body.strip() else "empty, not JSON"
    title = _title(head)
    if title is None:
        return "markup (HTML or XML), not JSON"
    return f'an HTML page, not JSON: "{title[:_QUOTE_CHARS]}"'


def _title(markup: str) -> str | None:
    """The text of an HTML page's ``<title>``, on one line, its character references read
    (``&amp;``); None without one."""
    import html

    found = re.search(r"<title[^>]*>(.*?)</title", markup, re.IGNORECASE | re.DOTALL)
    if found is None:
        return None
    text = html.unescape(found.group(1))  # "&#10;" is a line break: unescaped, then cleaned
    return " ".join("".join(c if c.isprintable() else " " for c in text).split()) or None


def malformed(name: str, what: str) -> ProviderError:
    return ProviderError("malformed", f"{name}: unexpected answer ({what})")


def intensity_number(value: object) -> float:
    """A usable intensity in g/kWh: a finite number in ``[0, MAX_G_PER_KWH]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    try:
        x = float(value)
    except OverflowError:
        raise ValueError("not a usable intensity: too large") from None
    if not (math.isfinite(x) and 0.0 <= x <= MAX_G_PER_KWH):
        raise ValueError(f"not a usable intensity: {x!r} g/kWh")
    return x

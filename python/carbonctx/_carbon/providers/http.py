"""HTTP for providers: GET and decode JSON, mapping every failure to a ProviderError."""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from carbonctx._carbon.intensity import UTC
from carbonctx._carbon.providers.base import ProviderError

if TYPE_CHECKING:
    import httpx

__all__ = ["get_json", "intensity_number", "malformed", "retry_after"]


def retry_after(response: httpx.Response, now: float) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def get_json(
    client: httpx.Client,
    url: str,
    *,
    name: str,
    now: float,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    unknown_zone: Callable[[httpx.Response], bool] | None = None,
) -> Any:
    """GET and decode JSON, mapping every failure to a :class:`ProviderError`."""
    import httpx  # only live providers need it; keep it off the import path

    try:
        response = client.get(url, params=params, headers=headers)
    except httpx.TimeoutException:
        raise ProviderError("timeout", f"{name}: the request timed out") from None
    except httpx.TransportError as exc:
        # The message is the OS's ("[Errno 111] Connection refused"); it never holds headers.
        raise ProviderError("connection", f"{name}: could not connect ({exc})") from None
    status = response.status_code
    if status in (401, 403):
        raise ProviderError("auth", f"{name}: HTTP {status}, the token was refused")
    if status == 429:
        ra = retry_after(response, now)
        tail = f", retry after {ra:.0f} s" if ra is not None else ""
        raise ProviderError("rate-limited", f"{name}: HTTP 429 too many requests{tail}", ra)
    if status >= 500:
        raise ProviderError("server", f"{name}: HTTP {status} server error")
    if status >= 400:
        if unknown_zone is not None and unknown_zone(response):
            raise ProviderError("unknown-zone", f"{name}: HTTP {status}, zone not known")
        raise ProviderError("http", f"{name}: HTTP {status}")
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise ProviderError("malformed", f"{name}: the answer is not JSON") from None


def malformed(name: str, what: str) -> ProviderError:
    return ProviderError("malformed", f"{name}: unexpected answer ({what})")


def intensity_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"not a usable intensity: {value!r}")
    return x

"""The node's BMC (Redfish) settings, checked: address, account, certificate check, period,
and how far behind its reads the node's timeline is kept (``redfish_lag_s``)."""

from __future__ import annotations

import math
import os
from typing import TypedDict
from urllib.parse import urlsplit, urlunsplit

from carbonctx._config.carbon import check_token
from carbonctx._config.settings import MAX_REDFISH_LAG_S, Settings
from carbonctx.errors import ConfigurationError


class RedfishArgs(TypedDict):
    """The BMC settings, checked: where (``url``), who, how its certificate is checked, how
    often it is read, and how far behind its reads the node's timeline is kept (``lag_s``; 0:
    readings placed when read)."""

    url: str
    user: str | None
    password: str | None
    verify: bool | str
    period_s: float
    lag_s: float


def redfish_lag(s: Settings) -> float:
    """``redfish_lag_s`` checked: seconds from 0 (the default) to ``MAX_REDFISH_LAG_S``. Every
    process of a job has the same (its settings), whether it reads the BMC or not."""
    lag = 0.0 if s.redfish_lag_s is None else s.redfish_lag_s
    try:
        x = float(lag)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(lag, (bool, str)) or not 0.0 <= x <= MAX_REDFISH_LAG_S:  # also NaN
        raise ConfigurationError(
            f"redfish_lag_s={lag!r} (CARBONCTX_REDFISH_LAG_S): give the seconds the node's "
            f"timeline is kept behind its reads, 0 to {MAX_REDFISH_LAG_S:g} (default 0: BMC "
            "readings are placed when read; above 0 they are placed when they stood, and every "
            "region's result arrives that much later)."
        )
    return x


def redfish(s: Settings) -> RedfishArgs | None:
    """The BMC to read the node's wall power from (None: none configured). Raises
    ConfigurationError for unusable values, never quoting a credential."""
    lag = redfish_lag(s)  # checked with or without a BMC: a bad value is bad either way
    if s.redfish_url is None or not str(s.redfish_url).strip():
        return None
    url = str(s.redfish_url).strip()
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "redfish_url (CARBONCTX_REDFISH_URL) holds credentials: give the BMC's address "
            "alone, and the account in redfish_user and redfish_password."
        )
    path = parts.path.rstrip("/")
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.query
        or parts.fragment
        or (path not in ("", "/redfish/v1") and not path.startswith("/redfish/v1/Chassis/"))
    ):
        # Quoted without its query or fragment, which may carry a token.
        shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        extra = (
            " (a query string or fragment is not taken)" if parts.query or parts.fragment else ""
        )
        raise ConfigurationError(
            f"redfish_url={shown!r}{extra}: give the BMC's HTTPS address, e.g. "
            "'https://10.0.0.5' (or a chassis, 'https://10.0.0.5/redfish/v1/Chassis/1'); "
            "credentials never go over plain HTTP."
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigurationError(f"redfish_url={url!r} has an invalid port number.") from None
    user = check_token(s.redfish_user, "redfish_user") if s.redfish_user else None
    password = s.redfish_password or None
    if password is not None and (not password.isprintable() or "\n" in password):
        raise ConfigurationError("redfish_password holds characters a BMC cannot take.")
    if (user is None) != (password is None):
        raise ConfigurationError(
            "Give both redfish_user and redfish_password (CARBONCTX_REDFISH_USER, "
            "CARBONCTX_REDFISH_PASSWORD), or neither."
        )
    verify: bool | str = True if s.redfish_verify is None else s.redfish_verify
    if isinstance(verify, str):
        if not os.path.exists(verify):
            raise ConfigurationError(
                f"redfish_verify={verify!r}: give True (the system's CA certificates), the "
                "path of the BMC's CA bundle, or False (not verified: a warning says so)."
            )
    elif not isinstance(verify, bool):
        raise ConfigurationError(f"redfish_verify={verify!r}: give True, False or a path.")
    period = 5.0 if s.redfish_period_s is None else s.redfish_period_s
    try:
        p = float(period)
    except (TypeError, ValueError):
        p = math.nan
    if isinstance(period, bool) or not 1.0 <= p <= 300.0:
        raise ConfigurationError(
            f"redfish_period_s={period!r}: give the seconds between BMC readings, 1 to 300 "
            "(default 5; a BMC refreshes its reading every few seconds)."
        )
    return RedfishArgs(url=url, user=user, password=password, verify=verify, period_s=p, lag_s=lag)

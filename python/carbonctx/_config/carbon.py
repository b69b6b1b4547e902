"""The intensity service's settings (:func:`carbon_settings`): PUE, providers, their
credentials and base URLs, the cache folder, the signal, the request deadline, coordinates;
arguments first, then ``CARBONCTX_*`` variables."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import attrs

from carbonctx._config.variables import environ
from carbonctx.errors import ConfigurationError

#: Provider ids and their default base URLs (override with ``CARBONCTX_<ID>_URL``).
DEFAULT_URLS: dict[str, str] = {
    "electricitymaps": "https://api.electricitymaps.com",
    "gb": "https://api.carbonintensity.org.uk",
    "dk": "https://api.energidataservice.dk",
    "watttime": "https://api.watttime.org",
    "entsoe": "https://web-api.tp.entsoe.eu",
    "eia": "https://api.eia.gov",
}
PROVIDER_IDS: tuple[str, ...] = tuple(DEFAULT_URLS)

PUE_DEFAULT_SOURCE = "default (1.0: facility overhead not counted)"


@attrs.frozen(slots=True)
class CarbonSettings:
    """The intensity service's settings, validated: arguments first, then the environment."""

    pue: float
    pue_source: str
    electricitymaps_token: str | None = attrs.field(repr=False)
    provider_ids: tuple[str, ...]
    urls: Mapping[str, str]
    cache_dir: Path
    #: which intensity CO2 uses: "average" (of the generation mix) or "marginal"
    signal: str = "average"
    #: seconds one provider request may take in all, however slowly its bytes arrive
    deadline_s: float = 20.0
    entsoe_token: str | None = attrs.field(default=None, repr=False)
    eia_key: str | None = attrs.field(default=None, repr=False)
    #: Electricity Maps API version: "v3" or "v4"
    electricitymaps_api: str = "v3"
    watttime_username: str | None = attrs.field(default=None, repr=False)
    watttime_password: str | None = attrs.field(default=None, repr=False)
    #: a WattTime region (``CAISO_NORTH``); else found from the coordinates
    watttime_region: str | None = None
    #: where the machine is (degrees), for providers that find a region from coordinates
    latitude: float | None = None
    longitude: float | None = None

    @property
    def coordinates(self) -> tuple[float, float] | None:
        """``(latitude, longitude)`` when both are given, else None."""
        if self.latitude is None or self.longitude is None:
            return None
        return (self.latitude, self.longitude)


SIGNALS: tuple[str, ...] = ("average", "marginal")


class CarbonKwargs(TypedDict, total=False):
    """The keyword arguments of :func:`carbon_settings` (and of the intensity service), each
    unset or None for "from the environment, else the default"."""

    pue: float | None
    providers: Sequence[str] | None
    electricitymaps_token: str | None
    urls: Mapping[str, str] | None
    cache_dir: str | os.PathLike[str] | None
    signal: str | None
    deadline_s: float | None
    entsoe_token: str | None
    eia_key: str | None
    electricitymaps_api: str | None
    watttime_username: str | None
    watttime_password: str | None
    watttime_region: str | None
    latitude: float | None
    longitude: float | None


def carbon_settings(
    *,
    pue: float | None = None,
    providers: Sequence[str] | None = None,
    electricitymaps_token: str | None = None,
    urls: Mapping[str, str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    signal: str | None = None,
    deadline_s: float | None = None,
    entsoe_token: str | None = None,
    eia_key: str | None = None,
    electricitymaps_api: str | None = None,
    watttime_username: str | None = None,
    watttime_password: str | None = None,
    watttime_region: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    env: Mapping[str, str] | None = None,
) -> CarbonSettings:
    """Validate the carbon settings; raises ConfigurationError naming the setting."""
    env = environ(env)
    if pue is not None:
        pue_value, pue_source = parse_pue(pue, "pue"), "argument"
    elif env.get("CARBONCTX_PUE", "").strip():
        pue_value = parse_pue(env["CARBONCTX_PUE"].strip(), "CARBONCTX_PUE")
        pue_source = "CARBONCTX_PUE"
    else:
        pue_value, pue_source = 1.0, PUE_DEFAULT_SOURCE

    if electricitymaps_token is not None:
        token = check_token(electricitymaps_token, "electricitymaps_token")
    else:
        token = check_token(
            env.get("CARBONCTX_ELECTRICITYMAPS_TOKEN", ""), "CARBONCTX_ELECTRICITYMAPS_TOKEN"
        )

    if providers is not None:
        ids = parse_providers(providers, "providers")
    elif env.get("CARBONCTX_PROVIDERS", "").strip():
        ids = parse_providers(env["CARBONCTX_PROVIDERS"], "CARBONCTX_PROVIDERS")
    else:
        ids = ()
    wt_user = _secret(watttime_username, "watttime_username", env, "CARBONCTX_WATTTIME_USERNAME")
    wt_pass = _password(watttime_password, "watttime_password", env, "CARBONCTX_WATTTIME_PASSWORD")
    entsoe = _secret(entsoe_token, "entsoe_token", env, "CARBONCTX_ENTSOE_TOKEN")
    eia = _secret(eia_key, "eia_key", env, "CARBONCTX_EIA_KEY")
    em_api = (electricitymaps_api or env.get("CARBONCTX_ELECTRICITYMAPS_API", "") or "v3").strip()
    if em_api.lower() not in ("v3", "v4"):
        raise ConfigurationError(
            f"electricitymaps_api={em_api!r} (CARBONCTX_ELECTRICITYMAPS_API): use 'v3' or 'v4'."
        )
    if not ids:
        ids = (
            (("electricitymaps",) if token else ())
            + (("watttime",) if wt_user and wt_pass else ())
            + (("entsoe",) if entsoe else ())
            + (("eia",) if eia else ())
        )
    if "watttime" in ids and not (wt_user and wt_pass):
        raise ConfigurationError(
            "The watttime provider needs CARBONCTX_WATTTIME_USERNAME and "
            "CARBONCTX_WATTTIME_PASSWORD (or watttime_username and watttime_password)."
        )
    region = watttime_region or env.get("CARBONCTX_WATTTIME_REGION", "").strip() or None
    if region is not None and not (region.replace("_", "").replace("-", "").isalnum()):
        raise ConfigurationError(
            f"watttime_region={region!r}: give a WattTime region code, e.g. 'CAISO_NORTH'."
        )
    lat = _coordinate(latitude, "latitude", env, "CARBONCTX_LATITUDE", 90.0)
    lon = _coordinate(longitude, "longitude", env, "CARBONCTX_LONGITUDE", 180.0)
    if (lat is None) != (lon is None):
        raise ConfigurationError(
            "Give both latitude and longitude (CARBONCTX_LATITUDE, CARBONCTX_LONGITUDE), or "
            "neither."
        )

    url_args = dict(urls or {})
    for key in url_args:
        if key not in DEFAULT_URLS:
            raise ConfigurationError(
                f"urls has an unknown provider {key!r}; known: {', '.join(PROVIDER_IDS)}."
            )
    resolved: dict[str, str] = {}
    for pid, default in DEFAULT_URLS.items():
        var = f"CARBONCTX_{pid.upper()}_URL"
        if pid in url_args:
            resolved[pid] = parse_url(url_args[pid], f"urls[{pid!r}]")
        elif env.get(var, "").strip():
            resolved[pid] = parse_url(env[var], var)
        else:
            resolved[pid] = default
    # A provider named without the credential its service requires is refused now, as the
    # watttime one is, not warned of at the first fetch (a proxy at another URL may add it).
    for pid, given, var, arg in (
        ("electricitymaps", token, "CARBONCTX_ELECTRICITYMAPS_TOKEN", "electricitymaps_token"),
        ("entsoe", entsoe, "CARBONCTX_ENTSOE_TOKEN", "entsoe_token"),
        ("eia", eia, "CARBONCTX_EIA_KEY", "eia_key"),
    ):
        if pid in ids and not given and resolved[pid] == DEFAULT_URLS[pid]:
            raise ConfigurationError(
                f"The {pid} provider needs {var} (or {arg}): its service refuses requests "
                f"without it. Set it, or leave {pid} out of the providers."
            )

    if cache_dir is not None:
        cache = Path(cache_dir)
    elif env.get("CARBONCTX_CACHE_DIR", "").strip():
        cache = Path(env["CARBONCTX_CACHE_DIR"].strip()).expanduser()
    else:
        cache = default_cache_dir(env)
    if signal is not None:
        signal_value = parse_signal(signal, "signal")
    else:
        signal_value = parse_signal(
            env.get("CARBONCTX_SIGNAL", "") or "average", "CARBONCTX_SIGNAL"
        )
    if deadline_s is not None:
        deadline = parse_deadline(deadline_s, "deadline_s")
    elif env.get("CARBONCTX_INTENSITY_DEADLINE", "").strip():
        deadline = parse_deadline(
            env["CARBONCTX_INTENSITY_DEADLINE"].strip(), "CARBONCTX_INTENSITY_DEADLINE"
        )
    else:
        deadline = 20.0
    return CarbonSettings(
        pue=pue_value,
        pue_source=pue_source,
        electricitymaps_token=token,
        provider_ids=ids,
        urls=resolved,
        cache_dir=cache,
        signal=signal_value,
        deadline_s=deadline,
        entsoe_token=entsoe,
        eia_key=eia,
        electricitymaps_api=em_api.lower(),
        watttime_username=wt_user,
        watttime_password=wt_pass,
        watttime_region=region,
        latitude=lat,
        longitude=lon,
    )


def _secret(given: str | None, name: str, env: Mapping[str, str], var: str) -> str | None:
    if given is not None:
        return check_token(given, name)
    return check_token(env.get(var, ""), var)


def _password(given: str | None, name: str, env: Mapping[str, str], var: str) -> str | None:
    """A password as it was given, spaces and all (it goes base64-encoded in HTTP Basic auth,
    where any character may be, and stripping one would change it); blank is unset."""
    value = env.get(var, "") if given is None else given
    if not isinstance(value, str):
        raise ConfigurationError(f"{name}: give a string")  # never quoting a credential
    return value if value.strip() else None


def _coordinate(
    given: float | None, name: str, env: Mapping[str, str], var: str, limit: float
) -> float | None:
    value: object = given
    setting = name
    if value is None:
        text = env.get(var, "").strip()
        if not text:
            return None
        value, setting = text, var
    try:
        x = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and -limit <= x <= limit):
        comma = isinstance(value, str) and "," in value
        raise ConfigurationError(
            f"{setting}={value!r}: give degrees between -{limit:g} and {limit:g}"
            + (
                " with a decimal point (52.52, not 52,52), one number per setting."
                if comma
                else "."
            )
        )
    return x


def parse_signal(value: object, setting: str) -> str:
    text = str(value).strip().lower()
    if text not in SIGNALS:
        raise ConfigurationError(
            f"{setting}={value!r}: use 'average' (emissions of the generation mix per kWh, the "
            "default) or 'marginal' (of the generation that answers a change in demand)."
        )
    return text


def parse_deadline(value: object, setting: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= 600):
        raise ConfigurationError(
            f"{setting}={value!r}: give the seconds one provider request may take in all, "
            "more than 0 and at most 600 (default 20)."
        )
    return seconds


def parse_pue(value: object, setting: str) -> float:
    try:
        pue = math.nan if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pue = math.nan
    if not math.isfinite(pue) or pue < 1.0:
        raise ConfigurationError(
            f"{setting}={value!r} is not a usable PUE. PUE is a data centre's total energy over "
            "its IT energy, a number of at least 1: set it to your facility's published figure "
            "(e.g. 1.1), or leave it unset for 1.0 (overhead not counted)."
        )
    return pue


def parse_providers(value: str | Sequence[str], setting: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        pid = str(item).strip().lower()
        if not pid:
            continue
        if pid not in DEFAULT_URLS:
            raise ConfigurationError(
                f"{setting} names an unknown provider {pid!r}. Known providers: "
                f"{', '.join(PROVIDER_IDS)} (a comma-separated list, e.g. 'gb,dk')."
            )
        if pid not in out:
            out.append(pid)
    return tuple(out)


def parse_url(value: str, setting: str) -> str:
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{setting}={value!r} is not a base URL. Give the scheme and host (and port), "
            "e.g. 'https://api.electricitymaps.com'; the API paths are added by carbonctx."
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigurationError(f"{setting}={value!r} has an invalid port number.") from None
    return text.rstrip("/")


def check_token(value: str, setting: str) -> str | None:
    token = value.strip()
    if not token:
        return None
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        # Say nothing of the token itself: it is a secret.
        raise ConfigurationError(
            f"{setting} holds characters that cannot go in an HTTP header (spaces, line breaks "
            "or non-ASCII). Copy it again from your provider account."
        )
    return token


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/carbonctx``, else ``~/.cache/carbonctx``."""
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "carbonctx"

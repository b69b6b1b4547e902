"""Every setting, read and validated once: ``configure(...)`` over ``CARBONCTX_*`` over defaults.

This is the one module that reads the process environment. Everything else receives values
(or, for zone detection, the environment mapping handed down from here):

==========================================  =======================================================
``CARBONCTX_CPU_BACKENDS``, ``_GPU``,        the sampler (:class:`Settings`, :func:`from_env`)
``_ESTIMATE``, ``_INTERVALS``, ``_OUTPUT``,
``_STRICT``, ``_SUMMARY``, ``_ON_FORK``,
``_AMDSMI``, ``_AMDSMI_LIBRARY``
``CARBONCTX_PUE``, ``_PROVIDERS``,           carbon intensity (:func:`carbon_settings`)
``_ELECTRICITYMAPS_TOKEN``, ``_<ID>_URL``,
``_CACHE_DIR`` (and ``XDG_CACHE_HOME``)
``CARBONCTX_ZONE`` (and cloud region, TZ)    zone rules, in ``_carbon.zones``, from :func:`environ`
``CARBONCTX_LOG_DIR``, ``_PROGRESS``         runs of epochs (:func:`log_dir`, :func:`progress`)
``CARBONCTX_RANK``, ``_LOCAL_RANK``,         this process's place in a distributed job (override
``_WORLD_SIZE``, ``_LOCAL_WORLD_SIZE``,      the launcher's variables; see ``_distributed.ranks``)
``_NODE``, ``_JOB``, ``_GPUS``               and the GPUs this rank reports
``CARBONCTX_REDFISH_URL``, ``_USER``,        the node's wall power from its BMC (:func:`redfish`)
``_PASSWORD``, ``_VERIFY``, ``_PERIOD``
==========================================  =======================================================
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

import attrs

from carbonctx.errors import ConfigurationError


def environ(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``env`` if given (tests pass their own), else the process environment."""
    return os.environ if env is None else env


CPU_BACKENDS = ("powercap", "perf", "msr")
BACKENDS = (*CPU_BACKENDS, "nvml", "amdsmi", "hwmon", "estimate")
ESTIMATE_MODES = ("auto", "never", "always")
FORK_MODES = ("restart", "disable")
#: The longest polling interval accepted, in seconds (counters wrap within minutes).
MAX_INTERVAL_S = 3600.0
#: Settings that place this process in a distributed job, and their variables.
RANK_SETTINGS = {
    "rank": "CARBONCTX_RANK",
    "local_rank": "CARBONCTX_LOCAL_RANK",
    "world_size": "CARBONCTX_WORLD_SIZE",
    "local_world_size": "CARBONCTX_LOCAL_WORLD_SIZE",
    "node": "CARBONCTX_NODE",
    "job": "CARBONCTX_JOB",
}
_INT_RANK_SETTINGS = ("rank", "local_rank", "world_size", "local_world_size")


@attrs.frozen(slots=True)
class Settings:
    """Everything ``configure()`` accepts. Unset fields fall back to the environment."""

    cpu_backends: tuple[str, ...] = CPU_BACKENDS
    gpu: bool = True
    estimate: str = "auto"
    intervals: Mapping[str, float] = attrs.field(factory=dict)
    output: str | None = None
    strict: bool = False
    window: int = 1000
    on_fork: str = "restart"
    summary_at_exit: bool = False
    sys_root: str | None = None
    dev_root: str | None = None
    proc_root: str | None = None
    nvml_library: str | None = None
    #: CPU TDP in watts per package for the utilisation x TDP model (text, as the variable).
    cpu_tdp_w: str | None = None
    #: AMD GPUs (AMD SMI, else the amdgpu hwmon files); off with ``gpu=False`` too.
    amdsmi: bool = True
    amdsmi_library: str | None = None
    # Carbon intensity (passed to the intensity service)
    zone: str | None = None
    pue: float | None = None
    providers: tuple[str, ...] | None = None
    electricitymaps_token: str | None = attrs.field(default=None, repr=False)
    urls: Mapping[str, str] | None = None
    cache_dir: str | None = None
    signal: str | None = None
    deadline_s: float | None = None
    entsoe_token: str | None = attrs.field(default=None, repr=False)
    eia_key: str | None = attrs.field(default=None, repr=False)
    electricitymaps_api: str | None = None
    watttime_username: str | None = attrs.field(default=None, repr=False)
    watttime_password: str | None = attrs.field(default=None, repr=False)
    watttime_region: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    # Distributed jobs (None: what the launcher says; see _distributed)
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    local_world_size: int | None = None
    node: str | None = None
    job: str | None = None
    #: GPUs this rank reports: device numbers (after CUDA_VISIBLE_DEVICES) or UUIDs; () none.
    gpus: tuple[int | str, ...] | None = None
    #: One sampler per node, shared by the job's processes there (None: on in a job whose node
    #: runs several of its processes); where its segment and lock files go (None: /dev/shm).
    node_sampler: bool | None = None
    node_dir: str | None = None
    # The node's wall power from its BMC over Redfish (see :func:`redfish`; _bmc). The user
    # and password never appear in a repr.
    redfish_url: str | None = None
    redfish_user: str | None = attrs.field(default=None, repr=False)
    redfish_password: str | None = attrs.field(default=None, repr=False)
    redfish_verify: bool | str | None = None
    redfish_period_s: float | None = None

    def rank_kwargs(self) -> dict[str, Any]:
        """The settings :func:`carbonctx._distributed.detect_ranks` takes."""
        return {name: getattr(self, name) for name in RANK_SETTINGS}

    def intensity_kwargs(self) -> dict[str, Any]:
        return {
            "zone": self.zone,
            "pue": self.pue,
            "providers": self.providers,
            "electricitymaps_token": self.electricitymaps_token,
            "urls": self.urls,
            "cache_dir": self.cache_dir,
            **{name: getattr(self, name) for name in LIVE_CARBON_SETTINGS},
        }


#: Carbon settings of the live providers, passed to the intensity service as they are (the
#: service validates them with their variables, in ``carbon_settings``).
LIVE_CARBON_SETTINGS = (
    "signal",
    "deadline_s",
    "entsoe_token",
    "eia_key",
    "electricitymaps_api",
    "watttime_username",
    "watttime_password",
    "watttime_region",
    "latitude",
    "longitude",
)


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{name}={value!r}: use 1/0, true/false, yes/no or on/off")


def _list(name: str, value: str, allowed: Sequence[str]) -> tuple[str, ...]:
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    for x in items:
        if x not in allowed:
            raise ConfigurationError(
                f"{name}: unknown value {x!r}; use any of {', '.join(allowed)}"
            )
    return items


def _intervals(name: str, value: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        key, sep, ms = part.partition("=")
        key = key.strip()
        if not sep or key not in BACKENDS:
            raise ConfigurationError(
                f"{name}: {part!r} is not BACKEND=MILLISECONDS (backends: {', '.join(BACKENDS)})"
            )
        try:
            v = float(ms) / 1e3
        except ValueError:
            raise ConfigurationError(f"{name}: {ms!r} is not a number of milliseconds") from None
        if not 0 < v <= MAX_INTERVAL_S:
            raise ConfigurationError(
                f"{name}: the interval for {key} ({ms.strip()} ms) must be above 0 and at most "
                f"{MAX_INTERVAL_S * 1e3:.0f} ms"
            )
        out[key] = v
    return out


def _count(name: str, value: str) -> int:
    v = value.strip()
    if not v.isdigit():
        raise ConfigurationError(f"{name}={value!r}: give a non-negative integer")
    return int(v)


def parse_gpus(name: str, value: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """The GPU setting: device numbers (as this process numbers them, after
    ``CUDA_VISIBLE_DEVICES``) or ``GPU-``/``MIG-`` UUIDs; empty or ``none`` for no GPU."""
    items: list[int | str] = []
    raw = value.split(",") if isinstance(value, str) else list(value)
    if isinstance(value, str) and value.strip().lower() == "none":
        raw = []
    for item in raw:
        if isinstance(item, bool):
            raise ConfigurationError(f"{name}: {item!r} is not a device number or GPU UUID")
        if isinstance(item, int):
            if item < 0:
                raise ConfigurationError(f"{name}: device number {item} is negative")
            out: int | str = item
        else:
            text = str(item).strip()
            if not text:
                continue
            if text.isdigit():
                out = int(text)
            elif text.lower().startswith(("gpu-", "mig-")):
                out = text
            else:
                raise ConfigurationError(
                    f"{name}: {text!r} is neither a device number nor a GPU-/MIG- UUID "
                    "(list them comma-separated, like 0,1 or GPU-5f1c...)"
                )
        if out not in items:
            items.append(out)
    return tuple(items)


def from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings found in ``CARBONCTX_*`` variables, as ``configure()`` keyword arguments."""
    e = environ(env)
    out: dict[str, Any] = {}

    def get(name: str) -> str | None:
        v = e.get(name)
        return v if v not in (None, "") else None

    if (v := get("CARBONCTX_CPU_BACKENDS")) is not None:
        out["cpu_backends"] = _list("CARBONCTX_CPU_BACKENDS", v, CPU_BACKENDS)
    if (v := get("CARBONCTX_GPU")) is not None:
        out["gpu"] = _bool("CARBONCTX_GPU", v)
    if (v := get("CARBONCTX_ESTIMATE")) is not None:
        out["estimate"] = v
    if (v := get("CARBONCTX_INTERVALS")) is not None:
        out["intervals"] = _intervals("CARBONCTX_INTERVALS", v)
    if (v := get("CARBONCTX_OUTPUT")) is not None:
        out["output"] = v
    if (v := get("CARBONCTX_STRICT")) is not None:
        out["strict"] = _bool("CARBONCTX_STRICT", v)
    if (v := get("CARBONCTX_SUMMARY")) is not None:
        out["summary_at_exit"] = _bool("CARBONCTX_SUMMARY", v)
    if (v := get("CARBONCTX_ON_FORK")) is not None:
        out["on_fork"] = v
    for key, var in RANK_SETTINGS.items():
        if (v := get(var)) is not None:
            out[key] = _count(var, v) if key in _INT_RANK_SETTINGS else v
    # An empty CARBONCTX_GPUS is a choice (no GPU), as for CUDA_VISIBLE_DEVICES.
    if (raw := e.get("CARBONCTX_GPUS")) is not None:
        out["gpus"] = parse_gpus("CARBONCTX_GPUS", raw)
    for field, name in ROOT_VARIABLES.items():
        if (v := get(name)) is not None:
            out[field] = v
    if (v := get("CARBONCTX_CPU_TDP_W")) is not None:
        out["cpu_tdp_w"] = v
    if (v := get("CARBONCTX_AMDSMI")) is not None:
        out["amdsmi"] = _bool("CARBONCTX_AMDSMI", v)
    if (v := get("CARBONCTX_NODE_SAMPLER")) is not None:
        out["node_sampler"] = _bool("CARBONCTX_NODE_SAMPLER", v)
    if (v := get("CARBONCTX_NODE_DIR")) is not None:
        out["node_dir"] = v
    for field in ("url", "user", "password", "verify", "period"):
        if (v := get(f"CARBONCTX_REDFISH_{field.upper()}")) is not None:
            out["redfish_period_s" if field == "period" else f"redfish_{field}"] = v
    if (v := out.get("redfish_period_s")) is not None:
        try:
            out["redfish_period_s"] = float(v)
        except ValueError:
            raise ConfigurationError(
                f"CARBONCTX_REDFISH_PERIOD={v!r}: give the seconds between BMC readings"
            ) from None
    if isinstance(v := out.get("redfish_verify"), str) and v.strip().lower() in _BOOL_WORDS:
        out["redfish_verify"] = _bool("CARBONCTX_REDFISH_VERIFY", v)
    return out


_BOOL_WORDS = ("1", "true", "yes", "on", "0", "false", "no", "off")


class RedfishArgs(TypedDict):
    """The BMC settings, checked: where (``url``), who, how its certificate is checked, and
    how often it is read."""

    url: str
    user: str | None
    password: str | None
    verify: bool | str
    period_s: float


def redfish(s: Settings) -> RedfishArgs | None:
    """The BMC to read the node's wall power from (None: none configured). Raises
    ConfigurationError for unusable values, never quoting a credential."""
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
        raise ConfigurationError(
            f"redfish_url={url!r}: give the BMC's HTTPS address, e.g. 'https://10.0.0.5' (or a "
            "chassis, 'https://10.0.0.5/redfish/v1/Chassis/1'); credentials never go over "
            "plain HTTP."
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
    return RedfishArgs(url=url, user=user, password=password, verify=verify, period_s=p)


#: Settings that say where the hardware is, and their variables (simulated hardware in tests).
ROOT_VARIABLES = {
    "sys_root": "CARBONCTX_SYSFS_ROOT",
    "dev_root": "CARBONCTX_DEV_ROOT",
    "proc_root": "CARBONCTX_PROC_ROOT",
    "nvml_library": "CARBONCTX_NVML_LIBRARY",
    "amdsmi_library": "CARBONCTX_AMDSMI_LIBRARY",
}


class MachineArgs(TypedDict):
    """Where the hardware is, as ``_native.Sampler`` and ``_native.discover`` take it."""

    sys_root: str | None
    dev_root: str | None
    proc_root: str | None
    nvml_library: str | None
    cpu_tdp_w: str | None
    cuda_visible_devices: str | None
    cuda_device_order: str | None
    amdsmi_library: str | None
    rocr_visible_devices: str | None
    hip_visible_devices: str | None


def hip_visible_devices(env: Mapping[str, str]) -> str | None:
    """The device list HIP reads: ``HIP_VISIBLE_DEVICES``, else ``CUDA_VISIBLE_DEVICES``, else
    ``GPU_DEVICE_ORDINAL`` (None: all unset)."""
    for name in ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"):
        if name in env:
            return env[name]
    return None


def machine(s: Settings, env: Mapping[str, str] | None = None) -> MachineArgs:
    """What the native sampler needs to find the hardware: the settings' roots and TDP, and
    the CUDA and ROCm variables as they are now (read when the sampler starts, since a program
    may set them after configuring carbonctx; see :func:`hip_visible_devices`). Keyword
    arguments of ``_native.Sampler`` and ``_native.discover``."""
    e = environ(env)
    return MachineArgs(
        sys_root=s.sys_root,
        dev_root=s.dev_root,
        proc_root=s.proc_root,
        nvml_library=s.nvml_library,
        cpu_tdp_w=s.cpu_tdp_w,
        cuda_visible_devices=e.get("CUDA_VISIBLE_DEVICES"),
        cuda_device_order=e.get("CUDA_DEVICE_ORDER"),
        amdsmi_library=s.amdsmi_library,
        rocr_visible_devices=e.get("ROCR_VISIBLE_DEVICES"),
        hip_visible_devices=hip_visible_devices(e),
    )


def build(
    current: Settings | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Settings:
    """New settings: defaults, then the environment, then earlier ``configure()`` calls, then
    ``overrides``. Raises ConfigurationError naming a bad value."""
    fields = {f.name for f in attrs.fields(Settings)}
    for k in overrides:
        if k not in fields:
            raise ConfigurationError(
                f"configure() got an unknown setting {k!r}; known: {', '.join(sorted(fields))}"
            )
    base = attrs.evolve(Settings(), **from_env(env)) if current is None else current
    s = attrs.evolve(base, **overrides)
    s = attrs.evolve(
        s,
        cpu_backends=tuple(s.cpu_backends),
        intervals=dict(s.intervals),
        providers=tuple(s.providers) if s.providers is not None else None,
        gpus=parse_gpus("gpus", s.gpus) if s.gpus is not None else None,
    )
    validate(s)
    return s


def validate(s: Settings) -> None:
    # The carbon settings are checked where the intensity service checks them, now rather than
    # at the first region (a bad value is a ConfigurationError naming it).
    carbon = s.intensity_kwargs()
    del carbon["zone"]
    carbon_settings(**carbon)
    redfish(s)
    if s.node_sampler is not None and not isinstance(s.node_sampler, bool):
        raise ConfigurationError(
            f"node_sampler={s.node_sampler!r}: use True, False or None (on in a multi-rank node)"
        )
    for b in s.cpu_backends:
        if b not in CPU_BACKENDS:
            raise ConfigurationError(
                f"cpu_backends: unknown backend {b!r}; use any of {CPU_BACKENDS}"
            )
    if s.estimate not in ESTIMATE_MODES:
        raise ConfigurationError(f"estimate={s.estimate!r}: use one of {ESTIMATE_MODES}")
    if s.on_fork not in FORK_MODES:
        raise ConfigurationError(f"on_fork={s.on_fork!r}: use one of {FORK_MODES}")
    for k, v in s.intervals.items():
        if k not in BACKENDS:
            raise ConfigurationError(f"intervals: unknown backend {k!r}; use any of {BACKENDS}")
        if not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise ConfigurationError(f"intervals[{k!r}]={v!r}: give a number of seconds")
        if not 0 < v <= MAX_INTERVAL_S:  # also NaN and infinities
            raise ConfigurationError(
                f"intervals[{k!r}]={v!r}: give a number of seconds above 0 and at most "
                f"{MAX_INTERVAL_S:g}"
            )
    if not isinstance(s.gpu, bool):
        raise ConfigurationError(f"gpu={s.gpu!r}: give True or False")
    if not isinstance(s.amdsmi, bool):
        raise ConfigurationError(f"amdsmi={s.amdsmi!r}: give True or False")
    if not (isinstance(s.window, int) and s.window >= 0):
        raise ConfigurationError(f"window={s.window!r}: give a non-negative number of regions")
    for key in _INT_RANK_SETTINGS:
        v = getattr(s, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigurationError(f"{key}={v!r}: give a non-negative integer (or None)")
    for key in ("node", "job"):
        v = getattr(s, key)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigurationError(f"{key}={v!r}: give a non-empty name (or None)")
    if s.world_size is not None and s.world_size < 1:
        raise ConfigurationError(f"world_size={s.world_size}: a job has at least one process")
    if s.local_world_size is not None and s.local_world_size < 1:
        raise ConfigurationError(
            f"local_world_size={s.local_world_size}: a node runs at least one process of the job"
        )
    if s.rank is not None and s.world_size is not None and s.rank >= s.world_size:
        raise ConfigurationError(f"rank={s.rank} must be below world_size={s.world_size}")
    if (
        s.local_rank is not None
        and s.local_world_size is not None
        and s.local_rank >= s.local_world_size
    ):
        raise ConfigurationError(
            f"local_rank={s.local_rank} must be below local_world_size={s.local_world_size}"
        )


# ---------------------------------------------------------------------------------------------
# Carbon intensity

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
    wt_pass = _secret(watttime_password, "watttime_password", env, "CARBONCTX_WATTTIME_PASSWORD")
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
        raise ConfigurationError(
            f"{setting}={value!r}: give degrees between -{limit:g} and {limit:g}."
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
        pue = float(value)  # type: ignore[arg-type]
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


# ---------------------------------------------------------------------------------------------
# Runs of epochs


def log_dir(
    given: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Path | None:
    """Where run logs go: the argument, else ``CARBONCTX_LOG_DIR``, else nowhere."""
    if given is None:
        value = environ(env).get("CARBONCTX_LOG_DIR", "").strip()
        given = value or None
    return Path(given) if given is not None else None


def progress(given: bool | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether to draw the progress line: the argument, else off when ``CARBONCTX_PROGRESS``
    is 0/false/no/off, else when stderr is a terminal."""
    if given is not None:
        return bool(given)
    if environ(env).get("CARBONCTX_PROGRESS", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

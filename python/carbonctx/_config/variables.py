"""Reading ``CARBONCTX_*`` variables: :func:`environ` (the one read of the process
environment), :func:`from_env` (the sampler's and ranks' variables as ``configure()`` keyword
arguments) and the parsers of their text."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from carbonctx._config.settings import (
    _INT_RANK_SETTINGS,
    BACKENDS,
    CPU_BACKENDS,
    ESTIMATE_MODES,
    FORK_MODES,
    MAX_INTERVAL_S,
    MAX_REDFISH_LAG_S,
    RANK_SETTINGS,
)
from carbonctx.errors import ConfigurationError


def environ(env: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``env`` if given (tests pass their own), else the process environment."""
    return os.environ if env is None else env


#: Settings that say where the hardware is, and their variables (simulated hardware in tests).
ROOT_VARIABLES = {
    "sys_root": "CARBONCTX_SYSFS_ROOT",
    "dev_root": "CARBONCTX_DEV_ROOT",
    "proc_root": "CARBONCTX_PROC_ROOT",
    "nvml_library": "CARBONCTX_NVML_LIBRARY",
    "amdsmi_library": "CARBONCTX_AMDSMI_LIBRARY",
}


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
    if not v.isdecimal():
        raise ConfigurationError(f"{name}={value!r}: give a non-negative integer")
    return int(v)


def _number(name: str, value: str, hint: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r}: {hint}") from None


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
            if text.isdecimal():
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
        # Surrounding whitespace (a stray space or newline from a shell script) is no part of
        # any value, and a variable of whitespace alone is unset, as an empty one is.
        v = e.get(name)
        return v.strip() or None if v is not None else None

    def choice(name: str, allowed: Sequence[str]) -> str | None:
        v = get(name)
        if v is not None and v.lower() not in allowed:
            raise ConfigurationError(f"{name}={v!r}: use one of {', '.join(allowed)}")
        return None if v is None else v.lower()

    if (v := get("CARBONCTX_CPU_BACKENDS")) is not None:
        out["cpu_backends"] = _list("CARBONCTX_CPU_BACKENDS", v, CPU_BACKENDS)
    if (v := get("CARBONCTX_GPU")) is not None:
        out["gpu"] = _bool("CARBONCTX_GPU", v)
    if (v := choice("CARBONCTX_ESTIMATE", ESTIMATE_MODES)) is not None:
        out["estimate"] = v
    if (v := get("CARBONCTX_INTERVALS")) is not None:
        out["intervals"] = _intervals("CARBONCTX_INTERVALS", v)
    if (v := get("CARBONCTX_OUTPUT")) is not None:
        out["output"] = v
    if (v := get("CARBONCTX_STRICT")) is not None:
        out["strict"] = _bool("CARBONCTX_STRICT", v)
    if (v := get("CARBONCTX_SUMMARY")) is not None:
        out["summary_at_exit"] = _bool("CARBONCTX_SUMMARY", v)
    if (v := choice("CARBONCTX_ON_FORK", FORK_MODES)) is not None:
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
    for flag in ("amdsmi", "hwmon", "gpu_power_samples", "sampler_realtime"):
        if (v := get(f"CARBONCTX_{flag.upper()}")) is not None:
            out[flag] = _bool(f"CARBONCTX_{flag.upper()}", v)
    if (v := get("CARBONCTX_POWER_SHARE")) is not None:
        out["power_share"] = _number(
            "CARBONCTX_POWER_SHARE", v, "give a share of one core, e.g. 0.02 for 2 %"
        )
    if (v := get("CARBONCTX_NODE_SAMPLER")) is not None:
        out["node_sampler"] = _bool("CARBONCTX_NODE_SAMPLER", v)
    if (v := get("CARBONCTX_NODE_DIR")) is not None:
        out["node_dir"] = v
    for field in ("url", "user", "password", "verify", "period"):
        var = f"CARBONCTX_REDFISH_{field.upper()}"
        # A credential is taken as it is, spaces and all.
        v = (e.get(var) or None) if field in ("user", "password") else get(var)
        if v is not None:
            out["redfish_period_s" if field == "period" else f"redfish_{field}"] = v
    if (v := out.get("redfish_period_s")) is not None:
        out["redfish_period_s"] = _number(
            "CARBONCTX_REDFISH_PERIOD", v, "give the seconds between BMC readings"
        )
    if (v := get("CARBONCTX_REDFISH_LAG_S")) is not None:
        out["redfish_lag_s"] = _number(
            "CARBONCTX_REDFISH_LAG_S",
            v,
            "give the seconds the node's timeline is kept behind its reads, "
            f"0 to {MAX_REDFISH_LAG_S:g} (0: BMC readings placed when read)",
        )
    if isinstance(v := out.get("redfish_verify"), str) and v.strip().lower() in _BOOL_WORDS:
        out["redfish_verify"] = _bool("CARBONCTX_REDFISH_VERIFY", v)
    return out


_BOOL_WORDS = ("1", "true", "yes", "on", "0", "false", "no", "off")

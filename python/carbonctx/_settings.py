"""Process-wide settings: `configure(...)` over `CARBONCTX_*` variables over defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from carbonctx.errors import ConfigurationError

CPU_BACKENDS = ("powercap", "perf", "msr")
BACKENDS = (*CPU_BACKENDS, "nvml", "estimate")
ESTIMATE_MODES = ("auto", "never", "always")
FORK_MODES = ("restart", "disable")


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
    # Carbon intensity (passed to the intensity service)
    zone: str | None = None
    pue: float | None = None
    providers: tuple[str, ...] | None = None
    electricitymaps_token: str | None = attrs.field(default=None, repr=False)
    urls: Mapping[str, str] | None = None
    cache_dir: str | None = None

    def intensity_kwargs(self) -> dict[str, Any]:
        return {
            "zone": self.zone,
            "pue": self.pue,
            "providers": self.providers,
            "electricitymaps_token": self.electricitymaps_token,
            "urls": self.urls,
            "cache_dir": self.cache_dir,
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
        if not v > 0:
            raise ConfigurationError(f"{name}: the interval for {key} must be positive")
        out[key] = v
    return out


def from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings found in ``CARBONCTX_*`` variables, as ``configure()`` keyword arguments."""
    e = os.environ if env is None else env
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
    return out


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
    )
    validate(s)
    return s


def validate(s: Settings) -> None:
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
        if not (isinstance(v, (int, float)) and v > 0):
            raise ConfigurationError(f"intervals[{k!r}]={v!r}: give a positive number of seconds")
    if not (isinstance(s.window, int) and s.window >= 0):
        raise ConfigurationError(f"window={s.window!r}: give a non-negative number of regions")

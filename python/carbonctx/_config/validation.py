"""Settings built and validated once: defaults, the environment, earlier ``configure()`` calls,
then the new arguments (:func:`build`); each value checked for its type and range
(:func:`validate`), the carbon and BMC settings where their own modules check them."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from carbonctx._config.carbon import carbon_settings, parse_providers
from carbonctx._config.redfish import redfish
from carbonctx._config.settings import (
    _INT_RANK_SETTINGS,
    BACKENDS,
    CPU_BACKENDS,
    ESTIMATE_MODES,
    FORK_MODES,
    MAX_INTERVAL_S,
    Settings,
)
from carbonctx._config.variables import _list, from_env, parse_gpus
from carbonctx.errors import ConfigurationError


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
    s = attrs.evolve(base, **{k: _plain(k, v) for k, v in overrides.items()})
    s = attrs.evolve(
        s,
        cpu_backends=(
            _list("cpu_backends", s.cpu_backends, CPU_BACKENDS)
            if isinstance(s.cpu_backends, str)
            else tuple(s.cpu_backends)
        ),
        intervals=dict(s.intervals),
        providers=parse_providers(s.providers, "providers") if s.providers is not None else None,
        gpus=parse_gpus("gpus", s.gpus) if s.gpus is not None else None,
    )
    validate(s)
    return s


#: Settings that take a path (a str or an os.PathLike, kept as a str).
_PATH_SETTINGS = (
    "output",
    "cache_dir",
    "sys_root",
    "dev_root",
    "proc_root",
    "nvml_library",
    "amdsmi_library",
)
#: Settings that take text (or None).
_TEXT_SETTINGS = (
    "estimate",
    "on_fork",
    "zone",
    "electricitymaps_token",
    "signal",
    "entsoe_token",
    "eia_key",
    "electricitymaps_api",
    "watttime_username",
    "watttime_password",
    "watttime_region",
    "node_dir",
    "redfish_url",
)
#: Settings that take a credential (text or None): refused without showing the value.
_SECRET_SETTINGS = (
    "electricitymaps_token",
    "entsoe_token",
    "eia_key",
    "watttime_username",
    "watttime_password",
    "redfish_user",
    "redfish_password",
)
_BOOL_SETTINGS = ("gpu", "strict", "summary_at_exit")


def _plain(key: str, value: Any) -> Any:
    """A ``configure()`` argument checked for its type (ConfigurationError naming it), paths
    made text: a wrong type fails here, not at the first region."""
    if value is None:
        return None
    if key in _PATH_SETTINGS:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ConfigurationError(f"{key}={value!r}: give a path (str or os.PathLike)")
        if not value.strip():
            # As for the variables: empty is unset (cache_dir="" was the working directory,
            # output=" " a file named by a space).
            return None
    elif key == "redfish_verify" and isinstance(value, os.PathLike):
        value = os.fspath(value)  # a CA bundle given as a path object
    elif key in _SECRET_SETTINGS and not isinstance(value, str):
        raise ConfigurationError(f"{key}: give a string")  # never quoting a credential
    elif key in _TEXT_SETTINGS and not isinstance(value, str):
        raise ConfigurationError(f"{key}={value!r}: give a string")
    elif key in _BOOL_SETTINGS and not isinstance(value, bool):
        # Not truthiness: strict="no" would mean True.
        raise ConfigurationError(f"{key}={value!r}: give True or False")
    elif key == "urls" and not _text_mapping(value):
        raise ConfigurationError(
            f"urls={value!r}: give a mapping of provider id to base URL (str to str)"
        )
    elif key == "intervals" and not isinstance(value, Mapping):
        raise ConfigurationError(
            f"intervals={value!r}: give a mapping of backend to seconds, e.g. {{'nvml': 0.02}}"
        )
    elif key in _LIST_SETTINGS and not (
        isinstance(value, str)
        or (
            isinstance(value, Collection)
            and not isinstance(value, (bytes, Mapping))
            and all(isinstance(x, _LIST_SETTINGS[key]) for x in value)
        )
    ):
        raise ConfigurationError(
            f"{key}={value!r}: give a list of names, or one name, or a comma-separated string"
            if key != "gpus"
            else f"gpus={value!r}: give a list of device numbers or GPU UUIDs"
        )
    return value


#: Settings that take a list (or one comma-separated string), and the types of its items.
_LIST_SETTINGS: dict[str, tuple[type, ...]] = {
    "cpu_backends": (str,),
    "providers": (str,),
    "gpus": (int, str),
}


def _text_mapping(value: object) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


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
    for flag in ("amdsmi", "hwmon", "gpu_power_samples", "sampler_realtime"):
        if not isinstance(v := getattr(s, flag), bool):
            raise ConfigurationError(f"{flag}={v!r}: give True or False")
    if s.power_share is not None and (
        isinstance(s.power_share, bool)
        or not isinstance(s.power_share, (int, float))
        or not 0 < s.power_share <= 1  # also NaN
    ):
        raise ConfigurationError(
            f"power_share={s.power_share!r}: give a share of one core above 0 and at most 1 "
            "(0.02 is 2 %), or None for the default 0.3 %"
        )
    if isinstance(s.window, bool) or not (isinstance(s.window, int) and s.window >= 0):
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

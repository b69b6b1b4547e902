"""The :class:`Settings` object (everything ``configure()`` accepts) and the names it draws on:
the sampler's backends and modes, the rank settings and their variables, the live providers'
carbon settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

CPU_BACKENDS = ("powercap", "perf", "msr")
BACKENDS = (*CPU_BACKENDS, "nvml", "amdsmi", "hwmon", "estimate")
ESTIMATE_MODES = ("auto", "never", "always")
FORK_MODES = ("restart", "disable")
#: The longest polling interval accepted, in seconds (counters wrap within minutes).
MAX_INTERVAL_S = 3600.0
#: The most ``redfish_lag_s`` may be, in seconds: every region's result waits that long.
MAX_REDFISH_LAG_S = 2.0
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

    __module__ = "carbonctx"  # public as carbonctx.Settings: help(), reprs, pickles

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
    #: hwmon's channels (Intel GPUs, amd_energy, ACPI power meters, INA3221 rails); Intel GPUs
    #: are off with ``gpu=False`` too.
    hwmon: bool = True
    #: Place each NVML energy-counter update (every ~100 ms) in time by the driver's 20 ms power
    #: samples; totals stay the counter's. False: spread evenly between updates.
    gpu_power_samples: bool = True
    #: Share of one core that the reads of a GPU without an energy counter may take while
    #: regions are open (None: 0.3 %); more reads, smaller errors under fast periodic loads.
    power_share: float | None = None
    #: Run the sampler thread (only it) in the real-time class, SCHED_FIFO 1, where the process
    #: may (root, CAP_SYS_NICE, RLIMIT_RTPRIO): it then reads on time with every core busy.
    #: False, or not permitted: nice 10 below the process's where allowed.
    sampler_realtime: bool = True
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
    #: How far behind its reads the node's timeline is kept, so that a reading is placed when
    #: it stood (its ReadingTime, a mean's window) rather than when read; every region's result
    #: arrives that much later. 0 (default): placed when read, nothing delayed.
    redfish_lag_s: float = 0.0

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

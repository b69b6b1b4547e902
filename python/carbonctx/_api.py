"""The public functions of carbonctx (``configure``, ``stats``, ``flush``, ``recent``,
``recent_frame``, ``devices``, ``write_trace``), imported with the first of them used: the
package's ``__init__`` names them, and they say they are ``carbonctx``'s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from carbonctx._config import Settings
from carbonctx._measure import RESULT_TIMEOUT_S, process
from carbonctx._results.measurement import Measurement
from carbonctx._results.notebook import measurements_frame
from carbonctx._results.statistics import StatsTable

__all__ = ["configure", "devices", "flush", "recent", "recent_frame", "stats", "write_trace"]


def configure(
    *,
    cpu_backends: Sequence[str] | None = None,
    gpu: bool | None = None,
    estimate: str | None = None,
    intervals: Mapping[str, float] | None = None,
    output: str | None = None,
    strict: bool | None = None,
    window: int | None = None,
    on_fork: str | None = None,
    summary_at_exit: bool | None = None,
    zone: str | None = None,
    pue: float | None = None,
    providers: Sequence[str] | None = None,
    electricitymaps_token: str | None = None,
    urls: Mapping[str, str] | None = None,
    cache_dir: str | None = None,
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
    sys_root: str | None = None,
    dev_root: str | None = None,
    proc_root: str | None = None,
    nvml_library: str | None = None,
    rank: int | None = None,
    local_rank: int | None = None,
    world_size: int | None = None,
    local_world_size: int | None = None,
    node: str | None = None,
    job: str | None = None,
    gpus: Sequence[int | str] | None = None,
    node_sampler: bool | None = None,
    node_dir: str | None = None,
    cpu_tdp_w: str | float | None = None,
    amdsmi: bool | None = None,
    amdsmi_library: str | None = None,
    hwmon: bool | None = None,
    gpu_power_samples: bool | None = None,
    power_share: float | None = None,
    sampler_realtime: bool | None = None,
    redfish_url: str | None = None,
    redfish_user: str | None = None,
    redfish_password: str | None = None,
    redfish_verify: bool | str | None = None,
    redfish_period_s: float | None = None,
    redfish_lag_s: float | None = None,
) -> Settings:
    """Set process-wide options; unset ones keep their value (from ``CARBONCTX_*`` or default).

    Sources: ``cpu_backends`` (preference order of ``"powercap"``, ``"perf"``, ``"msr"``),
    ``gpu`` (read GPUs of every vendor: NVML, AMD SMI, the Intel GPUs' hwmon files), ``amdsmi``
    (AMD GPUs through AMD SMI, else the amdgpu hwmon files; on by default), ``hwmon`` (hwmon's
    meters: Intel GPUs, amd_energy, ACPI power meters, Jetson rails; on by default),
    ``gpu_power_samples`` (place each NVML energy update, every ~100 ms, in time by the driver's
    20 ms power samples, totals unchanged; on by default; off: spread evenly),
    ``power_share`` (share of one core that the reads of a GPU without an energy counter may
    take while regions are open; default 0.003; about 0.02-0.03 reads it every millisecond,
    within 1 % over 5 s under fast periodic loads),
    ``sampler_realtime`` (run the sampler thread, and only it, at real-time priority SCHED_FIFO 1
    where the process may: root, CAP_SYS_NICE or RLIMIT_RTPRIO; it then reads on time with
    every core busy; on by default; off, or not permitted: nice -10; ``devices()`` says which),
    ``estimate`` (``"auto"``: utilisation × TDP when no CPU counter, ``"never"``,
    ``"always"``), ``intervals`` (seconds per backend, e.g. ``{"nvml": 0.02}``).
    Output: ``output`` (a JSON Lines path, one record per region), ``summary_at_exit``.
    Behaviour: ``strict`` (raise instead of degrading), ``window`` (recent regions kept),
    ``on_fork`` (``"restart"``: a forked child starts its own sampler; ``"disable"``).
    Carbon: ``zone``, ``pue``, ``providers``, ``electricitymaps_token``, ``urls``, ``cache_dir``,
    ``signal`` (``"average"`` or ``"marginal"``: which intensity CO2 uses), ``deadline_s`` (per
    request), ``entsoe_token``, ``eia_key``, ``electricitymaps_api`` (``"v3"``, ``"v4"``),
    ``watttime_username``, ``watttime_password``, ``watttime_region``, ``latitude`` and
    ``longitude`` (where the machine is, for providers that take coordinates).
    Hardware roots (for simulated hardware): ``sys_root``, ``dev_root``, ``proc_root``,
    ``nvml_library``, ``amdsmi_library``.
    Distributed jobs (each overrides what the launcher says): ``rank``, ``local_rank``,
    ``world_size``, ``local_world_size``, ``node`` (the node's name; default host name and boot
    id), ``job`` (the job's id), ``gpus`` (the GPUs this rank reports: device numbers as this
    process numbers them, or UUIDs; ``[]`` for none). ``output`` may use ``{rank}``,
    ``{local_rank}``, ``{node}`` and ``{job}``. ``node_sampler`` (one sampler per node, shared
    by the job's processes there; on by default where a node runs several) and ``node_dir``
    (its files; ``/dev/shm``). ``cpu_tdp_w``: the CPU's TDP per package for the utilisation ×
    TDP estimate.
    The node's wall power from its BMC over Redfish, shown beside the components (never added
    to them): ``redfish_url`` (``https://BMC``, or a chassis ``https://BMC/redfish/v1/Chassis/1``),
    ``redfish_user`` and ``redfish_password`` (never shown anywhere), ``redfish_verify`` (True:
    the system's CAs; a CA bundle's path; False: not verified, with a warning),
    ``redfish_period_s`` (seconds between readings, default 5), ``redfish_lag_s`` (0 to 2
    seconds; default 0: each reading is placed when read; above 0 the node's timeline is kept
    that far behind, so that a reading is placed when it stood, and every region's result
    arrives that much later). The first region waits at most ``min(5, redfish_period_s)``
    seconds for the BMC's first answer; ``configure()`` and exit wait at most 1 s for the
    thread that reads it (and, with ``redfish_lag_s``, exit that much more for the regions
    that just ended).

    A running sampler is stopped (its regions resolved) and restarts with the new settings on
    the next region; a region open at the time is measured to its end and recorded with the
    settings it began under. Raises :class:`ConfigurationError` for a value that cannot be
    used.
    """
    given: dict[str, Any] = {k: v for k, v in locals().items() if v is not None}
    if "cpu_tdp_w" in given:
        given["cpu_tdp_w"] = str(given["cpu_tdp_w"])
    return process.configure(given)


def stats() -> StatsTable:
    """Per-name statistics of every region resolved so far (waits for recent ones)."""
    return process.runtime().stats()


def flush(timeout: float = RESULT_TIMEOUT_S) -> bool:
    """Resolve and record every region that has ended. Returns False on timeout."""
    rt = process.current_runtime()
    return True if rt is None else rt.flush(timeout)


def recent() -> list[Measurement]:
    """Measurements of the most recent regions (``configure(window=...)`` of them)."""
    rt = process.current_runtime()
    if rt is None:
        return []
    rt.flush()
    return rt.recent_measurements()


def recent_frame() -> Any:
    """The most recent regions as a pandas DataFrame, one row per region (indexed by id): every
    field, ``joules.<source>`` and ``tag.<key>`` columns. Needs pandas (``carbonctx[pandas]``)."""
    return measurements_frame(recent())


def devices() -> dict[str, Any]:
    """What was found: sources in use, alternatives, and what could not be used with why;
    under ``"rank"``, which rank and node of which job this process is (from which launcher),
    which GPUs it reports and by which rule, and how node-wide sources are shared."""
    return process.runtime().describe()


def write_trace(path: str) -> str:
    """Write a Chrome trace / Perfetto JSON of recent regions and per-source power.

    It holds the most recent ``configure(window=...)`` regions (1000 by default); its
    ``otherData`` says how many of how many ended, and when older ones were left out a
    :class:`CarbonctxWarning` says so once. For every region of a run, record them with
    ``configure(output=FILE)`` and use ``carbonctx report FILE --trace TRACE``.
    """
    from carbonctx._output.jsonl import dumps

    rt = process.runtime()
    doc = rt.trace()
    note = doc.get("otherData", {}).get("note")
    if note:
        rt.note("trace-window", f"write_trace({path!r}): {note}")
        rt.emit_warnings()
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(doc))
    return path


# Where users find them (help(), pickles), as when they were defined in the package itself.
for _f in (configure, devices, flush, recent, recent_frame, stats, write_trace):
    _f.__module__ = "carbonctx"
del _f

"""The native sampler (Rust). Hand-written stub: keep in step with rust/py/src."""

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, final

from typing_extensions import Self, disjoint_base

__all__ = [
    "SPAN_BACKLOG",
    "SPAN_WARNINGS",
    "CompactLines",
    "Feed",
    "Region",
    "RegionHub",
    "Sampler",
    "SimMachine",
    "SpanCall",
    "Step",
    "__version__",
    "check_sources",
    "claim_regions",
    "current",
    "discover",
    "float_texts",
    "now_ns",
    "nvml_gpus",
    "set_hub",
    "square_wave_energy_j",
    "square_wave_power_w",
]

__version__: str
#: ``RegionHub.end_span``: the regions waiting for the resolver passed the high mark.
SPAN_BACKLOG: int
#: ``RegionHub.end_span``: warnings wait to be issued from the user's thread.
SPAN_WARNINGS: int

def now_ns() -> int:
    """CLOCK_MONOTONIC in ns: the clock of every timestamp the sampler gives."""

def discover(
    *,
    sys_root: str | PathLike[str] | None = None,
    dev_root: str | PathLike[str] | None = None,
    proc_root: str | PathLike[str] | None = None,
    nvml_library: str | PathLike[str] | None = None,
    cuda_visible_devices: str | None = None,
    cuda_device_order: str | None = None,
    cpu_tdp_w: str | None = None,
    cpu_backends: list[str] | None = None,
    nvml: bool = True,
    estimate: str = "auto",
    gpus: list[str] | None = None,
    amdsmi: bool = True,
    amdsmi_library: str | PathLike[str] | None = None,
    rocr_visible_devices: str | None = None,
    hip_visible_devices: str | None = None,
    amd_gpus: list[str] | None = None,
    gpu: bool = True,
    hwmon: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Find energy sources without starting anything: sources, alternatives, unavailable."""

def nvml_gpus(
    *, nvml_library: str | PathLike[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every NVIDIA GPU NVML lists, whatever ``CUDA_VISIBLE_DEVICES`` says: ``gpus`` (``index``,
    ``uuid``, ``name``, ``mig_uuids``: its MIG instances' UUIDs, empty when MIG is off or not
    supported; ``mig_instances``: the same with ``uuid``, ``name``, ``gpu_instance_id``,
    ``compute_instance_id``, ``slices`` (its GPU instance's slices, or None with
    ``slices_error`` saying why), ``compute_slices`` (its compute instance's); ``slices``: the
    GPU's, from its largest GPU-instance profile, or None with ``slices_error``) and
    ``unavailable`` (why NVML could not be read, with a hint)."""

def check_sources(
    *,
    duration_s: float,
    sys_root: str | PathLike[str] | None = None,
    dev_root: str | PathLike[str] | None = None,
    proc_root: str | PathLike[str] | None = None,
    nvml_library: str | PathLike[str] | None = None,
    cuda_visible_devices: str | None = None,
    cuda_device_order: str | None = None,
    cpu_tdp_w: str | None = None,
    cpu_backends: list[str] | None = None,
    nvml: bool = True,
    estimate: str = "auto",
    gpus: list[str] | None = None,
    intervals: list[tuple[str, float]] | None = None,
    amdsmi: bool = True,
    amdsmi_library: str | PathLike[str] | None = None,
    rocr_visible_devices: str | None = None,
    hip_visible_devices: str | None = None,
    amd_gpus: list[str] | None = None,
    gpu: bool = True,
    hwmon: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Discover as ``discover`` does and read each chosen source for ``duration_s`` seconds:
    ``sources`` (each description plus update_period_s, read_cost_s, wrap_j, wrap_after_s,
    reading, shortest_region_s, ...) and ``unavailable``."""

@disjoint_base
class Region:
    """A measured region, entered and left natively; ``carbonctx.Tracker`` subclasses it and
    provides ``_enter_slow`` / ``_exit_slow`` for everything but the common case."""

    @property
    def name(self) -> str: ...
    strict: bool | None
    tags: dict[str, Any] | None
    sync: bool
    id: int
    parent: int | None
    thread: int
    _t1: int
    _raw: tuple[Any, int] | None
    _result: Any
    @property
    def _rt(self) -> Any: ...
    _strict: bool
    _token: Any
    _clones: list[Any] | None
    _prev: Any
    def __new__(
        cls,
        name: str,
        *,
        strict: bool | None = None,
        tags: Mapping[str, Any] | None = None,
        sync: bool = False,
    ) -> Self: ...
    def _enter_core(self, hub: RegionHub, sampler: Sampler | None) -> None: ...
    def _exit_core(self) -> None: ...
    def _detach(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object = None, exc: object = None, tb: object = None) -> None: ...

@final
class RegionHub:
    """What the native region code needs of a runtime, as one object (``Runtime.core``)."""

    @property
    def sampler(self) -> Sampler | None: ...
    @sampler.setter
    def sampler(self, sampler: Sampler) -> None: ...
    warn_due: bool
    wake_sent: bool
    dead: bool
    @property
    def open_steps(self) -> int:
        """Entries of steps open in this runtime that no begin mark counts."""
    def __new__(
        cls,
        runtime: Any,
        *,
        strict: bool,
        pending: dict[int, Any],
        name_tags: dict[str, int],
        tag_of: Callable[[str, tuple[int, int | None, Any] | None], int],
        drain: Callable[[], None],
        emit_warnings: Callable[[], None],
        backlog_high: int,
        detailed: bool = False,
    ) -> Self: ...
    def take_orphans(self) -> list[Any]:
        """The live regions left in another context than they were entered in (once)."""
    def end_span(self, t0_ns: int, tag: int) -> int:
        """End a span begun at ``t0_ns`` under ``tag``; what is due here: 0, or the sum of
        ``SPAN_BACKLOG`` (wake the resolver) and ``SPAN_WARNINGS`` (emit the warnings)."""

@final
class SpanCall:
    """The spans of one ``@tracked`` function: ``start()`` before each call, ``end(started)``
    after it."""

    def __new__(cls, name: str, tracker: type[Region], strict: bool | None = None) -> Self: ...
    def start(self) -> int | Region | None:
        """The call's start time as a span of the current runtime, or its region (entered)
        where the runtime writes full records or checks strictly, or None: the caller measures
        the call itself."""
    def end(self, started: int | Region, exc: BaseException | None = None) -> None:
        """Ends the call ``started`` (``exc``: what the function raised), then does what is
        due on this thread."""

@final
class Step:
    """A reusable region handle (``carbonctx.step(name)``): each ``with`` of it is one region
    of its name (see ``carbonctx.step``)."""

    def __new__(
        cls,
        name: str,
        tracker: type[Region],
        start: Callable[[], bool],
        tags: Mapping[str, Any] | None = None,
    ) -> Self: ...
    @property
    def name(self) -> str:
        """The name of each region this handle measures."""
    def __enter__(self) -> None:
        """Opens one entry (one region) on this thread."""
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        """Closes this thread's innermost open entry of the handle."""

def set_hub(hub: RegionHub | None) -> None:
    """Make ``hub`` the one the region code uses (the process's current runtime's)."""

def current() -> Any:
    """The innermost region still open in this thread or task (one left elsewhere is skipped)."""

def claim_regions(
    pending: dict[int, Any], ids: bytes, batch: Any, infos: list[Any]
) -> tuple[list[int], list[Region]]:
    """Claims the regions a drained batch resolves (pops them from ``pending``, points each at
    ``(batch, row)``, fills ``infos[row]``): the rows claimed and their regions."""

@final
class CompactLines:
    """The compact region lines of one output file (format 2, ``carbonctx._output.compact``):
    ``width`` joules per row in a batch, the columns written and which of them (positions in
    ``cols``) add into ``energy_j``; keeps the threads seen (each line names its thread by an
    index)."""

    def __new__(cls, width: int, cols: list[int], counted: list[int]) -> Self: ...
    def span(self, t0: bytes, t1: bytes, rows: Sequence[int]) -> tuple[int, int]:
        """The first start and the last end (ns) of ``rows`` of a batch."""
    def lines(
        self,
        ids: bytes,
        t0: bytes,
        t1: bytes,
        joules: bytes,
        unc: bytes,
        rows: Sequence[int],
        infos: list[Any],
        base: int,
        name_json: Callable[[str], tuple[str, bool]],
        full_line: Callable[[int], str],
        tags_json: Callable[[Any], str],
        row_carbon: Callable[[float, int, int], str] | None = None,
    ) -> tuple[bytes, list[tuple[int, int]]]:
        """The lines (UTF-8) of ``rows`` of a batch (columns as ``Sampler.drain`` gives them,
        ``infos[row]`` its region's ``(name, thread, parent, tags)``, ``base`` its first
        start), and the threads first seen as ``(index, ident)``. A name new to the file
        (``name_json`` says so) has its first line from ``full_line(row)``; ``tags_json`` writes
        a region's tags; ``row_carbon(energy_j, t0_ns, t1_ns)`` a region's own carbon details
        (``,"carbon":...`` or ``""``) when the batch spans two intensity periods."""
    def threads(self) -> dict[str, int]:
        """The threads seen so far: ``{index: ident}``."""

def float_texts(xs: list[float]) -> list[tuple[str, str, str]]:
    """How the compact lines write each float: ``repr``, ``"%.2g"``, and ``"%.2g"`` of it
    rounded up to two significant digits (an uncertainty); ``null`` where not finite."""

@final
class Feed:
    """The Python end of an external source: power read elsewhere (the node's BMC over
    Redfish) and pushed in; the sampler reads the latest push every ``interval_s`` and
    integrates it, and holds it for at most ``stale_s``; a sampler's first read waits for the
    first push until ``first_wait_s`` after the feed was made. The source's timeline is kept
    ``lag_s`` behind its reads: a reading pushed within ``lag_s`` of the instant it stands for
    is placed there (a reading holds from its instant until the next one's)."""

    def __new__(
        cls,
        *,
        id: str,
        label: str,
        backend: str = "redfish",
        domain: str = "node",
        interval_s: float = 0.1,
        stale_s: float = 30.0,
        first_wait_s: float = 0.0,
        lag_s: float = 0.0,
    ) -> Feed: ...
    def push(self, watts: float, at_ns: int | None = None) -> bool:
        """The latest reading in watts, standing for the instant ``at_ns``
        (``time.monotonic_ns()``; None: now); False (refused) when not finite and
        non-negative. An instant in the future is taken as now, one before the previous
        reading's as that one's (counted in ``clamped``); one the timeline has passed already
        is placed at the earliest instant still open (counted in ``late``)."""
    @property
    def lag_s(self) -> float: ...
    @property
    def late(self) -> int: ...
    @property
    def clamped(self) -> int: ...
    def fail(self, why: str) -> None:
        """No reading could be had; reads say ``why`` once the held one is stale."""
    def close(self, why: str) -> None:
        """Give up for good: every read fails from now on."""
    def wanted(self, within_s: float, timeout_s: float) -> bool:
        """Whether a sampler read the feed within ``within_s``; waits up to ``timeout_s``."""
    @property
    def reads(self) -> int: ...
    @property
    def info(self) -> dict[str, Any]: ...

@final
class Sampler:
    """The native sampler thread; it starts when constructed and stops with :meth:`stop`."""

    def __new__(
        cls,
        *,
        sys_root: str | PathLike[str] | None = None,
        dev_root: str | PathLike[str] | None = None,
        proc_root: str | PathLike[str] | None = None,
        nvml_library: str | PathLike[str] | None = None,
        cuda_visible_devices: str | None = None,
        cuda_device_order: str | None = None,
        cpu_tdp_w: str | None = None,
        cpu_backends: list[str] | None = None,
        nvml: bool = True,
        estimate: str = "auto",
        gpus: list[str] | None = None,
        intervals: list[tuple[str, float]] | None = None,
        timeline_capacity: int | None = None,
        settle_s: float | None = None,
        phase_lock: bool = True,
        quiet_s: float | None = None,
        node_key: str | None = None,
        node_dir: str | PathLike[str] | None = None,
        amdsmi: bool = True,
        amdsmi_library: str | PathLike[str] | None = None,
        rocr_visible_devices: str | None = None,
        hip_visible_devices: str | None = None,
        amd_gpus: list[str] | None = None,
        external: list[Feed] | None = None,
        gpu: bool = True,
        hwmon: bool = True,
        gpu_power_samples: bool = True,
        mark_reads: bool = True,
        fast_reads: bool = True,
        predict_marks: bool = False,
        power_share: float | None = None,
        realtime: bool = True,
    ) -> Sampler: ...
    def node_status(self) -> dict[str, Any] | None:
        """This process's part in its node's shared sampler; None when it samples alone."""
    @property
    def sources(self) -> list[dict[str, Any]]: ...
    @property
    def alternatives(self) -> list[dict[str, Any]]: ...
    @property
    def unavailable(self) -> list[dict[str, Any]]: ...
    @property
    def running(self) -> bool: ...
    def begin(self) -> int: ...
    def end(self, id: int) -> int: ...
    def begin_at(self, t_ns: int) -> int: ...
    def end_at(self, id: int, t_ns: int) -> None: ...
    def end_tagged(self, id: int, tag: int) -> int:
        """Close a region with a tag (u32) that :meth:`drain` hands back with its result;
        returns the timestamp used."""
    def end_span(self, t0_ns: int, tag: int) -> bool:
        """Record a region that began at ``t0_ns`` (from :func:`now_ns`) and ends now, with a
        tag; no id. True when many resolved regions wait to be drained: drain now."""
    def drain(self, max: int = 100_000) -> tuple[int, bytes, bytes, bytes, bytes, bytes, bytes]:
        """Up to ``max`` resolved regions in columns: (n, ids, tags, t0_ns, t1_ns, joules,
        uncertainty), the native-endian bytes of u64, u32, u64, u64, f64 and f64 arrays
        (joules: n × sources, in the order of ``sources``; NaN where a source had failed)."""
    def wait(self, t_ns: int, timeout_s: float) -> bool: ...
    def status(self) -> list[dict[str, Any]]: ...
    def scheduling(self) -> str:
        """How the sampler thread is scheduled, as it set itself: ``"real-time (SCHED_FIFO
        1)"``, ``"nice -10"``, ``"default priority: not permitted"``, ..."""
    def stats(self) -> dict[str, int]: ...
    def timeline(
        self, index: int, since_ns: int = 0, max: int = 1_000_000
    ) -> list[tuple[int, float]]: ...
    def stop(self) -> None: ...

@final
class SimMachine:
    """Simulated RAPL hardware (and NVIDIA GPUs, published for the fake libnvidia-ml) kept
    current by a writer thread."""

    def __new__(
        cls,
        root: str | PathLike[str],
        *,
        packages: int = 1,
        zones: list[tuple[str, int, float, float, float, float, int | None, float | None]] = ...,
        update_period_s: float = 0.001,
        powercap: bool = True,
        msr: bool = True,
        perf: bool = True,
        model_name: str | None = None,
        cpu_model: int | None = None,
        gpus: list[tuple[str, bool, int, float, float, float, float]] = ...,
        gpu_update_s: float = 0.02,
    ) -> SimMachine: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def t0_ns(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def roots(self) -> dict[str, str]: ...
    def truth_j(self, domain_name: str, package: int, t_a: int, t_b: int) -> float: ...
    def gpu_truth_j(self, index: int, t_a: int, t_b: int) -> float: ...
    def nvml_dir(self) -> str: ...
    def nvml_config(self) -> str | None: ...
    def write_times(self) -> list[int]: ...
    def write_count(self) -> int: ...
    def last_error(self) -> str | None: ...
    def energy_path(self, domain_name: str, package: int) -> str: ...
    def remove_zone(self, domain_name: str, package: int) -> None: ...
    def fail_reads(self, domain_name: str, package: int, fail: bool) -> None: ...
    def reset_counter(self, domain_name: str, package: int) -> None: ...

def square_wave_power_w(
    low_w: float, high_w: float, period_s: float, duty: float, elapsed_s: float
) -> float:
    """Power of a square wave ``elapsed_s`` after its start (the one definition, in Rust)."""

def square_wave_energy_j(
    low_w: float, high_w: float, period_s: float, duty: float, elapsed_s: float
) -> float:
    """Exact energy of a square wave from its start to ``elapsed_s``."""

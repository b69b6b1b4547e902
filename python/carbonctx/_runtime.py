"""The process-wide runtime: the native sampler, the resolver, statistics and outputs.

One :class:`Runtime` exists per process. It starts the sampler on the first region, turns
resolved regions into statistics (always) and :class:`Measurement` objects (when someone holds
the region or output is on), and writes JSON Lines as results arrive. Nothing here runs on the
hot path except :meth:`Runtime.sampler_or_start`'s attribute check.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from carbonctx import _native
from carbonctx._report import (
    J_PER_KWH,
    Measurement,
    NameAggregate,
    SourceEnergy,
    StatsTable,
    chrome_trace,
)
from carbonctx._settings import Settings
from carbonctx.errors import (
    CarbonctxWarning,
    SamplerError,
    SourceUnavailableError,
)

#: How long reading an unresolved result may wait for the sampler before giving up.
RESULT_TIMEOUT_S = 10.0
#: Regions waiting for the resolver above which the thread that ends one drains them itself.
BACKLOG_HIGH = 1 << 15
#: Resolved regions taken from the sampler at a time.
DRAIN_BATCH = 8192
#: How often the resolver thread collects results.
RESOLVE_PERIOD_S = 0.02
#: How often a power record is written to JSON Lines (for trace counter tracks).
POWER_PERIOD_S = 0.1

TOTAL_DOMAINS = ("package", "dram", "gpu")

# A pending region: the Tracker that measured it (name, thread, parent, tags; its result goes
# back to it).
Pending = Any


class Runtime:
    """Everything carbonctx keeps per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.dead = False
        self._parent_sampler: _native.Sampler | None = None
        # Decorated functions record thread and parent only when something will show them.
        self.detailed = settings.strict or bool(settings.output)
        self.strict = settings.strict
        self.sampler: _native.Sampler | None = None
        self.start_error: str | None = None
        self.started = False
        self.sources: list[dict[str, Any]] = []
        self.unavailable: list[dict[str, Any]] = []
        self.alternatives: list[dict[str, Any]] = []
        self.pending: dict[int, Pending] = {}
        self.aggs: dict[str, NameAggregate] = {}
        # Raw records of the most recent regions; Measurements are built from them on demand.
        self.recent = _Recent(settings.window)
        self.regions_total = 0
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: IO[str] | None = None
        self._intensity: Any = None
        self._intensity_error: str | None = None
        self._g_per_j: float | None = None
        self._g_per_j_at = 0.0
        self._warned: set[str] = set()
        self._warnings: list[str] = []
        self.notes: dict[str, str] = {}
        self.warn_due = False
        # CLOCK_MONOTONIC → Unix time
        self._offset = time.time() - time.monotonic_ns() * 1e-9
        self._power_since: list[int] = []
        self._power_last: list[tuple[int, float] | None] = []
        self._power_at = 0.0
        self._idx: dict[str, list[int]] = {d: [] for d in TOTAL_DOMAINS}
        self._estimated: set[int] = set()
        self._counted: set[int] = set()
        # Interned region names; tag 0 means "look in pending".
        self.names: list[str] = [""]
        self._name_tags: dict[str, int] = {}

    # ------------------------------------------------------------------ start and stop

    def sampler_or_start(self) -> _native.Sampler | None:
        s = self.sampler
        if s is not None or self.started:
            return s
        return self._start()

    def _start(self) -> _native.Sampler | None:
        with self._start_lock:
            if self.started:
                return self.sampler
            st = self.settings
            intervals = list(st.intervals.items())
            try:
                s = _native.Sampler(
                    sys_root=st.sys_root,
                    dev_root=st.dev_root,
                    proc_root=st.proc_root,
                    nvml_library=st.nvml_library,
                    cpu_backends=list(st.cpu_backends),
                    nvml=st.gpu,
                    estimate=st.estimate,
                    intervals=intervals,
                )
            except Exception as e:  # the sampler must never break the program
                self.start_error = f"the native sampler could not start: {e}"
                self.note("sampler", self.start_error)
                self.started = True
                return None
            self.sources = list(s.sources)
            self.unavailable = list(s.unavailable)
            self.alternatives = list(s.alternatives)
            for i, src in enumerate(self.sources):
                if src["domain"] in self._idx:
                    self._idx[src["domain"]].append(i)
                    self._counted.add(i)
                if src["method"] == "estimate":
                    self._estimated.add(i)
                    self.note(
                        f"estimate:{src['id']}",
                        f"no energy counter for the CPU: {src['label']}. "
                        "Run `carbonctx devices` to see why counters are unavailable.",
                    )
            if not self.sources:
                self.note(
                    "no-sources",
                    "no energy source could be used; results have no energy figures. "
                    "Run `carbonctx devices` for the reasons and what to do.",
                )
            self._power_since = [0] * len(self.sources)
            self._power_last = [None] * len(self.sources)
            if st.output:
                try:
                    d = os.path.dirname(os.path.abspath(st.output))
                    os.makedirs(d, exist_ok=True)
                    self._out = open(st.output, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
                except OSError as e:
                    self.note("output", f"cannot write {st.output}: {e}; regions are not recorded")
            # The intensity service (table, cache) is set up here, on the caller's thread: the
            # resolver thread competes for the GIL with a busy caller and must not import.
            self.intensity()
            self._grams_per_joule()
            self.sampler = s
            self.started = True
            self._thread = threading.Thread(
                target=self._resolver_loop, name="carbonctx-resolver", daemon=True
            )
            self._thread.start()
            return s

    def shutdown(self) -> None:
        """Stop the sampler, resolve and record everything, close the output. Idempotent."""
        if self.dead:
            return
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)
        s = self.sampler
        if s is not None:
            s.stop()
            self.drain()
            self._write_power(force=True)
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
        if self._intensity is not None:
            with contextlib.suppress(Exception):
                self._intensity.close()

    def abandon(self) -> None:
        """In a forked child: never touch the parent's sampler or threads again."""
        self.dead = True
        # Keep the parent's native sampler referenced: dropping it here would try to stop a
        # thread this process does not have. (The native side also refuses, by pid.)
        self._parent_sampler = self.sampler
        self.sampler = None
        self._out = None

    # ------------------------------------------------------------------ warnings and notes

    def note(self, key: str, message: str) -> None:
        """Record a degradation; it is warned once, from the user's thread, and reported."""
        if key in self.notes:
            return
        self.notes[key] = message
        self._warnings.append(message)
        self.warn_due = True

    def emit_warnings(self) -> None:
        self.warn_due = False
        msgs, self._warnings = self._warnings, []
        for m in msgs:
            if m not in self._warned:
                self._warned.add(m)
                warnings.warn(m, CarbonctxWarning, stacklevel=3)

    # ------------------------------------------------------------------ intensity

    def intensity(self) -> Any:
        if self._intensity is None and self._intensity_error is None:
            try:
                from carbonctx._intensity import IntensityService

                self._intensity = IntensityService(**self.settings.intensity_kwargs())
            except Exception as e:
                self._intensity_error = f"no carbon intensity: {e}"
                self.note("intensity", self._intensity_error)
        return self._intensity

    def _grams_per_joule(self) -> float | None:
        now = time.monotonic()
        if self._g_per_j is None or now - self._g_per_j_at > 10.0:
            svc = self.intensity()
            if svc is not None:
                try:
                    cur = svc.current()
                    pue = float(getattr(svc, "pue", 1.0) or 1.0)
                    self._g_per_j = cur.g_per_kwh * pue / J_PER_KWH
                except Exception as e:
                    self.note("intensity-current", f"carbon intensity lookup failed: {e}")
            self._g_per_j_at = now
        return self._g_per_j

    # ------------------------------------------------------------------ resolving

    def _resolver_loop(self) -> None:
        while not self._stop.wait(RESOLVE_PERIOD_S):
            try:
                self.drain()
                self._write_power()
            except Exception as e:  # keep resolving; say what went wrong once
                self.note(f"resolver:{type(e).__name__}", f"carbonctx resolver error: {e!r}")

    def wait_resolved(self, t_ns: int, timeout: float = RESULT_TIMEOUT_S) -> bool:
        s = self.sampler
        if s is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            ok = s.wait(t_ns, max(0.0, deadline - time.monotonic()))
            self.drain()
            if ok or time.monotonic() >= deadline:
                return ok

    def flush(self, timeout: float = RESULT_TIMEOUT_S) -> bool:
        """Resolve every region ended so far (waits about one sampling interval)."""
        return self.wait_resolved(_native.now_ns(), timeout)

    def drain(self) -> None:
        s = self.sampler
        if s is None:
            return
        with self._lock:
            while True:
                n, ids, tags, t0, t1, joules, unc = s.drain(DRAIN_BATCH)
                if n == 0:
                    return
                self._process_batch(n, ids, tags, t0, t1, joules, unc)
                if n < DRAIN_BATCH:
                    return

    def _process_batch(
        self,
        n: int,
        ids_b: bytes,
        tags_b: bytes,
        t0_b: bytes,
        t1_b: bytes,
        j_b: bytes,
        u_b: bytes,
    ) -> None:
        """Turn a batch of resolved regions into statistics, results and records.

        A region closed with a tag (an interned name) needs nothing more: it goes straight
        into its name's statistics. Others have a pending entry with their handle and details.
        """
        width = len(self.sources)
        ids = np.frombuffer(ids_b, dtype=np.uint64)
        tag_arr = np.frombuffer(tags_b, dtype=np.uint32)
        t0 = np.frombuffer(t0_b, dtype=np.uint64)
        t1 = np.frombuffer(t1_b, dtype=np.uint64)
        joules = np.frombuffer(j_b, dtype=np.float64).reshape(n, width)
        unc = np.frombuffer(u_b, dtype=np.float64).reshape(n, width)
        duration = (t1 - t0).astype(np.float64) * 1e-9
        sums = []
        for d in TOTAL_DOMAINS:
            cols = self._idx[d]
            sums.append(np.nansum(joules[:, cols], axis=1) if cols else np.zeros(n))
        cpu, dram, gpu = sums
        energy = cpu + dram + gpu
        nan = np.isnan(joules)
        if nan.any():
            for i in np.flatnonzero(nan.any(axis=0)).tolist():
                sid = self.sources[i]["id"]
                self.note(
                    f"missing:{sid}",
                    f"energy source {sid} failed; regions after it lack its figures "
                    f"({self._status_error(sid)})",
                )
        g_per_j = self._grams_per_joule()
        estimated = bool(self._estimated)
        pending = self.pending
        names = self.names
        self.regions_total += n
        out = self._out
        window = self.recent.maxlen
        first_kept = max(0, n - window)
        # Every row's name: tagged rows carry it (grouped in bulk); untagged ones have only the
        # pending Tracker. Rows with an id have a Tracker waiting for its result. What records
        # need of those (name, thread, parent, tags) is kept in the batch; the Trackers are not
        # (a Tracker keeps its batch, and the two must not make a cycle: Trackers are not
        # collectable).
        infos: list[tuple[str, int, int | None, Any] | None] = [None] * n
        groups: dict[str, npt.NDArray[np.intp]] = {}
        untagged = np.flatnonzero(tag_arr == 0)
        if len(untagged) < n:
            for tag in np.flatnonzero(np.bincount(tag_arr)).tolist():
                if tag:
                    groups[names[tag]] = np.flatnonzero(tag_arr == tag)
        # The recent window, the handles handed out and the output file keep a reference to
        # the batch and a row; a Measurement is built only when someone reads it or it is
        # written.
        batch = _Batch(ids, t0, t1, joules, unc, cpu, dram, gpu, nan, infos, tag_arr, estimated)
        rows, handles = _native.claim_regions(pending, ids_b, batch, infos)
        if len(untagged):
            by_name: dict[str, list[int]] = {}
            for k in untagged.tolist():
                info = infos[k]
                if info is not None:
                    by_name.setdefault(info[0], []).append(k)
            for name, rows in by_name.items():
                sel = np.asarray(rows, dtype=np.intp)
                groups[name] = np.concatenate([groups[name], sel]) if name in groups else sel
        for name, sel in groups.items():
            e = energy[sel]
            co2 = float(e.sum()) * g_per_j if g_per_j is not None else 0.0
            self._agg(name).add_many(e, duration[sel], co2, estimated)
        # Rows without a name (an untagged region nobody waits for) are not kept.
        kept = tag_arr[first_kept:].tolist()
        self.recent.add(
            batch, [k for k, tag in enumerate(kept, first_kept) if tag or infos[k] is not None]
        )
        lines: list[str] = []
        if out is not None:
            for k, p in zip(rows, handles, strict=True):
                m = self._measurement(*self.raw(batch, k))
                p._result = m
                lines.append(json.dumps(m.to_dict(), allow_nan=False, default=_json_default) + "\n")
        if lines and self._out is not None:
            try:
                self._out.write("".join(lines))
                self._out.flush()
            except (OSError, ValueError) as e:
                self.note("output-write", f"cannot write regions to {self.settings.output}: {e}")

    def raw(self, batch: _Batch, k: int) -> tuple[Any, ...]:
        """Row ``k`` of a batch as the arguments of :meth:`_measurement`."""
        info = batch.infos[k]
        if info is None:
            name, thread, parent, tags = self.names[int(batch.tags[k])], 0, None, None
        else:
            name, thread, parent, tags = info
        missing = [
            self.sources[i]["id"]
            for i in np.flatnonzero(batch.nan[k]).tolist()
            if i in self._counted
        ]
        return (
            int(batch.ids[k]),
            int(batch.t0[k]),
            int(batch.t1[k]),
            batch.joules[k].tolist(),
            batch.unc[k].tolist(),
            name,
            thread,
            parent,
            tags,
            float(batch.cpu[k]),
            float(batch.dram[k]),
            float(batch.gpu[k]),
            missing,
            batch.estimated,
        )

    def tag_of(self, name: str) -> int:
        """The tag (u32, never 0) that stands for ``name`` in the sampler."""
        tag = self._name_tags.get(name)
        if tag is None:
            with self._lock:
                tag = self._name_tags.get(name)
                if tag is None:
                    tag = len(self.names)
                    self.names.append(name)
                    self._name_tags[name] = tag
        return tag

    def _agg(self, name: str) -> NameAggregate:
        agg = self.aggs.get(name)
        if agg is None:
            agg = self.aggs[name] = NameAggregate(name)
        return agg

    def _status_error(self, sid: str) -> str:
        s = self.sampler
        if s is None:
            return "sampler stopped"
        for src, st in zip(self.sources, s.status(), strict=False):
            if src["id"] == sid:
                return str(st.get("last_error") or "no reads")
        return "unknown"

    def _measurement(
        self,
        rid: int,
        t0: int,
        t1: int,
        joules: Sequence[float],
        unc: Sequence[float],
        name: str,
        thread: int,
        parent: int | None,
        tags: Mapping[str, Any] | None,
        cpu: float,
        dram: float,
        gpu: float,
        missing: list[str],
        estimated: bool,
    ) -> Measurement:
        by_source: dict[str, SourceEnergy] = {}
        u_total = 0.0
        u_known = True
        for i, src in enumerate(self.sources):
            j = joules[i]
            u = unc[i]
            failed = math.isnan(j)
            if src["domain"] in TOTAL_DOMAINS and not failed:
                if math.isnan(u):
                    u_known = False
                else:
                    u_total += u
            by_source[src["id"]] = SourceEnergy(
                id=src["id"],
                label=src["label"],
                backend=src["backend"],
                domain=src["domain"],
                method=src["method"],
                joules=None if failed else j,
                uncertainty_j=None if (failed or math.isnan(u)) else u,
                note="source failed before the region ended" if failed else None,
            )
        start = t0 * 1e-9 + self._offset
        end = t1 * 1e-9 + self._offset
        energy = cpu + dram + gpu
        co2_g: float | None = None
        intensity: float | None = None
        zone: str | None = None
        carbon: dict[str, Any] | None = None
        svc = self.intensity()
        if svc is not None:
            try:
                c = svc.co2(energy, start, end)
                co2_g = c.co2_g
                intensity = c.intensity_g_per_kwh
                zone = c.zone.zone
                carbon = c.to_dict()
            except Exception as e:
                self.note("co2", f"CO2 could not be computed: {e}")
        return Measurement(
            name=name,
            id=rid,
            pid=self.pid,
            thread=thread,
            parent=parent,
            start=start,
            end=end,
            duration_s=(t1 - t0) * 1e-9,
            energy_j=energy,
            cpu_j=cpu,
            dram_j=dram,
            gpu_j=gpu,
            uncertainty_j=u_total if u_known and self.sources else None,
            by_source=by_source,
            co2_g=co2_g,
            intensity=intensity,
            zone=zone,
            carbon=carbon,
            missing=tuple(missing),
            estimated=estimated,
            tags=dict(tags) if tags else {},
        )

    # ------------------------------------------------------------------ power records

    def _write_power(self, force: bool = False) -> None:
        s = self.sampler
        if s is None or self._out is None:
            return
        now = time.monotonic()
        if not force and now - self._power_at < POWER_PERIOD_S:
            return
        self._power_at = now
        watts: dict[str, float] = {}
        t_last = 0
        for i, src in enumerate(self.sources):
            pts = s.timeline(i, self._power_since[i], 1_000_000)
            if not pts:
                continue
            self._power_since[i] = pts[-1][0]
            prev = self._power_last[i]
            self._power_last[i] = pts[-1]
            if prev is None:
                continue
            dt = (pts[-1][0] - prev[0]) * 1e-9
            if dt > 0:
                watts[src["id"]] = (pts[-1][1] - prev[1]) / dt
                t_last = max(t_last, pts[-1][0])
        if watts:
            rec = {
                "kind": "power",
                "pid": self.pid,
                "t": t_last * 1e-9 + self._offset,
                "watts": watts,
            }
            with self._lock:
                if self._out is not None:
                    self._out.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ views

    def recent_measurements(self) -> list[Measurement]:
        with self._lock:
            rows = self.recent.rows()
        return [self._measurement(*self.raw(b, k)) for b, k in rows]

    def stats(self) -> StatsTable:
        self.flush()
        with self._lock:
            return StatsTable(a.freeze() for a in self.aggs.values())

    def trace(self) -> dict[str, Any]:
        """A Chrome trace of the recent regions and the power of every source."""
        self.flush()
        regions = [m.to_dict() for m in self.recent_measurements()]
        power: list[dict[str, Any]] = []
        s = self.sampler
        if s is not None:
            series = [s.timeline(i, 0, 1_000_000) for i in range(len(self.sources))]
            step = 10_000_000  # 10 ms
            for i, pts in enumerate(series):
                last: tuple[int, float] | None = None
                for t, j in pts:
                    if last is None:
                        last = (t, j)
                        continue
                    if t - last[0] >= step:
                        w = (j - last[1]) / ((t - last[0]) * 1e-9)
                        power.append(
                            {"t": t * 1e-9 + self._offset, "watts": {self.sources[i]["id"]: w}}
                        )
                        last = (t, j)
        return chrome_trace(regions, power)

    def describe(self) -> dict[str, Any]:
        s = self.sampler_or_start()
        status = s.status() if s is not None else []
        return {
            "sources": [
                {**src, "status": st} for src, st in zip(self.sources, status, strict=False)
            ],
            "alternatives": self.alternatives,
            "unavailable": self.unavailable,
            "notes": dict(self.notes),
            "start_error": self.start_error,
        }


class _Recent:
    """The most recent ``maxlen`` resolved rows, kept as (batch, row indices) per batch: no
    object per row, so a tight loop of regions leaves the garbage collector nothing to track."""

    __slots__ = ("_chunks", "_total", "maxlen")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._chunks: deque[tuple[_Batch, list[int]]] = deque()
        self._total = 0

    def add(self, batch: _Batch, rows: list[int]) -> None:
        if not rows or not self.maxlen:
            return
        self._chunks.append((batch, rows))
        self._total += len(rows)
        while self._total - len(self._chunks[0][1]) >= self.maxlen:
            self._total -= len(self._chunks.popleft()[1])

    def rows(self) -> list[tuple[_Batch, int]]:
        out = [(b, k) for b, ks in self._chunks for k in ks]
        return out[-self.maxlen :] if self.maxlen else []

    def __len__(self) -> int:
        return min(self._total, self.maxlen)


class _Batch:
    """Columns of one drained batch of regions (rows are looked up when needed)."""

    __slots__ = (
        "cpu",
        "dram",
        "estimated",
        "gpu",
        "ids",
        "infos",
        "joules",
        "nan",
        "t0",
        "t1",
        "tags",
        "unc",
    )

    def __init__(
        self,
        ids: Any,
        t0: Any,
        t1: Any,
        joules: Any,
        unc: Any,
        cpu: Any,
        dram: Any,
        gpu: Any,
        nan: Any,
        infos: list[Any],
        tags: Any,
        estimated: bool,
    ) -> None:
        self.ids = ids
        self.t0 = t0
        self.t1 = t1
        self.joules = joules
        self.unc = unc
        self.cpu = cpu
        self.dram = dram
        self.gpu = gpu
        self.nan = nan
        self.infos = infos
        self.tags = tags
        self.estimated = estimated


def _json_default(o: object) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


# ---------------------------------------------------------------------------------- the singleton

_RT: Runtime | None = None
_SETTINGS: Settings | None = None
_ZOMBIES: list[Runtime] = []
_LOCK = threading.Lock()
_hooks_installed = False


def runtime() -> Runtime:
    global _RT
    rt = _RT
    if rt is not None:
        return rt
    with _LOCK:
        if _RT is None:
            from carbonctx import _settings

            global _SETTINGS
            if _SETTINGS is None:
                _SETTINGS = _settings.build(None, {})
            _RT = Runtime(_SETTINGS)
            _install_hooks()
        return _RT


def current_runtime() -> Runtime | None:
    return _RT


def configure(overrides: Mapping[str, Any]) -> Settings:
    """Apply settings; a running sampler is stopped and restarts with them on the next region."""
    global _RT, _SETTINGS
    from carbonctx import _settings

    new = _settings.build(_SETTINGS, overrides)
    with _LOCK:
        old = _RT
        _SETTINGS = new
        _RT = None
    if old is not None:
        old.shutdown()
    return new


def reset() -> None:
    """Stop everything and forget all settings and statistics (for tests)."""
    global _RT, _SETTINGS
    with _LOCK:
        old, _RT, _SETTINGS = _RT, None, None
    if old is not None:
        old.shutdown()


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    import atexit

    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    rt = _RT
    if rt is None or rt.dead:
        return
    try:
        rt.shutdown()
        if rt.settings.summary_at_exit and rt.aggs:
            print(_summary_text(rt), file=sys.stderr)
    except Exception as e:  # never fail the interpreter's exit
        print(f"carbonctx: error at exit: {e!r}", file=sys.stderr)


def _summary_text(rt: Runtime) -> str:
    table = StatsTable(a.freeze() for a in rt.aggs.values())
    return "carbonctx summary\n" + str(table)


_fork_listeners: list[Callable[[], None]] = []


def _after_fork_in_child() -> None:
    global _RT, _SETTINGS
    old = _RT
    if old is not None:
        old.abandon()
        _ZOMBIES.append(old)  # never dropped: its native thread does not exist here
    _RT = None
    settings = _SETTINGS if _SETTINGS is not None else (old.settings if old else None)
    if settings is not None and settings.on_fork == "disable":
        rt = Runtime(settings)
        rt.started = True
        rt.start_error = "measurement is off in forked children (on_fork='disable')"
        _RT = rt
    for f in _fork_listeners:
        f()


def start_error_or_raise(rt: Runtime, strict: bool) -> None:
    if strict:
        if rt.start_error is not None:
            raise SamplerError(rt.start_error)
        if not rt.sources:
            raise SourceUnavailableError(
                "no energy source could be used (strict=True). Run `carbonctx devices` to see why."
            )

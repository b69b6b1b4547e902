"""The process's running totals for the metrics exporters (Prometheus, OpenTelemetry).

:class:`Meter` measures the process as back-to-back regions of ``interval`` seconds on a thread
of its own and keeps, for each exporter to publish as it likes:

* per kind of source (``cpu`` = package, ``dram``, ``gpu``): joules, grams of CO2e (the region's
  CO2 split in proportion to the joules) and the mean power over the last interval;
* per source device (``by_source`` id: ``powercap:intel-rapl:0``, ``nvml:0``...), for the
  process and for each region name (``track()`` regions, ``@tracked`` calls, step entries):
  joules. Only the sources that enter totals (package, DRAM, GPU) are kept: core, uncore,
  psys, module, rail and node lie inside or around them, and adding them up would count the
  same joules twice. An AMD APU's socket
  counted in its CPU package's place is a ``cpu`` device, and that package is not
  (``carbonctx._results.counted``). The number of series is bounded: devices by the hardware,
  region names by ``max_regions`` (the first ones seen; the others keep their total only);
* per region name, the exact totals of ``carbonctx.stats()``, kept across the runtimes
  ``configure()`` replaces (each starts its statistics afresh; a counter never goes down): the
  first ``max_names`` names (1000; in the order the meter first saw them, for good) each on its
  own, the names past them summed under :data:`OTHER` (a warning says so once), so that the
  number of series stays bounded whatever names a program makes (``f"batch-{i}"``).

The named regions' devices come from the recent window (``carbonctx.recent()``), read at each
update from where the last read stopped (by the window's numbering of its regions: ``@tracked``
calls and steps' entries have no id where output is off): regions that end faster than the
window holds between two updates (``configure(window=N)`` regions) are missing from them, never
from the totals; a warning says so once. Reading builds the result of each region that ended
since, about 15-30 µs a region on the meter's thread (at most a window's, 1000 by default: some
30 ms each interval, under the GIL); ``max_regions=0`` reads none.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import carbonctx
from carbonctx._measure import process
from carbonctx._results.counted import counted_domain

if TYPE_CHECKING:
    from carbonctx._measure.runtime import Runtime

__all__ = ["KINDS", "OTHER", "Meter", "Snapshot", "label"]

M = TypeVar("M", bound="Meter")

#: Kinds of source, from the domains that enter totals.
KINDS = {"package": "cpu", "dram": "dram", "gpu": "gpu"}
#: The region label of the names past ``max_names``, summed.
OTHER = "(other)"
#: The most runtimes replaced by ``configure()`` a meter holds until its next read.
_MAX_REPLACED = 8


def label(value: str) -> str:
    """``value`` as a label (attribute) value the exporters can send: valid UTF-8. A name
    decoded from bytes that are not UTF-8 (``os.fsdecode``: a file's name, ``sys.argv``) holds
    lone surrogates, which no exposition format can encode: one such name would fail every
    scrape and every export. They are written as their escape (``\\udcff``); every other
    character is kept (quotes, backslashes and newlines are the exposition's to escape). A
    name that spells such an escape out (``"caf\\\\udce9"``) is the same label: the meter
    sums the two in one series."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class Snapshot(NamedTuple):
    """What the exporters publish, read at once."""

    rank: str
    node: str
    region: str
    energy_j: dict[str, float]
    co2_g: dict[str, float]
    power_w: dict[str, float]
    intensity: float | None
    zone: str | None
    #: (region, kind, device) -> joules.
    devices: dict[tuple[str, str, str], float]
    #: region name -> (joules, grams) from carbonctx.stats(); the exporter's own left out.
    names: dict[str, tuple[float, float]]


class Meter:
    """Measures the process and keeps its running totals (see the module's documentation).

    ``interval`` is the length of the meter's own regions (seconds), ``region`` their name,
    ``names`` whether region names measured with ``track()`` are published, ``max_names`` how
    many of them get series of their own (the rest are summed under :data:`OTHER`),
    ``max_regions`` how many of them get a per-device breakdown. :meth:`start` starts
    measuring; :meth:`update` counts what was spent up to now; :meth:`stop` counts the rest and
    stops.
    """

    def __init__(
        self,
        *,
        interval: float = 5.0,
        region: str = "process",
        names: bool = True,
        max_regions: int = 20,
        max_names: int = 1000,
    ) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval={interval!r} must be a positive number of seconds")
        for arg, n in (("max_regions", max_regions), ("max_names", max_names)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{arg}={n!r} must be a whole number >= 0")
        self.interval = float(interval)
        self.region = region
        self._label = label(region)
        self.names = names
        self.max_regions = max_regions
        self.max_names = max_names
        self._warned_names = False
        # The region names' totals across runtimes: their labels in the order first seen (the
        # first max_names have series of their own, for good), the totals of the runtimes
        # replaced that have settled, those still resolving their last regions, and the runtime
        # read last (one replaced between two reads is noticed even without the listener).
        self._names_lock = threading.Lock()
        self._order: dict[str, None] = {}
        self._folded: dict[str, tuple[float, float]] = {}
        self._stats_old: list[Runtime] = []
        self._stats_rt: Runtime | None = None
        self.energy_j = dict.fromkeys(KINDS.values(), 0.0)
        self.co2_g = dict.fromkeys(KINDS.values(), 0.0)
        self.power_w = dict.fromkeys(KINDS.values(), math.nan)
        self.devices: dict[tuple[str, str, str], float] = {}
        self.intensity: float | None = None
        self.zone: str | None = None
        self.rank = "0"
        self.node = label(socket.gethostname())
        self._lock = threading.Lock()
        self._split_lock = threading.Lock()
        self._open: Any = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._broken_down: set[str] = set()
        # Where the last read of the recent window stopped: the process (pid), its runtime
        # then and the number of the next region to read there (``Runtime.recent_since``).
        # (None: no runtime at the last read.)
        self._last_read: tuple[int, weakref.ref[Runtime] | None, int] | None = None
        # Runtimes ``configure()`` replaced while the meter ran (pid, the runtime), held until
        # the next read: one made and replaced between two reads would be missed otherwise.
        self._replaced: list[tuple[int, Runtime]] = []
        # Replaced runtimes read, whose regions open then still end there: (pid, the runtime,
        # the number of the next region to read), until a read after their shutdown.
        self._retired: list[tuple[int, Runtime, int]] = []
        _METERS.add(self)
        self._warned_window = False

    # ------------------------------------------------------------------ measuring

    def start(self: M) -> M:
        """Start measuring the process (idempotent)."""
        with self._split_lock:
            if self._thread is not None:
                return self
            self._open = carbonctx.track(self.region).__enter__()
            self._wake.clear()
            self._thread = threading.Thread(target=self._loop, name="carbonctx-meter", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._wake.wait(self.interval):
            self.update()

    def update(self) -> None:
        """End the current region, start the next, and add the ended one to the totals (waits
        for the sampler to pass its end); read the named regions that ended since."""
        with self._split_lock:
            ended = self._open
            if ended is None:
                return
            ended.__exit__(None, None, None)
            self._open = carbonctx.track(self.region).__enter__() if self._thread else None
            self._count(ended.result())
            if self.names and self.max_regions > 0:
                self._read_named()

    def stop(self) -> None:
        """Count what was spent up to now and stop measuring (the totals stay published)."""
        thread = self._thread
        if thread is None:
            return
        self._wake.set()
        thread.join()
        with self._split_lock:
            self._thread = None
        self.update()

    def _count(self, m: Any) -> None:
        parts = {"cpu": m.cpu_j, "dram": m.dram_j, "gpu": m.gpu_j}
        with self._lock:
            for src, j in parts.items():
                if not math.isfinite(j):
                    continue
                self.energy_j[src] += j
                if m.co2_g is not None and m.energy_j > 0 and math.isfinite(m.co2_g):
                    self.co2_g[src] += m.co2_g * j / m.energy_j
                self.power_w[src] = j / m.duration_s if m.duration_s > 0 else math.nan
            self._add_devices(m)
            if m.intensity is not None:
                self.intensity = float(m.intensity)
                self.zone = None if m.zone is None else label(m.zone)
            if m.rank is not None:
                self.rank = label(str(m.rank))
            if m.node is not None:
                self.node = label(str(m.node))

    def _add_devices(self, m: Any) -> None:
        for src in m.by_source.values():
            kind = KINDS.get(counted_domain(src) or "")
            if kind is None or src.joules is None or not math.isfinite(src.joules):
                continue
            key = (label(m.name), kind, label(src.id))
            self.devices[key] = self.devices.get(key, 0.0) + src.joules

    def _read_named(self) -> None:
        """Add the named regions that ended since the last read, device by device: those of
        the runtimes ``configure()`` replaced (read to their last region, which may end after
        the replacement: a region open in a runtime is measured there), then those of this
        process's runtime now."""
        rt = process.current_runtime()
        last = self._last_read
        pid = os.getpid()
        seq = 0
        with self._lock:
            replaced, self._replaced = self._replaced, []
        # Older runtimes, oldest first, and the number to read each from.
        older = [(r, s) for p, r, s in self._retired if p == pid]
        if last is not None and last[0] == pid:  # (a forked child reads its own only)
            prev = last[1]() if last[1] is not None else None
            if prev is rt:
                seq = last[2]
            elif prev is not None:
                older.append((prev, last[2]))
        for p, old in replaced:  # made after the last read and replaced since
            if p == pid and old is not rt and all(old is not r for r, _ in older):
                older.append((old, 0))
        retired: list[tuple[int, Runtime, int]] = []
        for old, s in older:
            if old.dead:
                continue
            settled = old.settled  # (before reading: what ends later is read next time)
            end = self._read_runtime(old, s, warn=last is not None)
            if not settled:
                retired.append((pid, old, end))
        self._retired = retired
        if rt is not None:
            end = self._read_runtime(rt, seq, warn=last is not None)
            self._last_read = (pid, weakref.ref(rt), end)
        elif last is not None:
            self._last_read = (pid, None, 0)  # read before; no runtime now

    def _read_runtime(self, rt: Runtime, seq: int, *, warn: bool) -> int:
        """Add the named regions of ``rt``'s recent window numbered ``seq`` on; the number
        after the last one. With ``warn``, regions that left the window unread are said."""
        if not rt.finished:
            rt.flush()
        first, end, window = rt.recent_since(seq)
        if warn and first > seq:
            # A window's worth ended since the last read, and more, whose devices are lost
            # (their totals are not).
            self._window_overrun(rt.recent.maxlen)
        with self._lock:
            for m in window:
                if m.name == self.region:
                    continue
                if m.name not in self._broken_down:
                    if len(self._broken_down) >= self.max_regions:
                        continue
                    self._broken_down.add(m.name)
                self._add_devices(m)
        return end

    def _runtime_replaced(self, old: Runtime) -> None:
        if self.names:
            with self._names_lock:
                self._fold_settled()  # (bounded between reads: those still resolving stay)
                if all(r is not old for r in self._stats_old):
                    self._stats_old.append(old)
                if self._stats_rt is old:
                    self._stats_rt = None  # (in the list now: never to be added again)
        with self._lock:
            if self._thread is not None:
                # (Bounded: past a few within one interval the oldest are not read.)
                del self._replaced[: max(0, len(self._replaced) - _MAX_REPLACED + 1)]
                self._replaced.append((os.getpid(), old))

    def _window_overrun(self, size: int) -> None:
        if self._warned_window:
            return
        self._warned_window = True
        warnings.warn(
            f"carbonctx metrics: more than the recent window's {size} regions ended within one "
            f"interval ({self.interval:g} s), so the per-device figures of named regions miss "
            "some (their totals do not): raise carbonctx.configure(window=...) or lower interval",
            carbonctx.CarbonctxWarning,
            stacklevel=2,
        )

    def _names_capped(self, past: int) -> None:
        if self._warned_names:
            return
        self._warned_names = True
        warnings.warn(
            f"carbonctx metrics: more region names than max_names={self.max_names} "
            f"({past} past it so far): their totals are summed under region={OTHER!r}, so that "
            "the number of series stays bounded; give regions fewer distinct names (tags for "
            "what varies) or raise max_names",
            carbonctx.CarbonctxWarning,
            stacklevel=2,
        )

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> Snapshot:
        """The totals now: what the last update counted, and the named regions' totals (from
        the statistics, which resolve the regions that have ended, of every runtime)."""
        named: dict[str, tuple[float, float]] = {}
        if self.names:
            totals = self._name_totals()
            with self._names_lock:
                for key in totals:
                    self._order.setdefault(key, None)
                order = list(self._order)
            past = 0
            for i, key in enumerate(order):
                if key not in totals:
                    continue
                if i < self.max_names:
                    named[key] = totals[key]
                    continue
                past += 1
                j0, g0 = named.get(OTHER, (0.0, 0.0))
                named[OTHER] = (j0 + totals[key][0], g0 + totals[key][1])
            if past:
                self._names_capped(past)
        with self._lock:
            return Snapshot(
                self.rank,
                self.node,
                self._label,
                dict(self.energy_j),
                dict(self.co2_g),
                dict(self.power_w),
                self.intensity,
                self.zone,
                dict(self.devices),
                named,
            )

    def _name_totals(self) -> dict[str, tuple[float, float]]:
        """Per label, the totals of every runtime the meter has known: those ``configure()``
        replaced (summed once settled) and the current one's."""
        with self._names_lock:
            rt = process.current_runtime()
            seen = self._stats_rt
            if seen is not None and seen is not rt and all(r is not seen for r in self._stats_old):
                self._stats_old.append(seen)  # replaced (or left in the parent of a fork)
            self._stats_rt = rt
            live = self._fold_settled()
            totals = dict(self._folded)
        for old in live:
            self._add_stats(totals, _stats(old))
        if rt is not None:
            self._add_stats(totals, _stats(rt))
        return totals

    def _fold_settled(self) -> list[Runtime]:
        """Add the replaced runtimes that have settled (their statistics are final) to the
        folded totals, and forget them; those still resolving (under ``_names_lock``)."""
        live = []
        for old in self._stats_old:
            if old.settled:
                self._add_stats(self._folded, old.stats_now())
            else:
                live.append(old)
        self._stats_old = live
        return live

    def _add_stats(self, into: dict[str, tuple[float, float]], stats: Mapping[str, Any]) -> None:
        for name, st in stats.items():
            if name == self.region:
                continue
            # (A name with undecodable bytes and one spelling its escape out: one series.)
            key = label(name)
            j0, g0 = into.get(key, (0.0, 0.0))
            into[key] = (j0 + st.energy_j.total, g0 + st.co2_g)


def _stats(rt: Runtime) -> Mapping[str, Any]:
    try:
        return rt.stats()
    except carbonctx.CarbonctxError:
        return {}


_METERS: weakref.WeakSet[Meter] = weakref.WeakSet()


def _runtime_replaced(old: Runtime) -> None:
    for meter in list(_METERS):
        meter._runtime_replaced(old)


process.replace_listeners.append(_runtime_replaced)

"""The runtime's JSON Lines file (``configure(output=...)``): region records as they resolve, and
a power record per source every ``POWER_PERIOD_S`` (the trace's counter tracks).

Also the power series of the sampler's timelines that :func:`power_points` gives traces.

The file must be a regular file: anything else (a FIFO, a device, a directory) is refused with
one warning when the runtime starts, and regions are not recorded (opening a FIFO for writing
would wait for a reader: the first region would hang). While recording, the path is checked
before each batch is written: a file or directory removed (or replaced) under the writer, or a
write that fails, stops recording with one warning. Every result says whether its record was
written (``Measurement.recorded``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from carbonctx import _native
from carbonctx._measure.batch import Batch
from carbonctx._measure.carbon import RegionCarbon
from carbonctx._measure.compact import CompactForm
from carbonctx._measure.sources import SourceColumns
from carbonctx._output.jsonl import dumps

__all__ = ["POWER_PERIOD_S", "RegionRecorder", "power_points"]

#: How often a power record is written to JSON Lines (for trace counter tracks).
POWER_PERIOD_S = 0.1
#: Spacing of the power points of a trace.
TRACE_POWER_STEP_NS = 10_000_000


def _open_regular(path: str) -> int:
    """An append-only descriptor of the regular file at ``path`` (created if missing).

    Never blocks: a FIFO is opened non-blocking (no reader: ENXIO) and refused like any other
    file that is not a regular one.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OSError(e.errno, "it is a FIFO (a named pipe), not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a FIFO (a named pipe)" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise OSError(errno.EINVAL, f"it is {kind}")
    os.set_blocking(fd, True)
    return fd


class RegionRecorder:
    """Appends records to one JSON Lines file; a failure is noted once and recording stops."""

    def __init__(
        self,
        path: str,
        *,
        pid: int,
        offset: float,
        lock: threading.RLock,
        note: Callable[[str, str], None],
    ) -> None:
        self.path = path
        self._pid = pid
        self._offset = offset
        self._lock = lock
        self._note = note
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._power_since: list[int] = []
        self._power_last: list[tuple[int, float] | None] = []
        self._power_at = 0.0
        #: Region records not written because output could not keep up (see ``shed``).
        self.shed_total = 0
        self._form: CompactForm | None = None
        try:
            fd = _open_regular(path)
        except OSError as e:
            why = e.strerror or str(e)
            note(
                "output",
                f"cannot write {path}: {why}; regions are not recorded. "
                "Give output= the path of a regular file.",
            )
            return
        st = os.fstat(fd)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def _stop(self, key: str, message: str) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._note(key, message + "; regions are not recorded from here on")

    def _still_there(self) -> bool:
        """The path still names the file being written (not removed, moved or replaced)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._ident

    def _write(self, data: str | bytes) -> bool:
        fd = self._fd
        if fd is None:
            return False
        if not self._still_there():
            self._stop("output-removed", f"output {self.path} was removed or replaced")
            return False
        buf = memoryview(data if isinstance(data, bytes) else data.encode("utf-8"))
        try:
            while buf:
                buf = buf[os.write(fd, buf) :]
        except OSError as e:
            self._stop("output-write", f"cannot write regions to {self.path}: {e}")
            return False
        return True

    def write_records(self, records: Sequence[dict[str, Any]]) -> bool:
        """Region records, one line each (called with the runtime's lock held). False when
        they could not be written."""
        if not records:
            return self._fd is not None
        if self._fd is None:
            return False
        return self._write("".join(dumps(r) for r in records))

    def configure(
        self,
        columns: SourceColumns,
        rank: dict[str, Any],
        carbon: RegionCarbon,
        build: Callable[[Batch, int], Any],
    ) -> None:
        """The sampler's sources, the rank's fields and the carbon figures records are written
        with (the context of compact records: ``_output.compact``)."""
        self._form = CompactForm(self._pid, self._offset, columns, rank, carbon, build)

    def record(self, batch: Batch, rows: Sequence[int]) -> None:
        """Write the records of a resolved batch's claimed rows (compact; see
        ``_output.compact``); the batch (so every result built from it) says whether they were
        written."""
        if self._fd is None or self._form is None:
            batch.recorded = False
            return
        batch.recorded = True
        if not rows:
            return
        if not self._write(self._form.lines(batch, rows)):
            batch.recorded = False

    def shed(self, batch: Batch, n: int, names: Sequence[str]) -> None:
        """A batch whose records are not written because the output fell behind (the resolver
        sheds them rather than hold regions without bound or make a user thread write): its
        regions are counted, warned about once, and recorded as one ``shed`` record (how many,
        per name, and the span of time they cover); their statistics and results are kept."""
        batch.recorded = False
        if self._fd is None or n == 0:
            return
        self.shed_total += n
        by_name: dict[str, int] = {}
        for k in range(n):
            info = batch.infos[k]
            name = info[0] if info is not None else names[int(batch.tags[k])]
            by_name[name] = by_name.get(name, 0) + 1
        self._note(
            "output-shed",
            f"output {self.path} fell behind the regions: some region records were not "
            "written (each gap is a 'shed' record with the count per name; statistics and "
            "results include them)",
        )
        rec = {
            "kind": "shed",
            "pid": self._pid,
            "regions": n,
            "names": by_name,
            "start": int(batch.t0.min()) * 1e-9 + self._offset,
            "end": int(batch.t1.max()) * 1e-9 + self._offset,
            "shed_total": self.shed_total,
        }
        with self._lock:
            self._write(dumps(rec))

    def write_power(
        self, sampler: _native.Sampler, sources: Sequence[dict[str, Any]], force: bool = False
    ) -> None:
        """A power record (mean watts per source since the last one), at most every
        ``POWER_PERIOD_S`` unless ``force``."""
        if self._fd is None:
            return
        now = time.monotonic()
        if not force and now - self._power_at < POWER_PERIOD_S:
            return
        self._power_at = now
        if len(self._power_since) != len(sources):
            self._power_since = [0] * len(sources)
            self._power_last = [None] * len(sources)
        watts: dict[str, float] = {}
        t_last = 0
        for i, src in enumerate(sources):
            since = self._power_since[i]
            pts = sampler.timeline(i, since, 1_000_000)
            if since == 0:
                pts = pts[1:]  # the baseline: stamped when read, not when the counter changed
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
                "pid": self._pid,
                "t": t_last * 1e-9 + self._offset,
                "watts": watts,
            }
            with self._lock:
                self._write(dumps(rec))

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def abandon(self) -> None:
        """In a forked child: the descriptor is the parent's; never write or close it."""
        self._fd = None


def power_points(
    sampler: _native.Sampler, sources: Sequence[dict[str, Any]], offset: float
) -> list[dict[str, Any]]:
    """``{"t": unix_s, "watts": {source: W}}`` about every 10 ms of each source's timeline.

    A timeline's first point is the sampler's baseline: stamped when the counter was first
    read, while its value dates from the counter's last update (up to one update period
    earlier; 100 ms for many GPUs). Power taken against it is inflated, so the series starts
    at the first point that records a change.
    """
    power: list[dict[str, Any]] = []
    series = [sampler.timeline(i, 0, 1_000_000)[1:] for i in range(len(sources))]
    for i, pts in enumerate(series):
        last: tuple[int, float] | None = None
        for t, j in pts:
            if last is None:
                last = (t, j)
                continue
            if t - last[0] >= TRACE_POWER_STEP_NS:
                w = (j - last[1]) / ((t - last[0]) * 1e-9)
                power.append({"t": t * 1e-9 + offset, "watts": {sources[i]["id"]: w}})
                last = (t, j)
    return power


def trace_coverage(kept: int, seen: int, settings: Any) -> dict[str, Any]:
    """What a trace of the recent window covers: ``regions`` of ``regions_ended``, and when
    older ones have left the window, ``dropped`` and a ``note`` on how to get them all."""
    cover: dict[str, Any] = {
        "carbonctx_trace": "recent regions",
        "regions": kept,
        "regions_ended": max(seen, kept),
        "window": settings.window,
    }
    if seen > kept:
        cover["dropped"] = seen - kept
        where = (
            f"`carbonctx report {settings.output} --trace FILE` writes them all"
            if settings.output
            else "configure(output=FILE) records them all for `carbonctx report FILE --trace`"
        )
        cover["note"] = (
            f"the trace holds the most recent {kept} of {seen} regions (configure(window=N) "
            f"keeps N, now {settings.window}); {where}"
        )
    return cover

"""The runtime's JSON Lines file (``configure(output=...)``): region records as they resolve, and
a power record per source every ``POWER_PERIOD_S`` (the trace's counter tracks).

Also the power series of the sampler's timelines that :func:`power_points` gives traces.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from carbonctx import _native
from carbonctx._output.jsonl import dumps

__all__ = ["POWER_PERIOD_S", "RegionRecorder", "power_points"]

#: How often a power record is written to JSON Lines (for trace counter tracks).
POWER_PERIOD_S = 0.1
#: Spacing of the power points of a trace.
TRACE_POWER_STEP_NS = 10_000_000


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
        self._out: IO[str] | None = None
        self._power_since: list[int] = []
        self._power_last: list[tuple[int, float] | None] = []
        self._power_at = 0.0
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as e:
            note("output", f"cannot write {path}: {e}; regions are not recorded")

    @property
    def is_open(self) -> bool:
        return self._out is not None

    def write_records(self, records: Sequence[dict[str, Any]]) -> None:
        """Region records, one line each (called with the runtime's lock held)."""
        if not records or self._out is None:
            return
        try:
            self._out.write("".join(dumps(r) for r in records))
            self._out.flush()
        except (OSError, ValueError) as e:
            self._note("output-write", f"cannot write regions to {self.path}: {e}")

    def write_power(
        self, sampler: _native.Sampler, sources: Sequence[dict[str, Any]], force: bool = False
    ) -> None:
        """A power record (mean watts per source since the last one), at most every
        ``POWER_PERIOD_S`` unless ``force``."""
        if self._out is None:
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
            pts = sampler.timeline(i, self._power_since[i], 1_000_000)
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
                if self._out is not None:
                    self._out.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None

    def abandon(self) -> None:
        """In a forked child: the file object is the parent's; never write or close it."""
        self._out = None


def power_points(
    sampler: _native.Sampler, sources: Sequence[dict[str, Any]], offset: float
) -> list[dict[str, Any]]:
    """``{"t": unix_s, "watts": {source: W}}`` about every 10 ms of each source's timeline."""
    power: list[dict[str, Any]] = []
    series = [sampler.timeline(i, 0, 1_000_000) for i in range(len(sources))]
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

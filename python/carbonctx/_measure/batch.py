"""Resolved regions as columns: a drained :class:`Batch`, and the :class:`RecentWindow` of rows.

Neither holds a region object: a batch keeps the details records need (name, thread, parent,
tags), so regions and batches never form a cycle (regions are not collectable).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

__all__ = ["Batch", "RecentWindow"]


class Batch:
    """Columns of one drained batch of regions (rows are looked up when needed)."""

    __slots__ = (
        "columns",
        "cpu",
        "dram",
        "estimated",
        "gpu",
        "ids",
        "infos",
        "joules",
        "nan",
        "recorded",
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
        #: Whether the rows' records were written to the output file (None: no output).
        self.recorded: bool | None = None
        #: The columns as they counted when the batch was resolved (``SourceColumns.view``):
        #: its rows are built by that rule, however it changed since (None: the runtime's).
        self.columns: Any = None


class RecentWindow:
    """The most recent ``maxlen`` resolved rows, kept as (batch, row indices) per batch: no
    object per row, so a tight loop of regions leaves the garbage collector nothing to track.

    Every row that enters is numbered, from 0 in the order they enter (rows of one batch cut
    by ``maxlen`` included): a reader that noted the number after the last row it read finds
    the rows that entered since, and whether some of them left unread (:meth:`since`). Ids do
    not serve: ``@tracked`` calls and steps' entries have none (0) where output is off."""

    __slots__ = ("_added", "_chunks", "_total", "maxlen")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._chunks: deque[tuple[Batch, Sequence[int]]] = deque()
        self._total = 0
        self._added = 0

    def add(self, batch: Batch, rows: Sequence[int], entered: int | None = None) -> None:
        """Rows of ``batch`` (a list, or a range when they are all kept), in order; those
        beyond the last ``maxlen`` are numbered and not kept. ``entered``: how many rows of the
        batch entered, ``rows`` being the last of them (a caller that lists only those it
        keeps); all of ``rows`` by default."""
        if not self.maxlen:
            return
        self._added += len(rows) if entered is None else max(entered, len(rows))
        if not rows:
            return
        rows = rows[-self.maxlen :]
        self._chunks.append((batch, rows))
        self._total += len(rows)
        while self._total - len(self._chunks[0][1]) >= self.maxlen:
            self._total -= len(self._chunks.popleft()[1])

    def rows(self) -> list[tuple[Batch, int]]:
        return self.since(0)[2]

    def since(self, seq: int) -> tuple[int, int, list[tuple[Batch, int]]]:
        """The number of the oldest row held (above ``seq``: rows numbered from ``seq`` left
        unread), the number the next row will get, and the rows held numbered ``seq`` on."""
        held = len(self)
        want = max(0, min(held, self._added - seq))
        parts: list[tuple[Batch, Sequence[int]]] = []
        got = 0
        for batch, ks in reversed(self._chunks):
            if got >= want:
                break
            ks = ks[max(0, len(ks) - (want - got)) :]
            parts.append((batch, ks))
            got += len(ks)
        rows = [(b, k) for b, ks in reversed(parts) for k in ks]
        return self._added - held, self._added, rows

    def __len__(self) -> int:
        return min(self._total, self.maxlen)

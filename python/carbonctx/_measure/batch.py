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
    object per row, so a tight loop of regions leaves the garbage collector nothing to track."""

    __slots__ = ("_chunks", "_total", "maxlen")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self._chunks: deque[tuple[Batch, Sequence[int]]] = deque()
        self._total = 0

    def add(self, batch: Batch, rows: Sequence[int]) -> None:
        """Rows of ``batch`` (a list, or a range when they are all kept)."""
        if not rows or not self.maxlen:
            return
        self._chunks.append((batch, rows))
        self._total += len(rows)
        while self._total - len(self._chunks[0][1]) >= self.maxlen:
            self._total -= len(self._chunks.popleft()[1])

    def rows(self) -> list[tuple[Batch, int]]:
        out = [(b, k) for b, ks in self._chunks for k in ks]
        return out[-self.maxlen :] if self.maxlen else []

    def __len__(self) -> int:
        return min(self._total, self.maxlen)

"""Writing resolved batches as compact region records (the format: ``_output.compact``).

The first record of each name in a file is written in full (``Measurement.to_dict``); the
rest are compact. Per batch, in the resolver thread: the ordinary lines are made in native
code from the batch's columns (``_native.CompactLines``), the carbon intensity is looked up
once for the batch's span (a region that spans two intensity periods, rare, gets its own
carbon details), and a context record is written first whenever what it says has changed.
Only those first records build a Measurement.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from carbonctx import _native
from carbonctx._measure.batch import Batch
from carbonctx._measure.carbon import RegionCarbon
from carbonctx._measure.sources import SourceColumns
from carbonctx._output.compact import FORMAT, provenance
from carbonctx._output.jsonl import dumps, dumps_compact

__all__ = ["CompactForm"]


class CompactForm:
    """The compact lines of one process's output file (its context written when it changes)."""

    def __init__(
        self,
        pid: int,
        offset: float,
        columns: SourceColumns,
        rank: dict[str, Any],
        carbon: RegionCarbon,
        build: Callable[[Batch, int], Any],
    ) -> None:
        self._build = build
        self._pid = pid
        self._offset = offset
        self._carbon = carbon
        self._rank = {k: rank.get(k) for k in ("rank", "local_rank", "node", "job")}
        if self._rank.get("node") is None:
            self._rank = {}
        self._columns = columns
        self._revision = -1
        self._setup()
        self._context: dict[str, Any] | None = None
        self._names: dict[str, str] = {}

    def _setup(self) -> None:
        """The context's sources and the native line maker, from the columns as they count now
        (an APU socket's choice is settled on the first batch: ``_measure.sources``)."""
        columns = self._columns
        self._revision = columns.revision
        self._cols = [i for i in range(len(columns)) if i not in columns.skipped]
        self._counted = [k for k, i in enumerate(self._cols) if i in columns.counted]
        factors = columns.factors
        self._sources = []
        for i in self._cols:
            src = columns.sources[i]
            d = {k: src[k] for k in ("id", "label", "backend", "domain", "method")}
            if src.get("note"):
                d["note"] = src["note"]  # provenance (the node's BMC reading), an APU's choice
            if "counted" in src:
                d["counted"] = src["counted"]  # a total other than its domain's (an APU's)
            if columns.rules[i] is not None:
                d["share"] = 1.0 if factors is None else float(factors[i])
                d["share_rule"] = columns.rules[i]
                d["scaled"] = factors is not None
            self._sources.append(d)
        self._estimated = bool(columns.estimated)
        self._native = _native.CompactLines(len(columns), self._cols, self._counted)

    def _context_line(self, prov: dict[str, Any] | None) -> str:
        ctx = {
            "kind": "context",
            "format": FORMAT,
            "pid": self._pid,
            "offset": self._offset,
            "sources": self._sources,
            "estimated": self._estimated,
            "carbon": prov,
        }
        if self._rank:
            ctx["rank"] = self._rank
        if ctx == self._context:
            return ""
        self._context = ctx
        return dumps_compact(ctx) + "\n"

    def _batch_carbon(self, t0: int, t1: int) -> tuple[dict[str, Any] | None, bool]:
        """The carbon details every region of ``[t0, t1]`` (ns) shares, and whether they do
        (one intensity period over the whole span)."""
        svc = self._carbon.service()
        if svc is None:
            return None, True
        off = self._offset
        try:
            c = svc.co2(1.0, t0 * 1e-9 + off, t1 * 1e-9 + off)
        except Exception:
            return None, False
        return provenance(c.to_dict()), len(c.periods) <= 1

    def lines(self, batch: Batch, rows: Sequence[int]) -> bytes:
        """The text (UTF-8) of ``rows`` of ``batch``: a context record when it changed, new
        threads, the batch's base time and one line per region.

        The ordinary lines are made in native code from the batch's columns
        (``_native.CompactLines``): no Python object is made per line (objects that lived
        through the batch would be promoted by Python's collector and bring on full
        collections, which stall every thread), and the resolver holds the GIL for a fraction
        of a microsecond per region. Python makes what is rare: a name's first record (in
        full), tags, and a region's own carbon details when the batch spans two intensity
        periods.
        """
        if self._columns.revision != self._revision:
            self._setup()
        t0, t1 = batch.t0.tobytes(), batch.t1.tobytes()
        base, end = self._native.span(t0, t1, rows)
        prov, shared = self._batch_carbon(base, end)
        head = self._context_line(prov)
        names = self._names

        def name_json(name: str) -> tuple[str, bool]:
            text = names.get(name)
            if text is not None:
                return text, False
            names[name] = text = json.dumps(name)
            return text, True

        def row_carbon(energy_j: float, t0: int, t1: int) -> str:
            return self._row_carbon(energy_j, t0, t1, prov)

        body, new_threads = self._native.lines(
            batch.ids.tobytes(),
            t0,
            t1,
            batch.joules.tobytes(),
            batch.unc.tobytes(),
            rows,
            batch.infos,
            base,
            name_json,
            lambda k: dumps(self._build(batch, k).to_dict()),
            lambda tags: dumps_compact(dict(tags)),
            None if shared else row_carbon,
        )
        if new_threads:
            threads = {str(th): ident for th, ident in new_threads}
            head += dumps_compact({"kind": "threads", "pid": self._pid, "threads": threads}) + "\n"
        head += f'{{"kind":"batch","pid":{self._pid},"t0":{base}}}\n'
        return head.encode("utf-8") + body

    def _row_carbon(self, energy_j: float, t0: int, t1: int, prov: dict[str, Any] | None) -> str:
        """A region whose span the batch's carbon details may not cover: its own, when they
        differ from the context's."""
        off = self._offset
        carbon = self._carbon.for_region(energy_j, t0 * 1e-9 + off, t1 * 1e-9 + off)[3]
        if carbon is None or provenance(carbon) == prov:
            return ""
        return ',"carbon":' + dumps_compact(carbon)

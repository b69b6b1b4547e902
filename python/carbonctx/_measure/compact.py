"""Writing resolved batches as compact region records (the format: ``_output.compact``).

The first record of each name in a file is written in full (``Measurement.to_dict``); the
rest are compact. Per batch, in the resolver thread: the columns are rounded and formatted in
bulk, the carbon intensity is looked up once for the batch's span (a region that spans two
intensity periods, rare, gets its own carbon details), and a context record is written first
whenever what it says has changed. Only those first records build a Measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from carbonctx._measure.batch import Batch
from carbonctx._measure.carbon import RegionCarbon
from carbonctx._measure.sources import TOTAL_DOMAINS, SourceColumns
from carbonctx._output.compact import FORMAT, ceil2_array, provenance
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
        self._cols = [i for i in range(len(columns)) if i not in columns.skipped]
        self._col_idx = np.asarray(self._cols, dtype=np.intp)
        self._counted = [
            k for k, i in enumerate(self._cols) if columns.sources[i]["domain"] in TOTAL_DOMAINS
        ]
        factors = columns.factors
        self._sources = []
        for i in self._cols:
            src = columns.sources[i]
            d = {k: src[k] for k in ("id", "label", "backend", "domain", "method")}
            if src.get("note"):
                d["note"] = src["note"]  # provenance (the node's BMC reading)
            if columns.rules[i] is not None:
                d["share"] = 1.0 if factors is None else float(factors[i])
                d["share_rule"] = columns.rules[i]
                d["scaled"] = factors is not None
            self._sources.append(d)
        self._estimated = bool(columns.estimated)
        self._context: dict[str, Any] | None = None
        self._threads: dict[int, int] = {}
        self._names: dict[str, str] = {}

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

    def lines(self, batch: Batch, rows: Sequence[int]) -> str:
        """The text of ``rows`` of ``batch``: a context record when it changed, new threads,
        the batch's base time and one line per region (one ``%`` format each)."""
        idx = np.asarray(rows, dtype=np.intp)
        t0 = batch.t0[idx]
        t1 = batch.t1[idx]
        base = int(t0.min())
        prov, shared = self._batch_carbon(base, int(t1.max()))
        head = [self._context_line(prov)]
        with np.errstate(invalid="ignore"):
            uj = np.rint(batch.joules[np.ix_(idx, self._col_idx)] * 1e6)
        u = ceil2_array(batch.unc[np.ix_(idx, self._col_idx)])
        energy = (np.nansum(uj[:, self._counted], axis=1) / 1e6).tolist()
        good = (np.isfinite(uj).all(axis=1) & np.isfinite(u).all(axis=1)).tolist()
        starts = (t0 - base).tolist()
        durs = (t1 - t0).tolist()
        ids = batch.ids[idx].tolist()
        jl = uj.tolist()
        ul = u.tolist()
        w = uj.shape[1]
        fmt = (
            '{"kind":"region","name":%s,"id":%d,"parent":%s,"t":%d,"dt":%d,"energy_j":%r,'
            '"j":[' + ",".join(["%d"] * w) + '],"u":[' + ",".join(["%.2g"] * w) + "]%s}\n"
        )
        infos = batch.infos
        names = self._names
        threads = self._threads
        new_threads: dict[str, int] = {}
        out: list[str] = []
        last_th = 0  # "th" is written when it changes within the batch
        prev_end = 0  # "t" is the start after the previous line's end (the batch's t0 first)
        for n, k in enumerate(rows):
            name, thread, parent, tags = infos[k]  # a claimed row: its details are there
            jn = names.get(name)
            if jn is None:
                # The first record of each name is written in full: a reader that does not
                # know the compact form still sees every field of every name once.
                names[name] = json.dumps(name)
                out.append(dumps(self._build(batch, k).to_dict()))
                continue
            extra = ""
            if thread:
                th = threads.get(thread, 0)
                if th == 0:
                    th = threads[thread] = len(threads) + 1
                    new_threads[str(th)] = thread
            else:
                th = 0
            if th != last_th:
                extra = f',"th":{th}'
                last_th = th
            if tags:
                extra += ',"tags":' + dumps_compact(dict(tags))
            start = starts[n]
            if not shared:
                extra += self._row_carbon(energy[n], base + start, base + start + durs[n], prov)
            head_vals = (
                jn,
                ids[n],
                "null" if parent is None else parent,
                start - prev_end,
                durs[n],
                energy[n],
            )
            if good[n]:
                out.append(fmt % (*head_vals, *jl[n], *ul[n], extra))
            else:
                out.append(_line_with_nulls(head_vals, jl[n], ul[n], extra))
            prev_end = start + durs[n]
        if new_threads:
            head.append(
                dumps_compact({"kind": "threads", "pid": self._pid, "threads": new_threads}) + "\n"
            )
        head.append(f'{{"kind":"batch","pid":{self._pid},"t0":{base}}}\n')
        return "".join(head) + "".join(out)

    def _row_carbon(self, energy_j: float, t0: int, t1: int, prov: dict[str, Any] | None) -> str:
        """A region whose span the batch's carbon details may not cover: its own, when they
        differ from the context's."""
        off = self._offset
        carbon = self._carbon.for_region(energy_j, t0 * 1e-9 + off, t1 * 1e-9 + off)[3]
        if carbon is None or provenance(carbon) == prov:
            return ""
        return ',"carbon":' + dumps_compact(carbon)


def _line_with_nulls(
    head: tuple[Any, ...], j: Sequence[float], u: Sequence[float], extra: str
) -> str:
    """A region line whose joules or uncertainties are not all known (``null`` for those)."""
    name, rid, parent, t, dt, energy = head
    js = ",".join("null" if x != x else str(int(x)) for x in j)
    us = ",".join(f"{x:.2g}" if math.isfinite(x) else "null" for x in u)
    return (
        f'{{"kind":"region","name":{name},"id":{rid},"parent":{parent},"t":{t},"dt":{dt},'
        f'"energy_j":{energy!r},"j":[{js}],"u":[{us}]{extra}}}\n'
    )

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
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

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
        the batch's base time and one line per region.

        The ordinary lines are formatted in bulk (one ``%`` format over a run of lines, its
        arguments laid out in one object array), not one by one: no container is made per
        line (lists or tuples that lived through the batch would be promoted by Python's
        collector and bring on full collections, which stall every thread), and the resolver
        holds the GIL for less time per region.
        """
        n = len(rows)
        idx = np.asarray(rows, dtype=np.intp)
        t0 = batch.t0[idx]
        t1 = batch.t1[idx]
        base = int(t0.min())
        prov, shared = self._batch_carbon(base, int(t1.max()))
        head = [self._context_line(prov)]
        with np.errstate(invalid="ignore"):
            uj = np.rint(batch.joules[np.ix_(idx, self._col_idx)] * 1e6)
        u = ceil2_array(batch.unc[np.ix_(idx, self._col_idx)])
        w = uj.shape[1]
        infos = batch.infos
        # Columns of the claimed rows' details (zip(*rows) would make an iterator per row).
        sel = [infos[k] for k in rows]
        name_col = list(map(itemgetter(0), sel))
        thread_col = list(map(itemgetter(1), sel))
        parent_col = list(map(itemgetter(2), sel))
        tags_col = list(map(itemgetter(3), sel))
        names = self._names
        full = np.zeros(n, dtype=bool)  # the first record of a name is written in full
        for name in set(name_col) - names.keys():
            first = name_col.index(name)
            full[first] = True
            names[name] = json.dumps(name)
        # Signed: regions of other threads overlap, so "t" may be negative.
        starts = (t0 - base).astype(np.int64)
        ends = (t1 - base).astype(np.int64)
        # "t": the start after the previous compact line's end (0 for the first).
        compact = np.flatnonzero(~full)
        prev_end = np.zeros(n, dtype=np.int64)
        if len(compact) > 1:
            prev_end[compact[1:]] = ends[compact[:-1]]
        # Column by column: NumPy gives up the GIL in reductions along an axis, and the
        # resolver thread, competing with a user thread that runs Python, gets it back only
        # after the switch interval (5 ms) each time.
        energy = np.zeros(n)
        good = np.ones(n, dtype=bool)
        for c in range(w):
            col = uj[:, c]
            finite = np.isfinite(col)
            good &= finite & np.isfinite(u[:, c])
            if c in self._counted:
                energy += np.where(finite, col, 0.0)  # a failed source adds nothing
        energy /= 1e6
        # "th" when it changes from the previous compact line's (0 before the first), "tags"
        # and a region's own carbon: the rare parts, made line by line.
        extra: list[str] = [""] * n
        threads = self._threads
        new_threads: dict[str, int] = {}
        last_th = 0
        energy_l = energy.tolist() if not shared else []
        for c in compact.tolist():
            thread = thread_col[c]
            th = threads.get(thread, 0) if thread else 0
            if thread and th == 0:
                th = threads[thread] = len(threads) + 1
                new_threads[str(th)] = thread
            if th != last_th:
                extra[c] = f',"th":{th}'
                last_th = th
            tags = tags_col[c]
            if tags:
                extra[c] += ',"tags":' + dumps_compact(dict(tags))
            if not shared:
                extra[c] += self._row_carbon(
                    energy_l[c], base + int(starts[c]), base + int(ends[c]), prov
                )
        cols = 7 + 2 * w
        a = np.empty((n, cols), dtype=object)
        a[:, 0] = [names[name] for name in name_col]
        a[:, 1] = batch.ids[idx]
        a[:, 2] = ["null" if p is None else p for p in parent_col]
        a[:, 3] = starts - prev_end
        a[:, 4] = t1 - t0
        a[:, 5] = energy
        # Ordinary lines have finite joules, written as integers (those of the others are
        # written from ``uj`` and ``u``), and uncertainties through a table of the batch's
        # few distinct values (two significant digits): a float formatted one by one is most
        # of a line's cost.
        a[:, 6 : 6 + w] = np.where(good[:, None], uj, 0.0).astype(np.int64)
        a[:, 6 + w : 6 + 2 * w] = _texts_2g(u)
        a[:, cols - 1] = extra
        fmt = (
            '{"kind":"region","name":%s,"id":%d,"parent":%s,"t":%d,"dt":%d,"energy_j":%r,'
            '"j":[' + ",".join(["%d"] * w) + '],"u":[' + ",".join(["%s"] * w) + "]%s}\n"
        )
        flat = a.ravel().tolist()
        out: list[str] = []
        special = np.flatnonzero(full | ~good).tolist()
        at = 0
        for k in [*special, n]:
            if k > at:  # a run of ordinary lines
                out.append((fmt * (k - at)) % tuple(flat[at * cols : k * cols]))
            if k == n:
                break
            if full[k]:
                out.append(dumps(self._build(batch, rows[k]).to_dict()))
            else:
                out.append(
                    _line_with_nulls(
                        tuple(flat[k * cols : k * cols + 6]),
                        uj[k].tolist(),
                        u[k].tolist(),
                        extra[k],
                    )
                )
            at = k + 1
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


class _Texts2g(dict[float, str]):
    """``"%.2g" % x`` of the values seen (uncertainties rounded up to two significant digits:
    a few hundred distinct values in practice; kept up to ``CAP``; never NaN, nor zeros, which
    compare equal to their negative but are written otherwise)."""

    CAP = 4096

    def __missing__(self, x: float) -> str:
        text = f"{x:.2g}"
        if x == x and x != 0.0 and len(self) < self.CAP:
            self[x] = text
        return text


_TEXTS_2G = _Texts2g()


def _texts_2g(u: npt.NDArray[np.float64]) -> npt.NDArray[np.object_]:
    """``"%.2g" % x`` of every element, each distinct value formatted once (a lookup, not a
    sort: NumPy's sort gives up the GIL, see ``CompactForm.lines``)."""
    out = np.empty(u.size, dtype=object)
    out[:] = list(map(_TEXTS_2G.__getitem__, u.ravel().tolist()))
    return out.reshape(u.shape)


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

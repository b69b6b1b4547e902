"""Compact region records in JSON Lines (format 2): what is the same for every region of a run
is written once, in a ``context`` record, and each region's line carries only its own figures.

A writer appends, per process (``pid``):

* ``{"kind": "context", "format": 2, "pid", "offset", "sources", "estimated", "rank",
  "carbon"}`` when the output is opened and whenever any of it changes (the carbon intensity's
  provenance, for instance): the sources' ids, labels, backends, domains, methods and shares,
  the clock's offset to Unix time, and the carbon details without the per-region figures;
* ``{"kind": "threads", "pid", "threads": {"index": ident}}`` when threads appear;
* ``{"kind": "batch", "pid", "t0": ns}`` before each batch of region lines (one write each);
* region lines: ``{"kind": "region", "name", "id", "parent", "t", "dt", "energy_j", "j", "u"}``
  and ``th`` (thread index; written when it differs from the previous line's in the batch),
  ``tags`` (when there are some) and ``carbon`` (only for a region whose carbon details differ
  from the context's: one that spans two intensity periods). ``t`` is the start in ns after
  the previous line's end (the batch's ``t0`` for its first line), ``dt`` the duration in ns
  (exact: start and end are found as the full form has them); ``j`` is each context source's
  joules in whole microjoules (null where the source had failed), ``u`` each one's uncertainty
  in joules rounded *up* to two significant digits (so it still bounds the error);
  ``energy_j`` is the sum of the counted ``j`` (package, DRAM, GPU), in joules. A context
  source with ``counted`` counts in that total (``"package"``: ``cpu_j``) or, when null, in
  none, whatever its domain (an AMD APU's socket counted in its CPU package's place, and that
  package; see :func:`counted_domain`).

:func:`expand_records` turns a file's records of either form into full region records (those of
:meth:`carbonctx.Measurement.to_dict`): every reader goes through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from carbonctx._results.counted import (
    APU_COUNTED_NOTE,
    PACKAGE_REPLACED_NOTE,
    counted_domain,
    failed_note,
)
from carbonctx._results.measurement import node_fields
from carbonctx._results.units import J_PER_KWH

__all__ = [
    "APU_COUNTED_NOTE",
    "FORMAT",
    "PACKAGE_REPLACED_NOTE",
    "ceil2",
    "ceil2_array",
    "counted_domain",
    "expand_records",
    "is_compact",
    "iter_expanded",
    "provenance",
]

#: The compact form's version, in its context records.
FORMAT = 2
_TOTALS = ("package", "dram", "gpu")


def ceil2(u: float) -> float:
    """``u`` rounded up to two significant digits (an uncertainty that still bounds)."""
    if not math.isfinite(u) or u <= 0.0:
        return u
    e = math.floor(math.log10(u)) - 1
    return float(f"{math.ceil(u / 10.0**e - 1e-9)}e{e}")


def ceil2_array(u: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """:func:`ceil2` of a block of uncertainties (NaN, infinities and zeros as they are); the
    result is to be written with two significant digits (``%.2g``)."""
    with np.errstate(all="ignore"):
        ok = np.isfinite(u) & (u > 0.0)
        e = np.where(ok, np.floor(np.log10(np.where(ok, u, 1.0))) - 1.0, 0.0)
        scale = 10.0**e
        return np.where(ok, np.ceil(u / scale - 1e-9) * scale, u)


def is_compact(rec: dict[str, Any]) -> bool:
    """A compact region line (``t`` and ``j`` instead of ``start`` and ``by_source``)."""
    return rec.get("kind") == "region" and "j" in rec and "by_source" not in rec


class _Pid:
    __slots__ = ("base", "ctx", "foreign", "th", "threads")

    def __init__(self) -> None:
        self.ctx: dict[str, Any] | None = None
        self.foreign: tuple[object] | None = None  # (format,) of a context not understood
        self.base = 0  # the end of the previous line (the batch's t0 first), ns
        self.th: Any = None  # the previous line's thread index
        self.threads: dict[str, int] = {}


#: Where a damaged batch or context record leaves the lines after it.
_DAMAGED = _Pid()


def expand_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record, compact region lines made full (in file order); context, thread and batch
    records are consumed. A compact line without a context before it (a file cut at the
    front), or one that does not match its context, is kept as it is."""
    return [rec for _, rec in iter_expanded((0, r) for r in records)]


def iter_expanded(
    items: Iterable[tuple[int, dict[str, Any]]],
    on_bad: Callable[[str, int], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`expand_records` one (line number, record) at a time. A context, thread or batch
    record that cannot be used (a damaged file) is left out and, with ``on_bad``, reported with
    the reason and its line; so is a compact line that cannot be expanded (kept as it is
    without ``on_bad``)."""
    by_pid: dict[Any, _Pid] = {}
    last: _Pid | None = None
    for line, rec in items:
        kind = rec.get("kind")
        if kind in ("context", "threads", "batch"):
            try:
                pid = rec.get("pid")
                hash(pid)
                st = by_pid.get(pid)
                if st is None:
                    st = by_pid[pid] = _Pid()
                if kind == "context":
                    # A newer writer's context may mean its lines differ: none is guessed at.
                    fmt = rec.get("format")
                    st.ctx, st.foreign = None, None if fmt == FORMAT else (fmt,)
                    if st.foreign is None:
                        _check_context(rec)  # its figures, once rather than on every line
                        st.ctx = rec
                elif kind == "threads":
                    st.threads.update(rec.get("threads") or {})
                else:
                    st.base = _int(rec["t0"])
                    st.th = None
                last = st
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
                if on_bad is not None:
                    on_bad(f"a {kind} record whose fields have the wrong types", line)
                if kind != "threads":
                    last = _DAMAGED  # the lines after it have no start time or sources to use
            continue
        if is_compact(rec) and last is not None and last.ctx is not None:
            try:
                yield line, _expand(rec, last)
                continue
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError):
                if on_bad is not None:
                    on_bad("a compact region line that does not match its context", line)
                    continue
        elif is_compact(rec) and on_bad is not None:
            on_bad(_no_context(last), line)
            continue
        yield line, rec


def _no_context(st: _Pid | None) -> str:
    """Why a compact line cannot be read: its context is of another format, or missing."""
    if st is _DAMAGED:
        return (
            "a compact region line after a damaged batch or context record (its start time or "
            "sources are not known)"
        )
    if st is not None and st.foreign is not None:
        (fmt,) = st.foreign
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
            return (
                f"a region line in compact format {fmt}, newer than this carbonctx reads "
                f"({FORMAT}): upgrade carbonctx to read it"
            )
        return f"a region line whose context record has an unknown format ({_short(fmt)})"
    return (
        "a compact region line with no context record before it (the start of the file, "
        "which says what its figures are, is missing)"
    )


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _expand(r: dict[str, Any], st: _Pid) -> dict[str, Any]:
    ctx = st.ctx
    assert ctx is not None
    offset = ctx["offset"]
    t, dt = r["t"], r["dt"]
    # ``type(x) is int`` (not a bool, nor a number in a string), inline: this runs per line.
    if type(t) is not int or type(dt) is not int:
        raise TypeError("a region line whose times are not integers")
    t0 = st.base + t
    t1 = t0 + dt
    st.base = t1
    if "th" in r:
        st.th = r["th"]
    sums = {"package": 0, "dram": 0, "gpu": 0}
    u_total = 0.0
    u_known = True
    missing: list[str] = []
    by_source: dict[str, Any] = {}
    sources: Sequence[dict[str, Any]] = ctx["sources"]
    for src, jv, uv in zip(sources, r["j"], r["u"], strict=True):
        failed = jv is None
        if failed:
            j = u = None
        elif type(jv) is not int:
            raise TypeError("a source's figure that is not an integer")
        else:
            j = jv / 1e6
            if uv is None:
                u = None
            elif type(uv) is int or (type(uv) is float and math.isfinite(uv)):
                u = float(uv)
            else:
                raise TypeError("a source's uncertainty that is not a number")
        dom = src["domain"]
        counted = counted_domain(src)
        if counted is not None:
            if failed:
                missing.append(src["id"])
            else:
                sums[counted] += jv
                if u is None:
                    u_known = False
                else:
                    u_total += u
        d: dict[str, Any] = {
            "id": src["id"],
            "label": src["label"],
            "backend": src["backend"],
            "domain": dom,
            "method": src["method"],
            "joules": j,
            "uncertainty_j": u,
            "note": failed_note(src.get("note")) if failed else src.get("note"),
        }
        if src.get("share_rule") is not None:
            share = float(src.get("share", 1.0))
            d["share"] = share
            d["share_rule"] = src["share_rule"]
            d["node_joules"] = (
                None if j is None or not src.get("scaled") or share == 0.0 else j / share
            )
        by_source[src["id"]] = d
    cpu, dram, gpu = (sums[d] / 1e6 for d in _TOTALS)
    energy = (sums["package"] + sums["dram"] + sums["gpu"]) / 1e6
    co2_g, intensity, zone, carbon = _carbon(r, ctx.get("carbon"), energy)
    rank = ctx.get("rank") or {}
    th = st.th
    return {
        "kind": "region",
        "name": r["name"],
        "id": r["id"],
        "pid": ctx["pid"],
        "thread": st.threads.get(str(th), 0) if th else 0,
        "parent": r.get("parent"),
        "start": t0 * 1e-9 + offset,
        "end": t1 * 1e-9 + offset,
        "duration_s": (t1 - t0) * 1e-9,
        "energy_j": energy,
        "cpu_j": cpu,
        "dram_j": dram,
        "gpu_j": gpu,
        "uncertainty_j": u_total if u_known and sources else None,
        "co2_g": co2_g,
        "intensity": intensity,
        "zone": zone,
        "carbon": carbon,
        "missing": missing,
        "estimated": bool(ctx.get("estimated")),
        "by_source": by_source,
        "tags": r.get("tags") or {},
        **node_fields(_node_j(by_source), energy, (t1 - t0) * 1e-9),
        **({k: rank.get(k) for k in ("rank", "local_rank", "node", "job")} if rank else {}),
    }


def _int(v: object) -> int:
    """An integer as the writer wrote it: not a number in a string, nor a bool, nor a float."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise TypeError(f"{type(v).__name__} where an integer belongs")


def _check_context(ctx: dict[str, Any]) -> None:
    """Raises TypeError unless the figures of a context record that its lines are read with
    are numbers a float holds (its offset, sources' shares, carbon factors)."""
    _num(ctx["offset"])
    for src in ctx["sources"]:
        if src.get("share_rule") is not None:
            _num(src.get("share", 1.0))
    prov = ctx.get("carbon")
    if prov is not None:
        _num(prov["pue"])
        _num(prov["intensity_g_per_kwh"])
        alts = prov.get("alternatives")
        for a in alts if isinstance(alts, list) else ():
            if "signal" in a:
                _num(a["intensity_g_per_kwh"])


def _num(v: object) -> float:
    """A finite number as the writer wrote it (not one in a string)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise TypeError(f"{type(v).__name__} where a number belongs")


def _node_j(by_source: dict[str, Any]) -> float | None:
    """The first node-domain source with a figure, as :attr:`Measurement.node_j` finds it."""
    for d in by_source.values():
        if d["domain"] == "node" and d["joules"] is not None:
            return float(d["joules"])
    return None


def _carbon(
    r: dict[str, Any], prov: dict[str, Any] | None, energy: float
) -> tuple[float | None, float | None, str | None, dict[str, Any] | None]:
    carbon = r.get("carbon")
    if carbon is None and prov is not None:
        kwh = energy / J_PER_KWH
        pue = prov["pue"]
        carbon = {"co2_g": kwh * prov["intensity_g_per_kwh"] * pue, "energy_kwh": kwh}
        for k, v in prov.items():
            if k == "alternatives" and isinstance(v, list):
                v = [_with_co2(a, kwh, pue) for a in v]
            carbon[k] = v
    if carbon is None:
        return None, None, None, None
    zone = carbon.get("zone")
    return (
        carbon.get("co2_g"),
        carbon.get("intensity_g_per_kwh"),
        zone.get("zone") if isinstance(zone, dict) else zone,
        carbon,
    )


def _with_co2(alt: dict[str, Any], kwh: float, pue: float) -> dict[str, Any]:
    """An alternative signal's figures for one region: its CO2 put back after its name."""
    out: dict[str, Any] = {}
    for k, v in alt.items():
        out[k] = v
        if k == "signal":
            out["co2_g"] = kwh * alt["intensity_g_per_kwh"] * pue
    return out


def provenance(carbon: dict[str, Any] | None) -> dict[str, Any] | None:
    """A region's carbon details without its own figures (what the context record holds): all
    but ``co2_g`` and ``energy_kwh``, and each alternative signal's ``co2_g``."""
    if carbon is None:
        return None
    out: dict[str, Any] = {}
    for k, v in carbon.items():
        if k in ("co2_g", "energy_kwh"):
            continue
        if k == "alternatives" and isinstance(v, list):
            v = [
                {ak: av for ak, av in a.items() if ak != "co2_g"} if isinstance(a, dict) else a
                for a in v
            ]
        out[k] = v
    return out

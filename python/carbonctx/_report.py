"""Results: a region's measurement, per-name statistics, and the files they are written to."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import attrs
import numpy as np
import numpy.random  # imported here, never lazily in the resolver thread (fork safety)
import numpy.typing as npt

__all__ = [
    "Measurement",
    "NameStats",
    "SourceEnergy",
    "StatsTable",
    "Summary",
]

J_PER_KWH = 3.6e6


@attrs.frozen(slots=True)
class SourceEnergy:
    """Joules from one source over one region, and how they came about.

    ``method`` is ``"counter"`` (a hardware energy counter), ``"integrated-power"`` (power
    readings integrated over time) or ``"estimate"`` (utilisation times TDP: a model, not a
    measurement). ``joules`` is ``None`` where the source had failed; ``note`` says why.
    """

    id: str
    label: str
    backend: str
    domain: str
    method: str
    joules: float | None
    uncertainty_j: float | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(slots=True)
class Measurement:
    """The energy and CO2 of one region.

    ``cpu_j`` is CPU package energy summed over packages, ``dram_j`` DRAM energy, ``gpu_j`` the
    tracked GPUs; ``energy_j`` is their sum. Core, uncore and psys zones appear in ``by_source``
    but never in totals (they overlap the package). ``uncertainty_j`` is how far the true
    energy can be from the figure given when the counters changed around the region's edges (the
    widths of the brackets at both edges, added); it does not cover the error of integrating
    power between readings, nor of an estimate. ``missing`` names sources whose
    figures are absent, and ``estimated`` is true when any total includes an estimate.
    """

    name: str
    id: int
    pid: int
    thread: int
    parent: int | None
    start: float
    end: float
    duration_s: float
    energy_j: float
    cpu_j: float
    dram_j: float
    gpu_j: float
    uncertainty_j: float | None
    by_source: Mapping[str, SourceEnergy]
    co2_g: float | None
    intensity: float | None
    zone: str | None
    carbon: Mapping[str, Any] | None
    missing: tuple[str, ...] = ()
    estimated: bool = False
    tags: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / J_PER_KWH

    @property
    def power_w(self) -> float:
        """Mean power over the region."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: the record written to JSON Lines."""
        return {
            "kind": "region",
            "name": self.name,
            "id": self.id,
            "pid": self.pid,
            "thread": self.thread,
            "parent": self.parent,
            "start": self.start,
            "end": self.end,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "cpu_j": self.cpu_j,
            "dram_j": self.dram_j,
            "gpu_j": self.gpu_j,
            "uncertainty_j": self.uncertainty_j,
            "co2_g": self.co2_g,
            "intensity": self.intensity,
            "zone": self.zone,
            "carbon": dict(self.carbon) if self.carbon is not None else None,
            "missing": list(self.missing),
            "estimated": self.estimated,
            "by_source": {k: v.to_dict() for k, v in self.by_source.items()},
            "tags": dict(self.tags),
        }


@attrs.frozen(slots=True)
class Summary:
    """Distribution of one quantity over the regions of a name."""

    total: float
    mean: float
    std: float
    p50: float
    p95: float
    max: float


@attrs.frozen(slots=True)
class NameStats:
    """Per-name statistics: what per-step profiling reads."""

    name: str
    count: int
    energy_j: Summary
    duration_s: Summary
    co2_g: float
    estimated: bool

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "count": self.count}
        for field in ("energy_j", "duration_s"):
            s: Summary = getattr(self, field)
            for k, v in attrs.asdict(s).items():
                d[f"{field}_{k}"] = v
        d["co2_g"] = self.co2_g
        d["estimated"] = self.estimated
        return d


class StatsTable(Mapping[str, NameStats]):
    """Statistics of every region name, in first-seen order.

    A mapping of name to :class:`NameStats`; ``to_dicts()`` gives plain rows and
    ``to_pandas()`` a DataFrame (pandas must be installed).
    """

    __slots__ = ("_rows",)

    def __init__(self, rows: Iterable[NameStats]) -> None:
        self._rows = {r.name: r for r in rows}

    def __getitem__(self, name: str) -> NameStats:
        return self._rows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"StatsTable({list(self._rows.values())!r})"

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self._rows.values()]

    def to_pandas(self) -> Any:
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "to_pandas() needs pandas: pip install pandas (or carbonctx[pandas])"
            ) from e
        return pd.DataFrame(self.to_dicts()).set_index("name")

    def __str__(self) -> str:
        return format_stats(self.values())


class _Dist:
    """Running moments and a bounded uniform sample (reservoir) of one quantity."""

    __slots__ = ("_m2", "_mean", "_n_sample", "_rng", "_sample", "_total", "count", "max")

    CAP = 4096

    def __init__(self, seed: int) -> None:
        self.count = 0
        self._total = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.max = -math.inf
        self._sample = np.empty(self.CAP)
        self._n_sample = 0
        self._rng = np.random.default_rng(seed)

    def add(self, x: float) -> None:
        self.add_many(np.array([x], dtype=np.float64))

    def add_many(self, xs: npt.NDArray[np.float64]) -> None:
        n = len(xs)
        if n == 0:
            return
        mean_b = float(xs.mean())
        m2_b = float(((xs - mean_b) ** 2).sum())
        before = self.count
        total = before + n
        delta = mean_b - self._mean
        self._mean += delta * n / total
        self._m2 += m2_b + delta * delta * before * n / total
        self.count = total
        self._total += float(xs.sum())
        self.max = max(self.max, float(xs.max()))
        space = self.CAP - self._n_sample
        if space > 0:
            k = min(space, n)
            self._sample[self._n_sample : self._n_sample + k] = xs[:k]
            self._n_sample += k
            xs = xs[k:]
            before += k
        if len(xs):
            # Item i (1-based overall index j) replaces a random slot with probability CAP / j.
            j = before + np.arange(1, len(xs) + 1)
            slots = (self._rng.random(len(xs)) * j).astype(np.int64)
            keep = slots < self.CAP
            self._sample[slots[keep]] = xs[keep]

    def summary(self) -> Summary:
        n = self.count
        std = math.sqrt(self._m2 / (n - 1)) if n > 1 else 0.0
        s = np.sort(self._sample[: self._n_sample]).tolist()
        return Summary(
            total=self._total,
            mean=self._mean if n else 0.0,
            std=std,
            p50=_quantile(s, 0.5),
            p95=_quantile(s, 0.95),
            max=self.max if n else 0.0,
        )


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class NameAggregate:
    """Constant-memory statistics for one region name."""

    __slots__ = ("co2_g", "duration", "energy", "estimated", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        seed = hash(name) & 0xFFFF
        self.energy = _Dist(seed)
        self.duration = _Dist(seed + 1)
        self.co2_g = 0.0
        self.estimated = False

    def add(self, energy_j: float, duration_s: float, co2_g: float | None, estimated: bool) -> None:
        self.energy.add(energy_j)
        self.duration.add(duration_s)
        if co2_g is not None:
            self.co2_g += co2_g
        self.estimated = self.estimated or estimated

    def add_many(
        self,
        energy_j: npt.NDArray[np.float64],
        duration_s: npt.NDArray[np.float64],
        co2_g: float,
        estimated: bool,
    ) -> None:
        self.energy.add_many(energy_j)
        self.duration.add_many(duration_s)
        self.co2_g += co2_g
        self.estimated = self.estimated or estimated

    def freeze(self) -> NameStats:
        return NameStats(
            name=self.name,
            count=self.energy.count,
            energy_j=self.energy.summary(),
            duration_s=self.duration.summary(),
            co2_g=self.co2_g,
            estimated=self.estimated,
        )


# ---------------------------------------------------------------------------------------------
# Text, CSV and trace output


def _fmt_j(j: float) -> str:
    a = abs(j)
    if a >= 3.6e6:
        return f"{j / J_PER_KWH:.3f} kWh"
    if a >= 1e3:
        return f"{j / 1e3:.2f} kJ"
    if a >= 1:
        return f"{j:.2f} J"
    return f"{j * 1e3:.2f} mJ"


def _fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _fmt_g(g: float) -> str:
    if abs(g) >= 1e3:
        return f"{g / 1e3:.3f} kg"
    if abs(g) >= 1:
        return f"{g:.2f} g"
    return f"{g * 1e3:.2f} mg"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=False))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=False))
            )
        )
    return "\n".join(out)


def format_stats(stats: Iterable[NameStats]) -> str:
    """A plain-text table of per-name statistics."""
    rows = []
    for s in stats:
        mark = " (est.)" if s.estimated else ""
        rows.append(
            [
                s.name + mark,
                str(s.count),
                _fmt_j(s.energy_j.total),
                _fmt_j(s.energy_j.mean),
                _fmt_j(s.energy_j.p50),
                _fmt_j(s.energy_j.p95),
                _fmt_s(s.duration_s.mean),
                _fmt_g(s.co2_g),
            ]
        )
    if not rows:
        return "no regions measured"
    header = ["name", "count", "energy", "mean", "p50", "p95", "mean time", "CO2e"]
    return format_table(header, rows)


CSV_FIELDS = [
    "name",
    "id",
    "pid",
    "thread",
    "parent",
    "start",
    "end",
    "duration_s",
    "energy_j",
    "cpu_j",
    "dram_j",
    "gpu_j",
    "uncertainty_j",
    "co2_g",
    "intensity",
    "zone",
    "estimated",
    "missing",
]


def write_csv(records: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    """Write region records (dicts as in JSON Lines) as CSV; returns the number of rows."""
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    n = 0
    for r in records:
        row = dict(r)
        row["missing"] = ";".join(r.get("missing") or [])
        w.writerow(row)
        n += 1
    return n


def read_json_lines(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Every JSON object in a JSON Lines file, and how many lines were not one.

    A file cut short by a killed process is read up to its last complete line.
    """
    records: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def read_jsonl(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Read a JSON Lines file: (region records, power records, lines that could not be parsed)."""
    records, bad = read_json_lines(path)
    regions = [r for r in records if r.get("kind", "region") == "region"]
    power = [r for r in records if r.get("kind") == "power"]
    return regions, power, bad


def stats_from_records(records: Iterable[Mapping[str, Any]]) -> StatsTable:
    aggs: dict[str, NameAggregate] = {}
    for r in records:
        name = str(r.get("name", "?"))
        agg = aggs.get(name)
        if agg is None:
            agg = aggs[name] = NameAggregate(name)
        co2 = r.get("co2_g")
        agg.add(
            float(r.get("energy_j") or 0.0),
            float(r.get("duration_s") or 0.0),
            float(co2) if co2 is not None else None,
            bool(r.get("estimated")),
        )
    return StatsTable(a.freeze() for a in aggs.values())


def _lanes(regions: Sequence[Mapping[str, Any]]) -> list[int]:
    """Assign each region of one thread a lane so that slices in a lane nest properly.

    Regions of one thread nest unless asyncio tasks interleave them; an overlapping region that
    does not nest goes to the first lane where it does.
    """
    order = sorted(range(len(regions)), key=lambda i: (regions[i]["start"], -regions[i]["end"]))
    stacks: list[list[float]] = []
    lanes = [0] * len(regions)
    for i in order:
        s, e = regions[i]["start"], regions[i]["end"]
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                lanes[i] = lane
                break
        else:
            stacks.append([e])
            lanes[i] = len(stacks) - 1
    return lanes


def chrome_trace(
    regions: Sequence[Mapping[str, Any]],
    power: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The Chrome trace / Perfetto JSON of a run: regions as slices, power as counter tracks.

    ``power`` holds records ``{"t": unix_s, "watts": {source: W}}``.
    """
    events: list[dict[str, Any]] = []
    by_thread: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in regions:
        by_thread.setdefault((int(r.get("pid", 0)), int(r.get("thread", 0))), []).append(r)
    pids = set()
    for (pid, tid), rs in by_thread.items():
        pids.add(pid)
        lanes = _lanes(rs)
        for r, lane in zip(rs, lanes, strict=False):
            track = tid if lane == 0 else tid * 1000 + lane
            events.append(
                {
                    "name": r["name"],
                    "cat": "region",
                    "ph": "X",
                    "ts": r["start"] * 1e6,
                    "dur": max(r["end"] - r["start"], 0.0) * 1e6,
                    "pid": pid,
                    "tid": track,
                    "args": {
                        "energy_j": r.get("energy_j"),
                        "cpu_j": r.get("cpu_j"),
                        "dram_j": r.get("dram_j"),
                        "gpu_j": r.get("gpu_j"),
                        "co2_g": r.get("co2_g"),
                        "uncertainty_j": r.get("uncertainty_j"),
                    },
                }
            )
    counter_pid = min(pids) if pids else 0
    for p in power:
        events.append(
            {
                "name": "power (W)",
                "cat": "power",
                "ph": "C",
                "ts": p["t"] * 1e6,
                "pid": counter_pid,
                "args": {k: round(float(v), 3) for k, v in p["watts"].items()},
            }
        )
    for pid in pids:
        events.append(
            {
                "name": "process_name",
                "ph": "M",
                "pid": pid,
                "args": {"name": f"carbonctx pid {pid}"},
            }
        )
    events.sort(key=lambda e: e.get("ts", 0.0))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    write_csv(records, buf)
    return buf.getvalue()

"""Per-name statistics: constant-memory accumulation, and the frozen tables users read."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

from carbonctx._results.units import (
    format_grams,
    format_joules,
    format_seconds,
    format_table,
)

__all__ = [
    "OTHER_NAMES",
    "Distribution",
    "NameAccumulator",
    "NameStats",
    "RunningDistribution",
    "StatsTable",
    "format_stats",
    "stats_from_records",
]


@attrs.frozen(slots=True)
class Distribution:
    """How one quantity is distributed over the regions of a name: total, mean, spread.

    (Formerly ``Summary``, a name kept as an alias.)
    """

    __module__ = "carbonctx"  # public as carbonctx.Distribution: help(), reprs, pickles

    total: float
    mean: float
    std: float
    p50: float
    p95: float
    max: float


@attrs.frozen(slots=True)
class NameStats:
    """Per-name statistics: what per-step profiling reads."""

    __module__ = "carbonctx"  # public as carbonctx.NameStats: help(), reprs, pickles

    name: str
    count: int
    energy_j: Distribution
    duration_s: Distribution
    co2_g: float
    estimated: bool

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "count": self.count}
        for field in ("energy_j", "duration_s"):
            s: Distribution = getattr(self, field)
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

    __module__ = "carbonctx"  # public as carbonctx.StatsTable: help(), reprs, pickles

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

    def _repr_html_(self) -> str:
        """How a notebook shows it: the text table's columns as an HTML table."""
        from carbonctx._results.notebook import stats_html

        return stats_html(self.values())


class RunningDistribution:
    """Running moments and a bounded uniform sample (reservoir) of one quantity."""

    __slots__ = ("_m2", "_mean", "_n_sample", "_rng", "_sample", "_total", "count", "max")

    CAP = 4096

    def __init__(self, seed: int) -> None:
        self.count = 0
        self._total = 0.0
        self._mean = 0.0
        self._m2 = 0.0
        self.max = -math.inf
        # numpy (and numpy.random) come with the runtime, imported on the caller's thread at the
        # first region (see carbonctx._measure.resolver): here they are only looked up, never
        # imported for the first time in the resolver thread (fork safety), nor with carbonctx.
        import numpy as np

        self._sample = np.empty(self.CAP)
        self._n_sample = 0
        self._rng = np.random.default_rng(seed)

    def add(self, x: float) -> None:
        import numpy as np

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
            import numpy as np

            j = before + np.arange(1, len(xs) + 1)
            slots = (self._rng.random(len(xs)) * j).astype(np.int64)
            keep = slots < self.CAP
            self._sample[slots[keep]] = xs[keep]

    def freeze(self) -> Distribution:
        n = self.count
        std = math.sqrt(self._m2 / (n - 1)) if n > 1 else 0.0
        import numpy as np

        s = np.sort(self._sample[: self._n_sample]).tolist()
        return Distribution(
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


class NameAccumulator:
    """Constant-memory statistics for one region name."""

    __slots__ = ("co2_g", "duration", "energy", "estimated", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        seed = hash(name) & 0xFFFF
        self.energy = RunningDistribution(seed)
        self.duration = RunningDistribution(seed + 1)
        self.co2_g = 0.0
        self.estimated = False

    def add(
        self, energy_j: float | None, duration_s: float, co2_g: float | None, estimated: bool
    ) -> None:
        """One region; one without an energy figure (its sources failed) counts, and is left
        out of the energy distribution rather than read as 0 J."""
        if energy_j is not None:
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
            count=self.duration.count,
            energy_j=self.energy.freeze(),
            duration_s=self.duration.freeze(),
            co2_g=self.co2_g,
            estimated=self.estimated,
        )


def format_stats(stats: Iterable[NameStats]) -> str:
    """A plain-text table of per-name statistics."""
    rows = []
    for s in stats:
        mark = " (est.)" if s.estimated else ""
        rows.append(
            [
                s.name + mark,
                str(s.count),
                format_joules(s.energy_j.total),
                format_joules(s.energy_j.mean),
                format_joules(s.energy_j.p50),
                format_joules(s.energy_j.p95),
                format_seconds(s.duration_s.mean),
                format_grams(s.co2_g),
            ]
        )
    if not rows:
        return "no regions measured"
    header = ["name", "count", "energy", "mean", "p50", "p95", "mean time", "CO2e"]
    return format_table(header, rows)


#: The row that sums the names past ``max_names`` in :func:`stats_from_records`.
OTHER_NAMES = "(other names)"


def stats_from_records(
    records: Iterable[Mapping[str, Any]], max_names: int | None = None
) -> StatsTable:
    """Per-name statistics of region records. With ``max_names``, names after the first that
    many are summed in one row, :data:`OTHER_NAMES` (each name keeps a sample of its own: a
    file of a million names would otherwise take gigabytes)."""
    aggs: dict[str, NameAccumulator] = {}
    for r in records:
        name = str(r.get("name", "?"))
        agg = aggs.get(name)
        if agg is None and max_names is not None and len(aggs) >= max_names:
            name = OTHER_NAMES
            agg = aggs.get(name)
        if agg is None:
            agg = aggs[name] = NameAccumulator(name)
        co2 = r.get("co2_g")
        energy = r.get("energy_j")
        agg.add(
            float(energy) if energy is not None else None,
            float(r.get("duration_s") or 0.0),
            float(co2) if co2 is not None else None,
            bool(r.get("estimated")),
        )
    return StatsTable(a.freeze() for a in aggs.values())

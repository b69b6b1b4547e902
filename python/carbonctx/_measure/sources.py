"""The sampler's sources as columns: which add into the totals, which are estimates, and how a
row of joules becomes per-source figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from carbonctx._results.measurement import SourceEnergy

__all__ = ["TOTAL_DOMAINS", "SourceColumns"]

#: Domains that add into a region's totals (cpu_j, dram_j, gpu_j), in that order. Core, uncore
#: and psys overlap the package and appear per source only.
TOTAL_DOMAINS = ("package", "dram", "gpu")


class SourceColumns:
    """One column per source of the sampler, in its order (``sources`` are its dicts)."""

    __slots__ = ("by_domain", "counted", "estimated", "sources")

    def __init__(self, sources: Sequence[dict[str, Any]] = ()) -> None:
        self.sources: list[dict[str, Any]] = list(sources)
        self.by_domain: dict[str, list[int]] = {d: [] for d in TOTAL_DOMAINS}
        self.estimated: set[int] = set()
        self.counted: set[int] = set()
        for i, src in enumerate(self.sources):
            if src["domain"] in self.by_domain:
                self.by_domain[src["domain"]].append(i)
                self.counted.add(i)
            if src["method"] == "estimate":
                self.estimated.add(i)

    def __len__(self) -> int:
        return len(self.sources)

    def totals(
        self, joules: npt.NDArray[np.float64], n: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(cpu, dram, gpu) per row of an ``n``-row block of joules; failed sources add 0."""
        sums = []
        for d in TOTAL_DOMAINS:
            cols = self.by_domain[d]
            sums.append(np.nansum(joules[:, cols], axis=1) if cols else np.zeros(n))
        cpu, dram, gpu = sums
        return cpu, dram, gpu

    def missing(self, nan_row: npt.NDArray[np.bool_]) -> list[str]:
        """Ids of the counted sources without a figure in a row."""
        return [
            self.sources[i]["id"] for i in np.flatnonzero(nan_row).tolist() if i in self.counted
        ]

    def per_source(
        self, joules: Sequence[float], unc: Sequence[float]
    ) -> tuple[dict[str, SourceEnergy], float | None]:
        """Each source's figure for one row, and the row's total uncertainty (None when a
        counted source has no uncertainty, or there are no sources)."""
        by_source: dict[str, SourceEnergy] = {}
        u_total = 0.0
        u_known = True
        for i, src in enumerate(self.sources):
            j = joules[i]
            u = unc[i]
            failed = math.isnan(j)
            if src["domain"] in TOTAL_DOMAINS and not failed:
                if math.isnan(u):
                    u_known = False
                else:
                    u_total += u
            by_source[src["id"]] = SourceEnergy(
                id=src["id"],
                label=src["label"],
                backend=src["backend"],
                domain=src["domain"],
                method=src["method"],
                joules=None if failed else j,
                uncertainty_j=None if (failed or math.isnan(u)) else u,
                note="source failed before the region ended" if failed else None,
            )
        return by_source, (u_total if u_known and self.sources else None)

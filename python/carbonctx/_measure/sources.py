"""The sampler's sources as columns: which add into the totals, which are estimates, and how a
row of joules becomes per-source figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from carbonctx._results.measurement import SourceEnergy

__all__ = ["TOTAL_DOMAINS", "SourceColumns"]

#: Domains that add into a region's totals (cpu_j, dram_j, gpu_j), in that order. Core, uncore
#: and psys overlap the package and appear per source only, as does a module: a board or
#: package holding CPU and GPU, such as an AMD APU's socket, whose figure includes the CPU's.
TOTAL_DOMAINS = ("package", "dram", "gpu")

#: What an AMD APU's figure covers, as its ``by_source`` entry states it (``note``).
APU_NOTE = (
    "AMD APU socket: CPU cores, integrated GPU and SoC together (the driver's socket power); "
    "it contains the CPU package, so it is shown beside it and not in the totals, and the "
    "integrated GPU's energy is inside it"
)


def _is_amd_apu(src: dict[str, Any]) -> bool:
    """An AMD GPU source that measures its APU's socket (the sampler gives it domain module)."""
    sid = str(src.get("id", ""))
    amd = src.get("backend") == "amdsmi" or sid.startswith("hwmon:amdgpu:")
    return src.get("domain") == "module" and amd


class SourceColumns:
    """One column per source of the sampler, in its order (``sources`` are its dicts).

    ``shares`` (one ``(factor, rule)`` per column, from ``_measure.ranks``) scale a column for a
    rank of a distributed job: a node-wide source by the rank's share, a GPU of another rank by
    0 (it is then left out of the totals and of ``by_source``). :meth:`scale` applies them to a
    drained batch, once per batch. Made when the sampler starts, without numpy: numpy is
    imported with the first batch (``_measure.resolver``), where :meth:`scale` and
    :meth:`totals` are first used.
    """

    __slots__ = ("by_domain", "counted", "estimated", "factors", "rules", "skipped", "sources")

    def __init__(
        self,
        sources: Sequence[dict[str, Any]] = (),
        shares: Sequence[tuple[float, str | None]] | None = None,
    ) -> None:
        self.sources: list[dict[str, Any]] = [
            {**s, "note": APU_NOTE} if _is_amd_apu(s) and not s.get("note") else s for s in sources
        ]
        self.by_domain: dict[str, list[int]] = {d: [] for d in TOTAL_DOMAINS}
        self.estimated: set[int] = set()
        self.counted: set[int] = set()
        pairs = list(shares) if shares is not None else [(1.0, None)] * len(self.sources)
        self.rules: list[str | None] = [r for _, r in pairs]
        self.skipped: set[int] = {i for i, (f, _) in enumerate(pairs) if f == 0.0}
        factors = tuple(float(f) for f, _ in pairs)
        # None when nothing is scaled: a single process pays nothing per batch.
        self.factors: tuple[float, ...] | None = None if all(f == 1.0 for f in factors) else factors
        for i, src in enumerate(self.sources):
            if i in self.skipped:
                continue
            if src["domain"] in self.by_domain:
                self.by_domain[src["domain"]].append(i)
                self.counted.add(i)
            if src["method"] == "estimate":
                self.estimated.add(i)

    def __len__(self) -> int:
        return len(self.sources)

    def scale(
        self, joules: npt.NDArray[np.float64], unc: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """This rank's share of a block of joules and uncertainties (unchanged outside a job)."""
        if self.factors is None:
            return joules, unc
        import numpy as np

        f = np.asarray(self.factors, dtype=np.float64)
        j = joules * f
        u = unc * f
        if self.skipped:
            cols = sorted(self.skipped)
            j[:, cols] = 0.0
            u[:, cols] = 0.0
        return j, u

    def totals(
        self, joules: npt.NDArray[np.float64], n: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(cpu, dram, gpu) per row of an ``n``-row block of joules; failed sources add 0."""
        import numpy as np

        sums = []
        for d in TOTAL_DOMAINS:
            cols = self.by_domain[d]
            sums.append(np.nansum(joules[:, cols], axis=1) if cols else np.zeros(n))
        cpu, dram, gpu = sums
        return cpu, dram, gpu

    def missing(self, nan_row: npt.NDArray[np.bool_]) -> list[str]:
        """Ids of the counted sources without a figure in a row."""
        import numpy as np

        return [
            self.sources[i]["id"] for i in np.flatnonzero(nan_row).tolist() if i in self.counted
        ]

    def per_source(
        self, joules: Sequence[float], unc: Sequence[float]
    ) -> tuple[dict[str, SourceEnergy], float | None]:
        """Each source's figure for one row, and the row's total uncertainty (None when a
        counted source has no uncertainty, or there are no sources)."""
        from carbonctx._results.measurement import SourceEnergy

        by_source: dict[str, SourceEnergy] = {}
        u_total = 0.0
        u_known = True
        factors = self.factors
        for i, src in enumerate(self.sources):
            if i in self.skipped:
                continue
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
                note=(
                    "source failed or its counter was reset before the region ended"
                    if failed
                    else src.get("note")
                ),
                share=1.0 if factors is None else float(factors[i]),
                share_rule=self.rules[i],
                node_joules=(
                    None
                    if failed or factors is None or factors[i] == 0.0
                    else j / float(factors[i])
                ),
            )
        return by_source, (u_total if u_known and self.sources else None)

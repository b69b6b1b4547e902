"""The sampler's sources as columns: which add into the totals, which are estimates, and how a
row of joules becomes per-source figures.

Which total each column counts in is decided here, once, and every reader of the totals reads
it (``SourceColumns.count_as``; in records and results :func:`counted_domain`): a source counts
in its domain's total (package: ``cpu_j``; DRAM; GPU) except an AMD APU's socket, which counts
*as* the CPU package it contains when it can replace it (:meth:`SourceColumns._plan_apus`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from carbonctx._results.counted import (
    APU_COUNTED_NOTE,
    PACKAGE_REPLACED_NOTE,
    counted_domain,
    failed_note,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from carbonctx._results.measurement import SourceEnergy

__all__ = ["TOTAL_DOMAINS", "ApuJob", "SourceColumns", "counted_domain"]

#: Domains that add into a region's totals (cpu_j, dram_j, gpu_j), in that order. Core, uncore
#: and psys overlap the package and appear per source only, as does a module: a board or
#: package holding CPU and GPU. An AMD APU's socket (a module) is the exception: it counts in
#: cpu_j in place of the CPU package it contains where the two match (see ``SourceColumns``).
TOTAL_DOMAINS = ("package", "dram", "gpu")

#: What an AMD APU's figure covers where it is not counted, as its ``by_source`` entry states it
#: (``note``, followed by why it is not).
APU_NOTE = (
    "AMD APU socket: CPU cores, integrated GPU and SoC together (the driver's socket power); "
    "it contains the CPU package, so it is shown beside it and not in the totals, and the "
    "integrated GPU's energy is inside it"
)

#: The sampler's words for an APU socket kept beside the package, and what replaces them in the
#: label where the socket counts in the package's place.
_LABEL_BESIDE = (
    "so it is shown beside it and never added to totals, and the integrated GPU has no figure "
    "of its own"
)
_LABEL_COUNTED = (
    "so it counts as the CPU package in cpu_j, the package counter shown beside it, and the "
    "integrated GPU's energy is inside it"
)

#: A socket that reads under this fraction of its package over the first regions is broken
#: (it contains the package): the package is kept. Not "under the package": the socket's power
#: is often averaged by the firmware over a window, and lags a counter over a first region that
#: starts a load; the broken readings seen are orders of magnitude low (12 mW on one Zen 5).
BROKEN_BELOW = 0.5
#: The same against a CPU estimate (utilisation times TDP: a model, an upper bound in a VM).
BROKEN_BELOW_ESTIMATE = 0.05
#: A socket without a figure over this many seconds of regions (or ten of its intervals, if
#: more) where its package had one is a failing reading: the package is kept.
UNREAD_AFTER_S = 1.0


class ApuJob(NamedTuple):
    """What a rank of a job knows of its node for the APU rule: its local ranks (None when no
    launcher says), the AMD SMI / amdgpu indices of the node's APUs, and whether a GPU it
    reports is shared with another process of the job."""

    local_ranks: int | None
    node_apus: tuple[int, ...]
    shared: bool = False


def _is_amd_apu(src: dict[str, Any]) -> bool:
    """An AMD GPU source that measures its APU's socket (the sampler gives it domain module)."""
    sid = str(src.get("id", ""))
    amd = src.get("backend") == "amdsmi" or sid.startswith("hwmon:amdgpu:")
    return src.get("domain") == "module" and amd


def _index(src: dict[str, Any]) -> int:
    try:
        return int(src.get("index", 0))
    except (TypeError, ValueError):
        return 0


class SourceColumns:
    """One column per source of the sampler, in its order (``sources`` are its dicts).

    ``shares`` (one ``(factor, rule)`` per column, from ``_measure.ranks``) scale a column for a
    rank of a distributed job: a node-wide source by the rank's share, a GPU of another rank by
    0 (it is then left out of the totals and of ``by_source``). :meth:`scale` applies them to a
    drained batch, once per batch. Made when the sampler starts, without numpy: numpy is
    imported with the first batch (``_measure.resolver``), where :meth:`scale` and
    :meth:`totals` are first used.

    ``count_as`` is the total each column counts in (``"package"``, ``"dram"``, ``"gpu"``) or
    None; each source's dict carries it as ``counted``. An AMD APU's socket contains its CPU
    package, integrated GPU and SoC: it counts in ``cpu_j`` in the package's place where the
    APU sockets this process measures match the packages one to one (``job``: a rank of a
    distributed job, see :meth:`_plan_apus`), and the package is then shown beside it. Whether
    the sockets read plausibly is decided once, on the first resolved regions
    (:meth:`settle`); ``revision`` counts the changes of the choice.
    """

    __slots__ = (
        "_base",
        "_job",
        "_pairs",
        "_unread",
        "_view",
        "_waited",
        "by_domain",
        "count_as",
        "counted",
        "estimated",
        "factors",
        "pending",
        "revision",
        "rules",
        "skipped",
        "sources",
    )

    def __init__(
        self,
        sources: Sequence[dict[str, Any]] = (),
        shares: Sequence[tuple[float, str | None]] | None = None,
        job: ApuJob | None = None,
    ) -> None:
        self._base: list[dict[str, Any]] = list(sources)
        self.sources: list[dict[str, Any]] = list(sources)
        self.estimated: set[int] = set()  # the counted estimates (see _apply)
        pairs = list(shares) if shares is not None else [(1.0, None)] * len(self.sources)
        self.rules: list[str | None] = [r for _, r in pairs]
        self.skipped: set[int] = {i for i, (f, _) in enumerate(pairs) if f == 0.0}
        factors = tuple(float(f) for f, _ in pairs)
        # None when nothing is scaled: a single process pays nothing per batch.
        self.factors: tuple[float, ...] | None = None if all(f == 1.0 for f in factors) else factors
        self.revision = 0
        self.pending = False
        self._pairs: list[tuple[int, int]] = []
        self._job = job
        self._view: SourceColumns | None = None
        self._waited = False  # regions were resolved, the socket counted, before the choice
        self._unread: dict[int, float] = {}  # seconds of regions without the socket's figure
        self.by_domain: dict[str, list[int]] = {}
        self.counted: set[int] = set()
        self.count_as: list[str | None] = []
        self._plan_apus(job)

    # ------------------------------------------------------------------ what counts where

    def _apply(self, count_as: list[str | None], notes: dict[int, tuple[str, str | None]]) -> None:
        """Sets the columns' totals and the sources' notes and labels (``notes``: column ->
        (note, label or None to keep the sampler's))."""
        out = []
        for i, base in enumerate(self._base):
            if i not in notes:
                out.append(base)  # as the sampler gave it (its domain says where it counts)
                continue
            note, label = notes[i]
            out.append(
                {
                    **base,
                    "note": note,
                    "label": base["label"] if label is None else label,
                    "counted": count_as[i],
                }
            )
        self.sources = out
        self.count_as = count_as
        self.by_domain = {d: [] for d in TOTAL_DOMAINS}
        self.counted = set()
        for i, c in enumerate(count_as):
            if c is not None:
                self.by_domain[c].append(i)
                self.counted.add(i)
        # An estimate an APU socket replaces makes no result an estimate.
        self.estimated = {i for i in self.counted if self._base[i]["method"] == "estimate"}
        self.revision += 1
        self._view = None

    def view(self) -> SourceColumns:
        """The columns as they count now, unchanged by a later choice (:meth:`settle`): a batch
        keeps it, so that its rows, built when read, say what their totals counted. Every
        change replaces the attributes it changes, so this shares them."""
        if self._view is None:
            import copy

            self._view = copy.copy(self)
        return self._view

    def _default(self) -> list[str | None]:
        return [
            None if i in self.skipped else counted_domain({**s, "note": None})
            for i, s in enumerate(self._base)
        ]

    def _plan_apus(self, job: ApuJob | None) -> None:
        """Where the APU sockets this process measures match the CPU packages one to one, each
        socket counts in cpu_j and the packages are shown beside them; else every APU is shown
        beside the package with a note that says why it is not counted."""
        base = self._base
        apus = sorted(
            (i for i, s in enumerate(base) if _is_amd_apu(s) and i not in self.skipped),
            key=lambda i: _index(base[i]),
        )
        pkgs = sorted(
            (i for i, s in enumerate(base) if s["domain"] == "package" and i not in self.skipped),
            key=lambda i: _index(base[i]),
        )
        count_as = self._default()
        if not apus:
            self._apply(count_as, {})
            return
        why = _mismatch(len(apus), len(pkgs), job)
        if why is not None:
            note = f"{APU_NOTE}; not counted in its package's place: {why}"
            self._apply(count_as, {i: (note, None) for i in apus})
            return
        if job is None:
            pairs = list(zip(apus, pkgs, strict=True))
        else:
            # The node's APUs in order, the node's packages in order: the k-th of each.
            order = list(job.node_apus)
            pairs = [
                (a, pkgs[order.index(_index(base[a])) if _index(base[a]) in order else k])
                for k, a in enumerate(apus)
            ]
        notes: dict[int, tuple[str, str | None]] = {}
        for a, p in pairs:
            count_as[a] = "package"
            pkg_id = base[p]["id"]
            whole = (
                "; this rank's own socket, whole (its packages' shares are out of its totals)"
                if job is not None
                else ""
            )
            notes[a] = (
                f"{APU_COUNTED_NOTE}: CPU cores, integrated GPU and SoC together (the driver's "
                f"socket power), the physical package, in place of the CPU package counter "
                f"{pkg_id} it contains, which is shown beside it and not in the totals; gpu_j "
                f"holds discrete GPUs only{whole}. Kept unless it reads far below its package "
                "over the first regions (a broken reading), decided once",
                str(base[a].get("label", "")).replace(_LABEL_BESIDE, _LABEL_COUNTED),
            )
        socket_of = {p: base[a]["id"] for a, p in pairs}
        for p in pkgs:
            count_as[p] = None
            by = socket_of.get(p)
            # In a job, a package of another rank's socket: that rank counts it.
            whose = f"the APU socket {by} counts" if by else "another rank of the node counts"
            notes[p] = (
                f"{PACKAGE_REPLACED_NOTE} ({whose} it in cpu_j): shown beside it, not in the "
                "totals",
                None,
            )
        self._pairs = pairs
        self.pending = True
        self._apply(count_as, notes)

    def settle(
        self, joules: npt.NDArray[np.float64], duration: npt.NDArray[np.float64]
    ) -> str | None:
        """Decides, on the first resolved regions where a counted socket and its package both
        have figures (``joules``: the batch's node figures, before :meth:`scale`), whether the
        sockets read plausibly: one that reads far below its package (which it contains: under
        ``BROKEN_BELOW`` of a measured package, ``BROKEN_BELOW_ESTIMATE`` of an estimate) is a
        broken reading, and one without a figure over ``UNREAD_AFTER_S`` (or ten of its
        intervals) of regions where its package had one (``duration``: each row's, in s) a
        failing one; then the packages are counted, the sockets shown beside. Returns
        what to warn of when it changed the choice (regions resolved before it keep theirs:
        their batches hold :meth:`view`).

        Outside a job every package is counted again. A rank of a job counts the packages of
        its own sockets whole and leaves the node's others out, as before: the other ranks count
        those, by their sockets or, theirs broken too, by those packages; splitting every
        package among the ranks again would count a share of another rank's package twice
        (inside its socket) and leave out a share of this rank's."""
        if not self.pending:
            return None
        import numpy as np

        sums = []
        for a, p in self._pairs:
            both = np.isfinite(joules[:, a]) & np.isfinite(joules[:, p])
            if not both.any():
                # Nothing to compare yet: the next batch decides, unless the socket has had no
                # figure for long while its package had (a failing reading, not a late one).
                alone = np.isfinite(joules[:, p]) & ~np.isfinite(joules[:, a])
                self._unread[a] = self._unread.get(a, 0.0) + float(duration[alone].sum())
                bound = max(UNREAD_AFTER_S, 10.0 * float(self._base[a].get("interval_s") or 0))
                if self._unread[a] >= bound:
                    break
                self._waited = True
                return None
            sj, pj = float(joules[both, a].sum()), float(joules[both, p].sum())
            # Against a model (an upper bound in a virtual machine), only what no socket reads.
            est = self._base[p]["method"] == "estimate"
            sums.append((a, p, sj, pj, BROKEN_BELOW_ESTIMATE if est else BROKEN_BELOW))
        else:
            a = -1
        self.pending = False
        if a >= 0:
            why = (
                f"{self._base[a]['id']} had no figure over the first {self._unread[a]:.3g} s "
                "of regions, while its CPU package had: a failing socket power reading, so the "
                "packages are counted (decided once, on those regions)"
            )
            sums = [(a, p, 0.0, 0.0, 0.0) for a, p in self._pairs]
        else:
            broken = [(a, sj, pj) for a, _, sj, pj, f in sums if sj < f * pj]
            if not broken:
                return None
            worst = min(broken, key=lambda t: t[1] / t[2] if t[2] else 0.0)
            why = (
                f"over the first regions {self._base[worst[0]]['id']} read {worst[1]:.4g} J, "
                f"far below its CPU package's {worst[2]:.4g} J, which it contains: a broken "
                "socket power reading, so the packages are counted (decided once, on those "
                "regions)"
            )
        note = f"{APU_NOTE}; not counted in its package's place: {why}"
        notes: dict[int, tuple[str, str | None]] = {a: (note, None) for a, *_ in sums}
        count_as = self._default()
        if self._job is not None:
            own = {p for _, p, *_ in sums}
            factors = list(self.factors or [1.0] * len(self._base))
            rules = list(self.rules)
            for i, s in enumerate(self._base):
                if s["domain"] != "package" or i in self.skipped:
                    continue
                if i in own:
                    factors[i] = 1.0
                    rules[i] = "whole: the CPU package of this rank's own APU socket"
                    notes[i] = (
                        "CPU package of this rank's AMD APU socket, counted whole in cpu_j in "
                        "the socket's place (its reading is broken); the node's other packages "
                        "are their ranks'",
                        None,
                    )
                else:
                    count_as[i] = None
                    notes[i] = (
                        f"{PACKAGE_REPLACED_NOTE} (another rank of the node counts it in "
                        "cpu_j): shown beside it, not in the totals",
                        None,
                    )
            self.factors = None if all(f == 1.0 for f in factors) else tuple(factors)
            self.rules = rules
            why += "; in this job, this rank counts its own sockets' packages whole"
        self._pairs = []
        self._apply(count_as, notes)
        for i in sorted(self.estimated):
            # A CPU estimate the socket stood for counts now: results are estimates from here.
            why += f"; no energy counter for the CPU: {self._base[i]['label']}, an estimate"
        before = (
            "; the regions resolved before, with no figure of both to compare, counted the "
            "socket, as their by_source notes say"
            if self._waited
            else ""
        )
        return f"AMD APU socket power not counted in its CPU package's place: {why}{before}"

    def alternatives(self, alts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The sampler's alternatives (not read), an APU's labelled as the socket it would stand
        for counts (the same domain and index as a source in use)."""
        counted = {
            (s["domain"], s.get("index"))
            for i, s in enumerate(self.sources)
            if self.count_as[i] == "package" and _is_amd_apu(s)
        }
        return [
            {**a, "label": str(a["label"]).replace(_LABEL_BESIDE, _LABEL_COUNTED)}
            if (a.get("domain"), a.get("index")) in counted
            else a
            for a in alts
        ]

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
            if i in self.counted and not failed:
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
                note=failed_note(src.get("note")) if failed else src.get("note"),
                share=1.0 if factors is None else float(factors[i]),
                share_rule=self.rules[i],
                node_joules=(
                    None
                    if failed or factors is None or factors[i] == 0.0
                    else j / float(factors[i])
                ),
            )
        return by_source, (u_total if u_known and self.sources else None)


def _mismatch(apus: int, packages: int, job: ApuJob | None) -> str | None:
    """Why the APU sockets measured cannot replace the packages one to one (None when they
    can)."""
    if job is None:
        if apus == packages:
            return None
        return (
            f"this process measures {apus} APU socket(s) and {packages} CPU package(s), which "
            "do not match one to one"
        )
    lw, node = job.local_ranks, len(job.node_apus)
    if lw is None:
        return (
            "no launcher says how many ranks run on this node (configure(local_world_size=N) "
            "or CARBONCTX_LOCAL_WORLD_SIZE says it)"
        )
    if job.shared:
        return "another process of the job reports this rank's socket too"
    if node != packages or apus * lw != node:
        return (
            f"the node has {node} APU socket(s), {packages} CPU package(s) and {lw} local "
            f"rank(s), of which this rank measures {apus} socket(s): each rank must own as "
            "many whole sockets, one per package"
        )
    return None

"""One region's result: :class:`Measurement` and its per-source :class:`SourceEnergy`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from carbonctx._results.units import J_PER_KWH

__all__ = ["OVERHEAD_MIN_S", "Measurement", "SourceEnergy", "node_fields", "overhead"]

#: The shortest region whose node overhead (:attr:`Measurement.overhead_j`) is given: the node's
#: wall power comes from a BMC read every few seconds, so each edge of a region is uncertain by
#: up to a reading's worth of energy; over a minute that stays a small part of the figure.
OVERHEAD_MIN_S = 60.0


def overhead(node_j: float | None, energy_j: float, duration_s: float) -> float | None:
    """The node's energy less the components' (see :attr:`Measurement.overhead_j`): None
    without a node figure or over less than ``OVERHEAD_MIN_S`` seconds."""
    if node_j is None or duration_s < OVERHEAD_MIN_S:
        return None
    return node_j - energy_j


def node_fields(node_j: float | None, energy_j: float, duration_s: float) -> dict[str, Any]:
    """``node_j`` and ``overhead_j`` for a record, or nothing without a node figure (records
    of machines without a node meter stay as they were)."""
    if node_j is None:
        return {}
    return {"node_j": node_j, "overhead_j": overhead(node_j, energy_j, duration_s)}


@attrs.frozen(slots=True)
class SourceEnergy:
    """Joules from one source over one region, and how they came about.

    ``method`` is ``"counter"`` (a hardware energy counter), ``"integrated-power"`` (power
    readings integrated over time) or ``"estimate"`` (utilisation times TDP: a model, not a
    measurement). ``joules`` is ``None`` where the source had failed; ``note`` says why.

    In a distributed job ``joules`` is this rank's part: ``share`` of the node's figure
    (``node_joules``) for a source the node's ranks share (CPU package, DRAM), 1 for the rank's
    own GPU, a MIG instance's share of its GPU by slices (a rank or not); ``share_rule`` says how
    the share was found (None otherwise).
    """

    __module__ = "carbonctx"  # public as carbonctx.SourceEnergy: help(), reprs, pickles

    id: str
    label: str
    backend: str
    domain: str
    method: str
    joules: float | None
    uncertainty_j: float | None
    note: str | None = None
    share: float = 1.0
    share_rule: str | None = None
    node_joules: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        if self.share_rule is None:
            # Outside a job a record is as it always was.
            del d["share"], d["share_rule"], d["node_joules"]
        return d


@attrs.frozen(slots=True)
class Measurement:
    """The energy and CO2 of one region.

    ``cpu_j`` is CPU package energy summed over packages (an AMD APU's socket, CPU cores,
    integrated GPU and SoC, in place of the package it contains where the two match one to one:
    the ``by_source`` notes say which counted), ``dram_j`` DRAM energy, ``gpu_j`` the tracked
    GPUs; ``energy_j`` is their sum. Core, uncore and psys zones appear in ``by_source``
    but never in totals (they overlap the package). ``uncertainty_j`` is how far the true
    energy can be from the figure given when the counters changed around the region's edges (the
    widths of the brackets at both edges, added); for power sampled at the read (a GPU without
    an energy counter) it adds two standard deviations of the error of integrating the reported
    power between readings, estimated from them (it assumes at most one power change between two
    readings: a load switching faster than the reads is understated); where the device holds its
    reading (learned from the reads) it adds ``|Δ| × hold / 2`` for each change of the reading;
    for an AMD GPU counted asleep (not read, so not woken) 3 W times the time it slept. It cannot
    see an averaged meter's or an estimate's error.
    ``missing`` names sources whose
    figures are absent (``"sampler"`` when no sampler ran: then every figure is NaN), and
    ``estimated`` is true when any total includes an estimate. ``recorded`` says whether the
    region's record was written to the output file: None without ``output``, False when the
    file could not be written (see the warning), or not from the moment it was removed.

    In a distributed job ``rank``, ``local_rank``, ``node`` and ``job`` say whose figures these
    are (None otherwise), and each figure is this rank's part: its own GPUs and a stated share
    of the node's CPU and DRAM (see ``by_source``), so that adding up the ranks' figures of
    concurrent regions counts each node once.
    """

    __module__ = "carbonctx"  # public as carbonctx.Measurement: help(), reprs, pickles

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
    rank: int | None = None
    local_rank: int | None = None
    node: str | None = None
    job: str | None = None
    recorded: bool | None = None

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / J_PER_KWH

    @property
    def power_w(self) -> float:
        """Mean power over the region."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def node_j(self) -> float | None:
        """The node's wall energy over the region: the first ``by_source`` entry of domain
        ``"node"`` with a figure (an ACPI power meter, or the BMC read over Redfish); None
        without one. Shown beside the components, never in ``energy_j``; in a job it is this
        rank's share, as the CPU's is."""
        for s in self.by_source.values():
            if s.domain == "node" and s.joules is not None:
                return s.joules
        return None

    @property
    def overhead_j(self) -> float | None:
        """What the components do not explain: :attr:`node_j` less ``energy_j`` (fans, power
        supplies, disks, network, whatever is not measured), for regions of at least
        ``OVERHEAD_MIN_S`` seconds; None for shorter ones (the node's figure there is
        interpolated between readings) or without a node figure."""
        return overhead(self.node_j, self.energy_j, self.duration_s)

    def _repr_html_(self) -> str:
        """How a notebook shows it: totals, then one row per source."""
        from carbonctx._results.notebook import measurement_html

        return measurement_html(self)

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
            # Only where the node's wall power is measured: other records stay as they were.
            **node_fields(self.node_j, self.energy_j, self.duration_s),
            **(
                {
                    "rank": self.rank,
                    "local_rank": self.local_rank,
                    "node": self.node,
                    "job": self.job,
                }
                if self.node is not None
                else {}
            ),
        }

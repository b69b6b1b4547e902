"""A distributed job's run logs merged: the job's total, per node and per rank.

Each rank of a job writes its own log (``epochs(log_dir=...)``), from any number of nodes; the
logs of one run share its run id. A rank's figures are its own GPUs plus its share of its node's
CPU and DRAM, so the ranks' figures add up to each node counted once: a node's figure is the sum
of its ranks', the job's the sum of its nodes'. (The shares' rule is in each epoch record's
``shares``; ``node_joules`` there is the node's raw figure, should it be wanted.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from carbonctx._results.runs import RunLog

__all__ = [
    "FIGURES",
    "JobReport",
    "is_rank_log",
    "merge_job",
    "merge_jobs",
    "merge_region_records",
]

FIGURES = ("energy_j", "cpu_j", "dram_j", "gpu_j", "co2_g")


Figures = dict[str, float | None]


def _figures(run: RunLog) -> Figures:
    """One rank's figures over its epochs (the final record's where there is one); CO2 is None
    where the rank's is unknown."""
    out: Figures = dict.fromkeys(FIGURES, 0.0)
    for e in run.epochs:
        for k in ("cpu_j", "dram_j", "gpu_j"):
            out[k] = float(out[k] or 0.0) + float(e.get(k) or 0.0)
    out["energy_j"] = run.energy_j
    out["co2_g"] = run.co2_g
    return out


def _rank_fields(run: RunLog) -> dict[str, Any]:
    src = run.final or run.start or (run.epochs[0] if run.epochs else {})
    return {k: src.get(k) for k in ("rank", "local_rank", "world_size", "node", "job")}


def is_rank_log(run: RunLog) -> bool:
    """Whether a log is one rank's of a distributed job."""
    return _rank_fields(run)["rank"] is not None


def _add(into: Figures, more: Figures) -> None:
    """Add ``more`` into ``into``; a sum with an unknown part (CO2) is unknown, not understated."""
    for k in FIGURES:
        a, b = into.get(k, 0.0), more[k]
        into[k] = None if a is None or b is None else a + b


@attrs.frozen(slots=True)
class JobReport:
    """One run of a job, merged over its ranks' logs."""

    run: str
    job: str | None
    world_size: int | None
    total: Figures
    nodes: dict[str, Figures]
    ranks: dict[str, dict[str, Any]]
    complete: bool
    missing_ranks: tuple[int, ...] = ()
    #: The job's first forecast of its energy (every rank's log has it), if any.
    first_forecast_j: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"job": ..., "nodes": ..., "ranks": ...}`` (what ``report DIR --json`` prints)."""
        return {
            "job": {
                **self.total,
                "id": self.job,
                "run": self.run,
                "ranks": len(self.ranks),
                "world_size": self.world_size,
                "complete": self.complete,
                "missing_ranks": list(self.missing_ranks),
            },
            "nodes": self.nodes,
            "ranks": self.ranks,
        }

    def lines(self) -> list[str]:
        """The report's text: the job total, per node, per rank."""

        def fmt(f: dict[str, Any]) -> str:
            co2 = "CO2 unknown" if f["co2_g"] is None else f"{f['co2_g']:.4f} gCO2e"
            return (
                f"{f['energy_j']:12.2f} J  (CPU {f['cpu_j']:.2f} J, DRAM {f['dram_j']:.2f} J, "
                f"GPU {f['gpu_j']:.2f} J)  {co2}"
            )

        head = f"job {self.job or '(no id)'}, run {self.run}: {len(self.ranks)} ranks"
        if self.missing_ranks:
            head += f" (no log from ranks {', '.join(map(str, self.missing_ranks))})"
        out = [head, f"  job total  {fmt(self.total)}"]
        if self.first_forecast_j:
            diff = float(self.total["energy_j"] or 0.0) / self.first_forecast_j - 1
            out.append(
                f"  first forecast of the job: {self.first_forecast_j:.2f} J "
                f"(actual {diff:+.1%}{'' if self.complete else ', run incomplete'})"
            )
        for node, f in sorted(self.nodes.items()):
            out.append(f"  node {node}: {fmt(f)}")
        for rank, f in sorted(self.ranks.items(), key=lambda kv: int(kv[0])):
            out.append(f"    rank {rank:>4} ({f.get('node')}): {fmt(f)}")
        out.append(
            "  (each rank: its own GPUs (an AMD APU's socket whole, in its CPU package's "
            "place, where they match one to one) and its share of its node's CPU and DRAM; a "
            "node is the sum of its ranks, so its shared sources count once)"
        )
        return out


def merge_job(run_id: str, logs: Sequence[RunLog]) -> JobReport:
    """The job's figures from its ranks' logs of one run."""
    total: Figures = dict.fromkeys(FIGURES, 0.0)
    nodes: dict[str, Figures] = {}
    ranks: dict[str, dict[str, Any]] = {}
    job = None
    world: int | None = None
    for log in logs:
        fields = _rank_fields(log)
        f = _figures(log)
        rank = fields["rank"] if fields["rank"] is not None else 0
        node = str(fields["node"] or "")
        job = job or fields["job"]
        world = world or fields["world_size"]
        if str(rank) in ranks:
            continue  # the same rank's log twice (copied from two places): count it once
        ranks[str(rank)] = {**f, "node": node, "local_rank": fields["local_rank"]}
        _add(nodes.setdefault(node, dict.fromkeys(FIGURES, 0.0)), f)
        _add(total, f)
    missing: tuple[int, ...] = ()
    if world is not None:
        missing = tuple(r for r in range(world) if str(r) not in ranks)
    first = next((log.first_forecast for log in logs if log.first_forecast), None)
    return JobReport(
        run=run_id,
        first_forecast_j=float(first["energy_j"]) if first else None,
        job=job,
        world_size=world,
        total=total,
        nodes=nodes,
        ranks=ranks,
        complete=all(log.complete for log in logs) and not missing,
        missing_ranks=missing,
    )


def merge_jobs(logs: Iterable[RunLog]) -> list[JobReport]:
    """Every run of a distributed job among ``logs`` (those with rank fields), oldest first.

    A run is its job's id and its run id together: two jobs whose runs share an id (one given
    as ``epochs(run_id=...)``) are two reports, not one whose rank 0 is the first job's only.
    A run id given again in one job (a job launched anew with the same ``run_id`` and job id)
    appends a second run to each rank's log: the k-th run of a rank's file joins the k-th of
    the other ranks', so each launch is a report of its own (a rank's two launches are not
    taken for two copies of one log, the later left out)."""
    by_run: dict[tuple[str, str, int], list[RunLog]] = {}
    seen: dict[tuple[str, str, str], int] = {}  # (file, job, run id): runs of it read from it
    for log in logs:
        if not is_rank_log(log):
            continue
        job = str(_rank_fields(log)["job"] or "")
        k = seen.get((log.path, job, log.run), 0)
        seen[(log.path, job, log.run)] = k + 1
        by_run.setdefault((job, log.run, k), []).append(log)
    return [merge_job(run, group) for (_, run, _), group in by_run.items()]


def merge_region_records(regions: Iterable[dict[str, Any]]) -> list[JobReport]:
    """Jobs from region records (the ``output`` files of a job's ranks): each rank's figures are
    its top-level regions' (those without a parent), as ``report FILE`` totals one file; one
    report per job id. Records without rank fields (a lone process) are left out."""
    by_job: dict[str | None, dict[str, Any]] = {}
    for r in regions:
        if r.get("rank") is None or r.get("parent") is not None:
            continue
        job = by_job.setdefault(
            r.get("job"), {"ranks": {}, "nodes": {}, "total": dict.fromkeys(FIGURES, 0.0)}
        )
        f: Figures = {k: float(r.get(k) or 0.0) for k in FIGURES}
        f["co2_g"] = None if r.get("co2_g") is None else float(r["co2_g"])
        key = str(r["rank"])
        node = str(r.get("node") or "")
        rank = job["ranks"].setdefault(
            key, {**dict.fromkeys(FIGURES, 0.0), "node": node, "local_rank": r.get("local_rank")}
        )
        _add(rank, f)
        _add(job["nodes"].setdefault(node, dict.fromkeys(FIGURES, 0.0)), f)
        _add(job["total"], f)
    return [
        JobReport(
            run="(regions)",
            job=job_id,
            world_size=None,
            total=j["total"],
            nodes=j["nodes"],
            ranks=j["ranks"],
            complete=True,
        )
        for job_id, j in by_job.items()
    ]

"""``carbonctx report DIR`` over the logs of distributed jobs: runs of two jobs that share a run
id (given as ``epochs(run_id=...)``) are two jobs, each with all its ranks; a job's CO2 is
unknown, not understated, when a rank's is."""

from __future__ import annotations

from typing import Any

from carbonctx._results.runs import RunLog
from carbonctx._runs.merge import merge_jobs


def rank_log(job: str | None, rank: int, energy_j: float, co2_g: float | None = 1.0) -> RunLog:
    fields: dict[str, Any] = {
        "rank": rank,
        "local_rank": rank,
        "world_size": 2,
        "node": "n0",
        "job": job,
    }
    epoch = {"epoch": 0, "energy_j": energy_j, "cpu_j": energy_j, "dram_j": 0.0, "gpu_j": 0.0}
    final = {**fields, "actual": {"energy_j": energy_j, "co2_g": co2_g, "duration_s": 1.0}}
    return RunLog(
        path=f"{job or 'nojob'}/rank{rank}/exp.jsonl",
        run="exp",
        name="epoch",
        epochs_planned=1,
        epochs=({**epoch, **fields},),
        final=final,
        start={**fields},
    )


def test_two_jobs_sharing_a_run_id_are_two_jobs() -> None:
    logs = [rank_log(job, r, 10.0 * (k + 1) + r) for k, job in enumerate("AB") for r in range(2)]
    reports = {rep.job: rep for rep in merge_jobs(logs)}
    assert set(reports) == {"A", "B"}
    for k, job in enumerate("AB"):
        rep = reports[job]
        assert sorted(rep.ranks) == ["0", "1"] and rep.complete and not rep.missing_ranks
        assert rep.total["energy_j"] == 2 * 10.0 * (k + 1) + 1


def test_a_rank_without_co2_makes_the_jobs_co2_unknown() -> None:
    (rep,) = merge_jobs([rank_log("A", 0, 10.0), rank_log("A", 1, 20.0, co2_g=None)])
    assert rep.total["energy_j"] == 30.0
    assert rep.total["co2_g"] is None  # not 1.0: rank 1's CO2 is unknown, not zero
    assert rep.nodes["n0"]["co2_g"] is None
    assert rep.ranks["0"]["co2_g"] == 1.0 and rep.ranks["1"]["co2_g"] is None
    assert rep.to_dict()["job"]["co2_g"] is None
    text = "\n".join(rep.lines())
    assert "job total" in text and "CO2 unknown" in text


def test_a_rank_with_zero_co2_is_known_not_unknown() -> None:
    # 0 g (a zero-carbon zone, or no energy) is a figure, unlike None.
    (rep,) = merge_jobs([rank_log("A", 0, 10.0, co2_g=0.0), rank_log("A", 1, 20.0, co2_g=2.5)])
    assert rep.total["co2_g"] == 2.5 and rep.nodes["n0"]["co2_g"] == 2.5
    assert rep.ranks["0"]["co2_g"] == 0.0
    text = "\n".join(rep.lines())
    assert "CO2 unknown" not in text and "2.5000 gCO2e" in text


def test_rank_logs_without_a_job_id_are_still_merged_by_run() -> None:
    (rep,) = merge_jobs([rank_log(None, 0, 10.0), rank_log(None, 1, 20.0)])
    assert rep.job is None and sorted(rep.ranks) == ["0", "1"] and rep.complete
    assert rep.total["energy_j"] == 30.0 and rep.total["co2_g"] == 2.0

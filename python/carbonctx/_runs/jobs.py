"""A distributed job's figures: each epoch summed over the ranks, and :func:`job_total`.

Every function here that sums is a collective (``_distributed.allreduce_sum``): every rank must
call it at the same point, or the others wait at it. Outside a job (no torch.distributed or MPI
initialised) the sums are this process's own figures.

What is summed adds up correctly because each rank's figures are its own GPUs and its stated
share of its node's CPU and DRAM (``_measure.ranks``): the ranks of a node together count the
node once.
"""

from __future__ import annotations

import attrs

from carbonctx._distributed import allreduce_sum
from carbonctx._results.measurement import Measurement
from carbonctx._runs.forecast import Epoch

__all__ = ["SUMMED", "reduce_epoch", "stop_reason_of_others", "sum_over_ranks"]

#: The figures summed over the ranks, in this order (``node_j``: the node's wall energy).
SUMMED = ("energy_j", "cpu_j", "dram_j", "gpu_j", "uncertainty_j", "co2_g", "node_j")
_KEYS = SUMMED
#: Figures a rank may lack: None in the sum when any rank does.
_OPTIONAL = ("co2_g", "node_j")


def sum_over_ranks(values: dict[str, float | None]) -> tuple[dict[str, float | None], int]:
    """Sum over the ranks: (figures, CO2 missing on how many ranks). A collective. CO2 and the
    node's energy are None when any rank lacks them."""
    vec = [float(values.get(k) or 0.0) for k in _KEYS]
    vec.extend(1.0 if values.get(k) is None else 0.0 for k in _OPTIONAL)
    out = allreduce_sum(vec)
    n = len(_KEYS)
    summed: dict[str, float | None] = dict(zip(_KEYS, out[:n], strict=True))
    lacking = dict(zip(_OPTIONAL, (round(v) for v in out[n:]), strict=True))
    for k, count in lacking.items():
        if count:
            summed[k] = None
    return summed, lacking["co2_g"]


def reduce_epoch(ep: Epoch, m: Measurement | None) -> tuple[Epoch, dict[str, float | None]]:
    """The job's figures of an epoch (a collective): the epoch with energy, uncertainty and
    CO2 summed over the ranks, and the job's cpu_j, dram_j, gpu_j."""
    mine: dict[str, float | None] = {
        "energy_j": ep.energy_j,
        "cpu_j": m.cpu_j if m else 0.0,
        "dram_j": m.dram_j if m else 0.0,
        "gpu_j": m.gpu_j if m else 0.0,
        "uncertainty_j": ep.uncertainty_j,
        "co2_g": ep.co2_g,
        "node_j": ep.node_j,
    }
    summed, _ = sum_over_ranks(mine)
    job = attrs.evolve(
        ep,
        energy_j=float(summed["energy_j"] or 0.0),
        uncertainty_j=float(summed["uncertainty_j"] or 0.0),
        co2_g=summed["co2_g"],
        node_j=summed["node_j"],
    )
    parts = {k: summed[k] for k in ("energy_j", "cpu_j", "dram_j", "gpu_j", "co2_g")}
    return job, parts


def stop_reason_of_others() -> str:
    return (
        "another rank of the job stopped the run (its budget or run.stop()); every rank stops "
        "at the same epoch boundary"
    )

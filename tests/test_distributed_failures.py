"""A rank of a real 2-rank job (torch.distributed over gloo on the CPU) that dies or leaves its
``epochs()`` loop while the other still runs one: the survivor's carbonctx collectives fail (the
peer has gone, or the process group's timeout passes), and that must not break the survivor's
loop. Its run goes on with this rank's figures only, says so, and warns once.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import dist_worker
from carbonctx.testing import SimulatedMachine, Wave

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs torch (the test extra)"
)

WORKER = r"""
import faulthandler, json, os, sys, time, warnings
from datetime import timedelta
faulthandler.dump_traceback_later(25, exit=True)  # a rank stuck in a collective says where
import torch
import carbonctx

out, how = sys.argv[1], sys.argv[2]
# The user's own process group, with a short timeout (a skipped collective fails after it).
torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=3))
rank = torch.distributed.get_rank()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run = carbonctx.epochs(4, quiet=True)
    done = []
    for epoch in run:
        time.sleep(0.05)
        done.append(epoch)
        if rank == 1 and epoch == 1:
            if how == "dies":
                os._exit(3)  # the rank crashes mid-job
            break  # this rank leaves its loop early, and lives on past the group's timeout
    if rank == 1:
        time.sleep(6)
        os._exit(0)
    total = carbonctx.job_total(run)
    again = carbonctx.epochs(1, quiet=True)  # a later run: local, and says why
    for epoch in again:
        pass
record = {
    "rank": rank,
    "done": done,
    "notes": run.final_record()["notes"],
    "stop_reason": run.stop_reason,
    "actual_j": run.actual.energy_j,
    "rank_actual_j": run.rank_actual.energy_j,
    "total_engine": total.engine,
    "total_ranks": total.ranks,
    "again_notes": again.final_record()["notes"],
    "warnings": [str(w.message) for w in caught if "from now on" in str(w.message).lower()],
}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
os._exit(0)  # no destroy_process_group: the peer may be gone
"""


def job(tmp_path: Path, how: str) -> dict[str, Any]:
    results = dist_worker.script_job(tmp_path, WORKER, how)
    code0, out0 = results[0]
    assert code0 == 0, out0
    return dict(json.loads((tmp_path / "rank0.json").read_text()))


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", ["dies", "leaves"])
def test_a_rank_gone_mid_job_does_not_break_the_others_loop(tmp_path: Path, how: str) -> None:
    r0 = job(tmp_path, how)
    assert r0["done"] == [0, 1, 2, 3]  # the survivor's loop ran to its end
    assert r0["stop_reason"] is None
    note = " ".join(r0["notes"])
    assert note.count("this rank's figures only") == 1, r0["notes"]  # said once
    assert len(r0["warnings"]) == 1, r0  # warned once, not at every epoch
    # From the failure on, the figures are this rank's: the totals say one rank, no engine.
    assert r0["total_engine"] == "local"
    assert r0["total_ranks"] == 1
    assert r0["actual_j"] >= r0["rank_actual_j"] > 0
    assert "an earlier collective over the job's ranks failed" in " ".join(r0["again_notes"])


UNEVEN = r"""
import faulthandler, json, os, sys, time, warnings
from datetime import timedelta
faulthandler.dump_traceback_later(25, exit=True)
import torch
import carbonctx

out = sys.argv[1]
torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=3))
rank = torch.distributed.get_rank()
warnings.simplefilter("ignore")
run = carbonctx.epochs(2 if rank == 0 else 4, quiet=True)
done = []
for epoch in run:
    time.sleep(0.05)
    done.append(epoch)
# The program's own collective after the loop: carbonctx's must not meet it.
t = torch.tensor([float(rank + 1)])
torch.distributed.all_reduce(t)
record = {"rank": rank, "done": done, "notes": run.final_record()["notes"], "sum": t.item()}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
torch.distributed.destroy_process_group()
"""


@pytest.mark.timeout(40)
def test_ranks_with_loops_of_different_lengths_leave_the_sums_alike(tmp_path: Path) -> None:
    sim = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6))
    sim.start()
    try:
        r0, r1 = dist_worker.torchrun_job(UNEVEN, tmp_path, sim.env(), "uneven", timeout=28.0)
    finally:
        sim.close()
    assert r0["done"] == [0, 1] and r1["done"] == [0, 1, 2, 3]
    for r in (r0, r1):
        assert r["sum"] == 3.0  # the program's own all_reduce met its peer's, not carbonctx's
        note = " ".join(r["notes"])
        assert "rank 0: 2, rank 1: 4 epochs" in note, r["notes"]
        assert "collective over the job's ranks failed" not in note, r["notes"]

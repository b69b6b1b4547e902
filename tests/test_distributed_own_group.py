"""carbonctx's collectives run on a process group of their own, so that a rank that leaves its
``epochs()`` loop while another still runs one (a real 2-rank job, torch.distributed over gloo
on the CPU) never costs the program its own collectives: the carbonctx collective the other rank
is left waiting at fails after the timeout, but it neither closes the program's process group
nor is it matched with the program's own ``all_reduce`` (torch matches collectives by their
order in a group).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import dist_worker

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs torch (the test extra)"
)

WORKER = r"""
import faulthandler, json, os, sys, time, warnings
from datetime import timedelta
faulthandler.dump_traceback_later(25, exit=True)
import torch
import carbonctx

out, how = sys.argv[1], sys.argv[2]
dist = torch.distributed
dist.init_process_group("gloo", timeout=timedelta(seconds=3))
rank = dist.get_rank()
warnings.simplefilter("ignore")
run = carbonctx.epochs(4, quiet=True)
done = []
for epoch in run:
    time.sleep(0.05)
    done.append(epoch)
    if rank == 1 and epoch == 1:
        break  # this rank leaves its loop (the program's own reason); rank 0 runs on
marker = os.path.join(out, "rank0-done")
if rank == 0:
    open(marker, "w").close()
elif how == "after":  # the program's next collective once rank 0 is out of its loop
    while not os.path.exists(marker):
        time.sleep(0.05)
t = torch.tensor([float(rank + 1)], dtype=torch.float64)
try:
    dist.all_reduce(t)  # the program's own: it must meet its peer's, never carbonctx's
    got = t.item()
except Exception as e:  # the program's own timeout: loud, not a wrong sum
    got = type(e).__name__
record = {"rank": rank, "done": done, "sum": got, "notes": run.final_record()["notes"]}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
os._exit(0)
"""


def job(tmp_path: Path, how: str) -> tuple[dict[str, Any], dict[str, Any]]:
    results = dist_worker.script_job(tmp_path, WORKER, how)
    for code, out in results:
        assert code == 0, out
    return tuple(  # type: ignore[return-value]
        json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)
    )


@pytest.mark.timeout(40)
def test_a_failed_carbonctx_collective_leaves_the_programs_group_working(
    tmp_path: Path,
) -> None:
    # Rank 0 waits at a carbonctx collective rank 1 never reaches, past the timeout; then both
    # ranks call the program's own all_reduce: it works, and sums the program's values.
    r0, r1 = job(tmp_path, "after")
    assert r0["done"] == [0, 1, 2, 3] and r1["done"] == [0, 1]
    assert r0["sum"] == 3.0 and r1["sum"] == 3.0, (r0, r1)
    assert "this rank's figures only" in " ".join(r0["notes"]), r0["notes"]


@pytest.mark.timeout(40)
def test_the_programs_collective_is_never_matched_with_carbonctxs(tmp_path: Path) -> None:
    # Rank 1 calls the program's all_reduce while rank 0 is still at carbonctx's collectives:
    # it may time out (the program's own timeout, loud) but never sums carbonctx's figures.
    r0, r1 = job(tmp_path, "at-once")
    for r in (r0, r1):
        assert r["sum"] == 3.0 or isinstance(r["sum"], str), (r0, r1)

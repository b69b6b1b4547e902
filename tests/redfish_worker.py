"""One rank of a test job on one node, reading the node's BMC (see test_redfish.py): a warm-up
region, a pause for the BMC to answer, one region of ``SECONDS``, then ``OUT/rank{RANK}.json``
with the node's figure as this rank reports it and this process's part in reading the BMC."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SECONDS = 1.0


def main() -> None:
    import carbonctx
    from carbonctx._measure import process

    out = Path(sys.argv[1])
    with carbonctx.track("warm-up"):
        pass
    time.sleep(3.0)  # a few readings at 1 s
    with carbonctx.track("step") as t:
        time.sleep(SECONDS)
    m = t.result()
    node = m.by_source["redfish:node"]
    rt = process.runtime()
    assert rt.bmc is not None
    ns = (rt.sampler.node_status() if rt.sampler is not None else None) or {}
    rec = {
        "role": ns.get("role"),
        "duration_s": m.duration_s,
        "joules": node.joules,
        "share": node.share,
        "node_joules": node.node_joules,
        "feed_reads": rt.bmc.feed.reads,
        "readings": rt.bmc.readings,
    }
    rank = os.environ["RANK"]
    (out / f"rank{rank}.json").write_text(json.dumps(rec))
    # Stay until every rank has written its record: an owner that exits first hands the node's
    # sampler over, and a rank still reading its figures would report itself the owner too.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    deadline = time.monotonic() + 20.0  # within the test's wait for the processes
    while not all((out / f"rank{k}.json").exists() for k in range(world)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)


if __name__ == "__main__":
    main()

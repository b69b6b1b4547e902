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
        "exit_lag_s": rt._lag_s(),  # how long the exit may wait for the node's timeline
    }
    rank = os.environ["RANK"]
    (out / f"rank{rank}.json").write_text(json.dumps(rec))
    # Stay until every rank has written its record (within the test's wait for the processes).
    from dist_worker import wait_for_ranks

    wait_for_ranks(out, int(os.environ.get("WORLD_SIZE", "1")), 20.0)


if __name__ == "__main__":
    main()

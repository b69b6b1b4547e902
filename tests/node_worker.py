"""One process of a test job that shares its node's sampler (see test_distributed_node.py).

``python node_worker.py owner DIR``: measures a warm-up region, writes ``DIR/owner.json`` with
its role, then sleeps until it is killed.

``python node_worker.py follower DIR``: measures a warm-up region, writes ``DIR/follower-ready``
with its role, waits for ``DIR/killed`` while a region ("across") is open, goes on for a moment,
closes it, measures one more region ("after") and writes ``DIR/follower.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

#: How long a process waits for the test's next step before giving up.
WAIT_S = 30.0


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {path.name} from the test")
        time.sleep(0.01)


def _node() -> dict[str, object]:
    import carbonctx

    rank = carbonctx.devices()["rank"]
    return dict(rank.get("node_sampler") or {})


def main() -> None:
    import carbonctx

    role, out = sys.argv[1], Path(sys.argv[2])
    with carbonctx.track("warm-up"):
        time.sleep(0.05)
    carbonctx.flush()
    if role == "owner":
        (out / "owner.json").write_text(json.dumps(_node()))
        time.sleep(WAIT_S)
        return
    (out / "follower-ready").write_text(json.dumps(_node()))
    with carbonctx.track("across") as across:
        _wait_for(out / "killed")
        time.sleep(0.5)
    with carbonctx.track("after") as after:
        time.sleep(0.5)
    carbonctx.flush()
    from carbonctx._measure import process

    offset = process.runtime()._offset
    r = after.result()
    sources = carbonctx.devices()["sources"]
    result = {
        "node": _node(),
        "across": across.result().to_dict(),
        "after": r.to_dict(),
        "after_ns": [round((r.start - offset) * 1e9), round((r.end - offset) * 1e9)],
        "gaps": {s["id"]: s["status"]["gaps"] for s in sources},
        "reads": {s["id"]: s["status"]["reads"] for s in sources},
    }
    (out / "follower.json").write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()

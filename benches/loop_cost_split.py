"""Where a region's cost after cache-evicting work goes (issue 15): each step of a region, and a few
single calls for scale, timed on its own right after passes over a 16 MiB buffer, with one
spinning process per CPU. Medians in µs (each figure carries one cold ``perf_counter_ns`` call:
the ``perf_counter_ns`` line).

Run: ``.venv/bin/python benches/loop_cost_split.py [out]`` (``out``: JSON Lines output on).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

import carbonctx
from _common import simulated
from carbonctx import _native
from carbonctx._measure import process as _process
from carbonctx.testing import Wave

REPS = 40
PASSES = 8


def main() -> None:
    buf = np.zeros(16 << 20, dtype=np.uint8)
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    pc = time.perf_counter_ns
    try:
        with simulated(gpus=1, core=Wave.constant(20.0)):
            if sys.argv[1:] == ["out"]:
                carbonctx.configure(output=tempfile.mktemp(suffix=".jsonl"))
            with carbonctx.track("warm"):
                pass
            rt = _process._RT
            assert rt is not None

            def evict() -> None:
                for _ in range(PASSES):
                    np.add(buf, 1, out=buf)

            def create() -> int:
                t = pc()
                r = carbonctx.track("step")
                dt = pc() - t
                r.__enter__()
                r.__exit__(None, None, None)
                return dt

            def enter() -> int:
                r = carbonctx.track("step")
                t = pc()
                r.__enter__()
                dt = pc() - t
                r.__exit__(None, None, None)
                return dt

            def leave() -> int:
                r = carbonctx.track("step")
                r.__enter__()
                evict()
                t = pc()
                r.__exit__(None, None, None)
                return pc() - t

            def one(f: Callable[[], object]) -> Callable[[], int]:
                def timed() -> int:
                    t = pc()
                    f()
                    return pc() - t

                return timed

            steps: dict[str, Callable[[], int]] = {
                "create the region": create,
                "__enter__": enter,
                "__exit__": leave,
                "perf_counter_ns()": one(pc),
                "_native.now_ns()": one(_native.now_ns),
                "os.getpid()": one(os.getpid),
                "a field of the hub (native)": one(lambda: rt.core.dead),
            }
            res: dict[str, list[int]] = {k: [] for k in steps}
            for _ in range(REPS):
                for k, f in steps.items():
                    evict()
                    res[k].append(f())
            carbonctx.flush()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for k, v in res.items():
        print(f"| {k} | {statistics.median(v) / 1000:.2f} |")


if __name__ == "__main__":
    main()

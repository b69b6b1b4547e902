"""Does the resolver thread keep up in the background (issue 15)? One thread runs regions around
20 µs of Python work for a second with output on, three times; each time: the regions the
resolver thread wrote during the loop, those left for the ``flush()`` after it, and that
``flush()``'s CPU and wall time on the user thread.

Run: ``.venv/bin/python benches/output_backlog_probe.py``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from typing import Any

import carbonctx
from _common import simulated
from carbonctx._measure import resolver as _resolver
from carbonctx.testing import Wave

STEP = range(2000)


def main() -> None:
    drained = {"resolver": 0, "flush": 0}
    real = _resolver.Resolver.process_batch

    def process_batch(self: Any, n: int, *args: Any, **kw: Any) -> None:
        on_resolver = threading.current_thread().name == "carbonctx-resolver"
        drained["resolver" if on_resolver else "flush"] += n
        real(self, n, *args, **kw)

    _resolver.Resolver.process_batch = process_batch  # type: ignore[method-assign]
    with simulated(gpus=1, core=Wave.constant(20.0)):
        carbonctx.configure(output=tempfile.mktemp(suffix=".jsonl"))
        with carbonctx.track("warm"):
            pass
        carbonctx.flush()
        for _ in range(3):
            drained.update(resolver=0, flush=0)
            end = time.monotonic() + 1.0
            n = 0
            while time.monotonic() < end:
                for _ in range(500):
                    with carbonctx.track("step"):
                        sum(STEP)
                n += 500
            u, w = time.thread_time_ns(), time.perf_counter_ns()
            carbonctx.flush()
            print(
                f"regions {n:,}: {drained['resolver']:,} written by the resolver thread, "
                f"{drained['flush']:,} left for flush() ({(time.thread_time_ns() - u) / 1e6:.1f} "
                f"ms of CPU, {(time.perf_counter_ns() - w) / 1e6:.1f} ms wall)"
            )


if __name__ == "__main__":
    main()

"""Where the worst ``with`` goes when 8 threads run short regions (issue 15): times the creation,
``__enter__`` and ``__exit__`` of one probe region at a time while 8 threads loop over regions
around hashing 4 KiB (the GIL released), with output on (``out``) or off (``noout``); ``nogc``
as a second argument turns Python's cyclic collector off for the run.

The sampler is started (by a first region) and given half a second before the timing starts, so
that the lazy start, which every thread entering a region at that moment waits for, is not in
the figures. Every collection of the cyclic garbage collector is timed (``gc.callbacks``): a
probe ``__enter__`` slower than 1 ms is counted as "during a collection" when one overlapped it.

Run: ``cd benches && ../.venv/bin/python stall_enter_probe.py out``.
"""

import gc
import hashlib
import os
import sys
import tempfile
import threading
import time

import carbonctx
from _common import simulated
from carbonctx.testing import Wave

out_on = sys.argv[1] == "out"
if len(sys.argv) > 2 and sys.argv[2] == "nogc":
    gc.disable()
pc = time.perf_counter_ns
collections: list[tuple[int, int, int]] = []  # (start, end, generation)
_gc_start = [0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = pc()
    else:
        collections.append((_gc_start[0], pc(), info["generation"]))


with simulated(gpus=1, core=Wave.constant(20.0)):
    if out_on:
        carbonctx.configure(output=tempfile.mktemp(suffix=".jsonl"))
    with carbonctx.track("start"):
        pass
    time.sleep(0.5)
    stop = threading.Event()
    buf = os.urandom(4096)

    def worker():
        while not stop.is_set():
            with carbonctx.track("work"):
                hashlib.sha256(buf).digest()

    ts = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in ts]
    enters = []
    exits = []
    creates = []
    enter_spans = []
    gc.callbacks.append(_on_gc)
    t_start = time.monotonic()
    end = t_start + 3
    while time.monotonic() < end:
        a = pc()
        tr = carbonctx.track("probe")
        b = pc()
        tr.__enter__()
        c = pc()
        tr.__exit__(None, None, None)
        d = pc()
        creates.append(b - a)
        enters.append(c - b)
        exits.append(d - c)
        enter_spans.append((b, c))
        time.sleep(0.0002)
    stop.set()
    [t.join() for t in ts]
    gc.callbacks.remove(_on_gc)
    carbonctx.flush()
    rate = carbonctx.stats()["work"].count / (time.monotonic() - t_start)
    for nm, xs in (("create", creates), ("enter", enters), ("exit", exits)):
        xs = sorted(xs)
        print(
            sys.argv[1],
            nm,
            f"worst ms {xs[-1] / 1e6:.2f} p99.9 us {xs[int(len(xs) * 0.999)] / 1e3:.0f} "
            f"median us {xs[len(xs) // 2] / 1e3:.1f}",
        )
    slow = [(b, c) for b, c in enter_spans if c - b > 1_000_000]
    in_gc = [s for s in slow if any(g0 < s[1] and g1 > s[0] for g0, g1, _ in collections)]
    by_gen = {g: sorted(g1 - g0 for g0, g1, gen in collections if gen == g) for g in (0, 1, 2)}
    gcs = ", ".join(
        f"gen{g} {len(v)} (longest {v[-1] / 1e6:.2f} ms)" if v else f"gen{g} 0"
        for g, v in by_gen.items()
    )
    print(
        sys.argv[1],
        f"regions/s {rate:,.0f}; probe enters {len(enters)}, over 1 ms {len(slow)}, "
        f"of which during a collection {len(in_gc)}; collections: {gcs}",
    )

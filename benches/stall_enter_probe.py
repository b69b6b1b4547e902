"""Where the worst ``with`` goes when 8 threads run short regions (issue 15, left open): times the
creation, ``__enter__`` and ``__exit__`` of one probe region at a time while 8 threads loop over
regions around hashing 4 KiB (the GIL released), with output on (``out``) or off (``noout``).

Run: ``cd benches && ../.venv/bin/python stall_enter_probe.py out``.
"""

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
with simulated(gpus=1, core=Wave.constant(20.0)):
    if out_on:
        carbonctx.configure(output=tempfile.mktemp(suffix=".jsonl"))
    stop = threading.Event()
    buf = os.urandom(4096)

    def worker():
        while not stop.is_set():
            with carbonctx.track("work"):
                hashlib.sha256(buf).digest()

    ts = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in ts]
    pc = time.perf_counter_ns
    enters = []
    exits = []
    creates = []
    end = time.monotonic() + 3
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
        time.sleep(0.0002)
    stop.set()
    [t.join() for t in ts]
    for nm, xs in (("create", creates), ("enter", enters), ("exit", exits)):
        xs.sort()
        print(
            sys.argv[1],
            nm,
            f"worst ms {xs[-1] / 1e6:.2f} p99.9 us {xs[int(len(xs) * 0.999)] / 1e3:.0f} "
            f"median us {xs[len(xs) // 2] / 1e3:.1f}",
        )

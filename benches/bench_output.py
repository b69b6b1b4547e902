"""Regions with JSON Lines output on (issue 15): what a region costs the user's threads, how
long the worst ``with`` takes while other threads are busy in regions, and bytes per record.

* **amortised**: one thread runs ``with carbonctx.track("step")`` in a loop with output on, then
  ``flush()``; the time per block (which carries all the deferred work: resolving and writing
  every record) against an empty ``with`` in the same run;
* **stall**: ``THREADS`` threads loop over regions around work that releases the GIL (hashing
  16 KiB, a few µs), while the main thread times one empty ``with carbonctx.track("probe")`` at a time; the
  worst and the 99.9th percentile, against the same probe with an empty ``with`` in the same
  run (the baseline carries the machine's own scheduling noise);
* **records**: bytes of the output per region, and regions written against regions ended.

Run: ``.venv/bin/python benches/bench_output.py [seconds]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import carbonctx
from _common import machine, simulated, write_result
from carbonctx.testing import Wave

THREADS = 8
N_LOOP = 50_000
REPEATS = 3
#: Bytes each busy thread hashes inside each region (the GIL is released while it hashes).
PAYLOAD = 1 << 14


class Empty:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def loop_mean_ns(kind: str, n: int) -> float:
    track = carbonctx.track
    empty = Empty()
    t = time.perf_counter_ns()
    if kind == "track":
        for _ in range(n):
            with track("step"):
                pass
        carbonctx.flush()  # the deferred work (resolving, writing) is part of the cost
    else:
        for _ in range(n):
            with empty:
                pass
    return (time.perf_counter_ns() - t) / n


def stall_probe(seconds: float, probe_track: bool) -> tuple[list[int], int]:
    stop = threading.Event()
    buf = os.urandom(PAYLOAD)
    counts = [0] * THREADS

    def worker(i: int) -> None:
        track = carbonctx.track
        while not stop.is_set():
            with track("work"):
                hashlib.sha256(buf).digest()
            counts[i] += 1

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in ts:
        t.start()
    pc = time.perf_counter_ns
    out: list[int] = []
    track = carbonctx.track
    empty = Empty()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = pc()
        if probe_track:
            with track("probe"):
                pass
        else:
            with empty:
                pass
        out.append(pc() - t0)
        time.sleep(0.0002)
    stop.set()
    for t in ts:
        t.join()
    return out, sum(counts)


def region_lines(path: Path) -> tuple[int, int]:
    """(region records, bytes of the whole file)."""
    n = 0
    size = path.stat().st_size
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "region":
            n += 1
    return n, size


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    seconds = float(args[0]) if args else 3.0
    tmp = Path(tempfile.mkdtemp(prefix="carbonctx-bench-output-"))
    out = tmp / "regions.jsonl"
    amort: dict[str, list[float]] = {"track": [], "empty": []}
    worst: dict[str, list[float]] = {"track": [], "empty": []}
    p999: dict[str, list[float]] = {"track": [], "empty": []}
    with simulated(gpus=1, core=Wave.constant(20.0)):
        carbonctx.configure(output=str(out))
        loop_mean_ns("track", 2000)
        for _ in range(REPEATS):
            for kind in ("track", "empty"):
                amort[kind].append(loop_mean_ns(kind, N_LOOP))
            carbonctx.flush()
        for _ in range(REPEATS):
            for kind in ("track", "empty"):
                xs, _n = stall_probe(seconds, kind == "track")
                xs.sort()
                worst[kind].append(xs[-1])
                p999[kind].append(xs[int(len(xs) * 0.999)])
            carbonctx.flush()
        ended = carbonctx.stats()
    total = sum(ended[k].count for k in ended)
    written, size = region_lines(out)
    m = {k: statistics.median(v) for k, v in amort.items()}
    w = {k: statistics.median(v) for k, v in worst.items()}
    p = {k: statistics.median(v) for k, v in p999.items()}
    text = f"""# Regions with output on

{machine()}

Simulated hardware (package, core and DRAM zones, one GPU), `configure(output=FILE)`. Medians
over {REPEATS} runs; baselines in the same run.

| what | carbonctx | baseline | ratio |
| --- | --- | --- | --- |
| one thread, per `with track("step")`, writing included (loop + flush) | {m["track"] / 1000:.2f} µs | empty `with` {m["empty"] / 1000:.2f} µs | {m["track"] / m["empty"]:.1f}x (+{(m["track"] - m["empty"]) / 1000:.2f} µs) |
| worst `with track("probe")`, {THREADS} threads in regions ({seconds:g} s) | {w["track"] / 1e6:.3f} ms | empty `with` {w["empty"] / 1e6:.3f} ms | {w["track"] / w["empty"]:.1f}x |
| 99.9th percentile, same | {p["track"] / 1000:.1f} µs | {p["empty"] / 1000:.1f} µs | {p["track"] / p["empty"]:.1f}x |

Bytes per region record (whole file / region records): **{size / max(written, 1):.0f} B**.
Region records written: {written:,} of {total:,} regions ended.
"""
    print(text)
    write_result("output-before" if "--before" in sys.argv else "output", text)


if __name__ == "__main__":
    main()

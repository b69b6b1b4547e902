"""Regions with JSON Lines output on (issue 15): what a region costs the user's threads, how
long the worst ``with`` takes while other threads are busy in regions, and bytes per record.

* **amortised**: one thread runs ``with carbonctx.track("step")`` in a loop with output on, then
  ``flush()``; the time per block (which carries all the deferred work: resolving and writing
  every record) against an empty ``with`` in the same run;
* **stall**: ``THREADS`` threads loop over regions around work that releases the GIL (hashing
  16 KiB, a few µs), while the main thread times one empty ``with carbonctx.track("probe")`` at a time; the
  worst and the 99.9th percentile, against the same probe with an empty ``with`` in the same
  run (the baseline carries the machine's own scheduling noise);
* **steady loop**: one thread runs regions around a step of Python work (``STEPS``) for
  ``STEADY_S`` seconds, the resolver and writer working in the background as in a training loop,
  in blocks alternating with the same loop around an empty ``with``; per region: the user
  thread's own CPU time (``time.thread_time_ns``) and wall time against the empty ``with``, the
  resolver thread's CPU time (it resolves and writes; it takes the GIL from the user thread
  while it does), the sampler thread's, and what the ``flush()`` after the loop still had to do
  on the user thread;
* **records**: bytes of the output per region, and regions written against regions ended.

Run: ``.venv/bin/python benches/bench_output.py [seconds]``.
"""

from __future__ import annotations

import gc
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
from _common import machine, simulated, thread_cpu_s, write_result
from carbonctx._measure import process as _process
from carbonctx.testing import Wave

THREADS = 8
N_LOOP = 50_000
REPEATS = 3
#: Bytes each busy thread hashes inside each region (the GIL is released while it hashes).
PAYLOAD = 1 << 14
#: The steady loop's steps: Python work inside each region, about 1 µs (a tight loop, more
#: regions a second than a writer under the GIL keeps up with) and about 20 µs.
STEPS = {"tight": range(100), "20us": range(2000)}
STEADY_S = 1.0
BLOCK = 500


class Empty:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def loop_mean_ns(kind: str, n: int) -> tuple[float, float]:
    """ns per region of a loop (and its ``flush()``): wall time, and the user thread's CPU."""
    track = carbonctx.track
    empty = Empty()
    t = time.perf_counter_ns()
    u = time.thread_time_ns()
    if kind == "track":
        for _ in range(n):
            with track("step"):
                pass
        carbonctx.flush()  # the deferred work (resolving, writing) is part of the cost
    else:
        for _ in range(n):
            with empty:
                pass
    return (time.perf_counter_ns() - t) / n, (time.thread_time_ns() - u) / n


def _thread_cpu_ns(ident: int | None) -> int:
    if ident is None:
        return 0
    try:
        return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
    except OSError:
        return 0


def steady(step: range) -> dict[tuple[str, str], float]:
    """ns per region of the steady loop (see the module's doc): blocks of ``BLOCK`` regions,
    ``with track()`` and empty ``with`` in turn, each block timed on the user thread (so both
    kinds see the same machine, and the same caches left by the resolver); the resolver's and
    the sampler's CPU time over the whole loop and the ``flush()`` after it, per tracked
    region."""
    track = carbonctx.track
    empty = Empty()
    rt = _process._RT
    resolver = rt._thread.ident if rt is not None and rt._thread is not None else None
    acc = {k: [0, 0, 0] for k in ("track", "empty")}  # user ns, wall ns, regions
    r0 = _thread_cpu_ns(resolver)
    s0 = thread_cpu_s("carbonctx-sampler")
    tt = time.thread_time_ns
    pc = time.perf_counter_ns
    end = time.monotonic() + STEADY_S
    while time.monotonic() < end:
        for kind in ("track", "empty"):
            u0, w0 = tt(), pc()
            if kind == "track":
                for _ in range(BLOCK):
                    with track("step"):
                        sum(step)
            else:
                for _ in range(BLOCK):
                    with empty:
                        sum(step)
            a = acc[kind]
            a[0] += tt() - u0
            a[1] += pc() - w0
            a[2] += BLOCK
    u1 = tt()
    carbonctx.flush()
    n = acc["track"][2]
    out = {(k, f): acc[k][i] / acc[k][2] for k in acc for i, f in enumerate(("user", "wall"))}
    out[("track", "resolver")] = (_thread_cpu_ns(resolver) - r0) / n
    out[("track", "sampler")] = (thread_cpu_s("carbonctx-sampler") - s0) * 1e9 / n
    out[("track", "flush")] = (tt() - u1) / n
    return out


class GcTimes:
    """Python's cyclic collections while installed: (generation, ns) each."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self._t = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter_ns()
        else:
            self.runs.append((info["generation"], time.perf_counter_ns() - self._t))


def steady_table(sm: dict[str, dict[tuple[str, str], float]]) -> str:
    out = [
        f"One thread, steady loop ({STEADY_S:g} s of regions around a step of Python work, "
        f'blocks of {BLOCK} `with track("step")` and of {BLOCK} empty `with` in turn, the '
        "resolver writing in the background), ns per region (the resolver's and sampler's CPU "
        "and what `flush()` still had to do after the loop are per tracked region):",
        "",
        "| step | user thread CPU, track | empty | **added** | user thread wall, track | "
        "empty | **added** | resolver thread CPU | sampler thread CPU | left for `flush()` |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, step in STEPS.items():
        m = sm[label]
        ut, ue, wt, we = (
            m[("track", "user")],
            m[("empty", "user")],
            m[("track", "wall")],
            m[("empty", "wall")],
        )
        out.append(
            f"| `sum(range({len(step)}))` | {ut:.0f} | {ue:.0f} | **{ut - ue:.0f}** | {wt:.0f} | "
            f"{we:.0f} | **{wt - we:.0f}** | {m[('track', 'resolver')]:.0f} | "
            f"{m[('track', 'sampler')]:.0f} | {m[('track', 'flush')]:.0f} |"
        )
    return "\n".join(out)


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
    amort_cpu: dict[str, list[float]] = {"track": [], "empty": []}
    worst: dict[str, list[float]] = {"track": [], "empty": []}
    p999: dict[str, list[float]] = {"track": [], "empty": []}
    with simulated(gpus=1, core=Wave.constant(20.0)):
        carbonctx.configure(output=str(out))
        loop_mean_ns("track", 2000)
        for _ in range(REPEATS):
            for kind in ("track", "empty"):
                wall, cpu = loop_mean_ns(kind, N_LOOP)
                amort[kind].append(wall)
                amort_cpu[kind].append(cpu)
            carbonctx.flush()
        st: dict[str, list[dict[tuple[str, str], float]]] = {}
        gct = GcTimes()
        for _ in range(REPEATS):
            for label, step in STEPS.items():
                st.setdefault(label, []).append(steady(step))
        regions_s: list[float] = []
        gc.callbacks.append(gct)
        for _ in range(REPEATS):
            for kind in ("track", "empty"):
                xs, n_work = stall_probe(seconds, kind == "track")
                regions_s.append(n_work / seconds)
                xs.sort()
                worst[kind].append(xs[-1])
                p999[kind].append(xs[int(len(xs) * 0.999)])
            carbonctx.flush()
        gc.callbacks.remove(gct)
        ended = carbonctx.stats()
    total = sum(ended[k].count for k in ended)
    written, size = region_lines(out)
    m = {k: statistics.median(v) for k, v in amort.items()}
    mc = {k: statistics.median(v) for k, v in amort_cpu.items()}
    w = {k: statistics.median(v) for k, v in worst.items()}
    p = {k: statistics.median(v) for k, v in p999.items()}
    sm = {
        label: {f: statistics.median(r[f] for r in runs) for f in runs[0]}
        for label, runs in st.items()
    }
    full_ns = [ns for g, ns in gct.runs if g == 2]
    full = len(full_ns)
    text = f"""# Regions with output on

{machine()}

Simulated hardware (package, core and DRAM zones, one GPU), `configure(output=FILE)`. Medians
over {REPEATS} runs; baselines in the same run.

| what | carbonctx | baseline | ratio |
| --- | --- | --- | --- |
| one thread, per `with track("step")`, writing included (loop + flush) | {m["track"] / 1000:.2f} µs | empty `with` {m["empty"] / 1000:.2f} µs | {m["track"] / m["empty"]:.1f}x (+{(m["track"] - m["empty"]) / 1000:.2f} µs) |
| same, the user thread's CPU time | {mc["track"] / 1000:.2f} µs | {mc["empty"] / 1000:.2f} µs | +{(mc["track"] - mc["empty"]) / 1000:.2f} µs |
| worst `with track("probe")`, {THREADS} threads in regions ({seconds:g} s) | {w["track"] / 1e6:.3f} ms | empty `with` {w["empty"] / 1e6:.3f} ms | {w["track"] / w["empty"]:.1f}x |
| 99.9th percentile, same | {p["track"] / 1000:.1f} µs | {p["empty"] / 1000:.1f} µs | {p["track"] / p["empty"]:.1f}x |

During those {2 * REPEATS} runs ({statistics.median(regions_s):,.0f} regions/s of the {THREADS}
threads, median): {full} full collections of Python's cyclic collector (longest
{max(full_ns, default=0) / 1e6:.1f} ms), {len(gct.runs)} collections in all (longest
{max((ns for _g, ns in gct.runs), default=0) / 1e6:.1f} ms); a collection holds the GIL, so every
thread waits for it.

{steady_table(sm)}

Bytes per region record (whole file / region records): **{size / max(written, 1):.0f} B**.
Region records written: {written:,} of {total:,} regions ended.
"""
    print(text)
    write_result("output-before" if "--before" in sys.argv else "output", text)


if __name__ == "__main__":
    main()

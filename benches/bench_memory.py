"""Resident memory over a million calls of a tracked function, sampler running on simulated
hardware (RAPL and one GPU whose counter moves every 100 ms, so results wait up to that long).

Run: ``.venv/bin/python benches/bench_memory.py``.
"""

from __future__ import annotations

import os
import time

import carbonctx
from _common import machine, simulated, write_result

CALLS = 1_000_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    with simulated(gpus=1):

        @carbonctx.tracked
        def step() -> None:
            pass

        step()
        carbonctx.flush()
        start = rss_mb()
        marks = []
        t = time.perf_counter()
        for i in range(1, CALLS + 1):
            step()
            if i % 200_000 == 0:
                marks.append((i, rss_mb()))
        elapsed = time.perf_counter() - t
        stats = carbonctx.stats()[step.__qualname__]
        end = rss_mb()
    text = f"""# Memory over a million tracked calls

{machine()}

`@carbonctx.tracked` on an empty function, called {CALLS:,} times in a loop
({elapsed / CALLS * 1e6:.2f} µs per call including the function), with the sampler reading
simulated RAPL zones and one GPU (energy counter every 100 ms: results wait for it).

Resident memory after the first call: {start:.1f} MB; after all calls and their statistics:
{end:.1f} MB (**{end - start:+.1f} MB**). Regions counted: {stats.count:,}.

| calls | resident MB |
| ---: | ---: |
""" + "".join(f"| {i:,} | {m:.1f} |\n" for i, m in marks)
    print(text)
    write_result("memory", text)


if __name__ == "__main__":
    main()

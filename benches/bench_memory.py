"""Resident memory over a million calls of a tracked function and a million `with` blocks,
sampler running on simulated hardware (RAPL and one GPU whose counter moves every 100 ms, so results wait up to that long).

Run: ``.venv/bin/python benches/bench_memory.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import carbonctx
from _common import machine, simulated, write_result

CALLS = 1_000_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def phase(run: Callable[[], object]) -> tuple[float, float, float, list[tuple[int, float]]]:
    """Runs ``run`` a million times: (start MB, end MB, seconds, marks)."""
    run()
    carbonctx.flush()
    start = rss_mb()
    marks = []
    t = time.perf_counter()
    for i in range(1, CALLS + 1):
        run()
        if i % 200_000 == 0:
            marks.append((i, rss_mb()))
    elapsed = time.perf_counter() - t
    carbonctx.flush()
    return start, rss_mb(), elapsed, marks


def main() -> None:
    with simulated(gpus=1):

        @carbonctx.tracked
        def step() -> None:
            pass

        def block() -> None:
            with carbonctx.track("block"):
                pass

        s1, e1, t1, m1 = phase(step)
        s2, e2, t2, m2 = phase(block)
        stats = carbonctx.stats()
    text = f"""# Memory over a million regions

{machine()}

A million calls of an empty `@carbonctx.tracked` function, then a million empty
`with carbonctx.track("block"):` blocks, in loops, with the sampler reading simulated RAPL
zones and one GPU (energy counter every 100 ms: results wait for it). Each phase is measured
from its own first region. A `with` region keeps its handle (the `m` of `as m`) waiting until
its result resolves, after the GPU counter's next update (up to 100 ms; past 32,768 waiting,
the loop resolves them itself), so that phase rises to a plateau and stays there; a decorated
call keeps no handle.

| phase | per region (loop, with the function or block) | resident after the first | after all and their statistics | growth | regions counted |
| --- | ---: | ---: | ---: | ---: | ---: |
| `@tracked` call | {t1 / CALLS * 1e6:.2f} µs | {s1:.1f} MB | {e1:.1f} MB | **{e1 - s1:+.1f} MB** | {stats[step.__qualname__].count:,} |
| `with track()` | {t2 / CALLS * 1e6:.2f} µs | {s2:.1f} MB | {e2:.1f} MB | **{e2 - s2:+.1f} MB** | {stats["block"].count:,} |

| regions | resident MB, `@tracked` | resident MB, `with` |
| ---: | ---: | ---: |
""" + "".join(f"| {i:,} | {a:.1f} | {b:.1f} |\n" for (i, a), (_, b) in zip(m1, m2, strict=True))
    print(text)
    write_result("memory", text)


if __name__ == "__main__":
    main()

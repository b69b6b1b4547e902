"""Cost of entering and leaving a region, against an empty ``with`` in the same run.

Two figures, the sampler running on simulated hardware (three RAPL zones and one GPU):

* the median time of one ``with`` block (or one call), each timed on its own: what entering and
  leaving costs on the hot path;
* the mean over a loop of them, which also carries the deferred work of resolving each region
  (the resolver thread takes the GIL for it) and the garbage collector.

Run: ``.venv/bin/python benches/bench_overhead.py [--output]`` (``--output``: with JSON Lines
output on, written to a temporary file; the result goes to ``overhead-output.md``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import carbonctx
from _common import machine, simulated, write_result
from carbonctx.testing import Wave

N = 200_000
REPEATS = 5
BLOCK = 100


class Empty:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def timed_each(kind: str, n: int, step: object, plain: object) -> list[int]:
    pc = time.perf_counter_ns
    out = [0] * n
    track = carbonctx.track
    empty = Empty()
    for i in range(n):
        t = pc()
        if kind == "track":
            with track("step"):
                pass
        elif kind == "empty":
            with empty:
                pass
        elif kind == "tracked":
            step()  # type: ignore[operator]
        else:
            plain()  # type: ignore[operator]
        out[i] = pc() - t
    return out


def timed_blocks(kind: str, blocks: int, step: object, plain: object) -> list[float]:
    """Per-iteration time of ``blocks`` blocks of ``BLOCK`` iterations, each block timed as a
    whole: finer than the timer's steps (10 ns on some VMs), which bound the per-call figure."""
    pc = time.perf_counter_ns
    out = [0.0] * blocks
    track = carbonctx.track
    empty = Empty()
    rng = range(BLOCK)
    for i in range(blocks):
        t = pc()
        if kind == "track":
            for _ in rng:
                with track("step"):
                    pass
        elif kind == "empty":
            for _ in rng:
                with empty:
                    pass
        elif kind == "tracked":
            for _ in rng:
                step()  # type: ignore[operator]
        else:
            for _ in rng:
                plain()  # type: ignore[operator]
        out[i] = (pc() - t) / BLOCK
    return out


def main() -> None:
    @carbonctx.tracked(name="call")
    def step() -> None:
        pass

    def plain() -> None:
        pass

    med: dict[str, list[float]] = {k: [] for k in ("track", "empty", "tracked", "plain")}
    mean: dict[str, list[float]] = {k: [] for k in med}
    blk: dict[str, list[float]] = {k: [] for k in med}
    output = "--output" in sys.argv
    with simulated(gpus=1, core=Wave.constant(20.0)):
        if output:
            out = Path(tempfile.mkdtemp(prefix="carbonctx-overhead-")) / "r.jsonl"
            carbonctx.configure(output=str(out))
        timed_each("track", 2000, step, plain)  # start the sampler, warm up
        timed_each("tracked", 2000, step, plain)
        for _ in range(REPEATS):
            for kind in med:
                xs = timed_each(kind, N, step, plain)
                med[kind].append(statistics.median(xs))
                mean[kind].append(statistics.fmean(xs))
                blk[kind].append(statistics.median(timed_blocks(kind, N // BLOCK, step, plain)))
            carbonctx.flush()
        counts = carbonctx.stats()
    m = {k: statistics.median(v) for k, v in med.items()}
    a = {k: statistics.median(v) for k, v in mean.items()}
    b = {k: statistics.median(v) for k, v in blk.items()}
    text = f"""# Region overhead

{machine()}

Sampler running on simulated hardware (package, core and DRAM zones, one GPU); JSON Lines
output {"on" if output else "off"}. Each block or
call is timed on its own ({N:,} of each per run, {REPEATS} runs; figures are the median over
runs). The timer itself is in every figure, baseline included, and cancels in the difference.

| what | median, added to the baseline | mean, added (with deferred work) | baseline in the same run |
| --- | --- | --- | --- |
| `with carbonctx.track("step"):` | **{(m["track"] - m["empty"]) / 1e3:.3f} µs** | {(a["track"] - a["empty"]) / 1e3:.2f} µs | empty `with`: median {m["empty"]:.0f} ns |
| `@carbonctx.tracked` call | **{(m["tracked"] - m["plain"]) / 1e3:.3f} µs** | {(a["tracked"] - a["plain"]) / 1e3:.2f} µs | plain call: median {m["plain"]:.0f} ns |

Timed in blocks of {BLOCK} (the median block's time per iteration; finer than the timer's steps,
which bound the per-call medians above; a block also carries any deferred work that lands in it):
`with` {(b["track"] - b["empty"]):.1f} ns added (empty `with` {b["empty"]:.1f} ns), decorated
call {(b["tracked"] - b["plain"]):.1f} ns added (plain call {b["plain"]:.1f} ns).

The mean carries what each region costs later: the resolver thread claiming it and turning it
into statistics (under the GIL), and the garbage collector. A `with` block leaves a handle
waiting for its result (kept out of the collector); a decorated call leaves none. Regions measured: {counts["step"].count:,} `with`,
{counts["call"].count:,} calls.
"""
    print(text)
    write_result("overhead-output" if output else "overhead", text)


if __name__ == "__main__":
    main()

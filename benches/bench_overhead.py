"""Cost of entering and leaving a region, against an empty ``with`` in the same run.

Median over repeated batches, the sampler running on simulated hardware (three RAPL zones and
one GPU). Run: ``.venv/bin/python benches/bench_overhead.py``.
"""

from __future__ import annotations

import time

import carbonctx
from _common import machine, median, simulated, write_result

N = 100_000
REPEATS = 9


class Empty:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def per_call_ns(fn: object, n: int) -> float:
    t = time.perf_counter_ns()
    fn(n)  # type: ignore[operator]
    return (time.perf_counter_ns() - t) / n


def main() -> dict[str, float]:
    empty = Empty()

    def loop_empty(n: int) -> None:
        for _ in range(n):
            with empty:
                pass

    def loop_track(n: int) -> None:
        track = carbonctx.track
        for _ in range(n):
            with track("step"):
                pass

    def plain() -> None:
        pass

    @carbonctx.tracked
    def step() -> None:
        pass

    def loop_plain(n: int) -> None:
        for _ in range(n):
            plain()

    def loop_tracked(n: int) -> None:
        for _ in range(n):
            step()

    out: dict[str, list[float]] = {k: [] for k in ("empty", "track", "plain", "tracked")}
    with simulated(gpus=1, core=carbonctx.testing.Wave.constant(20.0)):
        loop_track(1000)  # start the sampler, warm up
        loop_tracked(1000)
        for _ in range(REPEATS):
            out["empty"].append(per_call_ns(loop_empty, N))
            out["track"].append(per_call_ns(loop_track, N))
            out["plain"].append(per_call_ns(loop_plain, N))
            out["tracked"].append(per_call_ns(loop_tracked, N))
            carbonctx.flush()
        count = carbonctx.stats()["step"].count
    med = {k: median(v) for k, v in out.items()}
    res = {
        "with_track_us": (med["track"] - med["empty"]) / 1e3,
        "tracked_us": (med["tracked"] - med["plain"]) / 1e3,
        "empty_with_ns": med["empty"],
        "plain_call_ns": med["plain"],
        "regions": float(count),
    }
    text = f"""# Region overhead

{machine()}

Sampler running on simulated hardware (package, core and DRAM zones, one GPU).
Median of {REPEATS} batches of {N:,} regions each.

| what | median per region | baseline in the same run |
| --- | --- | --- |
| `with carbonctx.track("step"):` | {res["with_track_us"]:.2f} µs added | empty `with`: {med["empty"]:.0f} ns |
| `@carbonctx.tracked` call | {res["tracked_us"]:.2f} µs added | plain call: {med["plain"]:.0f} ns |

Raw medians (ns per iteration): empty with {med["empty"]:.0f}, with track {med["track"]:.0f},
plain call {med["plain"]:.0f}, tracked call {med["tracked"]:.0f}.
"""
    print(text)
    write_result("overhead", text)
    return res


if __name__ == "__main__":
    main()

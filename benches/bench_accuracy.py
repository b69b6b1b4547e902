"""Energy per region against the simulated counters' exact truth.

* 100 contiguous 20 ms regions under a 50 ms square-wave load (40/120 W): package energy per
  region (median and worst relative error) and the error of their sum over the span; phase-
  locked polling on (the default) and off, in the same run.
* A 5 s span with a package counter that wraps twice a second: error of the total.

Repeated; medians reported. Run: ``.venv/bin/python benches/bench_accuracy.py``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from _common import busy, machine, package_sampler, write_result
from carbonctx import _native
from carbonctx.testing import SimulatedMachine, Wave

REPEATS = 5


def drain(s: _native.Sampler) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, _ids, _tags, t0, t1, j, _u = s.drain()
    width = len(s.sources)
    return (
        np.frombuffer(t0, dtype=np.uint64),
        np.frombuffer(t1, dtype=np.uint64),
        np.frombuffer(j).reshape(n, width)[:, 0],
    )


def short_regions(phase_lock: bool) -> dict[str, float]:
    with SimulatedMachine(package=Wave(40.0, 120.0, 0.05), dram=None) as sim:
        s = package_sampler(sim, phase_lock=phase_lock)
        time.sleep(0.3)  # learn the counters' phase
        for _ in range(100):
            rid = s.begin()
            busy(0.02)
            s.end(rid)
        s.wait(_native.now_ns(), 5.0)
        t0, t1, j = drain(s)
        s.stop()
        truth = np.array(
            [sim.truth_j("package", 0, a, b) for a, b in zip(t0.tolist(), t1.tolist(), strict=True)]
        )
        span = sim.truth_j("package", 0, int(t0[0]), int(t1[-1]))
    err = np.abs(j - truth) / truth
    return {
        "median": float(np.median(err)),
        "worst": float(err.max()),
        "sum": float(abs(j.sum() - truth.sum()) / truth.sum()),
        "span_cover": float(truth.sum() / span),
    }


def wrapping_span() -> dict[str, float]:
    # 80 W mean: a 40 J range wraps twice a second.
    with SimulatedMachine(package=Wave(40.0, 120.0, 0.05), dram=None, wrap_uj=40_000_000) as sim:
        s = package_sampler(sim, phase_lock=True)
        time.sleep(0.2)
        rid = s.begin()
        time.sleep(5.0)
        s.end(rid)
        s.wait(_native.now_ns(), 5.0)
        t0, t1, j = drain(s)
        wraps = s.status()[0]["wraps"]
        s.stop()
        truth = sim.truth_j("package", 0, int(t0[0]), int(t1[0]))
    return {"error": float(abs(j[0] - truth) / truth), "wraps": float(wraps)}


def main() -> None:
    rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(REPEATS):
        for pl in (True, False):
            rows[pl].append(short_regions(pl))
    wraps = [wrapping_span() for _ in range(3)]

    def med(pl: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows[pl])

    text = f"""# Accuracy against the simulated counters' truth

{machine()}

100 contiguous 20 ms regions, package counter (RAPL-like, updates every 1 ms), 40/120 W square
wave with a 50 ms period. Each figure is the median over {REPEATS} runs of the per-run statistic.

| polling | median error per region | worst region | error of the sum |
| --- | --- | --- | --- |
| phase-locked (default) | {med(True, "median") * 100:.2f} % | {med(True, "worst") * 100:.2f} % | {med(True, "sum") * 100:.3f} % |
| fixed 1 ms interval | {med(False, "median") * 100:.2f} % | {med(False, "worst") * 100:.2f} % | {med(False, "sum") * 100:.3f} % |

Worst region over all runs: phase-locked {max(r["worst"] for r in rows[True]) * 100:.2f} %,
fixed {max(r["worst"] for r in rows[False]) * 100:.2f} %.

5 s region with a counter that wraps twice a second (40 J range at 80 W mean), 3 runs:
error of the total {statistics.median(w["error"] for w in wraps) * 100:.4f} % (median),
{max(w["error"] for w in wraps) * 100:.4f} % (worst); wraps seen per run:
{", ".join(str(int(w["wraps"])) for w in wraps)}.
"""
    print(text)
    write_result("accuracy", text)


if __name__ == "__main__":
    main()

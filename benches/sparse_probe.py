"""Why a 20 ms region came out far off: the timeline points around its edges.

One run in this interpreter (this tree's package) of 100 contiguous busy 20 ms regions on a
simulated package counter (40/120 W square wave, 50 ms period) with the sampler variant asked
for. Prints, as JSON, the median and worst region error and, for the worst regions: the
distance from each edge to the timeline points before and after it (a wide bracket: the edge
was interpolated between reads far apart), each nearby point's stamp against the nearest true
counter update, and its joules against the simulator's truth at its stamp (about an update's
energy off: the change was put at the wrong update). Also counts, over the run, the edges
bracketed more than 3 ms wide and the points an update's energy off.

Run: ``PYTHONPATH=python .venv/bin/python benches/sparse_probe.py [--variant
default|at-marks|predict] [--period-s 0.001]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _common import busy, package_sampler
from carbonctx import _native
from carbonctx.testing import SimulatedMachine, Wave


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["default", "at-marks", "predict"], default="predict")
    ap.add_argument("--period-s", type=float, default=0.001)
    ap.add_argument("--regions", type=int, default=100)
    args = ap.parse_args()
    wave = Wave(40.0, 120.0, 0.05)
    with SimulatedMachine(package=wave, dram=None, update_period_s=args.period_s) as sim:
        s = package_sampler(sim, "" if args.variant == "default" else args.variant)
        time.sleep(0.3)
        start = _native.now_ns()
        for _ in range(args.regions):
            rid = s.begin()
            busy(0.02)
            s.end(rid)
        s.wait(_native.now_ns(), 5.0)
        n, _i, _t, t0b, t1b, jb, _u = s.drain()
        tl = np.array(s.timeline(0, start - 50_000_000))
        scheduling = s.scheduling()
        s.stop()
        writes = np.sort(np.array(sim._sim.write_times(), dtype=np.int64))
        t0 = np.frombuffer(t0b, dtype=np.uint64).astype(np.int64)
        t1 = np.frombuffer(t1b, dtype=np.uint64).astype(np.int64)
        j = np.frombuffer(jb).reshape(n, -1)[:, 0]
        truth = np.array(
            [sim.truth_j("package", 0, int(a), int(b)) for a, b in zip(t0, t1, strict=True)]
        )
        pt = tl[:, 0].astype(np.int64)
        ref = int(pt[pt > writes[0] + 5_000_000][0])
        jref = float(tl[pt == ref, 1][0])
        # Each point's joules against the truth at its stamp, mJ (from a reference point).
        off_mj = {
            int(x): (float(y) - jref - sim.truth_j("package", 0, ref, int(x))) * 1e3
            for x, y in tl
            if x > ref
        }
    err = np.abs(j - truth) / truth

    def stamp_off_us(x: int) -> int:
        k = int(np.searchsorted(writes, x))
        near = [int(writes[q]) for q in (k - 1, k) if 0 <= q < len(writes)]
        return round((x - min(near, key=lambda w: abs(w - x))) / 1e3)

    def edge(e: int) -> dict[str, object]:
        k = int(np.searchsorted(pt, e, side="right"))
        around = [int(pt[q]) for q in range(k - 2, k + 2) if 0 <= q < len(pt)]
        return {
            "bracket_us": [round((e - pt[k - 1]) / 1e3), round((pt[k] - e) / 1e3)]
            if 0 < k < len(pt)
            else None,
            "points_stamp_minus_update_us": [stamp_off_us(x) for x in around],
            "points_joules_off_mJ": [round(off_mj[x], 1) if x in off_mj else None for x in around],
        }

    edges = np.concatenate([t0[:1], t1])
    gaps = []
    for e in edges.tolist():
        k = int(np.searchsorted(pt, e, side="right"))
        if 0 < k < len(pt):
            gaps.append(int(pt[k] - pt[k - 1]))
    offs = np.array(list(off_mj.values()))
    out = {
        "variant": args.variant,
        "scheduling": scheduling,
        "median_pct": float(np.median(err)) * 100,
        "worst_pct": float(err.max()) * 100,
        "edges_bracketed_over_3ms": sum(g > 3_000_000 for g in gaps),
        "edges": len(gaps),
        "points_an_update_off": int(np.sum(np.abs(offs - np.median(offs)) > 30.0)),
        "points": len(offs),
        "worst": [
            {
                "region": int(i),
                "error_pct": round(float((j[i] - truth[i]) / truth[i]) * 100, 2),
                "start": edge(int(t0[i])),
                "end": edge(int(t1[i])),
            }
            for i in np.argsort(-err)[:3]
        ],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

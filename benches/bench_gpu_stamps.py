"""How closely a GPU energy counter's 100 ms updates are stamped, and what that does to 20 ms
regions.

The peer suite's GPU (`benches/peers/run.py`): a simulated GPU drawing a 50/250 W square wave of
200 ms period whose energy counter updates every 100 ms (an H100's cadence), polled every 20 ms,
its reads cheap (the stand-in library), the driver's power samples not used (the timeline then
holds only the counter's own points, and each update's energy is spread evenly). 150
back-to-back 20 ms regions with the native sampler, from its start (while the phase lock learns
the period, about twelve updates) and after 2 s. Per run: the error of each update's stamp in
the GPU timeline against the simulator's update instants, the error of each region's GPU joules
against the exact integral, and the sampler's reads of the GPU a second. Each run in a fresh
interpreter; this tree and ``--before TREE`` (its ``python`` folder, with its built native
module) alternate. Run: ``.venv/bin/python benches/bench_gpu_stamps.py [--runs N] [--before
TREE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import machine, write_result

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, statistics, sys, time
from carbonctx import _native
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave
U = 100_000_000
with SimulatedMachine(dram=None, gpus=[GpuSpec(wave=Wave(50.0, 250.0, 0.2))], gpu_update_s=0.1) as sim:
    args = {k: v for k, v in sim.settings().items() if k != "gpu"}
    s = _native.Sampler(**args, cpu_backends=[], estimate="never", gpu_power_samples=False)
    gi = [x["id"] for x in s.sources].index("nvml:0")
    time.sleep(float(sys.argv[1]))
    start = _native.now_ns()
    reads0 = s.status()[gi]["reads"]
    for _ in range(150):
        r = s.begin()
        time.sleep(0.02)
        s.end(r)
    s.wait(_native.now_ns(), 5.0)
    n, _ids, _tags, t0_b, t1_b, j_b, _u = s.drain()
    st = s.status()[gi]
    pts = s.timeline(gi, start)
    s.stop()
    import numpy as np
    t0 = np.frombuffer(t0_b, dtype=np.uint64).tolist()
    t1 = np.frombuffer(t1_b, dtype=np.uint64).tolist()
    j = np.frombuffer(j_b, dtype=np.float64).reshape(n, len(s.sources))[:, gi]
    region = [abs(g - sim.gpu_truth_j(0, a, b)) / sim.gpu_truth_j(0, a, b) for g, a, b in zip(j, t0, t1)]
    stamps, prev = [], None
    for t, e in pts:
        if prev is not None and e != prev:
            k = round((t - sim.t0_ns) / U)
            stamps.append(abs(t - (sim.t0_ns + k * U)) / 1e6)
        prev = e
    print(json.dumps({
        "stamp_median_ms": statistics.median(stamps), "stamp_max_ms": max(stamps),
        "region_median": statistics.median(region), "region_worst": max(region),
        "reads_per_s": (st["reads"] - reads0) / 3.0, "anchors": st["phase_anchors"],
    }))
"""


def one(tree: Path, warm_s: float) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree / "python"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(warm_s)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


#: Regions from the sampler's start (the period is being learned during the first 1.2 s or
#: so), and after 2 s.
WARM_S = (0.0, 2.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--before", type=Path, default=None)
    args = ap.parse_args()
    trees = {"this tree": HERE.parent}
    if args.before is not None:
        trees["before"] = args.before
    res: dict[tuple[float, str], list[dict[str, float]]] = {}
    for _ in range(args.runs):
        for warm in WARM_S:
            for name, tree in trees.items():
                res.setdefault((warm, name), []).append(one(tree, warm))

    def med(k: tuple[float, str], key: str) -> float:
        return statistics.median(r[key] for r in res[k])

    def worst(k: tuple[float, str], key: str) -> float:
        return max(r[key] for r in res[k])

    rows = [
        f"| {k[0]:g} s | {k[1]} | {med(k, 'stamp_median_ms'):.3f} ms "
        f"| {worst(k, 'stamp_median_ms'):.3f} ms | {worst(k, 'stamp_max_ms'):.2f} ms "
        f"| {med(k, 'region_median') * 100:.2f} % | {worst(k, 'region_median') * 100:.2f} % "
        f"| {worst(k, 'region_worst') * 100:.1f} % | {med(k, 'reads_per_s'):.1f} |"
        for k in sorted(res)
    ]
    per_run = "\n".join(
        f"- {k[0]:g} s, {k[1]}: stamp medians "
        + ", ".join(f"{r['stamp_median_ms']:.3f}" for r in runs)
        + " ms; region medians "
        + ", ".join(f"{r['region_median'] * 100:.2f}" for r in runs)
        + " %"
        for k, runs in sorted(res.items())
    )
    before = " --before TREE" if args.before else ""
    text = f"""# GPU counter updates: how closely they are stamped

{machine()}

A simulated GPU (50/250 W, 200 ms square wave; energy counter updating every 100 ms, cheap reads;
polled every 20 ms; power samples off), then 150 back-to-back 20 ms regions on the native
sampler, from its start or after 2 s (the phase lock learns the period from about twelve
updates); {args.runs} runs per row, trees alternating, each in a fresh interpreter
(`python benches/bench_gpu_stamps.py --runs {args.runs}{before}`).
Stamp error: each counter update's time in the GPU timeline against the simulator's update
instant. Region error: GPU joules of each 20 ms region against the exact integral.

| regions from | tree | stamp error, median of runs | worst run's median | worst stamp | 20 ms regions, median of runs | worst run's median | worst region | GPU reads/s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{per_run}
"""
    print(text)
    write_result("gpu-stamps", text)


if __name__ == "__main__":
    main()

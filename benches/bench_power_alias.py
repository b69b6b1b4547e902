"""A GPU that reports power only (no energy counter), polled every 20 ms, under periodic loads.

A 5 s region on a simulated GPU whose power is a 50/250 W square wave of period 20, 30, 50 and
100 ms (the power reading is instantaneous); error of the region's energy against the exact
integral, several runs per period, signed (a bias shows as errors of one sign). With
``--before PATH`` another tree (its ``python`` folder) is run the same way, alternately, in the
same run. Run: ``.venv/bin/python benches/bench_power_alias.py [--runs N] [--before TREE]``.
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
PERIODS_MS = (20, 30, 50, 100)

CHILD = r"""
import json, sys, time
from carbonctx import _native
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave
period = float(sys.argv[1])
gpu = GpuSpec(wave=Wave(50.0, 250.0, period), energy_counter=False)
with SimulatedMachine(dram=None, gpus=[gpu], gpu_update_s=0.0) as sim:
    r = sim._sim.roots()
    s = _native.Sampler(sys_root=r["sys_root"], dev_root=r["dev_root"], proc_root=r["proc_root"],
                        nvml_library=str(sim.nvml_library), cpu_backends=[])
    col = [i for i, x in enumerate(s.sources) if x["backend"] == "nvml"][0]
    time.sleep(0.2)
    rid = s.begin()
    time.sleep(5.0)
    s.end(rid)
    s.wait(_native.now_ns(), 5.0)
    n, _i, _t, t0, t1, j, _u = s.drain()
    s.stop()
    import struct
    a = struct.unpack("<Q", t0[:8])[0]; b = struct.unpack("<Q", t1[:8])[0]
    width = len(s.sources)
    got = struct.unpack(f"<{n * width}d", j)[col]
    truth = sim.gpu_truth_j(0, a, b)
print(json.dumps((got - truth) / truth))
"""


def one(tree: Path, period_ms: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree / "python"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(period_ms / 1000)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None)
    args = ap.parse_args()
    trees = {"this tree": HERE.parent}
    if args.before is not None:
        trees["before"] = args.before
    res: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.runs):
        for p in PERIODS_MS:
            for name, tree in trees.items():
                res.setdefault((name, p), []).append(one(tree, p) * 100)
    lines = [
        f"| {name} | {p} ms | {statistics.median(v):+.2f} % | {max(abs(x) for x in v):.2f} % "
        f"| {', '.join(f'{x:+.2f}' for x in v)} |"
        for (name, p), v in sorted(res.items())
    ]
    text = f"""# Power-only GPU under periodic load

{machine()}

A 5 s region; the simulated GPU reports instantaneous power only (50/250 W square wave), read
about every 20 ms and integrated with the trapezoid rule. Signed error of the region's energy
against the exact integral; {args.runs} runs per period and tree, run alternately.

| tree | load period | median error | worst | runs |
| --- | --- | --- | --- | --- |
{chr(10).join(lines)}
"""
    print(text)
    write_result("power-alias", text)


if __name__ == "__main__":
    main()

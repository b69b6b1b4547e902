"""A GPU that reports power only (no energy counter), under periodic loads of many periods.

A 5 s region on a simulated GPU whose power is a 50/250 W square wave (the power reading is
instantaneous); error of the region's energy against the exact integral, several runs per
period, signed (a bias shows as errors of one sign), and the sampler thread's CPU time over the
region. Three machines: the GPU alone (``gpu``); the GPU with CPU counters (``gpu+cpu``: a
power read can share their wake-ups; with no mark inside the region they are read every
millisecond for the first 2 s of it, then every 20 ms); and the same with a 10 ms region every
20 ms inside the 5 s one (``gpu+cpu, marked``: a training loop, the counters read every
millisecond throughout). The
high part of each period is a whole number of milliseconds (the simulated trace has 1 ms
ticks). With ``--before PATH`` another tree (its ``python`` folder) is run the same way,
alternately, in the same run; with ``--share S`` this tree is also run with ``power_share=S``
(the share of a core the GPU's reads may take while a region is open). Each run also records
the read instants it achieved (the gaps between the GPU's reads within the region) and the
error those instants make with the exact power. ``--update-s`` makes the GPU hold its reading
for that long (as NVML's power does) instead of reporting the power at the read. Run:
``.venv/bin/python benches/bench_power_alias.py [--runs N] [--before TREE] [--share S]
[--update-s S] [--label TEXT]``.
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
PERIODS_MS = (20, 30, 34, 40, 50, 52, 60, 77, 100, 157, 250)
MACHINES = ("gpu", "gpu+cpu", "gpu+cpu, marked")

CHILD = r"""
import bisect, json, os, struct, sys, time
from carbonctx import _native
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave
period_ms = int(sys.argv[1]); cpu = sys.argv[2] != "gpu"; marked = "marked" in sys.argv[2]
duty = (period_ms // 2) / period_ms
gpu = GpuSpec(wave=Wave(50.0, 250.0, period_ms / 1000, duty), energy_counter=False)

from _common import thread_cpu_s

def sampler_cpu_s():
    return thread_cpu_s("carbonctx-sampler")

with SimulatedMachine(dram=None, gpus=[gpu], gpu_update_s=float(os.environ["BENCH_UPDATE_S"])) as sim:
    r = sim._sim.roots()
    share = os.environ.get("BENCH_POWER_SHARE")
    kw = {"power_share": float(share)} if share else {}
    s = _native.Sampler(sys_root=r["sys_root"], dev_root=r["dev_root"], proc_root=r["proc_root"],
                        nvml_library=str(sim.nvml_library),
                        cpu_backends=["powercap"] if cpu else [], **kw)
    col = [i for i, x in enumerate(s.sources) if x["backend"] == "nvml"][0]
    time.sleep(0.2)
    c0, w0 = sampler_cpu_s(), time.monotonic()
    rid = s.begin()
    if marked:
        # A training loop: a 10 ms region every 20 ms inside the 5 s one.
        while time.monotonic() - w0 < 5.0:
            inner = s.begin()
            time.sleep(0.01)
            s.end(inner)
            time.sleep(0.01)
    else:
        time.sleep(5.0)
    s.end(rid)
    c1, w1 = sampler_cpu_s(), time.monotonic()
    s.wait(_native.now_ns(), 5.0)
    n, _i, _t, t0, t1, j, _u = s.drain()
    pts = s.timeline(col, 0)
    s.stop()
    width = len(s.sources)
    row = list(struct.unpack(f"<{n}Q", _i)).index(rid)
    a = struct.unpack("<Q", t0[8 * row:8 * row + 8])[0]; b = struct.unpack("<Q", t1[8 * row:8 * row + 8])[0]
    got = struct.unpack(f"<{n * width}d", j)[row * width + col]
    unc = struct.unpack(f"<{n * width}d", _u)[row * width + col]
    truth = sim.gpu_truth_j(0, a, b)
    t0w = sim._sim.t0_ns
# The read instants achieved: the GPU's points (one per read) within the region.
ts = [t for t, _ in pts]
gaps = sorted((y - x) / 1e6 for x, y in zip(ts, ts[1:]) if a <= x and y <= b)
# The same trapezoid over the same instants with the exact power: the error the instants alone
# make (equal to the sampler's when every reading is the power at its instant).
cum = [0.0]
for x, y in zip(ts, ts[1:]):
    px, py = (gpu.wave.power_w((t - t0w) / 1e9) for t in (x, y))
    cum.append(cum[-1] + (px + py) / 2 * (y - x) * 1e-9)
def at(t):
    k = min(max(bisect.bisect_right(ts, t) - 1, 0), len(ts) - 2)
    return cum[k] + (t - ts[k]) / max(ts[k + 1] - ts[k], 1) * (cum[k + 1] - cum[k])
inst = at(b) - at(a)
print(json.dumps([(got - truth) / truth, (c1 - c0) / (w1 - w0), unc / truth,
                  sum(gaps) / len(gaps), gaps[int(0.9 * len(gaps))], gaps[-1],
                  (inst - truth) / truth]))
"""


def one(tree: Path, period_ms: int, kind: str, share: str, update_s: float) -> list[float]:
    """Error, sampler CPU, stated uncertainty, mean, 90th-percentile and largest gap between
    the GPU's reads (ms), and the error of the same instants with the exact power."""
    # The tree's package first, then this folder (the child uses `_common`).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "python"), str(HERE)]))
    env["BENCH_POWER_SHARE"] = share
    env["BENCH_UPDATE_S"] = repr(update_s)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(period_ms), kind],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--label", default="idle", help="what else the machine was doing")
    ap.add_argument("--periods", default=",".join(map(str, PERIODS_MS)))
    ap.add_argument(
        "--update-s",
        type=float,
        default=0.0,
        help="the simulated GPU's power holds for this long (0: instantaneous; NVML: 0.02-0.1)",
    )
    ap.add_argument(
        "--share",
        action="append",
        default=[],
        help="also run this tree with this power_share (share of a core for the GPU's reads)",
    )
    args = ap.parse_args()
    periods = [int(p) for p in args.periods.split(",")]
    # Name: (tree, power_share or "" for the default).
    trees = {"this tree": (HERE.parent, "")}
    for share in args.share:
        trees[f"this tree, share {float(share) * 100:g} %"] = (HERE.parent, share)
    if args.before is not None:
        trees["before"] = (args.before, "")
    load0 = os.getloadavg()[0]
    res: dict[tuple[str, str, int], list[float]] = {}
    # The stated uncertainty per period (relative, %).
    stated: dict[tuple[str, str, int], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    # Runs whose error is within the stated uncertainty, and the uncertainties (relative).
    covered: dict[tuple[str, str], list[bool]] = {}
    uncs: dict[tuple[str, str], list[float]] = {}
    # Mean and 90th-percentile gaps between reads (ms); how far the error is from that of the
    # same instants with the exact power (%).
    gaps: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    off = 0.0
    for _ in range(args.runs):
        for kind in MACHINES:
            for p in periods:
                for name, (tree, share) in trees.items():
                    e, c, u, mean_gap, p90_gap, max_gap, inst = one(
                        tree, p, kind, share, args.update_s
                    )
                    gaps.setdefault((kind, name), []).append((mean_gap, p90_gap, max_gap))
                    off = max(off, abs(e - inst) * 100)
                    res.setdefault((kind, name, p), []).append(e * 100)
                    stated.setdefault((kind, name, p), []).append(u * 100)
                    cpu.setdefault((kind, name), []).append(c * 100)
                    covered.setdefault((kind, name), []).append(abs(e) <= u)
                    uncs.setdefault((kind, name), []).append(u * 100)
    lines = []
    for kind in MACHINES:
        for p in periods:
            for name in trees:
                v, w = res[(kind, name, p)], stated[(kind, name, p)]
                lines.append(
                    f"| {kind} | {name} | {p} ms | {statistics.median(v):+.2f} % "
                    f"| {max(abs(x) for x in v):.2f} % | {', '.join(f'{x:+.2f}' for x in v)} "
                    f"| {', '.join(f'±{x:.2f}' for x in w)} "
                    f"| {sum(abs(x) <= y for x, y in zip(v, w, strict=True))}/{len(v)} |"
                )
    summary = []
    for kind in MACHINES:
        for name in trees:
            v = [abs(x) for p in periods for x in res[(kind, name, p)]]
            c = cpu[(kind, name)]
            cov = covered[(kind, name)]
            g = gaps[(kind, name)]
            summary.append(
                f"| {kind} | {name} | {max(v):.2f} % | {statistics.median(v):.2f} % "
                f"| {sum(x <= 1.0 for x in v)}/{len(v)} | {statistics.median(c):.2f} % "
                f"| {max(c):.2f} % | {statistics.median(uncs[(kind, name)]):.2f} % "
                f"| {sum(cov)}/{len(cov)} | {statistics.median(x[0] for x in g):.2f} ms "
                f"| {statistics.median(x[1] for x in g):.2f} ms | {max(x[2] for x in g):.1f} ms |"
            )
    hold = (
        f"the reading holds for {args.update_s * 1e3:g} ms at a time, as NVML's does"
        if args.update_s > 0
        else "the reading is the power at the read"
    )
    text = f"""# Power-only GPU under periodic load ({args.label})

{machine()}; load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end

A 5 s region; the simulated GPU reports power only (50/250 W square wave, the high part a whole
number of milliseconds; {hold}), integrated over read times with the trapezoid rule.
Signed error of the region's energy against the exact integral; {args.runs} runs per period,
machine and tree, run alternately. `gpu`: the GPU alone; `gpu+cpu`: with the CPU package counter
(read every millisecond for 2 s after a mark, then every 20 ms); `gpu+cpu, marked`: the same
with a 10 ms region every 20 ms inside the 5 s one. Sampler CPU: the sampler thread's CPU time over
the region (share of one core). Stated uncertainty: the region's `uncertainty_j` for the GPU
(relative), and the runs whose error it covers. Read gaps: the mean and 90th-percentile gap
between the GPU's reads within the region (medians over runs), and the largest of any run. The
error differs from that of
the trapezoid over the same read instants with the exact power by at most {off:.4f} %
(0: the readings are right and the error is the read instants'; otherwise the device's own).

| machine | tree | worst | median abs | runs within 1 % | sampler CPU median | max | stated uncertainty (median) | covered | read gap, mean | 90th percentile | largest |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(summary)}

| machine | tree | load period | median error | worst | runs | stated uncertainty | covered |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(lines)}
"""
    print(text)
    write_result(f"power-alias-{args.label}", text)


if __name__ == "__main__":
    main()

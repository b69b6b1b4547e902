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

With ``--read-cost-ms C`` (an H100's energy read costs about 2.9 ms of CPU): the stand-in
library's energy read burns C ms of the calling thread's CPU (half before taking the counter,
half after), the driver's power samples are on (they place each update's energy in time), and
the regions run from the start for ``--warm`` seconds (the period is learned closely; an
expensive counter is then read in pairs) before 250 back-to-back 20 ms regions are measured:
the sampler thread's CPU, the GPU's reads a second, stamp errors of the measured points, region
errors, whether each region's ± holds the truth, and the regions' sum against the truth.
Written to ``benches/results/gpu-stamps-costly.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, write_result
from carbonctx import testing

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


#: The stand-in library with an energy read that costs CPU: the stand-in's own source, its
#: energy read renamed and wrapped.
COSTLY_C = r"""
#define nvmlDeviceGetTotalEnergyConsumption ccx_bench_inner_energy
#include "fake_nvml.c"
#undef nvmlDeviceGetTotalEnergyConsumption
static long long ccx_bench_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static void ccx_bench_burn(long long ns) {
    long long end = ccx_bench_cpu_ns() + ns;
    while (ccx_bench_cpu_ns() < end) {}
}
EXPORT int nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *energy) {
    const char *e = getenv("CCX_BENCH_ENERGY_READ_US");
    long long half = e ? atoll(e) * 500LL : 0;
    ccx_bench_burn(half);
    int r = ccx_bench_inner_energy(h, energy);
    ccx_bench_burn(half);
    return r;
}
"""

COSTLY_CHILD = r"""
import json, os, statistics, sys, time
from carbonctx import _native
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave
sys.path.insert(0, sys.argv[3])
from _common import thread_cpu_s
U = 100_000_000
lib, warm = sys.argv[1], float(sys.argv[2])
with SimulatedMachine(dram=None, gpus=[GpuSpec(wave=Wave(50.0, 250.0, 0.2))], gpu_update_s=0.1, nvml_library=lib) as sim:
    args = {k: v for k, v in sim.settings().items() if k != "gpu"}
    s = _native.Sampler(**args, cpu_backends=[], estimate="never", gpu_power_samples=True)
    gi = [x["id"] for x in s.sources].index("nvml:0")
    end = time.monotonic() + warm
    while time.monotonic() < end:
        r = s.begin()
        time.sleep(0.02)
        s.end(r)
    start = _native.now_ns()
    reads0, cpu0, w0 = s.status()[gi]["reads"], thread_cpu_s("carbonctx-sampler"), time.monotonic()
    for _ in range(250):
        r = s.begin()
        time.sleep(0.02)
        s.end(r)
    cpu = (thread_cpu_s("carbonctx-sampler") - cpu0) / (time.monotonic() - w0)
    reads = (s.status()[gi]["reads"] - reads0) / (time.monotonic() - w0)
    s.wait(_native.now_ns(), 10.0)
    n, _ids, _tags, t0_b, t1_b, j_b, u_b = s.drain()
    pts = s.timeline(gi, start)
    s.stop()
    import numpy as np
    t0 = np.frombuffer(t0_b, dtype=np.uint64).tolist()[-250:]
    t1 = np.frombuffer(t1_b, dtype=np.uint64).tolist()[-250:]
    j = np.frombuffer(j_b, dtype=np.float64).reshape(n, len(s.sources))[-250:, gi]
    u = np.frombuffer(u_b, dtype=np.float64).reshape(n, len(s.sources))[-250:, gi]
    truth = [sim.gpu_truth_j(0, a, b) for a, b in zip(t0, t1)]
    region = [abs(g - t) / t for g, t in zip(j, truth)]
    held = sum(abs(g - t) <= x + 1e-3 for g, t, x in zip(j, truth, u)) / len(truth)
    # Measured points hold whole millijoules; points placed by the power samples do not.
    stamps, prev = [], None
    for t, e in pts:
        if prev is not None and e != prev and abs(e * 1e3 - round(e * 1e3)) < 1e-6:
            k = round((t - sim.t0_ns) / U)
            stamps.append(abs(t - (sim.t0_ns + k * U)) / 1e6)
        prev = e
    print(json.dumps({
        "stamp_median_ms": statistics.median(stamps), "stamp_max_ms": max(stamps),
        "region_median": statistics.median(region), "region_worst": max(region),
        "reads_per_s": reads, "cpu": cpu, "held": held,
        "sum_error": abs(float(sum(j)) - sum(truth)) / sum(truth),
        "u_median": statistics.median(u.tolist()),
    }))
"""


def med(runs: list[dict[str, float]], key: str) -> float:
    """The median of ``key`` over runs."""
    return statistics.median(r[key] for r in runs)


def worst(runs: list[dict[str, float]], key: str) -> float:
    """The largest ``key`` of any run."""
    return max(r[key] for r in runs)


def build_costly(directory: Path) -> Path:
    """The stand-in NVML whose energy read burns CPU (``CCX_BENCH_ENERGY_READ_US``)."""
    src = Path(testing.__file__).parent / "_fakes"
    wrapper = directory / "costly_nvml.c"
    wrapper.write_text(COSTLY_C)
    lib = directory / "libnvidia-ml.so.1"
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-shared", "-fPIC", "-O2", "-I", str(src), "-o", str(lib), str(wrapper)]
    subprocess.run(cmd, check=True)
    return lib


def one_costly(tree: Path, lib: Path, warm_s: float, cost_ms: float) -> dict[str, float]:
    env = dict(
        os.environ,
        PYTHONPATH=str(tree / "python"),
        CCX_BENCH_ENERGY_READ_US=str(round(cost_ms * 1000)),
    )
    out = subprocess.run(
        [sys.executable, "-c", COSTLY_CHILD, str(lib), str(warm_s), str(HERE)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def costly(runs: int, trees: dict[str, Path], cost_ms: float, warm_s: float) -> None:
    res: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        lib = build_costly(Path(d))
        for _ in range(runs):
            for name, tree in trees.items():
                res.setdefault(name, []).append(one_costly(tree, lib, warm_s, cost_ms))

    rows = [
        f"| {name} | {med(res[name], 'cpu') * 100:.2f} % | {med(res[name], 'reads_per_s'):.1f} "
        f"| {med(res[name], 'stamp_median_ms'):.3f} ms | {worst(res[name], 'stamp_median_ms'):.3f} ms "
        f"| {med(res[name], 'region_median') * 100:.2f} % | {worst(res[name], 'region_median') * 100:.2f} % "
        f"| {worst(res[name], 'region_worst') * 100:.1f} % | {med(res[name], 'u_median'):.2f} J "
        f"| {min(r['held'] for r in res[name]) * 100:.1f} % "
        f"| {worst(res[name], 'sum_error') * 100:.3f} % |"
        for name in res
    ]
    per_run = "\n".join(
        f"- {name}: sampler CPU "
        + ", ".join(f"{r['cpu'] * 100:.2f}" for r in runs_)
        + " %; stamp medians "
        + ", ".join(f"{r['stamp_median_ms']:.3f}" for r in runs_)
        + " ms; region medians "
        + ", ".join(f"{r['region_median'] * 100:.2f}" for r in runs_)
        + " %"
        for name, runs_ in res.items()
    )
    text = f"""# An expensive GPU energy counter while regions run: sampler CPU and 20 ms accuracy

{machine()}

A simulated GPU (50/250 W, 200 ms square wave; energy counter updating every 100 ms; power
samples every 20 ms, used to place each update's energy) whose energy read burns {cost_ms:g} ms
of the reading thread's CPU (an H100's is about 2.9 ms). Regions of 20 ms back to back from the
sampler's start for {warm_s:g} s, then 250 more measured; {runs} runs per tree, trees
alternating, each in a fresh interpreter
(`python benches/bench_gpu_stamps.py --read-cost-ms {cost_ms:g} --warm {warm_s:g} --runs {runs} --before TREE`).
Sampler CPU: the sampler thread's CPU time over the 250 regions (share of one core).
Stamp error: each measured counter point's time against the simulator's update instant.
Region error: GPU joules of each 20 ms region against the exact integral; ± held: share of
regions whose error is within their ± (worst run); sum: the 250 regions' joules against the
truth (worst run).

| tree | sampler CPU | GPU reads/s | stamp error, median of runs | worst run's median | 20 ms regions, median of runs | worst run's median | worst region | ± median | ± held | sum |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{per_run}
"""
    print(text)
    write_result("gpu-stamps-costly", text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--read-cost-ms", type=float, default=0.0)
    ap.add_argument("--warm", type=float, default=15.0)
    args = ap.parse_args()
    trees = {"this tree": HERE.parent}
    if args.before is not None:
        trees["before"] = args.before
    if args.read_cost_ms > 0:
        costly(args.runs, trees, args.read_cost_ms, args.warm)
        return
    res: dict[tuple[float, str], list[dict[str, float]]] = {}
    for _ in range(args.runs):
        for warm in WARM_S:
            for name, tree in trees.items():
                res.setdefault((warm, name), []).append(one(tree, warm))

    rows = [
        f"| {k[0]:g} s | {k[1]} | {med(res[k], 'stamp_median_ms'):.3f} ms "
        f"| {worst(res[k], 'stamp_median_ms'):.3f} ms | {worst(res[k], 'stamp_max_ms'):.2f} ms "
        f"| {med(res[k], 'region_median') * 100:.2f} % | {worst(res[k], 'region_median') * 100:.2f} % "
        f"| {worst(res[k], 'region_worst') * 100:.1f} % | {med(res[k], 'reads_per_s'):.1f} |"
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

"""Reading at the mark: GPU region edges and 20 ms regions, this tree against another.

* GPU edges: a simulated GPU whose energy counter moves every 1 ms (finer than NVML's 20 ms
  poll), 50/250 W square wave with a 100 ms period; contiguous 5 s regions (each run starts at
  a random instant); relative error of each region's GPU joules against the simulator's truth.
* Sampler CPU: the sampler thread's CPU (share of one core) with 3 RAPL zones (1 ms) and one
  GPU (20 ms), quiet and with a 20 ms region after another, with its reads and wake-ups per
  second; the package zone's 20 ms regions' median and worst error in the same runs.

Each run in a fresh interpreter, trees interleaved; medians over runs. ``--predict`` adds this
tree with ``predict_marks=True`` (reads around predicted marks).
Run: ``.venv/bin/python benches/bench_marks.py [--runs N] [--before TREE] [--part gpu|cpu]
[--predict] [--out NAME]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import VARIANTS, machine, thread_cpu_s, write_result
from carbonctx import _native
from carbonctx.testing import SimulatedMachine, Wave

HERE = Path(__file__).resolve()
GPU_REGIONS = 3
SECONDS = 5.0


VARIANT = ""


def sampler(sim: SimulatedMachine) -> _native.Sampler:
    r = sim._sim.roots()
    kw = VARIANTS[VARIANT]
    return _native.Sampler(
        sys_root=r["sys_root"],
        dev_root=r["dev_root"],
        proc_root=r["proc_root"],
        nvml_library=str(sim.nvml_library),
        cpu_backends=["powercap"],
        **kw,
    )


def drain(s: _native.Sampler) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, _i, _t, t0b, t1b, jb, _u = s.drain()
    return (
        np.frombuffer(t0b, dtype=np.uint64),
        np.frombuffer(t1b, dtype=np.uint64),
        np.frombuffer(jb).reshape(n, len(s.sources)),
    )


def gpu_edges() -> dict[str, float]:
    with SimulatedMachine(dram=None, gpus=1, gpu_update_s=0.001) as sim:
        s = sampler(sim)
        g = next(i for i, src in enumerate(s.sources) if src["backend"] == "nvml")
        time.sleep(0.5 + random.random() * 0.1)
        for _ in range(GPU_REGIONS):
            rid = s.begin()
            time.sleep(SECONDS)
            s.end(rid)
        s.wait(_native.now_ns(), 5.0)
        t0, t1, j = drain(s)
        st = s.status()[g]
        s.stop()
        truth = np.array(
            [sim.gpu_truth_j(0, a, b) for a, b in zip(t0.tolist(), t1.tolist(), strict=True)]
        )
    err = np.abs(j[:, g] - truth) / truth
    return {
        "median": float(np.median(err)),
        "worst": float(err.max()),
        "mark_reads": float(st.get("mark_reads", 0)),
    }


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0)


def cpu(regions: bool) -> dict[str, float]:
    with SimulatedMachine(package=Wave(40.0, 120.0, 0.05), core=Wave.constant(20.0), gpus=1) as sim:
        s = sampler(sim)
        time.sleep(2.5)
        c0 = thread_cpu_s("carbonctx-sampler")
        reads0 = sum(st["reads"] for st in s.status())
        wakes0 = s.stats()["loops"]
        w0 = time.monotonic()
        if regions:
            while time.monotonic() - w0 < SECONDS:
                rid = s.begin()
                time.sleep(0.02)
                s.end(rid)
        else:
            time.sleep(SECONDS)
        wall = time.monotonic() - w0
        c1 = thread_cpu_s("carbonctx-sampler")
        reads1 = sum(st["reads"] for st in s.status())
        wakes1 = s.stats()["loops"]
        s.wait(_native.now_ns(), 5.0)
        t0, t1, j = drain(s)
        s.stop()
        out = {
            "cpu_pct": (c1 - c0) / wall * 100,
            "reads_per_s": (reads1 - reads0) / wall,
            "wakes_per_s": (wakes1 - wakes0) / wall,
        }
        if regions and len(t0):
            truth = np.array(
                [
                    sim.truth_j("package", 0, a, b)
                    for a, b in zip(t0.tolist(), t1.tolist(), strict=True)
                ]
            )
            err = np.abs(j[:, 0] - truth) / truth
            out["median"] = float(np.median(err))
            out["worst"] = float(err.max())
    return out


def child(part: str) -> dict[str, float]:
    if part == "gpu":
        return gpu_edges()
    if part == "quiet":
        return cpu(False)
    return cpu(True)


def run(tree: Path, part: str, variant: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree / "python"))
    out = subprocess.run(
        [sys.executable, str(HERE), "--child", part, "--variant", variant],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--part", choices=["gpu", "cpu", "all"], default="all")
    ap.add_argument("--out", default="marks", help="result file name under results/")
    ap.add_argument("--child", default=None)
    ap.add_argument("--variant", choices=list(VARIANTS), default="")
    ap.add_argument("--predict", action="store_true", help="also this tree with predict_marks")
    args = ap.parse_args()
    if args.child is not None:
        global VARIANT
        VARIANT = args.variant
        print(json.dumps(child(args.child)))
        return
    here = HERE.parent.parent
    trees: dict[str, tuple[Path, str]] = {
        "this tree": (here, ""),
        "this tree, fast_reads=False": (here, "at-marks"),
    }
    if args.predict:
        trees["this tree, predict_marks=True"] = (here, "predict")
    if args.before is not None:
        trees["before"] = (args.before, "")
    parts = {"gpu": ["gpu"], "cpu": ["quiet", "regions"], "all": ["gpu", "quiet", "regions"]}
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.runs):
        for part in parts[args.part]:
            for name, (tree, variant) in trees.items():
                if part == "gpu" and variant:
                    continue  # the GPU's reads at marks depend on neither option
                r = run(tree, part, variant)
                print(name, part, r, file=sys.stderr)
                rows.setdefault((part, name), []).append(r)

    def med(part: str, name: str, key: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in rows[(part, name)])

    def worst(part: str, name: str, key: str) -> float:
        return max(r.get(key, float("nan")) for r in rows[(part, name)])

    lines = []
    for name in trees:
        if ("gpu", name) in rows:
            lines.append(
                f"| {name} | GPU counter every 1 ms, 5 s regions | "
                f"{med('gpu', name, 'median') * 100:.3f} % | "
                f"{worst('gpu', name, 'worst') * 100:.3f} % | "
                f"mark reads per run {med('gpu', name, 'mark_reads'):.0f} |"
            )
    for name in trees:
        if ("quiet", name) in rows:
            lines.append(
                f"| {name} | sampler CPU, quiet | {med('quiet', name, 'cpu_pct'):.2f} % of a core | "
                f"| {med('quiet', name, 'reads_per_s'):.0f} reads/s, "
                f"{med('quiet', name, 'wakes_per_s'):.0f} wake-ups/s |"
            )
        if ("regions", name) in rows:
            lines.append(
                f"| {name} | sampler CPU, a 20 ms region after another | "
                f"{med('regions', name, 'cpu_pct'):.2f} % of a core | "
                f"20 ms package regions: median {med('regions', name, 'median') * 100:.2f} %, "
                f"worst {worst('regions', name, 'worst') * 100:.2f} % | "
                f"{med('regions', name, 'reads_per_s'):.0f} reads/s, "
                f"{med('regions', name, 'wakes_per_s'):.0f} wake-ups/s |"
            )
    text = f"""# Reading at the mark

{machine()}

{args.runs} runs per row and tree (interleaved, each in a fresh interpreter); medians of the
runs (worst: over all runs). GPU rows: {GPU_REGIONS} contiguous {SECONDS:.0f} s regions per run,
simulated GPU counter updating every 1 ms, polled every 20 ms, error against the simulator's
truth. CPU rows: package, core and DRAM zones (1 ms) and one GPU (20 ms), {SECONDS:.0f} s per
run after 2.5 s of start-up, the sampler thread's CPU only. "fast_reads=False": phase-locked
counters read every 20 ms and at each mark (a read at the mark and one just after the next
update) instead of at every update while regions are marked. "predict_marks=True": read every
20 ms and at every update only around each predicted mark while marks repeat steadily.

| tree | what | figure | accuracy | sampler reads, wake-ups |
| --- | --- | --- | --- | --- |
{chr(10).join(lines)}
"""
    print(text)
    write_result(args.out, text)


if __name__ == "__main__":
    main()

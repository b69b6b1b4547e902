"""Helpers shared by the benchmarks: simulated hardware, thread CPU time, result tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import carbonctx
from carbonctx import _native
from carbonctx._measure import process as _runtime
from carbonctx.testing import SimulatedMachine, Wave

RESULTS = Path(__file__).parent / "results"

# The sampler's read modes a tree can be run in (options of this tree only): every update while
# regions are marked (the default), reads at marks instead, reads around predicted marks.
VARIANTS: dict[str, dict[str, bool]] = {
    "": {},
    "at-marks": {"fast_reads": False},
    "predict": {"predict_marks": True},
}


def busy(seconds: float) -> None:
    """Keep this thread's core busy for the given seconds (a region's work)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def package_sampler(sim: SimulatedMachine, variant: str = "", **opts: bool) -> _native.Sampler:
    """A native sampler reading only the simulated machine's powercap zones, in a read mode
    (and with any other of the binding's options)."""
    r = sim._sim.roots()
    return _native.Sampler(
        sys_root=r["sys_root"],
        dev_root=r["dev_root"],
        proc_root=r["proc_root"],
        nvml=False,
        cpu_backends=["powercap"],
        **VARIANTS[variant],
        **opts,
    )


@contextmanager
def simulated(gpus: int = 1, **kw: object) -> Iterator[SimulatedMachine]:
    """A running simulated machine (40/120 W square wave at 50 ms) with carbonctx reading it."""
    kw.setdefault("package", Wave(40.0, 120.0, 0.05))
    with SimulatedMachine(gpus=gpus, **kw) as sim:  # type: ignore[arg-type]
        carbonctx.configure(**sim.settings())
        try:
            yield sim
        finally:
            _runtime.reset()


def thread_cpu_s(name_prefix: str) -> float:
    """CPU time of this process's threads whose name starts with the prefix (schedstat: ns)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
            if not comm.startswith(name_prefix[:15]):
                continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue
    return total * 1e-9


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    try:
        model = subprocess.run(
            ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        model = "?"
    return (
        f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {sys.version.split()[0]}, carbonctx {carbonctx.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    return path

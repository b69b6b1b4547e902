"""What only a real GPU can show: the NVML backend against an NVIDIA GPU.

Measures NVML call latency, how often the energy counter and the power reading change, what
the native sampler learns of the counter's cadence and what it costs, per-region GPU energy
under a real load (PyTorch), against NVML's own counter read at the same edges, and 25 ms steps
under a 50 ms busy / 50 ms idle load with the counter's updates placed by the driver's power
samples and without (``gpu_power_samples``).

Run on a machine with an NVIDIA GPU and PyTorch: ``python benches/gpu_device.py OUT_DIR``.
Writes ``OUT_DIR/gpu-device.md`` and ``OUT_DIR/gpu-device.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import carbonctx
from carbonctx import _native


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def nvml_latency_and_cadence(out: dict[str, Any]) -> None:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    out["gpu"] = pynvml.nvmlDeviceGetName(h)
    out["driver"] = pynvml.nvmlSystemGetDriverVersion()
    calls: dict[str, Any] = {
        "energy": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        "power": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        "field 186 (instant power)": lambda: pynvml.nvmlDeviceGetFieldValues(h, [186]),
    }
    lat: dict[str, dict[str, float]] = {}
    for name, f in calls.items():
        ts = []
        try:
            for _ in range(200):
                t = time.perf_counter_ns()
                f()
                ts.append((time.perf_counter_ns() - t) / 1e3)
            lat[name] = {"median_us": statistics.median(ts), "p95_us": pct(ts, 0.95)}
        except Exception as e:  # a field the GPU lacks
            lat[name] = {"error": str(e)}  # type: ignore[dict-item]
    out["nvml_latency"] = lat
    # How often the counter and the power reading change: read back to back for 3 s.
    changes_e: list[int] = []
    changes_p: list[int] = []
    last_e = last_p = None
    end = time.monotonic_ns() + 3_000_000_000
    reads = 0
    while time.monotonic_ns() < end:
        e = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        p = pynvml.nvmlDeviceGetPowerUsage(h)
        t = time.monotonic_ns()
        reads += 1
        if last_e is not None and e != last_e:
            changes_e.append(t)
        if last_p is not None and p != last_p:
            changes_p.append(t)
        last_e, last_p = e, p
    de = [(b - a) / 1e6 for a, b in itertools.pairwise(changes_e)]
    dp = [(b - a) / 1e6 for a, b in itertools.pairwise(changes_p)]
    out["cadence"] = {
        "reads_in_3s": reads,
        "energy_changes": len(changes_e),
        "energy_interval_ms_median": statistics.median(de) if de else None,
        "energy_interval_ms_p5_p95": [pct(de, 0.05), pct(de, 0.95)] if de else None,
        "power_changes": len(changes_p),
        "power_interval_ms_median": statistics.median(dp) if dp else None,
    }
    pynvml.nvmlShutdown()


def thread_cpu_s(prefix: str) -> float:
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if not f.read().strip().startswith(prefix[:15]):
                    continue
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total * 1e-9


def sampler_on_real_gpu(out: dict[str, Any]) -> None:
    info = _native.discover()
    out["discovered"] = {
        "sources": [(s["id"], s["method"], s["label"]) for s in info["sources"]],
        "unavailable": [(u["backend"], u["reason"]) for u in info["unavailable"]],
    }
    s = _native.Sampler(cpu_backends=[], estimate="never")
    gpu = [i for i, src in enumerate(s.sources) if src["backend"] == "nvml"]
    time.sleep(4.0)  # learn the counter's cadence
    st = s.status()
    out["sampler_learned"] = [
        {
            "id": s.sources[i]["id"],
            "method": s.sources[i]["method"],
            "update_period_ms": st[i]["update_period_s"] * 1e3,
            "phase_anchors": st[i]["phase_anchors"],
            "reads": st[i]["reads"],
            "max_late_ms": st[i]["max_late_s"] * 1e3,
            "shaped_updates": st[i].get("shaped_updates"),
        }
        for i in gpu
    ]
    # Cost: quiet (no regions) and busy (a region every 2 ms), sampler thread only.
    for label, region_s in (
        ("quiet", 0.0),
        ("regions every 2 ms", 0.002),
        ("regions every 20 ms", 0.02),
    ):
        c0, w0 = thread_cpu_s("carbonctx-sampler"), time.monotonic()
        r0 = sum(x["reads"] for x in s.status())
        while time.monotonic() - w0 < 3.0:
            if region_s:
                rid = s.begin()
                time.sleep(region_s)
                s.end(rid)
            else:
                time.sleep(0.05)
        wall = time.monotonic() - w0
        out.setdefault("sampler_cost", {})[label] = {
            "cpu_pct_of_core": (thread_cpu_s("carbonctx-sampler") - c0) / wall * 100,
            "reads_per_s": (sum(x["reads"] for x in s.status()) - r0) / wall,
        }
    s.stop()
    # The same with the power samples off (each counter update then costs no
    # nvmlDeviceGetSamples call): what placing the energy costs.
    s = _native.Sampler(cpu_backends=[], estimate="never", gpu_power_samples=False)
    time.sleep(2.0)
    c0, w0 = thread_cpu_s("carbonctx-sampler"), time.monotonic()
    r0 = sum(x["reads"] for x in s.status())
    while time.monotonic() - w0 < 3.0:
        rid = s.begin()
        time.sleep(0.02)
        s.end(rid)
    wall = time.monotonic() - w0
    out["sampler_cost"]["regions every 20 ms, power samples off"] = {
        "cpu_pct_of_core": (thread_cpu_s("carbonctx-sampler") - c0) / wall * 100,
        "reads_per_s": (sum(x["reads"] for x in s.status()) - r0) / wall,
    }
    s.stop()


def regions_under_load(out: dict[str, Any]) -> None:
    import pynvml
    import torch

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    carbonctx.configure(cpu_backends=[], estimate="never")

    def work(ms: float) -> None:
        end = time.monotonic() + ms / 1e3
        while time.monotonic() < end:
            for _ in range(4):
                a @ b
            torch.cuda.synchronize()

    with carbonctx.track("warm-up", sync=True):
        work(1500)
    # Alternate 200 ms busy and 200 ms idle regions; NVML's counter read at the same edges.
    busy_e, idle_e, nv_busy, nv_idle = [], [], [], []
    e_span0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    with carbonctx.track("span", sync=True) as span:
        for _ in range(8):
            e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            with carbonctx.track("busy", sync=True) as m:
                work(200)
            e1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            with carbonctx.track("idle", sync=True) as n:
                time.sleep(0.2)
            e2 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            busy_e.append(m.gpu_j)
            idle_e.append(n.gpu_j)
            nv_busy.append((e1 - e0) / 1e3)
            nv_idle.append((e2 - e1) / 1e3)
    e_span1 = pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    # Short steps: 20 ms of matmuls each, tracked per step.
    steps = []
    with carbonctx.track("steps", sync=True) as whole:
        for _ in range(50):
            with carbonctx.track("step", sync=True) as st:
                work(20)
            steps.append(st)
    step_sum = sum(x.gpu_j for x in steps)
    out["under_load"] = {
        "busy_region_J_median": statistics.median(busy_e),
        "busy_region_W": statistics.median(busy_e) / 0.2,
        "idle_region_J_median": statistics.median(idle_e),
        "idle_region_W": statistics.median(idle_e) / 0.2,
        "nvml_direct_busy_J_median": statistics.median(nv_busy),
        "nvml_direct_idle_J_median": statistics.median(nv_idle),
        "span_J": span.gpu_j,
        "span_nvml_direct_J": (e_span1 - e_span0) / 1e3,
        "span_uncertainty_J": span.uncertainty_j,
        "steps_20ms_sum_J": step_sum,
        "steps_whole_region_J": whole.gpu_j,
        "steps_sum_vs_whole": step_sum / whole.gpu_j - 1 if whole.gpu_j else None,
        "step_J_p50": statistics.median(x.gpu_j for x in steps),
        "step_uncertainty_J_p50": statistics.median(x.uncertainty_j or 0 for x in steps),
        "by_source_method": {k: v.method for k, v in span.by_source.items()},
    }
    pynvml.nvmlShutdown()


def shaped_steps(out: dict[str, Any]) -> None:
    """25 ms steps under a 50 ms busy / 50 ms idle load (two busy steps of bf16 matmuls, then
    two idle ones), 4 s of them inside one region, with ``gpu_power_samples`` on and off: the
    median joules of busy and idle steps (placed by the 20 ms power samples they separate;
    spread evenly over the counter's 100 ms updates they blur), and the sum of the steps
    against the region around them (the counter's points are the same either way)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()

    def work(ms: float) -> None:
        end = time.monotonic() + ms / 1e3
        while time.monotonic() < end:
            for _ in range(2):
                a @ b
            torch.cuda.synchronize()

    res: dict[str, Any] = {}
    for on in (True, False):
        carbonctx.configure(cpu_backends=[], estimate="never", gpu_power_samples=on)
        with carbonctx.track("warm-up", sync=True):
            for _ in range(15):  # 1.5 s: the sampler learns when the counter updates
                work(50)
                time.sleep(0.05)
        busy_r: list[carbonctx.Region] = []
        idle_r: list[carbonctx.Region] = []
        with carbonctx.track("around", sync=True) as around:
            for _ in range(40):
                for _ in range(2):
                    with carbonctx.track("busy-step", sync=True) as m:
                        work(25)
                    busy_r.append(m)
                for _ in range(2):
                    with carbonctx.track("idle-step", sync=True) as m:
                        time.sleep(0.025)
                    idle_r.append(m)
        # Read after the loop: reading a region's joules waits until the sampler has seen
        # past its end (up to a counter update), which would stretch the steps apart.
        busy = [m.gpu_j for m in busy_r]
        idle = [m.gpu_j for m in idle_r]
        unc = [m.uncertainty_j or 0.0 for m in busy_r + idle_r]
        (src,) = [x for x in carbonctx.devices()["sources"] if x["backend"] == "nvml"][:1]
        total = sum(busy) + sum(idle)
        res["on" if on else "off"] = {
            "busy_step_J_median": statistics.median(busy),
            "idle_step_J_median": statistics.median(idle),
            "busy_over_idle": statistics.median(busy) / max(statistics.median(idle), 1e-9),
            "step_uncertainty_J_median": statistics.median(unc),
            "steps_sum_J": total,
            "around_J": around.gpu_j,
            "steps_sum_vs_around": total / around.gpu_j - 1 if around.gpu_j else None,
            "shaped_updates": src["status"].get("shaped_updates"),
        }
    out["shaped_steps"] = res


def overhead(out: dict[str, Any]) -> None:
    carbonctx.configure(cpu_backends=[], estimate="never")

    @carbonctx.tracked
    def f() -> None:
        pass

    def empty() -> None:
        pass

    for _ in range(1000):
        f()
    res = {}
    for name, fn, n in (("tracked_call", f, 200_000), ("plain_call", empty, 200_000)):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        res[name] = (time.perf_counter_ns() - t) / n
    t = time.perf_counter_ns()
    for _ in range(100_000):
        with carbonctx.track("x"):
            pass
    res["with_track"] = (time.perf_counter_ns() - t) / 100_000
    out["overhead_ns"] = res


def main() -> None:
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    outdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    for step in (
        nvml_latency_and_cadence,
        sampler_on_real_gpu,
        regions_under_load,
        shaped_steps,
        overhead,
    ):
        t = time.monotonic()
        try:
            step(out)
        except Exception as e:
            out.setdefault("errors", {})[step.__name__] = repr(e)
        out.setdefault("step_seconds", {})[step.__name__] = round(time.monotonic() - t, 1)
        print(json.dumps({step.__name__: "done"}), flush=True)
    (outdir / "gpu-device.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()

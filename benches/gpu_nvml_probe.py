"""Which NVML call gives a GPU's energy cheaply, and which finer signal the driver keeps.

``python benches/gpu_nvml_probe.py OUT.json`` on a machine with an NVIDIA GPU (pynvml). For
each way of reading energy or power: wall latency and the calling thread's CPU time per call
(median, p95 over 200 calls), whether it agrees with ``nvmlDeviceGetTotalEnergyConsumption``,
and how often its value changes (3 s of back-to-back reads, under a load of bf16 matrix products
alternating 50 ms busy and 50 ms idle when torch is there). Also what
``nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)`` buffers: samples per second and their spacing.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pynvml as nv


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def cost(f: Callable[[], Any], n: int = 200) -> dict[str, float]:
    wall, cpu = [], []
    for _ in range(n):
        w, c = time.perf_counter_ns(), time.thread_time_ns()
        f()
        cpu.append((time.thread_time_ns() - c) / 1e3)
        wall.append((time.perf_counter_ns() - w) / 1e3)
    return {
        "wall_us_median": statistics.median(wall),
        "wall_us_p95": pct(wall, 0.95),
        "cpu_us_median": statistics.median(cpu),
        "cpu_us_p95": pct(cpu, 0.95),
    }


def field(h: Any, fid: int) -> Callable[[], float]:
    def read() -> float:
        v = nv.nvmlDeviceGetFieldValues(h, [fid])[0]
        if v.nvmlReturn != 0:
            raise nv.NVMLError(v.nvmlReturn)
        vt = v.valueType
        u = v.value
        return float(
            u.ullVal if vt == 3 else u.uiVal if vt == 1 else u.dVal if vt == 0 else u.sllVal
        )

    return read


def load(stop: threading.Event) -> None:
    try:
        import torch
    except ImportError:
        return
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        end = time.monotonic() + 0.05
        while time.monotonic() < end:
            a @ a
            torch.cuda.synchronize()
        time.sleep(0.05)


def main() -> None:
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    out["gpu"] = nv.nvmlDeviceGetName(h)
    out["driver"] = nv.nvmlSystemGetDriverVersion()
    reads: dict[str, Callable[[], float]] = {
        "nvmlDeviceGetTotalEnergyConsumption (mJ)": lambda: float(
            nv.nvmlDeviceGetTotalEnergyConsumption(h)
        ),
        "field TOTAL_ENERGY_CONSUMPTION (mJ)": field(
            h, getattr(nv, "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 83)
        ),
        "nvmlDeviceGetPowerUsage (mW)": lambda: float(nv.nvmlDeviceGetPowerUsage(h)),
        "field POWER_INSTANT (mW)": field(h, getattr(nv, "NVML_FI_DEV_POWER_INSTANT", 186)),
    }
    out["cost"] = {}
    for name, f in reads.items():
        try:
            out["cost"][name] = cost(f)
        except Exception as e:
            out["cost"][name] = {"error": repr(e)}
    # Agreement: the field and the direct call, read back to back.
    try:
        pairs = [[reads[k]() for k in list(reads)[:2]] for _ in range(5)]
        out["energy_direct_vs_field_mJ"] = pairs
    except Exception as e:
        out["energy_direct_vs_field_mJ"] = repr(e)
    stop = threading.Event()
    th = threading.Thread(target=load, args=(stop,), daemon=True)
    th.start()
    time.sleep(1.0)
    # Cadence: back-to-back reads of each for 3 s (the expensive one alone, the cheap ones
    # together).
    out["changes"] = {}
    for name, f in reads.items():
        last, changes, n = None, [], 0
        end = time.monotonic_ns() + 3_000_000_000
        try:
            while time.monotonic_ns() < end:
                v = f()
                t = time.monotonic_ns()
                n += 1
                if last is not None and v != last:
                    changes.append(t)
                last = v
        except Exception as e:
            out["changes"][name] = {"error": repr(e)}
            continue
        d = [(b - a) / 1e6 for a, b in itertools.pairwise(changes)]
        out["changes"][name] = {
            "reads": n,
            "changes": len(changes),
            "interval_ms_median": statistics.median(d) if d else None,
            "interval_ms_p5_p95": [pct(d, 0.05), pct(d, 0.95)] if d else None,
        }
    # The driver's power sample buffer.
    try:
        t0 = int(time.time() * 1e6) - 2_000_000
        time.sleep(0.1)
        kind = getattr(nv, "NVML_TOTAL_POWER_SAMPLES", 0)
        c = cost(lambda: nv.nvmlDeviceGetSamples(h, kind, t0), n=20)
        vtype, samples = nv.nvmlDeviceGetSamples(h, kind, t0)
        ts = [s.timeStamp for s in samples]
        d = [(b - a) / 1e3 for a, b in itertools.pairwise(ts)]
        vals = [s.sampleValue.uiVal for s in samples]
        out["power_samples"] = {
            "cost": c,
            "value_type": vtype,
            "count_in_2s": len(samples),
            "spacing_ms_median": statistics.median(d) if d else None,
            "spacing_ms_p5_p95": [pct(d, 0.05), pct(d, 0.95)] if d else None,
            "first_values_mW": vals[:40],
            "distinct_values": len(set(vals)),
        }
    except Exception as e:
        out["power_samples"] = {"error": repr(e)}
    stop.set()
    th.join(timeout=5)
    nv.nvmlShutdown()
    text = json.dumps(out, indent=2, default=str)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()

"""How fast NVML's power readings follow a GPU load that changes every 10 ms.

The energy counter of recent NVIDIA GPUs moves every 100 ms, which bounds what it can say of a
20 ms step. This probe asks whether a power reading moves faster and follows the load: while a
thread alternates 10 ms of bf16 matmuls with 10 ms of idling, it reads the instant-power field
(186), the average-power field (185) and ``nvmlDeviceGetPowerUsage`` back to back for 3 s, and
records how often each value changes and how well it separates the busy and idle halves.

Run on a GPU machine with PyTorch: ``python benches/gpu_power_probe.py OUT.json``.
"""

from __future__ import annotations

import bisect
import itertools
import json
import statistics
import sys
import threading
import time
from typing import Any

FIELDS = {"instant_186": 186, "average_185": 185}
HALF_S = 0.010


def load(stop: threading.Event, phases: list[tuple[int, int]], a: Any, b: Any) -> None:
    import torch

    while not stop.is_set():
        t0 = time.monotonic_ns()
        while time.monotonic_ns() - t0 < HALF_S * 1e9:
            a @ b
            torch.cuda.synchronize()
        t1 = time.monotonic_ns()
        phases.append((t0, t1))
        time.sleep(HALF_S)


def main() -> None:
    import pynvml

    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    out["gpu"] = pynvml.nvmlDeviceGetName(h)
    out["driver"] = pynvml.nvmlSystemGetDriverVersion()
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    phases: list[tuple[int, int]] = []
    stop = threading.Event()
    th = threading.Thread(target=load, args=(stop, phases, a, b), daemon=True)
    th.start()
    time.sleep(1.0)  # warm up
    series: dict[str, list[tuple[int, float, int]]] = {k: [] for k in [*FIELDS, "usage"]}
    end = time.monotonic_ns() + 3_000_000_000
    while time.monotonic_ns() < end:
        t = time.monotonic_ns()
        try:
            vals = pynvml.nvmlDeviceGetFieldValues(h, list(FIELDS.values()))
            for (name, _), v in zip(FIELDS.items(), vals, strict=True):
                if v.nvmlReturn == 0:
                    series[name].append((t, float(v.value.uiVal), int(v.timestamp)))
        except pynvml.NVMLError as e:
            out.setdefault("field_error", str(e))
        series["usage"].append((t, float(pynvml.nvmlDeviceGetPowerUsage(h)), 0))
        time.sleep(0)  # let the load thread launch its work
    stop.set()
    th.join(timeout=5)
    busy = list(phases)

    starts = [a for a, _ in busy]

    def in_busy(t: int) -> bool:
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t < busy[i][1]

    res: dict[str, Any] = {}
    for name, pts in series.items():
        if not pts:
            res[name] = None
            continue
        changes = [t for (_, v0, _), (t, v, _) in itertools.pairwise(pts) if v != v0]
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(changes)]
        stamps = sorted({s for _, _, s in pts if s})
        sgaps = [(b - a) / 1e3 for a, b in itertools.pairwise(stamps)]
        on = [v for t, v, _ in pts if in_busy(t)]
        off = [v for t, v, _ in pts if not in_busy(t)]
        res[name] = {
            "reads": len(pts),
            "changes": len(changes),
            "change_interval_ms_median": statistics.median(gaps) if gaps else None,
            "driver_timestamp_interval_ms_median": statistics.median(sgaps) if sgaps else None,
            "mW_median_busy_half": statistics.median(on) if on else None,
            "mW_median_idle_half": statistics.median(off) if off else None,
            "first_values": [v for _, v, _ in pts[:20]],
        }
    out["series"] = res
    out["busy_phases"] = len(busy)
    pynvml.nvmlShutdown()
    text = json.dumps(out, indent=1)
    print(text)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

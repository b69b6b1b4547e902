"""Measure one contender. Runs inside the contender's private mount namespace (see ns_exec.sh), in
a fresh interpreter, and writes raw numbers as JSON; the orchestrator computes truth.

    python worker.py CONTENDER PHASE OUT.json [--budget-s S]

PHASE ``main``: import and first-measurement time, idle CPU baseline, cost per region, accuracy
(20 ms contiguous, 200 ms, 5 s regions), tracker CPU use, memory after many short regions.
PHASE ``wrap``: accuracy only, on a machine whose counters wrap about every second.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contenders

mono = time.monotonic_ns
pc = time.perf_counter_ns


def tree_cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of this process (all threads, ns resolution) and its live helper processes
    (clock-tick resolution)."""
    total = time.process_time()
    for c in proc.children(recursive=True):
        try:
            ct = c.cpu_times()
            total += ct.user + ct.system
        except psutil.Error:
            pass
    return total


def regions(a: Any, lengths: list[float]) -> list[dict[str, Any]]:
    """Run regions back to back; edges are stamped inside the region, around the user's code."""
    pend = []
    for L in lengths:
        a.enter()
        ta = mono()
        time.sleep(L)
        tb = mono()
        raw = a.exit()
        pend.append((L, ta, tb, raw))
    out = []
    for L, ta, tb, raw in pend:
        try:
            v = a.value(raw)
            out.append({"len": L, "ta": ta, "tb": tb, "got": v})
        except Exception as e:
            out.append({"len": L, "ta": ta, "tb": tb, "got": None, "error": repr(e)})
    return out


def cost(a: Any, budget_s: float, n_max: int) -> tuple[list[int], int]:
    """Wall time of each enter+exit pair (ns), for at most budget_s."""
    samples: list[int] = []
    end = pc() + int(budget_s * 1e9)
    for _ in range(n_max):
        t0 = pc()
        a.enter()
        a.exit()
        t1 = pc()
        samples.append(t1 - t0)
        if t1 > end:
            break
    return samples, len(samples)


def median(xs: list[int]) -> float:
    s = sorted(xs)
    n = len(s)
    return float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def main() -> int:
    name, phase, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
    scale = float(os.environ.get("CCX_BENCH_SCALE", "1"))
    res: dict[str, Any] = {"contender": name, "phase": phase, "pid": os.getpid(), "notes": []}
    proc = psutil.Process()

    def save() -> None:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(res, f)

    try:
        if phase == "main":
            # Idle baseline first: nothing of the contender imported yet.
            idle_s = 3.0 * scale
            c0 = tree_cpu_s(proc)
            w0 = time.monotonic()
            time.sleep(idle_s)
            res["idle_cpu_s_per_s"] = (tree_cpu_s(proc) - c0) / (time.monotonic() - w0)

        null = contenders.Null()
        a = contenders.make(name)
        t0 = pc()
        importlib.import_module(a.module)
        ti = pc()
        a.load()
        t1 = pc()
        a.enter()
        raw = a.exit()
        first = a.value(raw)
        t2 = pc()
        res["import_s"] = (ti - t0) * 1e-9
        res["load_s"] = (t1 - ti) * 1e-9
        res["first_measurement_s"] = (t2 - t0) * 1e-9
        res["first_value"] = first
        res["estimated"] = list(a.estimated)
        save()

        if phase == "main":
            # Cost per region: the contender and the empty loop, interleaved in blocks.
            per = {"none": [], name: []}
            n_total = 0
            for _ in range(3):
                s0, _n = cost(null, 0.2 * scale, 20_000)
                s1, n1 = cost(a, 1.0 * scale, 20_000)
                per["none"] += s0
                per[name] += s1
                n_total += n1
            res["cost_ns_median"] = median(per[name])
            res["empty_ns_median"] = median(per["none"])
            res["cost_n"] = n_total
            save()

            # Accuracy: 50 contiguous 20 ms regions, 10 of 200 ms, 2 of 5 s.
            n20 = max(10, int(50 * scale))
            res["acc"] = {
                "20ms": regions(a, [0.02] * n20),
                "200ms": regions(a, [0.2] * max(3, int(10 * scale))),
                "5s": regions(a, [5.0] * 2),
            }
            save()

            # Tracker CPU use: the same sleep, inside one region, against the idle baseline.
            busy_s = 3.0 * scale
            a.enter()
            c0 = tree_cpu_s(proc)
            w0 = time.monotonic()
            time.sleep(busy_s)
            c1 = tree_cpu_s(proc)
            w1 = time.monotonic()
            a.exit()
            res["tracking_cpu_s_per_s"] = (c1 - c0) / (w1 - w0)
            res["helper_processes"] = len(proc.children(recursive=True))
            res["threads"] = proc.num_threads()
            save()

            # Memory after many short regions (fewer for slow contenders, within a time budget).
            per_region_s = max(res["cost_ns_median"] * 1e-9, 1e-7)
            budget = 20.0 * scale
            n = int(min(100_000, budget / per_region_s))
            rss0 = proc.memory_info().rss
            w0 = time.monotonic()
            for _ in range(n):
                a.enter()
                a.exit()
            res["rss_wall_s"] = time.monotonic() - w0
            if name == "carbonctx":
                a.mod.flush()
            res["rss_regions"] = n
            res["rss_before_mb"] = rss0 / 2**20
            res["rss_after_mb"] = proc.memory_info().rss / 2**20
            res["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            save()
        else:
            res["acc"] = {
                "200ms": regions(a, [0.2] * max(3, int(5 * scale))),
                "5s": regions(a, [5.0] * 2),
            }
            save()
        res["notes"] += a.notes
        a.close()
        res["ok"] = True
    except BaseException as e:
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()[-4000:]
    save()
    sys.stdout.flush()
    os._exit(0)  # some contenders leave non-daemon threads or helper processes behind


if __name__ == "__main__":
    raise SystemExit(main())

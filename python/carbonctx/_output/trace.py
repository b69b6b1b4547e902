"""The Chrome trace / Perfetto JSON of regions (slices) and power (counter tracks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["chrome_trace"]


def _lanes(regions: Sequence[Mapping[str, Any]]) -> list[int]:
    """Assign each region of one thread a lane so that slices in a lane nest properly.

    Regions of one thread nest unless asyncio tasks interleave them; an overlapping region that
    does not nest goes to the first lane where it does.
    """
    order = sorted(range(len(regions)), key=lambda i: (regions[i]["start"], -regions[i]["end"]))
    stacks: list[list[float]] = []
    lanes = [0] * len(regions)
    for i in order:
        s, e = regions[i]["start"], regions[i]["end"]
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                lanes[i] = lane
                break
        else:
            stacks.append([e])
            lanes[i] = len(stacks) - 1
    return lanes


def chrome_trace(
    regions: Sequence[Mapping[str, Any]],
    power: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The Chrome trace / Perfetto JSON of a run: regions as slices, power as counter tracks.

    ``power`` holds records ``{"t": unix_s, "watts": {source: W}}``.
    """
    events: list[dict[str, Any]] = []
    by_thread: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in regions:
        by_thread.setdefault((int(r.get("pid") or 0), int(r.get("thread") or 0)), []).append(r)
    pids = set()
    for (pid, tid), rs in by_thread.items():
        pids.add(pid)
        lanes = _lanes(rs)
        for r, lane in zip(rs, lanes, strict=False):
            track = tid if lane == 0 else tid * 1000 + lane
            events.append(
                {
                    "name": r["name"],
                    "cat": "region",
                    "ph": "X",
                    "ts": r["start"] * 1e6,
                    "dur": max(r["end"] - r["start"], 0.0) * 1e6,
                    "pid": pid,
                    "tid": track,
                    "args": {
                        "energy_j": r.get("energy_j"),
                        "cpu_j": r.get("cpu_j"),
                        "dram_j": r.get("dram_j"),
                        "gpu_j": r.get("gpu_j"),
                        "co2_g": r.get("co2_g"),
                        "uncertainty_j": r.get("uncertainty_j"),
                    },
                }
            )
    counter_pid = min(pids) if pids else 0
    for p in power:
        events.append(
            {
                "name": "power (W)",
                "cat": "power",
                "ph": "C",
                "ts": p["t"] * 1e6,
                "pid": counter_pid,
                "args": {k: round(float(v), 3) for k, v in p["watts"].items()},
            }
        )
    for pid in pids:
        events.append(
            {
                "name": "process_name",
                "ph": "M",
                "pid": pid,
                "args": {"name": f"carbonctx pid {pid}"},
            }
        )
    events.sort(key=lambda e: e.get("ts", 0.0))
    return {"traceEvents": events, "displayTimeUnit": "ms"}

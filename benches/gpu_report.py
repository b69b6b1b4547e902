"""Render the JSON of ``gpu_device.py`` runs as Markdown: ``python benches/gpu_report.py OUT.md
RUN.json [RUN.json ...]``."""

from __future__ import annotations

import json
import sys
from typing import Any


def one(d: dict[str, Any]) -> str:
    lat = d.get("nvml_latency", {})
    cad = d.get("cadence", {})
    learned = (d.get("sampler_learned") or [{}])[0]
    cost = d.get("sampler_cost", {})
    ul = d.get("under_load", {})
    ov = d.get("overhead_ns", {})

    def f(x: Any, spec: str = ".1f") -> str:
        return "—" if x is None else format(x, spec)

    rows = [
        f"## {d.get('gpu')} (driver {d.get('driver')}), {d.get('date')}",
        "",
        "| what | measured |",
        "| --- | --- |",
        f"| `nvmlDeviceGetTotalEnergyConsumption` latency | median {f(lat.get('energy', {}).get('median_us'), '.0f')} µs, p95 {f(lat.get('energy', {}).get('p95_us'), '.0f')} µs |",
        f"| `nvmlDeviceGetPowerUsage` latency | median {f(lat.get('power', {}).get('median_us'), '.2f')} µs |",
        f"| field 186 (instant power) latency | median {f(lat.get('field 186 (instant power)', {}).get('median_us'), '.2f')} µs |",
        f"| energy counter changes every | {f(cad.get('energy_interval_ms_median'), '.2f')} ms (p5–p95 {', '.join(f(x, '.2f') for x in cad.get('energy_interval_ms_p5_p95') or [])} ms) |",
        f"| power reading changes every | {f(cad.get('power_interval_ms_median'), '.2f')} ms |",
        f"| update period the sampler learned | {f(learned.get('update_period_ms'), '.2f')} ms ({learned.get('phase_anchors')} re-anchors in 4 s, latest read {f(learned.get('max_late_ms'), '.2f')} ms after due) |",
    ]
    for label, c in cost.items():
        rows.append(
            f"| sampler thread CPU, {label} | {f(c.get('cpu_pct_of_core'), '.2f')} % of a core "
            f"({f(c.get('reads_per_s'), '.1f')} NVML reads/s) |"
        )
    if ul:
        rows += [
            f"| 200 ms regions of bf16 matmuls | median {f(ul.get('busy_region_J_median'))} J ({f(ul.get('busy_region_W'), '.0f')} W); NVML counter read at the same edges: {f(ul.get('nvml_direct_busy_J_median'))} J |",
            f"| 200 ms idle regions between them | median {f(ul.get('idle_region_J_median'))} J ({f(ul.get('idle_region_W'), '.0f')} W); NVML at the edges: {f(ul.get('nvml_direct_idle_J_median'))} J |",
            f"| the 3.2 s span of those 16 regions | {f(ul.get('span_J'))} J ± {f(ul.get('span_uncertainty_J'))} J; NVML at the edges: {f(ul.get('span_nvml_direct_J'))} J |",
            f"| 50 steps of 20 ms: sum of steps vs one region around them | {f(ul.get('steps_20ms_sum_J'))} J vs {f(ul.get('steps_whole_region_J'))} J ({f((ul.get('steps_sum_vs_whole') or 0) * 100, '+.2f')} %) |",
            f"| one 20 ms step | median {f(ul.get('step_J_p50'))} J ± {f(ul.get('step_uncertainty_J_p50'))} J (the counter moves every 100 ms) |",
        ]
    for mode, sh in (d.get("shaped_steps") or {}).items():
        how = "placed by 20 ms power samples" if mode == "on" else "spread evenly (samples off)"
        rows.append(
            f"| 25 ms steps under 50 ms busy / 50 ms idle, {how} | busy step median "
            f"{f(sh.get('busy_step_J_median'), '.2f')} J, idle step {f(sh.get('idle_step_J_median'), '.2f')} J "
            f"(ratio {f(sh.get('busy_over_idle'), '.2f')}), ± {f(sh.get('step_uncertainty_J_median'), '.1f')} J; "
            f"sum of 160 steps {f(sh.get('steps_sum_J'))} J vs the region around them "
            f"{f(sh.get('around_J'))} J ({f((sh.get('steps_sum_vs_around') or 0) * 100, '+.2f')} %); "
            f"{sh.get('shaped_updates')} updates placed |"
        )
    if ov:
        rows.append(
            f"| region overhead on this host | `@tracked` call {f(ov.get('tracked_call'), '.0f')} ns (plain call {f(ov.get('plain_call'), '.0f')} ns); `with track()` {f(ov.get('with_track'), '.0f')} ns |"
        )
    if d.get("errors"):
        rows.append(f"| errors | {d['errors']} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    out, runs = sys.argv[1], sys.argv[2:]
    text = (
        "# carbonctx on real NVIDIA GPUs\n\n"
        "Produced by `benches/gpu_device.py` on lent machines (one GPU, 16 CPU cores, a VM without "
        "RAPL), rendered by `benches/gpu_report.py`. NVML's own counter read at a region's edges is "
        "not the truth either: it moves every 100 ms, so it is shown for comparison only.\n\n"
    )
    for r in runs:
        with open(r) as fh:
            text += one(json.load(fh)) + "\n"
    with open(out, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()

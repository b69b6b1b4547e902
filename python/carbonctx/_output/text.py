"""Plain-text reports: the per-run table of ``carbonctx report DIR``."""

from __future__ import annotations

from collections.abc import Sequence

from carbonctx._results.equivalents import equivalents
from carbonctx._results.runs import RunLog
from carbonctx._results.units import format_grams, format_kwh, format_seconds, format_table

__all__ = ["format_runs"]


def format_runs(runs: Sequence[RunLog]) -> str:
    """The per-run table and the totals, as plain text."""
    rows = []
    for r in runs:
        ff = r.first_forecast
        fc_text = "-"
        if ff is not None and r.complete and r.stop_reason is None and r.energy_j > 0:
            err = (float(ff["energy_j"]) / r.energy_j - 1) * 100
            fc_text = f"{format_kwh(float(ff['energy_j']))} ({err:+.1f}%)"
        elif ff is not None:
            fc_text = format_kwh(float(ff["energy_j"]))
        co2 = r.co2_g
        status = "completed" if r.complete and r.stop_reason is None else "stopped"
        if not r.complete:
            status = "incomplete"
        elif r.budget and r.budget.get("exceeded"):
            status += ", over budget"
        rows.append(
            [
                r.run,
                f"{len(r.epochs)}/{r.epochs_planned}",
                format_seconds(r.duration_s),
                format_kwh(r.energy_j),
                format_grams(co2) + " CO2e" if co2 is not None else "-",
                fc_text,
                status,
            ]
        )
    header = ["run", "epochs", "duration", "energy", "CO2e", "first forecast", "status"]
    table = format_table(header, rows)
    total_j = sum(r.energy_j for r in runs)
    co2s = [r.co2_g for r in runs]
    total_g = sum(c for c in co2s if c is not None)
    total = f"total: {len(runs)} runs, {sum(len(r.epochs) for r in runs)} epochs, "
    total += f"{format_seconds(sum(r.duration_s for r in runs))}, {format_kwh(total_j)}"
    total += f" ({total_j:.6g} J), {format_grams(total_g)} CO2e"
    if any(c is None for c in co2s):
        total += " (some runs have no CO2 figure)"
    lines = [table, "", total]
    for eq in equivalents(co2_g=total_g, energy_j=total_j):
        lines.append(f"  ≈ {eq} ({eq.per_unit:g} {eq.per_unit_unit}; {eq.source}, {eq.year})")
    for r in runs:
        if r.stop_reason:
            lines.append(f"{r.run}: {r.stop_reason}")
    return "\n".join(lines)

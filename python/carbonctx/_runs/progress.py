"""What a run says on stderr: the first forecast, the ``\\r`` progress line, the final line."""

from __future__ import annotations

import contextlib
import sys

from carbonctx._results.runs import RunTotals, format_run_totals
from carbonctx._results.units import format_grams, format_kwh

__all__ = ["ProgressLine", "final_text", "forecast_text"]


def forecast_text(name: str, n: int, fc: RunTotals) -> str:
    k = fc.epochs_done
    head = (
        f"carbonctx: forecast for {n} epochs of {name!r} after {k} "
        f"epoch{'s' if k != 1 else ''}: {format_run_totals(fc)}"
    )
    why = fc.method
    if fc.intensity_basis:
        why += f"; CO2 uses {fc.intensity_basis}"
    return head + "\n  " + why


def final_text(
    name: str, n: int, actual: RunTotals, first: RunTotals | None, stop_reason: str | None
) -> str:
    a = actual
    line = f"carbonctx: {name!r} {a.epochs_done}/{n} epochs: {format_run_totals(a)}"
    if first is not None and stop_reason is None:
        f = first
        if f.energy_j > 0 and a.energy_j > 0:
            err = (f.energy_j / a.energy_j - 1) * 100
            line += f"; first forecast {format_kwh(f.energy_j)} ({err:+.1f}%)"
    if stop_reason:
        line += f"\n  stopped: {stop_reason}"
    return line


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class ProgressLine:
    """One line on stderr, redrawn after each epoch (when enabled)."""

    __slots__ = ("_width", "enabled")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._width = 0

    def show(self, name: str, n: int, actual: RunTotals, forecast: RunTotals | None) -> None:
        if not self.enabled:
            return
        a = actual
        text = f"carbonctx {name} {a.epochs_done}/{n}  {format_kwh(a.energy_j)} so far"
        fc = forecast
        if fc is not None:
            text += f"  forecast {format_kwh(fc.energy_j)}"
            if fc.co2_g is not None:
                text += f", {format_grams(fc.co2_g)} CO2e"
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        with contextlib.suppress(Exception):
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled and self._width:
            with contextlib.suppress(Exception):
                sys.stderr.write("\r" + " " * self._width + "\r")
                sys.stderr.flush()
            self._width = 0

"""``carbonctx intensity``: the carbon intensity here and now, and when to run a job.

    carbonctx intensity                      # current value, its source and how the zone was chosen
    carbonctx intensity --zone GB --forecast --hours 6
                                             # ... and the lowest-carbon 6-hour window ahead

Exit status: 0; 1 when ``--forecast`` was asked for and no forecast is available; 2 for a
setting that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any, TextIO

from carbonctx._carbon.intensity import Intensity
from carbonctx._carbon.service import IntensityService
from carbonctx._carbon.windows import Window, lowest_carbon_window, mean_over
from carbonctx.errors import ConfigurationError

__all__ = ["register", "run"]

_FORECAST_HORIZON_S = 48 * 3600.0


def _positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not (math.isfinite(hours) and hours > 0):
        raise argparse.ArgumentTypeError(
            f"--hours must be a positive number of hours, not {text!r}"
        )
    return hours


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``intensity`` subcommand; its handler is ``args.func(args) -> int``."""
    p = subparsers.add_parser(
        "intensity",
        help="show the grid's carbon intensity and the lowest-carbon time to run a job",
        description=(
            "Show the carbon intensity of electricity for a zone: the value used now, where it "
            "came from and how the zone was chosen. With --forecast, also the start of the "
            "lowest-carbon window of --hours in the provider's forecast. Live values need a "
            "provider (CARBONCTX_PROVIDERS and its token: CARBONCTX_ELECTRICITYMAPS_TOKEN, "
            "CARBONCTX_ENTSOE_TOKEN, CARBONCTX_WATTTIME_USERNAME/_PASSWORD); without one the "
            "yearly table is shown. CARBONCTX_SIGNAL=marginal prefers a marginal source."
        ),
    )
    p.add_argument("--zone", help="zone code, e.g. DE, GB, DK-DK1 (default: detected)")
    p.add_argument(
        "--forecast",
        action="store_true",
        help="show the lowest-carbon window in the forecast, where a provider gives one",
    )
    p.add_argument(
        "--hours",
        type=_positive_hours,
        default=1.0,
        help="length of the job, for the lowest-carbon window (default: 1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def _fmt_time(w: Any) -> str:
    return str(w.strftime("%Y-%m-%d %H:%M UTC"))


def _describe(i: Intensity) -> str:
    return f"{i.g_per_kwh:.1f} gCO2e/kWh ({i.source}; {i.dataset}; {i.signal})"


def run(
    args: argparse.Namespace,
    *,
    service_factory: Callable[..., IntensityService] = IntensityService,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``intensity`` subcommand. ``service_factory`` lets tests inject a configured service."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        svc = service_factory(zone=args.zone, background=False)
    except ConfigurationError as exc:
        print(f"carbonctx intensity: {exc}", file=err)
        return 2
    try:
        svc.refresh(wait=True, forecast=bool(args.forecast))
        current = svc.current()
        now = svc.now()
        window: Window | None = None
        now_mean: float | None = None
        periods: list[Intensity] | None = None
        if args.forecast:
            periods = svc.forecast(now, now + _FORECAST_HORIZON_S)
            if periods:
                window = lowest_carbon_window(periods, args.hours, not_before=now)
                now_mean = mean_over(periods, now, now + args.hours * 3600.0)
    finally:
        svc.close()

    choice = svc.zone_choice
    if args.json:
        doc: dict[str, object] = {
            "zone": choice.to_dict(),
            "current": current.to_dict(),
            "pue": svc.pue,
            "pue_source": svc.pue_source,
            "signal_chosen": svc.signal,
        }
        if args.forecast:
            if not periods:
                doc["forecast_unavailable"] = svc.forecast_unavailable()
            doc["forecast"] = (
                None
                if not periods
                else {
                    "provider": periods[0].provider,
                    "dataset": periods[0].dataset,
                    "periods": len(periods),
                    "hours": args.hours,
                    "window": None if window is None else window.to_dict(),
                    "starting_now_g_per_kwh": now_mean,
                }
            )
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(f"Zone {choice.zone} (chosen by {choice.rule})", file=out)
        print(f"Now: {_describe(current)}", file=out)
        if current.note:
            print(f"  note: {current.note}", file=out)
        if svc.signal_note and svc.signal_note not in (current.note or ""):
            print(f"  note: {svc.signal_note}", file=out)
        if args.forecast:
            if not periods:
                reason = svc.forecast_unavailable()
                hint = (
                    " Forecasts come from Electricity Maps (CARBONCTX_ELECTRICITYMAPS_TOKEN), "
                    "WattTime (CARBONCTX_WATTTIME_USERNAME, _PASSWORD), gb (zone GB) and dk "
                    "(zones DK-DK1, DK-DK2); list them in CARBONCTX_PROVIDERS."
                    if svc.provider is None or not svc.provider.has_forecast
                    else ""
                )
                print(f"No forecast: {reason}.{hint}", file=out)
            elif window is None:
                print(
                    f"The forecast ({periods[0].dataset}) is shorter than {args.hours:g} h; "
                    "no window fits.",
                    file=out,
                )
            else:
                print(
                    f"Lowest-carbon {args.hours:g} h window ({periods[0].dataset}): start "
                    f"{_fmt_time(window.start)}, end {_fmt_time(window.end)}, mean "
                    f"{window.mean_g_per_kwh:.1f} gCO2e/kWh",
                    file=out,
                )
                if now_mean is not None and now_mean > 0:
                    saving = 100.0 * (1.0 - window.mean_g_per_kwh / now_mean)
                    print(
                        f"  starting now instead: mean {now_mean:.1f} gCO2e/kWh "
                        f"(the window above saves {saving:.0f}%)"
                        if saving > 0.5
                        else "  starting now is as good as any.",
                        file=out,
                    )
    if args.forecast and not periods:
        return 1
    return 0

"""Which carbon intensity a run's CO2 uses, and the words that say so in forecasts and logs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carbonctx._results.equivalents import pue_suggestion
from carbonctx._results.measurement import Measurement

if TYPE_CHECKING:
    from carbonctx._carbon.service import IntensityService

__all__ = ["actual_basis", "carbon_provenance", "remaining_intensity"]


def actual_basis(last: Measurement | None) -> str | None:
    """What the measured epochs' CO2 used (from the last epoch's measurement)."""
    if last is None or last.carbon is None:
        return None
    c = last.carbon
    sources = ", ".join(c.get("sources") or [])
    zone = (c.get("zone") or {}).get("zone")
    return f"{sources or 'intensity'} values for zone {zone}"


def remaining_intensity(
    svc: IntensityService | None,
    last: Measurement | None,
    energy_j: float,
    span_s: float,
    start: float,
) -> tuple[float | None, str | None]:
    """(g per J, basis) for the remaining epochs over ``[start, start + span_s]``: the
    provider's forecast over that span when there is one, else the current or tabulated value."""
    if energy_j <= 0 or span_s <= 0:
        return (
            (last.co2_g / last.energy_j if last and last.co2_g and last.energy_j else 0.0),
            actual_basis(last),
        )
    if svc is None:
        return None, None
    end = start + span_s
    periods = svc.forecast(start, end)
    c = svc.co2(energy_j, start, end)
    g_per_j = c.co2_g / energy_j
    pue = f"PUE {c.pue:g}: {c.pue_source}"
    if periods:
        prov = periods[0].provider
        basis = (
            f"intensity forecast from {prov} over the predicted span "
            f"(mean {c.intensity_g_per_kwh:.0f} gCO2e/kWh, zone {c.zone.zone}); {pue}"
        )
    else:
        p = c.periods[0] if c.periods else None
        if p is not None and p.source == "table":
            what = f"the yearly table ({p.dataset})"
        elif p is not None:
            what = f"the current {p.source} value from {p.provider}"
        else:
            what = "the current value"
        basis = (
            f"{what}, {c.intensity_g_per_kwh:.0f} gCO2e/kWh for zone {c.zone.zone} "
            f"(no intensity forecast for this zone); {pue}"
        )
    return g_per_j, basis


def carbon_provenance(
    svc: IntensityService, actual_basis: str | None, forecast_basis: str | None
) -> dict[str, Any]:
    """The final record's ``carbon``: zone and how it was chosen, PUE and where it came from,
    a cloud's published PUE (suggested, never applied), and what the CO2 figures used."""
    zc = svc.zone_choice
    sugg = pue_suggestion(getattr(zc, "cloud", None))
    return {
        "zone": zc.to_dict(),
        "pue": svc.pue,
        "pue_source": svc.pue_source,
        "pue_suggestion": sugg.to_dict() if sugg else None,
        "actual_basis": actual_basis,
        "forecast_basis": forecast_basis,
    }

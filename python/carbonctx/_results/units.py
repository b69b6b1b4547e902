"""How quantities read: joules, kWh, seconds and grams with sensible units; plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "J_PER_KWH",
    "format_grams",
    "format_joules",
    "format_kwh",
    "format_seconds",
    "format_table",
]

J_PER_KWH = 3.6e6


def format_joules(j: float) -> str:
    a = abs(j)
    if a >= 3.6e6:
        return f"{j / J_PER_KWH:.3f} kWh"
    if a >= 1e3:
        return f"{j / 1e3:.2f} kJ"
    if a >= 1:
        return f"{j:.2f} J"
    return f"{j * 1e3:.2f} mJ"


def format_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def format_grams(g: float) -> str:
    if abs(g) >= 1e3:
        return f"{g / 1e3:.3f} kg"
    if abs(g) >= 1:
        return f"{g:.2f} g"
    return f"{g * 1e3:.2f} mg"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=False))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=False))
            )
        )
    return "\n".join(out)


def format_kwh(j: float) -> str:
    """Energy in kWh with sensible precision (Wh below 0.1 kWh, J below 0.1 Wh)."""
    kwh = j / J_PER_KWH
    if abs(kwh) >= 0.1:
        return f"{kwh:.3g} kWh" if abs(kwh) < 100 else f"{kwh:,.0f} kWh"
    if abs(kwh) * 1e3 >= 0.1:
        return f"{kwh * 1e3:.3g} Wh"
    return format_joules(j)

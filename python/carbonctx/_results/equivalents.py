"""Everyday equivalents of CO2 and energy, and published cloud PUEs, from the bundled table
(``data/equivalents.json``, each figure cited)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import attrs

from carbonctx._results.units import J_PER_KWH

__all__ = ["Equivalent", "PueSuggestion", "equivalents", "pue_suggestion"]


@attrs.frozen(slots=True)
class Equivalent:
    """An everyday equivalent of an amount of CO2 or energy, with its source and year.

    ``str(eq)`` reads like ``"12.3 km driven by an average new car in the EU"``; ``citation``
    names the figure used and where it comes from.
    """

    __module__ = "carbonctx"  # public as carbonctx.Equivalent: help(), reprs, pickles

    id: str
    value: float
    unit: str
    label: str
    basis: str
    per_unit: float
    per_unit_unit: str
    source: str
    year: int
    url: str

    @property
    def citation(self) -> str:
        return f"{self.per_unit:g} {self.per_unit_unit}, {self.source}, {self.year} ({self.url})"

    def __str__(self) -> str:
        value, unit = _readable(self.value, self.unit)
        return f"{_fmt_num(value)} {unit} {self.label}"

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["text"] = str(self)
        return d


@attrs.frozen(slots=True)
class PueSuggestion:
    """A cloud provider's published PUE, offered (never applied) when the zone rule found that
    provider's region. Apply it with ``carbonctx.configure(pue=...)`` or ``CARBONCTX_PUE``."""

    __module__ = "carbonctx"  # public as carbonctx.PueSuggestion: help(), reprs, pickles

    cloud: str
    provider: str
    pue: float
    kind: str
    year: int
    source: str
    url: str

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.provider} publishes a PUE of {self.pue:g} ({self.kind}, {self.year}; "
            f"{self.source}). Not applied: set carbonctx.configure(pue={self.pue:g}) or "
            f"CARBONCTX_PUE={self.pue:g} to count facility overhead."
        )


@functools.lru_cache(maxsize=1)
def _data() -> dict[str, Any]:
    text = resources.files("carbonctx").joinpath("data/equivalents.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def equivalents(*, co2_g: float | None = None, energy_j: float | None = None) -> list[Equivalent]:
    """Everyday equivalents of ``co2_g`` grams of CO2e and ``energy_j`` joules, each cited::

    for eq in carbonctx.equivalents(co2_g=1200.0, energy_j=3.6e6):
        print(eq, "-", eq.citation)
    """
    out: list[Equivalent] = []
    for e in _data()["equivalents"]:
        if e["basis"] == "co2":
            if co2_g is None:
                continue
            value = float(co2_g) / float(e["per_unit"])
        else:
            if energy_j is None:
                continue
            value = float(energy_j) / J_PER_KWH / float(e["per_unit"])
        out.append(
            Equivalent(
                id=e["id"],
                value=value,
                unit=e["unit"],
                label=e["label"],
                basis=e["basis"],
                per_unit=float(e["per_unit"]),
                per_unit_unit=e["per_unit_unit"],
                source=e["source"],
                year=int(e["year"]),
                url=e["url"],
            )
        )
    return out


def pue_suggestion(cloud: str | None) -> PueSuggestion | None:
    """The published PUE of cloud ``cloud`` (``"aws"``, ``"gcp"``, ``"azure"``), if known."""
    if not cloud:
        return None
    p = _data()["cloud_pue"].get(cloud)
    if p is None:
        return None
    return PueSuggestion(
        cloud=cloud,
        provider=p["provider"],
        pue=float(p["pue"]),
        kind=p["kind"],
        year=int(p["year"]),
        source=p["source"],
        url=p["url"],
    )


_SMALLER: dict[str, tuple[tuple[str, float], ...]] = {
    "km": (("m", 1e-3),),
    "days": (("hours", 1 / 24), ("minutes", 1 / 1440), ("seconds", 1 / 86400)),
}


def _readable(value: float, unit: str) -> tuple[float, str]:
    """Small amounts in a smaller unit: 0.004 km is 4 m, 0.01 days about 14 minutes."""
    for smaller, size in _SMALLER.get(unit, ()):
        if abs(value) >= 1:
            break
        value, unit = value * (_unit_size(unit) / size), smaller
    return value, unit


def _unit_size(unit: str) -> float:
    for base, options in _SMALLER.items():
        if unit == base:
            return 1.0
        for name, size in options:
            if name == unit:
                return size
    return 1.0


def _fmt_num(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"

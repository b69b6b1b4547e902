"""One carbon-intensity figure over one period (:class:`Intensity`), and the time helpers
providers share to read and write one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import attrs

__all__ = [
    "MAX_G_PER_KWH",
    "SIGNALS",
    "UTC",
    "Intensity",
    "iso_or_none",
    "parse_time",
    "utc_from_timestamp",
]

UTC = timezone.utc
#: The highest intensity taken as real: above any grid's (lignite is about 1,100 g/kWh
#: lifecycle; marginal signals reach about 1,500). Larger values are rejected as errors.
MAX_G_PER_KWH = 3000.0
#: The kinds of intensity: of the generation mix, or of the generation that answers a change.
SIGNALS = ("average", "marginal")


@attrs.frozen
class Intensity:
    """One carbon-intensity value, valid over one period.

    ``source`` says how it was obtained: ``"live"`` (fetched from a provider, within that
    provider's refresh interval), ``"cached"`` (fetched earlier and older than that, or a
    fallback kept from an earlier fetch), ``"table"`` (the bundled yearly figures) or
    ``"world-average"``. ``dataset`` names the data and its year, ``note`` why a fallback was used.
    Times are UTC-aware; a table value has no period.
    """

    g_per_kwh: float
    zone: str
    source: str
    provider: str
    dataset: str
    valid_from: datetime | None
    valid_to: datetime | None
    fetched_at: datetime | None
    is_estimated: bool | None = None
    note: str | None = None
    #: ``"average"`` (emissions of the generation mix per kWh) or ``"marginal"`` (of the
    #: generation that would answer one more kWh now)
    signal: str = "average"

    def covers(self, t: float) -> bool:
        """Whether Unix time ``t`` lies in ``[valid_from, valid_to)``."""
        if self.valid_from is None or self.valid_to is None:
            return False
        return self.valid_from.timestamp() <= t < self.valid_to.timestamp()

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form (times as ISO 8601 strings)."""
        return {
            "g_per_kwh": self.g_per_kwh,
            "zone": self.zone,
            "source": self.source,
            "provider": self.provider,
            "dataset": self.dataset,
            "valid_from": iso_or_none(self.valid_from),
            "valid_to": iso_or_none(self.valid_to),
            "fetched_at": iso_or_none(self.fetched_at),
            "is_estimated": self.is_estimated,
            "note": self.note,
            "signal": self.signal,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Intensity:
        """Inverse of :meth:`to_dict` (used by the disk cache); raises ValueError or TypeError
        for anything that :meth:`to_dict` would not have written, or an unusable value."""
        g = d["g_per_kwh"]
        if isinstance(g, bool) or not isinstance(g, (int, float)):
            raise TypeError("g_per_kwh is not a number")
        if not (math.isfinite(g) and 0.0 <= g <= MAX_G_PER_KWH):
            raise ValueError("g_per_kwh is not a usable intensity")
        for key in ("zone", "source", "provider", "dataset"):
            if not isinstance(d[key], str):
                raise TypeError(f"{key} is not a string")
        signal = d.get("signal", "average")
        if signal not in SIGNALS:
            raise ValueError("unknown signal")
        return cls(
            g_per_kwh=float(g),
            signal=signal,
            zone=d["zone"],
            source=d["source"],
            provider=d["provider"],
            dataset=d["dataset"],
            valid_from=parse_time(d["valid_from"]) if d.get("valid_from") else None,
            valid_to=parse_time(d["valid_to"]) if d.get("valid_to") else None,
            fetched_at=parse_time(d["fetched_at"]) if d.get("fetched_at") else None,
            is_estimated=None if d.get("is_estimated") is None else bool(d["is_estimated"]),
            note=None if d.get("note") is None else str(d["note"]),
        )


def iso_or_none(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def parse_time(value: object, *, naive_is_utc: bool = True) -> datetime:
    """Parse ISO 8601 as the providers write it ("2024-05-01T12:00Z", "...00.000Z", naive UTC)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a time string, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"time without offset: {value!r}")
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)

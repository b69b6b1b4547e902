"""One carbon-intensity figure over one period (:class:`Intensity`), and the time helpers
providers share to read and write one."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import attrs

__all__ = ["UTC", "Intensity", "iso_or_none", "parse_time", "utc_from_timestamp"]

UTC = timezone.utc


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
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Intensity:
        """Inverse of :meth:`to_dict` (used by the disk cache)."""
        return cls(
            g_per_kwh=float(d["g_per_kwh"]),
            zone=str(d["zone"]),
            source=str(d["source"]),
            provider=str(d["provider"]),
            dataset=str(d["dataset"]),
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

"""Which total a source counts in, as its dict or its result entry says (without numpy: the
runtime decides it when the sampler starts, before numpy is imported)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "APU_COUNTED_NOTE",
    "FAILED_NOTE",
    "PACKAGE_REPLACED_NOTE",
    "TOTALS",
    "counted_domain",
    "failed_note",
]

#: The domains of the totals: ``cpu_j`` (package), ``dram_j``, ``gpu_j``.
TOTALS = ("package", "dram", "gpu")

#: How a source's note begins when the source counts in a total its domain does not say: an AMD
#: APU's socket counted as the CPU package it contains (in ``cpu_j``), and the package it
#: replaces there (then shown beside it). Results carry the choice in these notes.
APU_COUNTED_NOTE = "AMD APU socket, counted as the CPU package in cpu_j"
PACKAGE_REPLACED_NOTE = "CPU package inside an AMD APU socket counted in its place"

#: A ``by_source`` entry's note where the source had no figure for the region.
FAILED_NOTE = "source failed or its counter was reset before the region ended"


def failed_note(note: str | None) -> str:
    """The note of a source without a figure: :data:`FAILED_NOTE`, after the APU choice its
    note states (which total it counts in is still told by the entry)."""
    if note and note.startswith((APU_COUNTED_NOTE, PACKAGE_REPLACED_NOTE)):
        return f"{note}. No figure: {FAILED_NOTE}"
    return FAILED_NOTE


def counted_domain(src: Any) -> str | None:
    """The total a source counts in (``"package"`` for ``cpu_j``, ``"dram"``, ``"gpu"``) or
    None, for a source's dict (sampler, context record, ``by_source`` entry) or a
    :class:`carbonctx.SourceEnergy`: its ``counted`` where it has one, else what its note says of
    an APU, else its domain where that is a total's."""
    if isinstance(src, Mapping):
        if "counted" in src:
            c = src["counted"]
            return c if c in TOTALS else None
        note, dom = src.get("note") or "", src.get("domain")
    else:
        note, dom = getattr(src, "note", None) or "", getattr(src, "domain", None)
    if note.startswith(APU_COUNTED_NOTE):
        return "package"
    if note.startswith(PACKAGE_REPLACED_NOTE):
        return None
    return dom if dom in TOTALS else None

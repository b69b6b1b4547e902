"""Region records as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import IO, Any

__all__ = ["CSV_FIELDS", "csv_text", "write_csv"]

CSV_FIELDS = [
    "name",
    "id",
    "pid",
    "thread",
    "parent",
    "start",
    "end",
    "duration_s",
    "energy_j",
    "cpu_j",
    "dram_j",
    "gpu_j",
    "uncertainty_j",
    "co2_g",
    "intensity",
    "zone",
    "estimated",
    "missing",
]


def write_csv(records: Iterable[Mapping[str, Any]], out: IO[str]) -> int:
    """Write region records (dicts as in JSON Lines) as CSV; returns the number of rows."""
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    n = 0
    for r in records:
        row = dict(r)
        row["missing"] = ";".join(r.get("missing") or [])
        w.writerow(row)
        n += 1
    return n


def csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    write_csv(records, buf)
    return buf.getvalue()

"""Region records as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

__all__ = ["CSV_FIELDS", "csv_text", "row_writer", "write_csv"]

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
    write = row_writer(out)
    n = 0
    for r in records:
        write(r)
        n += 1
    return n


def row_writer(out: IO[str]) -> Callable[[Mapping[str, Any]], None]:
    """Writes the header now, and returns what writes one region record as a row (for records
    read one at a time)."""
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()

    def write(r: Mapping[str, Any]) -> None:
        row = dict(r)
        row["missing"] = ";".join(r.get("missing") or [])
        w.writerow(row)

    return write


def csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    write_csv(records, buf)
    return buf.getvalue()

"""JSON Lines: one record per line, read back tolerantly (a killed writer leaves a cut line)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["dumps", "json_default", "read_json_lines", "read_jsonl"]


def json_default(o: object) -> Any:
    """JSON for what ``json`` cannot write: non-finite floats as null, dates in ISO form."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return str(o)


def dumps(record: object) -> str:
    """One record as a JSON Lines line (with its newline); NaN and infinities are refused."""
    return json.dumps(record, default=json_default, allow_nan=False) + "\n"


def read_json_lines(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Every JSON object in a JSON Lines file, and how many lines were not one.

    A file cut short by a killed process is read up to its last complete line.
    """
    records: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def read_jsonl(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Read a JSON Lines file: (region records, power records, lines that could not be parsed)."""
    records, bad = read_json_lines(path)
    regions = [r for r in records if r.get("kind", "region") == "region"]
    power = [r for r in records if r.get("kind") == "power"]
    return regions, power, bad

"""JSON Lines: one record per line, read back tolerantly (a killed writer leaves a cut line).

Writing never fails on a value: non-finite floats (a diverged ``loss=nan``, an overflowing
CO2 figure) are written as ``null``, integers too long for Python's int-to-text limit as
decimal strings, keys that are not strings as their text, and anything else ``json`` cannot
write (objects, circular or too deeply nested values) as text.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from carbonctx._output.reading import Skipped, check_record, iter_json_lines, scan_json_lines

__all__ = [
    "dumps",
    "dumps_compact",
    "iter_jsonl_checked",
    "json_default",
    "json_safe",
    "read_json_lines",
    "read_jsonl",
    "read_jsonl_checked",
]

#: Nesting deeper than this is written as a placeholder string.
MAX_DEPTH = 64
#: Digits per chunk when a long integer is written as text (below Python's 4300-digit limit).
_CHUNK_DIGITS = 4000


def json_default(o: object) -> Any:
    """JSON for what ``json`` cannot write: non-finite floats as null, dates in ISO form."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return _text(o)


def _text(o: object) -> str:
    try:
        return str(o)
    except Exception:
        return f"<unprintable {type(o).__name__}>"


def _int_text(n: int) -> str:
    """Decimal text of an integer of any length (``str`` refuses more than 4300 digits)."""
    try:
        return str(n)
    except ValueError:
        pass
    sign, n = ("-", -n) if n < 0 else ("", n)
    base = 10**_CHUNK_DIGITS
    chunks: list[int] = []
    while n:
        n, r = divmod(n, base)
        chunks.append(r)
    head = str(chunks[-1])
    return sign + head + "".join(str(c).zfill(_CHUNK_DIGITS) for c in reversed(chunks[:-1]))


def _int_ok(n: int) -> bool:
    try:
        str(n)
    except ValueError:
        return False
    return True


def json_safe(o: Any, _depth: int = 0, _path: frozenset[int] = frozenset()) -> Any:
    """A copy of ``o`` that ``json.dumps(..., allow_nan=False)`` always writes (see module)."""
    if o is None or isinstance(o, (str, bool)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, int):
        return int(o) if _int_ok(o) else _int_text(o)
    if _depth >= MAX_DEPTH:
        return "<nested too deeply>"
    if isinstance(o, (dict, list, tuple)):
        if id(o) in _path:
            return "<circular>"
        path = _path | {id(o)}
        try:
            if isinstance(o, dict):
                return {_key(k): json_safe(v, _depth + 1, path) for k, v in list(o.items())}
            return [json_safe(v, _depth + 1, path) for v in list(o)]
        except Exception:
            return _text(o)
    try:
        return json_safe(json_default(o), _depth + 1, _path)
    except Exception:
        return f"<unprintable {type(o).__name__}>"


def _key(k: object) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool) or k is None:
        return json.dumps(k)
    if isinstance(k, float):
        return repr(k)
    if isinstance(k, int):
        return _int_text(k)
    return _text(k)


def dumps(record: object) -> str:
    """One record as a JSON Lines line (with its newline). Never raises on a value: what
    ``json`` refuses (NaN, infinities, huge integers, odd keys or objects) is made writable
    first (see the module's docstring)."""
    try:
        return json.dumps(record, default=json_default, allow_nan=False) + "\n"
    except Exception:
        return json.dumps(json_safe(record), allow_nan=False) + "\n"


def dumps_compact(o: object) -> str:
    """:func:`dumps` without spaces or newline (values inside compact region lines)."""
    try:
        return json.dumps(o, default=json_default, allow_nan=False, separators=(",", ":"))
    except Exception:
        return json.dumps(json_safe(o), allow_nan=False, separators=(",", ":"))


def read_json_lines(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Every JSON object in a JSON Lines file, and how many lines were not one (see
    ``_output.reading``: bounded lines, bad UTF-8 or JSON skipped, NaN read as null).

    A file cut short by a killed process is read up to its last complete line.
    """
    records, skipped = scan_json_lines(path)
    return records, skipped.total


def read_jsonl(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Read a JSON Lines file: (region records, power records, lines that could not be used).

    Region records come out in the full form (:meth:`carbonctx.Measurement.to_dict`) whether
    the file holds that form or the compact one (``_output.compact``).
    """
    regions, power, skipped = read_jsonl_checked(path)
    return regions, power, skipped.total


def read_jsonl_checked(
    path: str | os.PathLike[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Skipped]:
    """As :func:`read_jsonl`, with what was skipped and why; region and power records whose
    fields are missing or of the wrong type are skipped too."""
    skipped = Skipped()
    regions: list[dict[str, Any]] = []
    power: list[dict[str, Any]] = []
    for r in iter_jsonl_checked(path, skipped):
        (regions if r.get("kind", "region") == "region" else power).append(r)
    return regions, power, skipped


def iter_jsonl_checked(
    path: str | os.PathLike[str],
    skipped: Skipped,
    on_other: Callable[[int, dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The usable region and power records of a JSON Lines file (full form), one at a time;
    what is skipped is counted in ``skipped`` with its reason and first line. Records of other
    kinds (``shed``, run-log records, a newer version's) go to ``on_other`` with their line."""
    from carbonctx._output.compact import iter_expanded

    lines = iter_json_lines(path, skipped)
    for line, r in iter_expanded(lines, on_bad=skipped.add):
        if r.get("kind", "region") not in ("region", "power"):
            if on_other is not None:
                on_other(line, r)
            continue
        why = check_record(r)
        if why is not None:
            skipped.add(why, line)
            continue
        yield r

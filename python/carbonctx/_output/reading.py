"""Reading JSON Lines back from any file, damaged or hostile, in bounded memory.

Each line is read with a length cap (a longer line is skipped without being held whole), decoded
as UTF-8 and parsed on its own; a line that is not a JSON object, is nested too deeply, holds a
number Python refuses, or a record whose fields have the wrong types is skipped, counted under
its reason and the first line it happened on. ``NaN`` and ``Infinity`` (which JSON does not
have) and numbers too large for a float are read as null, so nothing read back can put them in a
trace or a total.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import attrs

__all__ = [
    "MAX_LINE_BYTES",
    "Skipped",
    "check_record",
    "check_run_record",
    "iter_json_lines",
    "scan_json_lines",
]

#: Lines longer than this are skipped (a record carbonctx writes is a few KiB; tags make more).
MAX_LINE_BYTES = 8 << 20
#: How much of a skipped over-long line is read at a time while looking for its end.
_CHUNK = 1 << 20


@attrs.define
class Skipped:
    """Lines and records skipped while reading, by reason: the count and the first line."""

    reasons: dict[str, list[int]] = attrs.field(factory=dict)

    def add(self, reason: str, line: int) -> None:
        entry = self.reasons.setdefault(reason, [0, line])
        entry[0] += 1

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.reasons.values())

    def lines(self) -> list[str]:
        """One line per reason, most frequent first: ``3 lines: not UTF-8 (first: line 7)``."""
        rows = sorted(self.reasons.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
        out = []
        for reason, (n, first) in rows:
            where = f" (first: line {first})" if first > 0 else ""
            out.append(f"{n} {'line' if n == 1 else 'lines'}: {reason}{where}")
        return out


def _lines(f: Any, skipped: Skipped, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes without the newline, whether the line was complete) of the first
    ``size`` bytes, each line at most :data:`MAX_LINE_BYTES`; longer ones are counted in
    ``skipped`` and read past. What a writer appends meanwhile is not read: a file that grows
    as fast as it is read would otherwise never end."""
    number = 0
    left = size
    while left > 0:
        chunk: bytes = f.readline(MAX_LINE_BYTES + 1 if left > MAX_LINE_BYTES else left)
        if not chunk:
            return
        left -= len(chunk)
        number += 1
        if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n") and left > 0:
                chunk = f.readline(min(_CHUNK, left))
                left -= len(chunk)
            skipped.add(f"longer than {MAX_LINE_BYTES >> 20} MiB", number)
            continue
        complete = chunk.endswith(b"\n")
        yield number, chunk.rstrip(b"\r\n"), complete


def _open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, refused (OSError, saying what it is) unless it is a regular
    file: the open never waits, where a FIFO without a writer would block it for ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a FIFO" if stat.S_ISFIFO(mode) else "a directory, device or socket"
            raise OSError(errno.EINVAL, f"not a regular file ({what})", os.fspath(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _no_constant(token: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON; read as null


def _float(text: str) -> float | None:
    x = float(text)
    return x if math.isfinite(x) else None  # 1e999


def _parse(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constant, parse_float=_float)


def iter_json_lines(
    path: str | os.PathLike[str], skipped: Skipped
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every JSON object of a JSON Lines file, one line in memory at a
    time; what is skipped is counted in ``skipped`` with its reason. A file cut short by a
    killed writer is read up to its last complete line; one still being written is read as
    far as it went when it was opened. Raises OSError when the file cannot be opened or
    read."""
    with _open_regular(path) as f:
        for number, raw, complete in _lines(f, skipped, os.fstat(f.fileno()).st_size):
            if b"\0" in raw:
                # Blocks a crash left unwritten read as NUL bytes, and the next run's records
                # are appended after them: no JSON has a NUL outside a string, and no string
                # one unescaped, so the record beside them is read whole.
                pieces = [p for p in raw.split(b"\0") if p]
                if not pieces:
                    skipped.add("NUL bytes only (blocks a crash left unwritten)", number)
                    continue
                if len(pieces) > 1:  # a record cut by the crash, the next run's after it
                    skipped.add("cut short by a crash (NUL bytes after it)", number)
                raw = pieces[-1]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped.add("not UTF-8 text", number)
                continue
            if number == 1:
                text = text.lstrip("\ufeff")
            try:
                rec = _parse(text)
            except RecursionError:
                skipped.add("nested too deeply", number)
                continue
            except json.JSONDecodeError:
                reason = "not JSON" if complete else "cut short (the writer stopped mid-line)"
                skipped.add(reason, number)
                continue
            except ValueError:  # Python reads no integer of more than 4300 digits
                skipped.add("a number too long to read", number)
                continue
            if not isinstance(rec, dict):
                skipped.add(f"a JSON {type(rec).__name__}, not an object", number)
                continue
            yield number, rec


def scan_json_lines(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], Skipped]:
    """Every JSON object of a JSON Lines file (:func:`iter_json_lines`), and what was skipped
    and why."""
    skipped = Skipped()
    return [rec for _, rec in iter_json_lines(path, skipped)], skipped


_NUMBER = (int, float)
#: Fields of a region record and the types they may hold (None always allowed unless required).
_REGION_FIELDS: Mapping[str, tuple[type, ...]] = {
    "name": (str,),
    "start": _NUMBER,
    "end": _NUMBER,
    "duration_s": _NUMBER,
    "energy_j": _NUMBER,
    "cpu_j": _NUMBER,
    "dram_j": _NUMBER,
    "gpu_j": _NUMBER,
    "uncertainty_j": _NUMBER,
    "co2_g": _NUMBER,
    "intensity": _NUMBER,
    "zone": (str,),
    "id": (int,),
    "pid": (int,),
    "thread": (int,),
    "parent": (int,),
    "tags": (dict,),
    "missing": (list,),
    "by_source": (dict,),
    "estimated": (bool,),
}
_REGION_REQUIRED = ("name", "start", "end")
#: Figures no region has below zero (energy counters only count up; intensities are positive).
_NOT_NEGATIVE = frozenset(
    ("duration_s", "energy_j", "cpu_j", "dram_j", "gpu_j", "uncertainty_j", "co2_g", "intensity")
)


def _finite(v: object) -> bool:
    """A number (not a bool) that is finite as a float (an integer of 400 digits is not)."""
    if not isinstance(v, _NUMBER) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_record(rec: Mapping[str, Any]) -> str | None:
    """Why a region or power record cannot be used (a missing or wrong-typed field), or None."""
    kind = rec.get("kind", "region")
    if kind == "region":
        for key in _REGION_REQUIRED:
            if rec.get(key) is None:
                return f"a region without {key!r}"
        for key, types in _REGION_FIELDS.items():
            v = rec.get(key)
            if v is None:
                continue
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                return f"a region whose {key!r} is a {type(v).__name__}"
            if types is _NUMBER:
                if not _finite(v):
                    return f"a region whose {key!r} is out of range"
                if v < 0 and key in _NOT_NEGATIVE:  # type: ignore[operator]  # a number here
                    return f"a region whose {key!r} is negative"
        if rec["end"] < rec["start"]:
            return "a region that ends before it starts"
        if not all(isinstance(m, str) for m in rec.get("missing") or ()):
            return "a region whose 'missing' holds something other than source ids"
        if not rec["name"]:
            return "a region with an empty name"
        return None
    if kind == "power":
        watts = rec.get("watts")
        t = rec.get("t")
        if not _finite(t):
            return "a power record without a time"
        if not isinstance(watts, dict) or not all(_finite(v) for v in watts.values()):
            return "a power record whose 'watts' are not numbers"
    return None


#: Fields of run-log records (``epochs()``: run-start, epoch, run) and of the objects inside
#: them, by the type they must have where present (null is allowed).
_RUN_NUMBERS = frozenset(
    (
        "energy_j",
        "energy_j_low",
        "energy_j_high",
        "cpu_j",
        "dram_j",
        "gpu_j",
        "co2_g",
        "duration_s",
        "start",
        "end",
        "started",
        "budget_kwh",
        "budget_co2_kg",
        "pue_suggestion",
    )
)
_RUN_INTEGERS = frozenset(
    ("epoch", "epochs_planned", "epochs_done", "rank", "local_rank", "world_size")
)
_RUN_TEXTS = frozenset(("run", "name", "stop_reason", "job", "node"))
_RUN_OBJECTS = frozenset(("actual", "forecast", "forecast_first", "budget", "carbon"))


#: What each record or object of a run log cannot do without.
_RUN_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "epoch": ("epoch", "start", "end"),
    "run": ("actual",),
    "forecast": ("energy_j",),
    "forecast_first": ("energy_j",),
    "actual": ("energy_j", "duration_s"),
}


def check_run_record(rec: Mapping[str, Any], _within: str = "", _depth: int = 0) -> str | None:
    """Why a run-log record cannot be used (a field of the wrong type, an epoch without its
    number or times, a forecast without its figure), or None. Objects inside it are checked
    the same way."""
    what = _within or str(rec.get("kind"))
    for key in _RUN_REQUIRED.get(what, ()):
        if rec.get(key) is None:
            return f"{'an' if what[0] in 'aeiou' else 'a'} {what} without {key!r}"
    for key, v in rec.items():
        if v is None:
            continue
        if key in _RUN_NUMBERS and not _finite(v):
            return f"a run record whose {key!r} is not a number"
        if key in _RUN_INTEGERS and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            return f"a run record whose {key!r} is not a count"
        if key in _RUN_TEXTS and not isinstance(v, str):
            return f"a run record whose {key!r} is not text"
        if key in _RUN_OBJECTS:
            if not isinstance(v, dict):
                return f"a run record whose {key!r} is not an object"
            if _depth < 4 and (why := check_run_record(v, key, _depth + 1)) is not None:
                return why
    return None

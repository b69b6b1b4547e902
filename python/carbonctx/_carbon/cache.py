"""The intensity cache: periods per provider, zone and kind, in memory and on disk.

Memory holds a :class:`CachedSeries` per kind (``"recent"``, ``"forecast"``); :class:`DiskCache`
keeps each in ``<cache_dir>/<provider>-<zone>-<kind>.json`` so that other processes (and later
runs) find what one has fetched, and honour its back-off.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import attrs

from carbonctx._carbon.intensity import Intensity

__all__ = [
    "CachedSeries",
    "DiskCache",
    "Failure",
    "NewerCache",
    "UnusableCache",
    "atomic_write_json",
]

#: A cache file larger than this is not read.
MAX_CACHE_BYTES = 16 * 1024 * 1024


class UnusableCache(Exception):
    """A cache file is there but cannot be trusted (damaged, or values no provider gives)."""


class NewerCache(UnusableCache):
    """A cache file of a newer carbonctx's format: neither read nor replaced here."""


#: The cache files' format (a newer one is left alone: another version's processes use it).
CACHE_FORMAT = 1


def _newer_format(data: object) -> int | None:
    fmt = data.get("format") if isinstance(data, dict) else None
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CACHE_FORMAT:
        return fmt
    return None


@attrs.define
class Failure:
    """The last failure of a series: its kind, why, how many in a row, and when to try again."""

    kind: str
    reason: str
    attempts: int
    until: float

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.define
class CachedSeries:
    """Cached periods of one provider, zone and kind, keyed by the start of each period."""

    periods: dict[float, Intensity] = attrs.field(factory=dict)
    starts: list[float] = attrs.field(factory=list)
    fetched_at: float | None = None
    failure: Failure | None = None
    hold_until: float = 0.0  # held back by a provider's request limit (not a failure)

    def set_periods(self, periods: dict[float, Intensity]) -> None:
        self.periods = periods
        self.starts = sorted(periods)

    def at(self, t: float) -> Intensity | None:
        i = bisect.bisect_right(self.starts, t) - 1
        if i < 0:
            return None
        p = self.periods[self.starts[i]]
        return p if p.covers(t) else None

    def next_start(self, t: float) -> float | None:
        i = bisect.bisect_right(self.starts, t)
        return self.starts[i] if i < len(self.starts) else None

    def latest_before(self, t: float) -> Intensity | None:
        i = bisect.bisect_right(self.starts, t) - 1
        return self.periods[self.starts[i]] if i >= 0 else None

    def merge_from_disk(
        self,
        kind: str,
        zone: str,
        fetched_at: object,
        periods: list[Intensity],
        fail: Failure | None,
    ) -> None:
        """Take what another process wrote when it is newer than what is held here."""
        if isinstance(fetched_at, (int, float)) and (
            self.fetched_at is None or fetched_at > self.fetched_at
        ):
            merged = dict(self.periods) if kind == "recent" else {}
            for p in periods:
                if p.valid_from is not None and p.zone == zone:
                    merged[p.valid_from.timestamp()] = p
            self.set_periods(merged)
            self.fetched_at = float(fetched_at)
            self.failure = None
        if fail is not None and (self.failure is None or fail.until > self.failure.until):
            self.failure = fail


@attrs.define
class DiskCache:
    """One JSON file per kind for a provider and zone; unreadable or unwritable files are
    skipped (a read-only home must not stop measurement)."""

    directory: Path
    provider_id: str
    zone: str

    def path(self, kind: str) -> Path:
        return self.directory / f"{self.provider_id}-{self.zone}-{kind}.json"

    def snapshot(self, kind: str, series: CachedSeries) -> dict[str, Any]:
        """What :meth:`write` stores (take it under the series' lock)."""
        return {
            "format": CACHE_FORMAT,
            "provider": self.provider_id,
            "zone": self.zone,
            "kind": kind,
            "fetched_at": series.fetched_at,
            "failure": series.failure.to_dict() if series.failure else None,
            "periods": [series.periods[s].to_dict() for s in series.starts],
        }

    def write(self, kind: str, data: dict[str, Any]) -> None:
        """Replace the file, unless a newer carbonctx wrote it (its processes, sharing the
        folder, keep their cache; this one keeps its figures in memory)."""
        if self._newer_on_disk(kind):
            return
        with contextlib.suppress(OSError):
            atomic_write_json(self.path(kind), data)

    def _newer_on_disk(self, kind: str) -> bool:
        try:
            raw = _read_regular(self.path(kind), MAX_CACHE_BYTES + 1)
            return _newer_format(json.loads(raw)) is not None
        except (OSError, _Refused, ValueError, RecursionError):
            return False

    def read(self, kind: str) -> tuple[float | None, list[Intensity], Failure | None] | None:
        """(fetched_at, periods, failure) from disk; None when there is no file or it cannot be
        opened; raises :class:`UnusableCache` (saying why) when it is there but not usable:
        every value is checked (finite, non-negative, plausible, of the right type)."""
        path = self.path(kind)
        try:
            raw = _read_regular(path, MAX_CACHE_BYTES + 1)
        except _Refused as exc:
            raise UnusableCache(f"{path}: {exc}") from None
        except OSError:
            return None
        try:
            if len(raw) > MAX_CACHE_BYTES:
                raise ValueError("the file is too large")
            data: Any = json.loads(raw, parse_constant=_refuse_constant)
            return self._check(kind, data)
        except NewerCache as exc:
            raise NewerCache(f"{path}: {exc}") from None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise UnusableCache(f"{path}: {why or type(exc).__name__}") from None

    def _check(self, kind: str, data: Any) -> tuple[float | None, list[Intensity], Failure | None]:
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        if (fmt := _newer_format(data)) is not None:
            raise NewerCache(
                f"written by a newer carbonctx (cache format {fmt}; this one reads {CACHE_FORMAT})"
            )
        if (data.get("format"), data.get("provider"), data.get("zone"), data.get("kind")) != (
            CACHE_FORMAT,
            self.provider_id,
            self.zone,
            kind,
        ):
            raise ValueError("written for another format, provider, zone or kind")
        fetched_at = data.get("fetched_at")
        if fetched_at is not None and not _finite(fetched_at):
            raise TypeError("fetched_at is not a time")
        failure = data.get("failure")
        fail: Failure | None = None
        if failure is not None:
            if not isinstance(failure, dict) or set(failure) != {
                "kind",
                "reason",
                "attempts",
                "until",
            }:
                raise TypeError("failure is not a failure record")
            ok = (
                isinstance(failure["kind"], str)
                and isinstance(failure["reason"], str)
                and isinstance(failure["attempts"], int)
                and not isinstance(failure["attempts"], bool)
                and _finite(failure["until"])
            )
            if not ok:
                raise TypeError("failure has values of the wrong type")
            fail = Failure(**failure)
        items = data.get("periods")
        if not isinstance(items, list):
            raise TypeError("periods is not a list")
        periods = []
        for d in items:
            if not isinstance(d, dict):
                raise TypeError("a period is not an object")
            p = Intensity.from_dict(d)
            if p.zone != self.zone:
                raise ValueError("a period is for another zone")
            periods.append(p)
        return (None if fetched_at is None else float(fetched_at)), periods, fail


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} in the file")


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Refused(Exception):
    pass


def _read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path``. The open never waits (a FIFO
    with no writer would block it for ever); anything but a regular file (a FIFO, a device, a
    socket), or a file of another user's, raises :class:`_Refused`, saying what it is."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            what = "a FIFO" if stat.S_ISFIFO(mode) else "a device, socket or directory"
            raise _Refused(f"not a regular file ({what})")
        owner, me = st.st_uid, getattr(os, "geteuid", lambda: None)()
        if me is not None and owner != me:
            # A cache folder others can write (a shared one named by cache_dir) may hold
            # values another user put there: only the user's own files are believed.
            raise _Refused(f"it belongs to user {owner}, not to this process's user")
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and the missing folders above it readable and writable by the
    user alone (0700, as the XDG base directory specification asks of a cache), whatever the
    umask: under umask 000 a cache others can write is a cache others can poison."""
    missing: list[Path] = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # the umask may have taken the user's own bits away too


def atomic_write_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never a part.
    The folder is made private if it is made here (:func:`make_private_dirs`); the file is
    the user's alone (``mkstemp``: 0600)."""
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

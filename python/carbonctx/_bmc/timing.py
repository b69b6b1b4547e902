"""When a BMC's reading stood, on the sampler's clock (``time.monotonic_ns``, CLOCK_MONOTONIC).

- A reading with the BMC's own time (a ``Sensor``'s ``ReadingTime``, wall clock) stood then: it
  is converted with the offset between this host's wall and monotonic clocks measured at the
  fetch. It is trusted only where it falls within the request (its start to its end) widened by
  ``CLOCK_TOLERANCE_S`` each way; a BMC clock further off than that (unset, another time zone
  written as UTC, drifting) is not trusted, and the reading is placed as one without a time.
- A reading without one stood in the middle of its request (the BMC read its figure while
  answering; after a search for where the reading is, at the last request's end).
- A mean over a window (``PowerMetrics.AverageConsumedWatts`` over ``IntervalInMin``) stands
  for the middle of its window, which ends at the reading's instant.

With ``redfish_lag_s`` set, the feed holds a reading from its instant until the next one's,
and places it there where it arrives within the feed's lag (see ``carbonctx._native.Feed``);
an instant further back is placed at the earliest one still open, which the poller says in the
result's provenance. Without (the default), a reading is placed when read, and the provenance
says how long before that it stood.
"""

from __future__ import annotations

import time

import attrs

from carbonctx._bmc.redfish import Reading

__all__ = ["CLOCK_TOLERANCE_S", "Fetch", "Placed", "place"]

#: A BMC's ``ReadingTime`` is trusted when within the request widened by this much each way:
#: BMCs often give whole seconds, and sample their sensors on a cycle of their own.
CLOCK_TOLERANCE_S = 2.0


@attrs.frozen
class Fetch:
    """One fetch on this host's clocks: its start and end (monotonic ns), whether it searched
    for the reading first, and wall less monotonic time (ns) measured at it."""

    started_ns: int
    done_ns: int
    searched: bool = False
    offset_ns: int = attrs.field(factory=lambda: time.time_ns() - time.monotonic_ns())

    @property
    def request_ns(self) -> int:
        """The reading's instant when the BMC gives none."""
        if self.searched:
            return self.done_ns
        return (self.started_ns + self.done_ns) // 2


@attrs.frozen
class Placed:
    """A reading's instant (monotonic ns) and its basis: ``reading-time`` (the BMC's own),
    ``request`` (mid-request), and, for a mean over a window, ``window`` added; ``skew_s`` is
    how far off the request an untrusted ``ReadingTime`` was (None: trusted, or none given)."""

    at_ns: int
    basis: str
    skew_s: float | None = None


def place(r: Reading, f: Fetch) -> Placed:
    """Where reading ``r`` of fetch ``f`` stood."""
    at = f.request_ns
    basis = "request"
    skew = None
    if r.read_at is not None:
        mono = round(r.read_at * 1e9) - f.offset_ns
        tol = round(CLOCK_TOLERANCE_S * 1e9)
        if f.started_ns - tol <= mono <= f.done_ns + tol:
            at, basis = mono, "reading-time"
        else:
            nearest = min(max(mono, f.started_ns), f.done_ns)
            skew = (mono - nearest) * 1e-9
    if r.window_s:
        at -= round(r.window_s * 0.5e9)
        basis += "+window"
    return Placed(at, basis, skew)

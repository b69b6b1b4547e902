"""The node's BMC as a source of the sampler: a native :class:`~carbonctx._native.Feed` that the
sampler reads like any power sensor, and a thread that fetches the reading over Redfish every
``period_s`` and pushes it in.

- The sampler reads the feed every ``FEED_INTERVAL_S`` and integrates the latest reading (held
  between fetches), so the node's figure resolves with every other source, in the same columns
  (one resolution path: results, statistics, records, rank shares). A reading is held for at
  most ``stale_s`` (three periods and a request); after that the source fails (a gap, no
  invented energy) until the BMC answers again.
- With an energy counter (``EnergykWh``, or an energy sensor) the power pushed is the
  counter's mean power between its last two updates (unless it moves too rarely to follow the
  power, ``COUNTER_MAX_PERIODS``, or in steps too coarse for its mean to be within
  ``COUNTER_MAX_ERROR``: ``EnergykWh`` sent to 0.001 kWh moves by 3600 J, one or two steps
  per reading at 1 kW every 5 s); without one, the BMC's power reading. The result says the
  counter's resolution and the ± it leaves.
- Where a reading is placed in time is the ``redfish_lag_s`` setting's choice (the request
  deadline where shorter). 0, the default: when it is read (pushed), so that nothing waits for
  the BMC; the provenance says how long before its read it stood. Above 0: at the instant it
  stands for (``timing``: the BMC's ``ReadingTime`` where its clock agrees with this host's,
  else mid-request; a mean over a window at the window's middle; a counter's mean power from
  the earlier of its two updates, over which it holds exactly): the feed keeps the node's
  timeline ``lag_s`` behind its reads (every region of the process resolves that much later,
  the timeline being shared) and places a reading at its instant where that is no further
  back; one further back is placed ``lag_s`` back, and the provenance says by how much it
  then lags.
- The sampler's start (the first region) waits, once per process and at most the request
  deadline (``min(5 s, period)``, at least 1 s), for the BMC's first answer, so that a region
  around the whole run is covered; a BMC slower than that leaves a gap at the start (that
  region gets no node figure) and is read from its first answer on.
- The thread fetches only while a sampler of this process reads the feed
  (:meth:`Feed.wanted`): in a job sharing one sampler per node, that is the owner's process
  alone, and a process that takes the node over starts fetching.
- Failures degrade: the feed says why, the runtime warns once (``note``), and the thread waits
  a period (or what ``Retry-After`` asks, or longer after repeated failures) before trying
  again. Refused credentials and a BMC without a power reading stop it for good.
- A forked child (a DataLoader worker) does not read the BMC unless it joins its node's shared
  sampler (where only the owner reads): its parent does, and a BMC allows few sessions (the
  runtime decides this before making a source).
- :meth:`BmcSource.stop` waits at most ``STOP_WAIT_S`` for the thread (a request in flight is
  bounded by ``Limits.deadline_s`` and then ends on its own, a search for the reading at its
  next request; the thread is a daemon).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from carbonctx import _native
from carbonctx._bmc.redfish import Reading, RedfishPower
from carbonctx._bmc.timing import CLOCK_TOLERANCE_S, Fetch, place
from carbonctx._bmc.transport import Limits, RedfishError, Transport, scrub
from carbonctx._config import MAX_REDFISH_LAG_S

__all__ = [
    "BASES",
    "FEED_INTERVAL_S",
    "LABEL",
    "SOURCE_ID",
    "STOP_WAIT_S",
    "BmcSource",
]

SOURCE_ID = "redfish:node"
LABEL = "node (BMC, Redfish)"
#: How often the sampler reads the held reading.
FEED_INTERVAL_S = 0.1
#: How long stop() (configure(), interpreter exit) waits for the thread, at most.
STOP_WAIT_S = 1.0
#: A sampler that read the feed this recently wants readings.
WANTED_WITHIN_S = 3.0
#: The key of the one warning about failures: the resolver's note about a source without a
#: figure has the same key, so that a failing BMC warns once.
NOTE_KEY = f"missing:{SOURCE_ID}"
#: An energy counter that moves less often than every this many readings is too coarse to
#: follow the power: the power reading is used instead (see ``BmcSource._watts``).
COUNTER_MAX_PERIODS = 4
#: An energy counter's mean power is used only where its resolution (the finest step its
#: readings show: 0.001 kWh is 3600 J) is at most this part of the energy between its two
#: updates, the most its mean can be off by; else the power reading (where there is one).
COUNTER_MAX_ERROR = 0.05
#: A BMC refreshes a sensor this rarely at most: a ReadingTime up to this much before its
#: request may be an old sensor reading rather than a clock that is off.
STALE_SENSOR_S = 120.0
#: The longest wait between tries after repeated failures.
MAX_BACKOFF_S = 300.0
#: The node's timeline is kept at most this far behind the sampler's reads (``redfish_lag_s``;
#: the request deadline where shorter): a reading whose instant is no further back is placed
#: there.
MAX_LAG_S = MAX_REDFISH_LAG_S


#: Where a reading is held from, by its basis (see ``timing.place``).
BASES = {
    "reading-time": "the time the BMC gives for it (ReadingTime, on this host's clock)",
    "request": "the middle of its request (the BMC gives no time for it that can be trusted)",
    "reading-time+window": (
        "the middle of the window it is a mean over (ending at the BMC's ReadingTime)"
    ),
    "request+window": "the middle of the window it is a mean over (ending at its request)",
    "counter": (
        "the earlier of the two counter updates it is the mean power between (exact where "
        "each holds until the next)"
    ),
}


class BmcSource:
    """One BMC, read over Redfish into a native feed. Credentials stay in the transport."""

    def __init__(
        self,
        url: str,
        user: str | None,
        password: str | None,
        *,
        verify: bool | str,
        period_s: float,
        note: Callable[[str, str], None],
        limits: Limits | None = None,
        first_wait_s: float | None = None,
        lag_s: float = 0.0,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "?"
        self._base = f"{parts.scheme}://{parts.netloc}"
        path = parts.path.rstrip("/")
        self._chassis = path if path.startswith("/redfish/v1/Chassis/") else None
        self._user = user
        self._password = password
        self._verify = verify
        self.period_s = period_s
        self._note = note
        self.limits = limits or Limits(deadline_s=min(5.0, max(1.0, period_s)))
        stale = 3 * period_s + self.limits.deadline_s
        wait = self.limits.deadline_s if first_wait_s is None else first_wait_s
        self.feed = _native.Feed(
            id=SOURCE_ID,
            label=LABEL,
            interval_s=FEED_INTERVAL_S,
            stale_s=stale,
            first_wait_s=wait,
            lag_s=min(lag_s, self.limits.deadline_s, MAX_LAG_S),
        )
        #: Where the latest reading stood (a key of ``BASES``), how much later than that it
        #: was placed (s: beyond the lag; without a lag, after it stood), and how far off the
        #: BMC's clock was when first not trusted (s).
        self.basis: str | None = None
        self.moved_s = 0.0
        self.skew_s: float | None = None
        self._since: float | None = None
        #: Where the reading comes from, once known (for the result's note).
        self.what: str | None = None
        #: The sampler's dict of this source: its ``note`` (what results say) is kept current.
        self.source_dict: dict[str, Any] | None = None
        self.failures = 0
        self.readings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy: tuple[float, float] | None = None
        self._counter_w: float | None = None
        self._dated = False
        self._counter_dt = 0.0
        #: The counter's resolution (J; None: not known), and how far its latest mean power
        #: may be off by it (a fraction), and whether that mean is what is pushed.
        self._step_j: float | None = None
        self._counter_err = 0.0
        self.counter_used: bool | None = None
        if verify is False:
            note(
                "redfish-verify",
                f"carbonctx: the certificate of the BMC at {self.host} is not verified "
                "(redfish_verify=False): whoever is on the path could read the credentials. "
                "Give redfish_verify the path of the BMC's CA bundle instead.",
            )

    def __repr__(self) -> str:
        return f"<carbonctx BMC source {self.host} every {self.period_s:g} s>"

    def provenance(self) -> str:
        """What a result says about the node's figure."""
        src = f" ({self.what})" if self.what else ""
        return (
            f"the node's wall power from its BMC at {self.host} over Redfish{src}, read every "
            f"{self.period_s:g} s and held between readings: a region shorter than a few "
            "readings gets the held power times its duration (interpolated, not measured on its "
            "own), one across a failed reading no figure. Node-wide; shown beside the "
            f"components, never added to energy_j.{self._counter()}{self._placement()}"
        )

    def _placement(self) -> str:
        """Where readings are placed in time, as the latest one was."""
        if self.basis is None:
            return ""
        lag = self.feed.lag_s
        if lag <= 0:
            return (
                " Each reading is placed when read, not when it stood: the latest stood "
                f"{self.moved_s:.1f} s before it was read, at {BASES[self.basis]}; the node's "
                "figure follows changes of power that much late. Set redfish_lag_s to place "
                "readings when they stood, at the cost of results arriving that much later."
                + self._skew()
            )
        out = f" Each reading is held from {BASES[self.basis]}"
        if self.moved_s > 0.5:
            out += (
                f"; that was {self.moved_s + lag:.0f} s back, further than the {lag:g} s the "
                f"node's timeline is kept behind, so it is placed {lag:g} s back and lags "
                f"changes by about {self.moved_s:.0f} s"
            )
        return out + "." + self._skew()

    def _skew(self) -> str:
        """What the result says of a BMC clock found too far off to be trusted."""
        if self.skew_s is None:
            return ""
        # A time a little before the request may be a sensor the BMC refreshes rarely
        # (every 10 to 60 s), not a clock that is off: the note says both.
        stale = (
            ", or its sensor had not been refreshed for that long"
            if -STALE_SENSOR_S <= self.skew_s < 0
            else ""
        )
        return (
            f" The BMC's ReadingTime was found {self.skew_s:+.0f} s off this host's clock "
            f"(more than its request took and {CLOCK_TOLERANCE_S:g} s){stale}: a time so far "
            "off is not trusted, and its reading is taken to stand at its request instead."
        )

    def describe(self) -> dict[str, Any]:
        """For ``carbonctx devices``: the BMC, where its reading is, how it fares."""
        return {
            "host": self.host,
            "period_s": self.period_s,
            "reading": self.what,
            "readings": self.readings,
            "failures": self.failures,
            "fetching": self.feed.reads > 0,
            "placed_by": self.basis if self.feed.lag_s > 0 else "read",
            "stood_by": self.basis,
            "lag_s": self.feed.lag_s,
            "late": self.feed.late,
            "note": self.provenance(),
        }

    def start(self) -> None:
        t = threading.Thread(target=self._run, name="carbonctx-redfish", daemon=True)
        self._thread = t
        t.start()

    def stop(self) -> None:
        """Stop fetching; waits at most ``STOP_WAIT_S``."""
        self._stop.set()
        self.feed.close("carbonctx stopped reading the BMC")
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(STOP_WAIT_S)

    # ---------------------------------------------------------------- the thread

    def _scrub(self, text: str) -> str:
        return scrub(text, (self._password, self._user))

    def _run(self) -> None:
        try:
            transport = Transport(
                self._base, self._user, self._password, verify=self._verify, limits=self.limits
            )
        except Exception as e:  # a CA bundle that cannot be loaded, ...
            why = self._scrub(f"cannot set up HTTPS to the BMC at {self.host}: {e}")
            self.feed.close(why)
            self._note(NOTE_KEY, f"carbonctx: node power unavailable: {why}")
            return
        power = RedfishPower(transport, self._chassis, stopped=self._stop.is_set)
        try:
            self._loop(power)
        finally:
            transport.close()

    def _loop(self, power: RedfishPower) -> None:
        while not self._stop.is_set():
            if not self.feed.wanted(WANTED_WITHIN_S, 0.5):
                continue
            started_ns = time.monotonic_ns()
            started = started_ns * 1e-9
            due = started + self.period_s
            try:
                located = power.locator is not None
                reading = power.read()
                placed = place(reading, Fetch(started_ns, time.monotonic_ns(), not located))
                if power.locator is not None and self.what is None:
                    self.what = f"{power.locator.chassis}: {power.locator.what}"
                watts = self._watts(reading, placed.at_ns * 1e-9)
                if watts is None:
                    raise RedfishError("the BMC's reading is null (no figure this time)")
                self._push(watts, placed.at_ns, placed.basis, placed.skew_s)
                self.readings += 1
                self.failures = 0
            except RedfishError as e:
                if self._stop.is_set():
                    return  # stopped mid-search: nothing to say
                self.failures += 1
                if e.permanent or e.status in (401, 403):
                    self.feed.close(e.message)
                    self._note(
                        NOTE_KEY,
                        f"carbonctx: node power from the BMC is off for this process: {e.message}",
                    )
                    return
                self.feed.fail(e.message)
                self._note(
                    NOTE_KEY,
                    f"carbonctx: node power from the BMC at {self.host} failed: {e.message}. "
                    f"Regions lack the node's figure until it answers again (tried every "
                    f"{self.period_s:g} s or more).",
                )
                backoff = self.period_s * min(2 ** (self.failures - 1), 16)
                due = started + min(MAX_BACKOFF_S, backoff)
                if e.retry_after is not None:  # counted from the answer that asks for it
                    due = max(due, time.monotonic() + min(MAX_BACKOFF_S, e.retry_after))
            except Exception as e:  # never let the thread die silently
                self.failures += 1
                why = power.t.error(f"{type(e).__name__}: {e}").message  # scrubbed
                self.feed.fail(why)
                self._note(NOTE_KEY, f"carbonctx: node power from the BMC failed: {why}")
                due = started + min(
                    MAX_BACKOFF_S, self.period_s * min(2 ** (self.failures - 1), 16)
                )
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _push(self, watts: float, at_ns: int, basis: str, skew_s: float | None) -> None:
        """Push a reading standing for ``at_ns`` (a counter's fresh mean power: from the
        earlier update on), no further back than the feed places it (without a lag: now), and
        keep the result's provenance current."""
        if self._since is not None:
            at_ns, basis = round(self._since * 1e9), "counter"
        now = time.monotonic_ns()
        lag = self.feed.lag_s
        if lag > 0:
            # The earliest instant the feed's timeline surely has not passed yet.
            earliest = now - round(max(0.0, lag - 2 * FEED_INTERVAL_S) * 1e9)
            self.moved_s = max(0.0, (earliest - at_ns) * 1e-9)
            self.feed.push(watts, at_ns=max(at_ns, earliest))
        else:
            self.moved_s = max(0.0, (now - at_ns) * 1e-9)
            self.feed.push(watts)  # placed at its push: nothing waits for the BMC
        self.basis = basis
        if skew_s is not None and self.skew_s is None:
            self.skew_s = skew_s
        if self.source_dict is not None:
            self.source_dict["note"] = self.provenance()

    def _watts(self, r: Reading, t: float) -> float | None:
        """The power to push: the energy counter's mean power between its last two updates
        where there is a counter (and it has updated twice since first seen), else the power
        reading. The first update only dates the counter (its value was reached earlier)."""
        e = r.energy_j
        self._since = None
        if r.energy_step_j is not None and r.energy_step_j > 0:
            self._step_j = min(self._step_j or math.inf, r.energy_step_j)
        if e is not None:
            last = self._energy
            if last is None or e < last[1]:
                self._energy = (t, e)  # first sight, or the counter was reset
                self._dated = False
                self._counter_w = None
            elif e > last[1]:
                if self._dated and t > last[0]:
                    self._counter_w = (e - last[1]) / (t - last[0])
                    self._counter_dt = t - last[0]
                    self._counter_err = (self._step_j or 0.0) / (e - last[1])
                    self._since = last[0]
                self._energy = (t, e)
                self._dated = True
        if self._counter_w is not None:
            fine = self._counter_err <= COUNTER_MAX_ERROR
            self.counter_used = r.watts is None or (
                fine and self._counter_dt <= COUNTER_MAX_PERIODS * self.period_s
            )
            if self.counter_used:
                return self._counter_w
        self._since = None
        return r.watts

    def _counter(self) -> str:
        """What the result says of the energy counter: its resolution, and whether its mean
        power is used (and how far off that resolution may make it) or too coarse."""
        if self.counter_used is None:
            return ""
        res = f" (resolution {self._step_j:g} J)" if self._step_j else ""
        if self.counter_used:
            pct = max(self._counter_err * 100, 0.01)  # 0.025, not 0.0; a finer one: 0.01
            return (
                f" The power is the energy counter's mean between its last two updates"
                f"{res}, which its resolution leaves within ±{pct:.2g} %."
            )
        return (
            f" The energy counter{res} moves too coarsely to follow the power (its mean "
            f"between two updates could be off by ±{self._counter_err * 100:.0f} %, or it moved "
            f"only after {self._counter_dt:.0f} s): the BMC's power reading is used."
        )

"""The process's runtime: starts the native sampler on the first region, runs the resolver
thread, and answers what the public functions ask (stats, recent results, traces, devices).

One :class:`Runtime` exists per process (see ``_measure.process``). The native region code
sees it through one typed object, :class:`carbonctx._native.RegionHub` (``Runtime.core``): the
sampler, the flags (``strict``, ``warn_due``, ``dead``), the regions waiting for the resolver,
the name tags and the three callbacks it may need (``tag_of``, ``drain``, ``emit_warnings``).
``warn_due`` and ``dead`` live in the hub; the runtime's properties of those names read it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from carbonctx import _config, _native
from carbonctx._config import Settings
from carbonctx._distributed import RankInfo
from carbonctx._measure import RESULT_TIMEOUT_S
from carbonctx._measure.batch import Batch
from carbonctx._measure.carbon import RegionCarbon
from carbonctx._measure.ranks import (
    RankPlan,
    apu_job,
    column_shares,
    inconsistency_message,
    plan_gpus,
    rank_fields,
    share_of,
)
from carbonctx._measure.resolver import Resolver
from carbonctx._measure.sources import SourceColumns
from carbonctx._measure.start import new_sampler, sampler_kwargs, start_bmc
from carbonctx.errors import (
    ConfigurationError,
    SamplerError,
    SourceUnavailableError,
    warn,
)

if TYPE_CHECKING:
    from carbonctx._bmc import BmcSource
    from carbonctx._carbon.service import IntensityService
    from carbonctx._measure.recorder import RegionRecorder
    from carbonctx._results.measurement import Measurement
    from carbonctx._results.statistics import StatsTable

__all__ = ["BACKLOG_HIGH", "RESOLVE_PERIOD_S", "RESULT_TIMEOUT_S", "Runtime"]

#: How long reading an unresolved result may wait for the sampler before giving up.
#: Regions waiting for the resolver above which the thread that ends one wakes it (it never
#: drains them itself: no user thread waits for output or resolution).
BACKLOG_HIGH = 1 << 15
#: How often the resolver thread collects results.
RESOLVE_PERIOD_S = 0.02
#: At shutdown, regions that just ended wait at most the BMC's lag (``redfish_lag_s``; none
#: without) plus this for its timeline to pass them (see ``shutdown``).
LAG_FLUSH_MARGIN_S = 1.0


class Runtime:
    """Everything carbonctx keeps per process: settings, the sampler and the resolver."""

    def __init__(
        self, settings: Settings, rank_info: RankInfo | None = None, warn_ranks: bool = True
    ) -> None:
        self.settings = settings
        #: This process's place in a job (``_distributed.detect_ranks``); a lone process is
        #: rank 0 of 1.
        self.rank_info = rank_info if rank_info is not None else RankInfo()
        #: GPU ownership and shares, fixed when the sampler starts.
        self.plan: RankPlan | None = None
        self.pid = os.getpid()
        self._parent_sampler: _native.Sampler | None = None
        # Decorated functions record thread and parent only when something will show them.
        self.detailed = settings.strict or bool(settings.output)
        self.strict = settings.strict
        self.sampler: _native.Sampler | None = None
        #: The node's BMC, read over Redfish into the sampler (None: not configured).
        self.bmc: BmcSource | None = None
        self.start_error: str | None = None
        self.started = False
        self.sources: list[dict[str, Any]] = []
        self.unavailable: list[dict[str, Any]] = []
        self.alternatives: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: Replaced by ``configure()`` while regions were open in it: it measures those to
        #: their end, then shuts down (see :meth:`retire`).
        self.retiring = False
        self._shut = False
        self._shutdown_lock = threading.Lock()
        self._warned: set[str] = set()
        self._warnings: list[str] = []
        self.notes: dict[str, str] = {}
        # CLOCK_MONOTONIC → Unix time
        self._offset = time.time() - time.monotonic_ns() * 1e-9
        self.carbon = RegionCarbon(settings, self.note)
        self.recorder: RegionRecorder | None = None
        self.resolver = Resolver(
            settings.window, self._lock, self.note, self.carbon, self._offset, self.pid
        )
        self.pending = self.resolver.pending
        self.recent = self.resolver.recent
        # What the native region code reads on every region, as one typed object.
        self.core = _native.RegionHub(
            self,
            strict=settings.strict,
            pending=self.pending,
            name_tags=self.resolver.name_tags,
            tag_of=self.tag_of,
            drain=self.wake_resolver,
            emit_warnings=self.emit_warnings,
            backlog_high=BACKLOG_HIGH,
            detailed=self.detailed,
        )
        msg = inconsistency_message(self.rank_info)
        if msg is not None and warn_ranks:
            self.note("ranks", msg)

    @property
    def warn_due(self) -> bool:
        """Warnings are waiting to be issued from the user's thread."""
        return self.core.warn_due

    @property
    def dead(self) -> bool:
        """Shut down, or inherited by a forked child: never to measure again."""
        return self.core.dead

    @property
    def finished(self) -> bool:
        """Shut down (or abandoned in a forked child)."""
        return self._shut or self.dead

    @property
    def settled(self) -> bool:
        """Finished, and its shutdown (which resolves the last regions) is over: nothing more
        enters its recent window."""
        return self.dead or (self._shut and not self._shutdown_lock.locked())

    # ------------------------------------------------------------------ start and stop

    def sampler_or_start(self) -> _native.Sampler | None:
        s = self.sampler
        if s is not None or self.started:
            return s
        return self._start()

    def _start(self) -> _native.Sampler | None:
        with self._start_lock:
            if self.started:
                return self.sampler
            st = self.settings
            plan = self._plan()
            kwargs = sampler_kwargs(st)
            self.bmc = start_bmc(st, self.rank_info, self.note)
            if self.bmc is not None:
                kwargs["external"] = [self.bmc.feed]
            try:
                s = new_sampler(kwargs, plan, st, self.rank_info, self.note)
            except Exception as e:  # the sampler must never break the program
                if self.bmc is not None:
                    self.bmc.stop()
                self.start_error = f"the native sampler could not start: {e}"
                self.note("sampler", self.start_error)
                self.started = True
                return None
            self.sources = list(s.sources)
            if self.bmc is not None:
                for src in self.sources:
                    if src["id"] == self.bmc.feed.info["id"]:
                        self.bmc.source_dict = src
                        src["note"] = self.bmc.provenance()
            self.unavailable = list(s.unavailable)
            self.alternatives = list(s.alternatives)
            columns = SourceColumns(self.sources, column_shares(self.sources, plan), apu_job(plan))
            for i in sorted(columns.estimated):
                src = self.sources[i]
                self.note(
                    f"estimate:{src['id']}",
                    f"no energy counter for the CPU: {src['label']}. "
                    "Run `carbonctx devices` to see why counters are unavailable.",
                )
            if not self.sources:
                self.note(
                    "no-sources",
                    "no energy source could be used; results have no energy figures. "
                    "Run `carbonctx devices` for the reasons and what to do.",
                )
            if st.output:
                # Imported only with output to write (it brings numpy and the formats).
                from carbonctx._distributed import expand_path
                from carbonctx._measure.recorder import RegionRecorder

                self.recorder = RegionRecorder(
                    str(expand_path(st.output, self.rank_info)),
                    pid=self.pid,
                    offset=self._offset,
                    lock=self._lock,
                    note=self.note,
                )
            self.resolver.start(
                columns,
                self.recorder,
                self._status_error,
                pid=self.pid,
                offset=self._offset,
                rank=rank_fields(self.rank_info),
            )
            # numpy and the intensity service (zone, table, cache, providers) are loaded by the
            # first batch to resolve (Resolver.prepare), not here: the first region waits for
            # neither (with output on, the recorder brings numpy here). Carbon settings the
            # service would refuse are warned of from here all the same.
            self.carbon.check()
            self.sampler = s
            self.core.sampler = s
            self.started = True
            self._thread = threading.Thread(
                target=self._resolver_loop, name="carbonctx-resolver", daemon=True
            )
            self._thread.start()
            return s

    def _plan(self) -> RankPlan:
        """GPU ownership and shares, at sampler start (after torch may have set its device)."""
        try:
            plan = plan_gpus(self.rank_info, self.settings)
        except ConfigurationError:
            raise
        except Exception as e:  # never break the program; never report another rank's GPU
            self.note(
                "gpu-ownership", f"which GPUs this rank owns is unknown ({e}); no GPU is read"
            )
            plan = RankPlan(
                self.rank_info, None, [], *share_of(self.rank_info), amd_sampler_gpus=[]
            )
        if plan.ownership is not None and plan.ownership.warning:
            self.note("gpu-mig-slices", plan.ownership.warning)
        self.plan = plan
        return plan

    def shutdown(self, wait: bool = True) -> None:
        """Stop the sampler, resolve and record everything, close the output. Idempotent; a
        second caller waits for the first to finish (without ``wait``: returns at once)."""
        if not self._shutdown_lock.acquire(blocking=wait):
            return
        try:
            if self.dead or self._shut:
                return
            self._shut = True
            self._stop.set()
            self._wake.set()
            t = self._thread
            if t is not None and t is not threading.current_thread():
                t.join(timeout=5)
            s = self.sampler
            lag = self._lag_s()
            if s is not None and lag > 0 and self.open_regions() > 0:
                # The BMC's timeline is kept ``lag`` behind the reads: stopped now, the regions
                # that just ended would lose its last seconds (their energy after the
                # timeline's end counts as none). Let it pass them first (bounded).
                self.wait_resolved(_native.now_ns(), lag + LAG_FLUSH_MARGIN_S)
            if s is not None:
                s.stop()
                self.drain()
                if self.recorder is not None:
                    self.recorder.write_power(s, self.sources, force=True)
            if self.bmc is not None:
                self.bmc.stop()  # waits at most _bmc.STOP_WAIT_S
            if self.recorder is not None:
                self.recorder.close()
            self.carbon.close()
            # Regions left in another thread or task than the one they were entered in are
            # still held there (by that context's current region): they keep their results
            # and let go of this runtime, which would otherwise outlive its shutdown.
            for region in self.core.take_orphans():
                release = getattr(region, "_release", None)
                if release is not None:
                    release()
        finally:
            self._shutdown_lock.release()

    def _lag_s(self) -> float:
        """How far the sampler's BMC timeline lags its reads, at most (0: none, or no BMC).
        From the settings (``redfish_lag_s``), which every process of a job shares: a follower
        reads the owner's feed, not its own, so its sources say whether there is a BMC."""
        if not any(src.get("backend") == "redfish" for src in self.sources):
            return 0.0
        return _config.redfish_lag(self.settings)

    def open_regions(self) -> int:
        """Regions begun in this runtime's sampler and not yet resolved and drained, and
        entries of steps open in it (0 when it never started)."""
        s = self.sampler
        if s is None:
            return 0
        open_steps = self.core.open_steps  # before the sampler's count, which takes them over
        st = s.stats()
        unresolved = st["regions_begun"] - st["regions_resolved"] - st["dropped_regions"]
        return max(0, unresolved) + int(st["undrained"]) + len(self.pending) + open_steps

    def retire(self) -> bool:
        """Replaced by ``configure()``: shut down now when no region is open in it; otherwise
        keep measuring the open ones (no new region enters it: the hub has changed) and shut
        down, from the resolver thread, once every one has ended and been recorded. Returns
        True when it is still running."""
        if self.sampler is None or self.dead:
            self.shutdown()
            return False
        self.flush(timeout=2.0)
        if self.open_regions() == 0:
            self.shutdown()
            return False
        self.retiring = True
        self.wake_resolver()
        return True

    def abandon(self) -> None:
        """In a forked child: never touch the parent's sampler or threads again."""
        self.core.dead = True
        # Keep the parent's native sampler referenced: dropping it here would try to stop a
        # thread this process does not have. (The native side also refuses, by pid.)
        self._parent_sampler = self.sampler
        self.sampler = None
        if self.recorder is not None:
            self.recorder.abandon()

    def start_error_or_raise(self, strict: bool) -> None:
        """With ``strict``: raise when the sampler did not start or has no source."""
        if strict:
            if self.start_error is not None:
                raise SamplerError(self.start_error)
            if not self.sources:
                raise SourceUnavailableError(
                    "no energy source could be used (strict=True). "
                    "Run `carbonctx devices` to see why."
                )

    # ------------------------------------------------------------------ warnings and notes

    def note(self, key: str, message: str) -> None:
        """Record a degradation; it is warned once, from the user's thread, and reported."""
        if key in self.notes:
            return
        self.notes[key] = message
        self._warnings.append(message)
        self.core.warn_due = True

    def emit_warnings(self) -> None:
        self.core.warn_due = False
        msgs, self._warnings = self._warnings, []
        for m in msgs:
            if m not in self._warned:
                self._warned.add(m)
                warn(m)  # attributed to the user's line, however deep carbonctx's frames

    def intensity(self) -> IntensityService | None:
        """The intensity service regions are priced with (None when it could not be made)."""
        return self.carbon.service()

    # ------------------------------------------------------------------ resolving

    def wake_resolver(self) -> None:
        """A backlog: have the resolver thread drain now rather than at its next period (what
        the thread that ended a region does instead of draining; costs it no wait)."""
        if not self._wake.is_set():
            self._wake.set()

    def _resolver_loop(self) -> None:
        while True:
            self._wake.wait(RESOLVE_PERIOD_S)
            self._wake.clear()
            self.core.wake_sent = False  # a backlog from here on asks for another pass
            if self._stop.is_set():
                return
            try:
                s = self.sampler
                if s is not None:
                    self.resolver.drain_background(s)
                if s is not None and self.recorder is not None:
                    self.recorder.write_power(s, self.sources)
                if self.retiring and self.open_regions() == 0:
                    self.shutdown(wait=False)  # from this thread: it does not join itself
                    return
            except Exception as e:  # keep resolving; say what went wrong once
                self.note(f"resolver:{type(e).__name__}", f"carbonctx resolver error: {e!r}")

    def wait_resolved(self, t_ns: int, timeout: float = RESULT_TIMEOUT_S) -> bool:
        s = self.sampler
        if s is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            ok = s.wait(t_ns, max(0.0, deadline - time.monotonic()))
            self.drain()
            if ok or time.monotonic() >= deadline:
                return ok

    def flush(self, timeout: float = RESULT_TIMEOUT_S) -> bool:
        """Resolve every region ended so far (waits about one sampling interval)."""
        return self.wait_resolved(_native.now_ns(), timeout)

    def drain(self) -> None:
        s = self.sampler
        if s is not None:
            self.resolver.drain(s)

    def tag_of(self, name: str, details: tuple[int, int | None, Any] | None = None) -> int:
        """The tag (u32) that stands for ``name`` in the sampler, or with ``details`` (thread,
        parent, tags) for a step's entries of those (``Resolver.tag_of``)."""
        return self.resolver.tag_of(name, details)

    def measurement(self, batch: Batch, k: int) -> Measurement:
        """The Measurement of row ``k`` of a resolved batch."""
        return self.resolver.builder.build(batch, k)

    def _status_error(self, sid: str) -> str:
        s = self.sampler
        if s is None:
            return "sampler stopped"
        for src, st in zip(self.sources, s.status(), strict=False):
            if src["id"] == sid:
                return str(st.get("last_error") or "no reads")
        return "unknown"

    # ------------------------------------------------------------------ views

    def recent_measurements(self) -> list[Measurement]:
        return self.recent_since(0)[2]

    def recent_since(self, seq: int) -> tuple[int, int, list[Measurement]]:
        """The recent regions numbered ``seq`` on (every region that enters the window has a
        number, from 0, in order; ``RecentWindow``): the number of the oldest one held (above
        ``seq``: some left unread), the number the next will get, and their Measurements."""
        with self._lock:
            first, end, rows = self.recent.since(seq)
        build = self.resolver.builder.build
        return first, end, [build(b, k) for b, k in rows]

    def stats(self) -> StatsTable:
        self.flush()
        with self._lock:
            return self.stats_now()

    def stats_now(self) -> StatsTable:
        """The statistics resolved so far, without waiting."""
        from carbonctx._results.statistics import StatsTable

        return StatsTable(a.freeze() for a in self.resolver.accumulators.values())

    def trace(self) -> dict[str, Any]:
        """A Chrome trace of the recent regions and the power of every source; its
        ``otherData`` says how many regions it holds of how many ended."""
        from carbonctx._measure.recorder import power_points, trace_coverage
        from carbonctx._output.trace import chrome_trace

        self.flush()
        regions = [m.to_dict() for m in self.recent_measurements()]
        s = self.sampler
        power = power_points(s, self.sources, self._offset) if s is not None else []
        doc = chrome_trace(regions, power)
        doc["otherData"] = trace_coverage(len(regions), self.resolver.regions_total, self.settings)
        return doc

    def describe(self) -> dict[str, Any]:
        s = self.sampler_or_start()
        status = s.status() if s is not None else []
        plan = self.plan or RankPlan(self.rank_info, None, None, *share_of(self.rank_info))
        rank = plan.describe()
        node = s.node_status() if s is not None else None
        if node is not None:
            rank["sampler"] = (
                f"the node's shared sampler: this process is its {node['role']} "
                f"(the owner is pid {node['owner_pid']}, generation {node['generation']}; "
                f"segment {node['segment']})"
            )
            rank["node_sampler"] = node
        # The sources as the totals count them (``counted``, notes: _measure.sources).
        cols = self.resolver.columns.sources
        srcs = cols if len(cols) == len(self.sources) else self.sources
        return {
            "rank": rank,
            "sources": [{**src, "status": st} for src, st in zip(srcs, status, strict=False)],
            "alternatives": self.resolver.columns.alternatives(self.alternatives),
            "unavailable": self.unavailable,
            # How the sampler thread is scheduled, as it set itself (_native.Sampler.scheduling).
            "sampler_scheduling": s.scheduling() if s is not None else None,
            **({"bmc": self.bmc.describe()} if self.bmc is not None else {}),
            "notes": dict(self.notes),
            "start_error": self.start_error,
        }

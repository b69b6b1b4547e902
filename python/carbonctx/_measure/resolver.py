"""Resolving: drained batches of regions become per-name statistics, results for the regions
someone holds, the recent window and output records.

A region closed with a tag (an interned name) needs nothing more: it goes straight into its
name's statistics. Others have a pending entry (their region object, which gets its result).
An entry of a step (``carbonctx.step``) where records need its details is closed with a tag
that stands for them (name, thread, parent, tags): it counts under its name and is recorded
with those details.

What resolving needs beyond this module (numpy, and the carbon intensity service with its
tables and providers) is loaded by the first batch (:meth:`Resolver.prepare`), not by the first
region: a program pays for it when it has something to resolve, mostly on the resolver thread,
while the program runs. A fork waits for that loading to finish (``_LOADING``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carbonctx import _native
from carbonctx._measure.batch import Batch, RecentWindow
from carbonctx._measure.carbon import RegionCarbon
from carbonctx._measure.rows import MeasurementBuilder
from carbonctx._measure.sources import SourceColumns

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from carbonctx._measure.recorder import RegionRecorder
    from carbonctx._results.statistics import NameAccumulator

__all__ = ["DRAIN_BATCH", "DRAIN_SLICE", "SHED_AFTER", "Resolver"]

#: Held while the modules resolving needs are imported and the intensity service is made,
#: which the resolver thread may do; a fork waits for it (os.register_at_fork): a child forked
#: in the middle would find a module half made, and its import lock held by a thread it does
#: not have, for ever.
_LOADING = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_LOADING.acquire,
        after_in_parent=_LOADING.release,
        after_in_child=_LOADING.release,
    )

#: Resolved regions taken from the sampler at a time.
DRAIN_BATCH = 8192
#: Taken at a time by the resolver thread, which lets other threads have the GIL in between:
#: a user thread leaving a region waits for no more than one slice. Below 500: NumPy gives up
#: the GIL in an operation over more elements than that, and the resolver thread, competing
#: with a user thread that runs Python, gets it back only after the switch interval (5 ms)
#: each time; so a slice's arrays are worked on a column (a slice's rows) at a time.
DRAIN_SLICE = 480
#: Regions resolved in one pass of the resolver thread beyond which it stops writing their
#: records (it keeps their statistics and results): output that cannot keep up is shed,
#: counted, warned about and recorded, rather than held without bound or written by a user
#: thread.
SHED_AFTER = 1 << 17
#: The most tags for steps' entry details one runtime interns (each a (name, thread, parent,
#: tags) a step was entered with): a step entered in a new region every time would otherwise
#: grow the table without end. Past it, such entries are measured as regions of their own.
DETAIL_TAGS = 1 << 14
#: The first id a step's entry recorded with its details gets (its span has no id from the
#: sampler, whose ids count from 1 and stay far below): ids stay unique within a runtime,
#: under 2**53 (exact in any JSON reader).
DETAIL_IDS = 1 << 52

# A pending region: the Tracker that measured it (name, thread, parent, tags; its result goes
# back to it).
Pending = Any


class Resolver:
    """Everything done with regions once the sampler has resolved them, for one runtime."""

    def __init__(
        self,
        window: int,
        lock: threading.RLock,
        note: Callable[[str, str], None],
        carbon: RegionCarbon,
        offset: float,
        pid: int,
    ) -> None:
        self.lock = lock
        self.note = note
        self.carbon = carbon
        self.columns = SourceColumns()
        self.pending: dict[int, Pending] = {}
        self.accumulators: dict[str, NameAccumulator] = {}
        # Raw records of the most recent regions; Measurements are built from them on demand.
        self.recent = RecentWindow(window)
        self.regions_total = 0
        # Interned region names; tag 0 means "look in pending".
        self.names: list[str] = [""]
        self.name_tags: dict[str, int] = {}
        # The tags that stand for a step's entry details: (name, thread, parent, tags) by tag.
        self.details: dict[int, tuple[str, int, int | None, Any]] = {}
        # Those tags by (name, thread, parent, the tags' object: kept alive by ``details``):
        # handles made anew for each entry, or one whose own cache forgot them, find them here.
        self.detail_tags: dict[tuple[str, int, int | None, int], int] = {}
        self._next_detail_id = DETAIL_IDS
        self.recorder: RegionRecorder | None = None
        self.builder = MeasurementBuilder(
            self.columns, self.names, pid=pid, offset=offset, carbon=carbon
        )
        self._status_error: Callable[[str], str] = lambda sid: "unknown"
        self._prepared = False

    def prepare(self) -> None:
        """Load what resolving needs (numpy, numpy.random for the statistics' samples, the
        statistics, the intensity service and its g/J), once, on whichever thread has the
        first batch; others wait for it. The resolver thread imports nothing anywhere else."""
        if self._prepared:
            return
        with _LOADING:
            if self._prepared:
                return
            import numpy
            import numpy.random  # noqa: F401

            import carbonctx._results.measurement
            import carbonctx._results.statistics  # noqa: F401

            self.carbon.service()
            self.carbon.grams_per_joule()
            self._prepared = True

    def start(
        self,
        columns: SourceColumns,
        recorder: RegionRecorder | None,
        status_error: Callable[[str], str],
        *,
        pid: int,
        offset: float,
        rank: dict[str, Any] | None = None,
    ) -> None:
        """The sampler has started with these sources (and output, if any); ``rank`` is what
        each result says about the rank (``_measure.ranks.rank_fields``)."""
        self.columns = columns
        self.recorder = recorder  # one that could not open says so in every result
        self.builder = MeasurementBuilder(
            columns, self.names, pid=pid, offset=offset, carbon=self.carbon, rank=rank
        )
        self._status_error = status_error
        if recorder is not None:
            recorder.configure(columns, rank or {}, self.carbon, self.builder.build)

    def tag_of(self, name: str, details: tuple[int, int | None, Any] | None = None) -> int:
        """The tag (u32, never 0) that stands for ``name`` in the sampler; with ``details``
        (thread, parent, tags: a step's entries there), a new tag that stands for the name and
        them (the same for the same details), or 0 once the runtime has ``DETAIL_TAGS`` of
        those."""
        if details is not None:
            thread, parent, tags = details
            key = (name, thread, parent, 0 if tags is None else id(tags))
            with self.lock:
                found = self.detail_tags.get(key)
                if found is not None:
                    return found
                if len(self.details) >= DETAIL_TAGS:
                    return 0
                new = len(self.names)
                self.names.append(name)
                self.details[new] = (name, *details)
                self.detail_tags[key] = new
                return new
        tag = self.name_tags.get(name)
        if tag is None:
            with self.lock:
                tag = self.name_tags.get(name)
                if tag is None:
                    tag = len(self.names)
                    self.names.append(name)
                    self.name_tags[name] = tag
        return tag

    def drain(self, sampler: _native.Sampler) -> None:
        """Everything resolved so far (a caller that asked to wait: flush, stats, shutdown)."""
        with self.lock:
            while True:
                n, ids, tags, t0, t1, joules, unc = sampler.drain(DRAIN_BATCH)
                if n == 0:
                    return
                self.process_batch(n, ids, tags, t0, t1, joules, unc)
                if n < DRAIN_BATCH:
                    return

    def drain_background(self, sampler: _native.Sampler) -> None:
        """The resolver thread's pass: slices of ``DRAIN_SLICE``, the GIL given up between
        them; past ``SHED_AFTER`` regions in one pass, records are shed (see there)."""
        done = 0
        while True:
            with self.lock:
                n, ids, tags, t0, t1, joules, unc = sampler.drain(DRAIN_SLICE)
                if n == 0:
                    return
                self.process_batch(n, ids, tags, t0, t1, joules, unc, shed=done >= SHED_AFTER)
            done += n
            if n < DRAIN_SLICE:
                return
            time.sleep(0)  # let a thread waiting for the GIL have it

    def process_batch(
        self,
        n: int,
        ids_b: bytes,
        tags_b: bytes,
        t0_b: bytes,
        t1_b: bytes,
        j_b: bytes,
        u_b: bytes,
        shed: bool = False,
    ) -> None:
        """Turn a batch of resolved regions into statistics, results and records."""
        self.prepare()
        import numpy as np

        columns = self.columns
        width = len(columns)
        ids = np.frombuffer(ids_b, dtype=np.uint64)
        tag_arr = np.frombuffer(tags_b, dtype=np.uint32)
        t0 = np.frombuffer(t0_b, dtype=np.uint64)
        t1 = np.frombuffer(t1_b, dtype=np.uint64)
        raw = np.frombuffer(j_b, dtype=np.float64).reshape(n, width)
        duration = (t1 - t0).astype(np.float64) * 1e-9
        if columns.pending:
            # An APU socket's plausibility, once (_measure.sources).
            changed = columns.settle(raw, duration)
            if changed is not None:
                self.note("apu-socket-broken", changed)
        joules, unc = columns.scale(raw, np.frombuffer(u_b, dtype=np.float64).reshape(n, width))
        cpu, dram, gpu = columns.totals(joules, n)
        energy = cpu + dram + gpu
        # Column by column, as everything here is done on at most ``DRAIN_SLICE`` elements at
        # a time (see there); into contiguous rows of the transpose (NumPy 2.4 fills a strided
        # ``out`` of ``isnan`` only in part).
        nan_t = np.empty((width, n), dtype=bool)
        failed = [i for i in range(width) if np.isnan(joules[:, i], out=nan_t[i]).any()]
        nan = nan_t.T
        if failed:
            for i in failed:
                sid = columns.sources[i]["id"]
                self.note(
                    f"missing:{sid}",
                    f"energy source {sid} went unmeasured for a while; regions across that "
                    f"gap lack its figures ({self._status_error(sid)})",
                )
        g_per_j = self.carbon.grams_per_joule()
        estimated = bool(columns.estimated)
        pending = self.pending
        names = self.names
        self.regions_total += n
        recorder = self.recorder
        # Every row's name: tagged rows carry it (grouped in bulk); untagged ones have only the
        # pending Tracker. Rows with an id have a Tracker waiting for its result. What records
        # need of those (name, thread, parent, tags) is kept in the batch; the Trackers are not
        # (a Tracker keeps its batch, and the two must not make a cycle: Trackers are not
        # collectable).
        infos: list[tuple[str, int, int | None, Any] | None] = [None] * n
        groups: dict[str, npt.NDArray[np.intp]] = {}
        untagged = np.flatnonzero(tag_arr == 0)
        detailed: list[int] = []  # rows of steps' entries recorded with their details
        if len(untagged) < n:
            details = self.details
            for tag in np.flatnonzero(np.bincount(tag_arr)).tolist():
                if tag:
                    sel = np.flatnonzero(tag_arr == tag)
                    name = names[tag]
                    # Tags of one name (its details') count as the name.
                    groups[name] = np.concatenate([groups[name], sel]) if name in groups else sel
                    info = details.get(tag)
                    if info is not None:
                        rows_d = sel.tolist()
                        for k in rows_d:
                            infos[k] = info
                        detailed += rows_d
        if detailed:
            detailed.sort()
            ids, ids_b = self._detail_ids(ids, detailed)
        # The recent window, the handles handed out and the output file keep a reference to
        # the batch and a row; a Measurement is built only when someone reads it or it is
        # written.
        batch = Batch(ids, t0, t1, joules, unc, cpu, dram, gpu, nan, infos, tag_arr, estimated)
        batch.columns = columns.view()  # the rule its rows were counted by
        rows, _handles = _native.claim_regions(pending, ids_b, batch, infos)
        if detailed:
            rows = sorted(rows + detailed)
        named_untagged: list[npt.NDArray[np.intp]] = []  # untagged rows with a name
        if len(untagged):
            by_name: dict[str, list[int]] = {}
            for k in untagged.tolist():
                info = infos[k]
                if info is not None:
                    by_name.setdefault(info[0], []).append(k)
            for name, sel_rows in by_name.items():
                sel = np.asarray(sel_rows, dtype=np.intp)
                named_untagged.append(sel)
                groups[name] = np.concatenate([groups[name], sel]) if name in groups else sel
        for name, sel in groups.items():
            e = energy[sel]
            co2 = float(e.sum()) * g_per_j if g_per_j is not None else 0.0
            self._accumulator(name).add_many(e, duration[sel], co2, estimated)
        # Rows without a name (an untagged region nobody waits for) do not enter the window.
        recent = self.recent
        if len(untagged) == 0:
            recent.add(batch, range(n))  # every row has its name's tag
        elif recent.maxlen:
            # Every named row enters (and is numbered); only the window's last are listed and
            # kept: a batch of ``DRAIN_BATCH`` rows costs no Python step per row.
            keep = tag_arr != 0
            for sel in named_untagged:
                keep[sel] = True
            entered = np.flatnonzero(keep)
            recent.add(batch, entered[-recent.maxlen :].tolist(), entered=len(entered))
        if recorder is not None:
            if shed:
                recorder.shed(batch, n, names)
            else:
                recorder.record(batch, rows)

    def _detail_ids(
        self, ids: npt.NDArray[np.uint64], rows: list[int]
    ) -> tuple[npt.NDArray[np.uint64], bytes]:
        """The batch's ids, with one for each of ``rows`` that has none (a span: one longer than
        the sampler's spans go has an id of its own), in order."""
        import numpy as np

        ids = ids.copy()
        sel = np.asarray(rows, dtype=np.intp)
        sel = sel[ids[sel] == 0]
        start = self._next_detail_id
        self._next_detail_id += len(sel)
        ids[sel] = np.arange(start, start + len(sel), dtype=np.uint64)
        return ids, ids.tobytes()

    def _accumulator(self, name: str) -> NameAccumulator:
        acc = self.accumulators.get(name)
        if acc is None:
            from carbonctx._results.statistics import NameAccumulator

            acc = self.accumulators[name] = NameAccumulator(name)
        return acc

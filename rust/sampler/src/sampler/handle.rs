//! The sampler handle: the start handshake, region marks (the hot path), draining results,
//! waiting, status, and stop (also on `Drop`).
//!
//! Marking a region is the hot path: [`Sampler::begin`] and [`Sampler::end`] take a monotonic
//! timestamp and push it onto a lock-free inbox (see [`super::inbox`]): no lock the sampler
//! thread takes, no counter read, nothing waiting for hardware. The thread resolves a mark once every live source has a point at
//! or after it (or has shown no change for a settling time), so results arrive within about one
//! update period of a region's end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::bell::Bell;
use super::config::Config;
use super::inbox::{absorb, Entry, Inbox, RegionsGuard};
use super::lock;
use super::node::NodeStatus;
use super::priority::{raise_priority, Scheduling};
use super::schedule::{run, Handshake};
use crate::error::{Error, Result};
use crate::regions::{Edge, Mark, Packed, Regions, Resolved, Span, BACKLOG_HIGH};
use crate::sensors::{EnergySource, SourceInfo, Unavailable};
use crate::timeline::{EnergyAt, History, Point};

/// The health of one source, as the sampler saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceStatus {
    pub reads: u64,
    pub errors: u64,
    pub failed: bool,
    pub last_error: Option<String>,
    /// Polls that started more than one interval after they were due.
    pub late_polls: u64,
    /// The latest a poll started after it was due, in ns.
    pub max_late_ns: u64,
    /// Due polls that were merged into a later one because the thread fell behind.
    pub skipped_polls: u64,
    pub wraps: u64,
    pub resets: u64,
    /// Cumulative joules since the sampler started.
    pub joules: f64,
    /// Intervals (ns, ns) whose energy could not be measured: the source failed or its counter
    /// was reset. The most recent 32 are kept.
    pub gaps: Vec<(u64, u64)>,
    /// The poll interval in use, ns.
    pub interval_ns: u64,
    /// The counter's update period as learned by phase-locked polling, ns (0: not learned).
    pub update_period_ns: f64,
    /// Close brackets of an update instant that re-anchored the phase.
    pub phase_anchors: u64,
    /// Counter updates whose energy was placed in time by the source's power samples (see
    /// [`crate::sensors::EnergySource::shape`]) instead of spread evenly.
    pub shaped_updates: u64,
    /// Reads made because a region mark woke the thread (see [`super::marks`]).
    pub mark_reads: u64,
}

/// Counters of the sampler as a whole.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub started_ns: u64,
    pub loops: u64,
    pub regions_begun: u64,
    pub regions_resolved: u64,
    pub dropped_regions: u64,
    /// The instant up to which every mark can be resolved.
    pub frontier_ns: u64,
    /// Marks and spans not yet resolved, and resolved regions not yet drained.
    pub pending_marks: usize,
    pub undrained: usize,
}

pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    /// What the thread asks the next mark to wake it for ([`WAKE_QUIET`], [`WAKE_MARK`]; 0:
    /// nothing). The first marker swaps it to 0 and wakes the thread.
    pub(super) wake_me: AtomicU8,
    /// The instant of the mark that last woke the thread (how late it woke tells how busy the
    /// machine is).
    pub(super) woke_by_ns: AtomicU64,
    /// Wakes the sleeping thread (marks after a quiet spell, `stop`, a drain that made room).
    pub(super) bell: Bell,
    /// Marks and spans handed over by marking threads, moved into `regions` by whoever locks
    /// it next ([`Shared::regions`]).
    pub(super) inbox: Inbox,
    /// `regions.done.len()` as of the last release of the lock (read by marking threads).
    pub(super) done_len: AtomicUsize,
    /// Never locked directly outside tests: [`Shared::regions`] moves the inbox in first.
    pub(super) regions: Mutex<Regions>,
    pub(super) resolved: Condvar,
    pub(super) timelines: Mutex<Vec<History>>,
    pub(super) status: Mutex<Vec<SourceStatus>>,
    pub(super) next_id: AtomicU64,
    pub(super) loops: AtomicU64,
    /// Callers blocked in `wait_until_resolved` (the thread notifies only when there are some).
    pub(super) waiters: AtomicUsize,
    pub(super) started_ns: u64,
    /// Where this process stands in its node's shared sampler (None: not shared).
    pub(super) node: Mutex<Option<NodeStatus>>,
    /// Why the thread ended during start-up, when it can say.
    pub(super) start_error: Mutex<Option<Error>>,
    /// How the thread is scheduled, as it set itself (see [`super::priority`]).
    pub(super) scheduling: Mutex<Scheduling>,
}

/// The thread reads sparsely while quiet: the next mark must wake it.
pub(super) const WAKE_QUIET: u8 = 1;
/// The thread wants to read some counters at the next mark (see [`super::marks`]).
pub(super) const WAKE_MARK: u8 = 2;

impl Shared {
    /// Ask the next mark to wake the thread for `bits`.
    pub(super) fn ask_wake(&self, bits: u8) {
        self.wake_me.fetch_or(bits, Ordering::AcqRel);
    }

    /// Withdraw the request for `bits`.
    pub(super) fn withdraw_wake(&self, bits: u8) {
        self.wake_me.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Whether a request for `bits` is still standing (no mark came since it was made).
    /// Sequentially consistent with the marker's swap and the bell (see [`super::bell`]).
    pub(super) fn wake_asked(&self, bits: u8) -> bool {
        self.wake_me.load(Ordering::SeqCst) & bits != 0
    }

    /// The regions locked, with every mark and span handed over so far moved in.
    pub(super) fn regions(&self) -> RegionsGuard<'_> {
        RegionsGuard::new(&self.regions, &self.inbox, &self.done_len)
    }

    /// The regions locked with the inbox moved in, as a plain guard (to wait on `resolved`;
    /// the caller leaves `done` as it is).
    fn regions_to_wait(&self) -> MutexGuard<'_, Regions> {
        let mut r = lock(&self.regions);
        absorb(&self.inbox, &mut r);
        r
    }
}

/// Counts a waiter for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running sampler. Dropping it stops and joins the thread.
pub struct Sampler {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    infos: Vec<SourceInfo>,
    /// The index of each of `infos` among the sources the thread keeps timelines of.
    view: Vec<usize>,
    owner_pid: i32,
}

impl Sampler {
    /// Start the thread. Each source is read once before this returns: a source that fails that
    /// first read is left out and comes back in the second element, with the reason.
    pub fn start(
        sources: Vec<Box<dyn EnergySource>>,
        config: Config,
    ) -> Result<(Sampler, Vec<Unavailable>)> {
        Sampler::spawn(config.realtime, move |shared, tx| {
            run(shared, sources, config, tx)
        })
    }

    /// Start a sampler thread running `body`, which answers the handshake on its sender. The
    /// thread first sets its scheduling (real-time where permitted, with `realtime`).
    pub(super) fn spawn(
        realtime: bool,
        body: impl FnOnce(Arc<Shared>, mpsc::Sender<Handshake>) + Send + 'static,
    ) -> Result<(Sampler, Vec<Unavailable>)> {
        let (tx, rx) = mpsc::channel::<Handshake>();
        let started_ns = crate::now_ns();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake_me: AtomicU8::new(0),
            woke_by_ns: AtomicU64::new(0),
            bell: Bell::default(),
            inbox: Inbox::default(),
            done_len: AtomicUsize::new(0),
            regions: Mutex::new(Regions {
                frontier_ns: started_ns,
                ..Regions::default()
            }),
            resolved: Condvar::new(),
            timelines: Mutex::new(Vec::new()),
            status: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            waiters: AtomicUsize::new(0),
            loops: AtomicU64::new(0),
            started_ns,
            node: Mutex::new(None),
            start_error: Mutex::new(None),
            scheduling: Mutex::new(Scheduling::Pending),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("carbonctx-sampler".into())
            .spawn(move || {
                *lock(&thread_shared.scheduling) = raise_priority(realtime);
                body(thread_shared, tx)
            })
            .map_err(|e| Error::Thread(e.to_string()))?;
        match rx.recv() {
            Ok((infos, view, unavailable)) => Ok((
                Sampler {
                    shared,
                    thread: Mutex::new(Some(thread)),
                    infos,
                    view,
                    // SAFETY: getpid has no preconditions.
                    owner_pid: unsafe { libc::getpid() },
                },
                unavailable,
            )),
            Err(_) => {
                let why = match thread.join() {
                    Err(_) => Error::Thread("it panicked during start-up".to_string()),
                    Ok(()) => lock(&shared.start_error)
                        .take()
                        .unwrap_or_else(|| Error::Thread("it ended during start-up".to_string())),
                };
                Err(why)
            }
        }
    }

    /// The sources being polled; results list joules in this order.
    pub fn sources(&self) -> &[SourceInfo] {
        &self.infos
    }

    /// Open a region now. Returns its id.
    #[inline]
    pub fn begin(&self) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.mark(id, crate::now_ns(), Edge::Enter, 0);
        id
    }

    /// Close region `id` now. Returns the timestamp used.
    #[inline]
    pub fn end(&self, id: u64) -> u64 {
        let t = crate::now_ns();
        self.mark(id, t, Edge::Exit, 0);
        t
    }

    /// Close region `id` now with a caller's tag (e.g. an interned name), handed back with
    /// the result. Returns the timestamp used.
    #[inline]
    pub fn end_tagged(&self, id: u64, tag: u32) -> u64 {
        let t = crate::now_ns();
        self.mark(id, t, Edge::Exit, tag);
        t
    }

    /// Record a region that began at `t0_ns` (taken with [`crate::now_ns`]) and ends now,
    /// with a caller's tag: one entry instead of two marks, and no id. Returns true when the
    /// caller should drain (a producer faster than its consumer must not grow memory without
    /// bound).
    #[inline]
    pub fn end_span(&self, t0_ns: u64, tag: u32) -> bool {
        let t1_ns = crate::now_ns();
        let Ok(dur_ns) = u32::try_from(t1_ns.saturating_sub(t0_ns)) else {
            // Longer than 4.29 s: its start is resolved on its own, as an opened region's is.
            let id = self.begin_at(t0_ns);
            return self.mark(id, t1_ns, Edge::Exit, tag) >= BACKLOG_HIGH;
        };
        self.shared
            .inbox
            .push(Entry::Span(Span { t0_ns, dur_ns, tag }));
        let backlog = self.shared.done_len.load(Ordering::Relaxed);
        self.wake_if_quiet(t1_ns);
        backlog >= BACKLOG_HIGH
    }

    #[inline]
    fn wake_if_quiet(&self, t_ns: u64) {
        // One relaxed load; only the first mark after the thread asked for one (a quiet spell
        // ended, or a read at the mark wanted) pays for waking it.
        if self.shared.wake_me.load(Ordering::Relaxed) != 0 {
            // The mark's time before the flag is cleared: a thread already awake that sees it
            // cleared reads this mark's time, not an older one.
            self.shared.woke_by_ns.store(t_ns, Ordering::Relaxed);
            if self.shared.wake_me.swap(0, Ordering::SeqCst) != 0 {
                self.shared.bell.ring();
            }
        }
    }

    /// Open a region at a given instant (CLOCK_MONOTONIC ns), e.g. one taken earlier.
    pub fn begin_at(&self, t_ns: u64) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.mark(id, t_ns, Edge::Enter, 0);
        id
    }

    /// Close region `id` at a given instant.
    pub fn end_at(&self, id: u64, t_ns: u64) {
        self.mark(id, t_ns, Edge::Exit, 0);
    }

    #[inline]
    fn mark(&self, id: u64, t_ns: u64, edge: Edge, tag: u32) -> usize {
        self.shared.inbox.push(Entry::Mark(Mark {
            id,
            t_ns,
            edge,
            tag,
        }));
        let backlog = self.shared.done_len.load(Ordering::Relaxed);
        self.wake_if_quiet(t_ns);
        backlog
    }

    /// Take every region resolved so far.
    pub fn drain(&self) -> Vec<Resolved> {
        let p = self.drain_packed(usize::MAX);
        let w = self.infos.len();
        (0..p.len())
            .map(|i| Resolved {
                id: p.ids[i],
                t0_ns: p.t0_ns[i],
                t1_ns: p.t1_ns[i],
                joules: p.joules[i * w..(i + 1) * w].to_vec(),
                uncertainty: p.uncertainty[i * w..(i + 1) * w].to_vec(),
            })
            .collect()
    }

    /// Take up to `max` of the oldest resolved regions, in columns (no allocation per region).
    pub fn drain_packed(&self, max: usize) -> Packed {
        let w = self.infos.len();
        let mut r = self.shared.regions();
        let out = r.done.take_front(max, w);
        let resume = r.marks_held && r.done.len() < BACKLOG_HIGH;
        drop(r);
        if resume {
            // Marks wait for room in the rows: there is some now, resolve them without waiting
            // for the next poll.
            self.shared.bell.ring();
        }
        out
    }

    /// Wait until every region that ended at or before `t_ns` is resolved, `timeout` passes,
    /// or the resolved rows are full (drain, then wait again). Returns whether all are
    /// resolved.
    pub fn wait_until_resolved(&self, t_ns: u64, timeout: Duration) -> bool {
        let caught_up = |r: &Regions| {
            r.stopped
                || (r.frontier_ns >= t_ns
                    && !r.in_flight
                    && !r.marks_held
                    && r.spans.first().is_none_or(|s| s.t1_ns() > t_ns))
        };
        let r = self.shared.regions_to_wait();
        let _waiting = Waiting::new(&self.shared.waiters);
        // Also return when the resolved rows are full: the caller must drain to make room.
        // Marks and spans handed over meanwhile are moved in at each look: a region that ended
        // before `t_ns` and waits in the inbox is waited for.
        let (r, _) = self
            .shared
            .resolved
            .wait_timeout_while(r, timeout, |r| {
                absorb(&self.shared.inbox, r);
                !caught_up(r) && r.done.len() < BACKLOG_HIGH
            })
            .unwrap_or_else(|p| p.into_inner());
        caught_up(&r)
    }

    /// The health of each source, in the order of [`Sampler::sources`].
    pub fn status(&self) -> Vec<SourceStatus> {
        let st = lock(&self.shared.status);
        self.view
            .iter()
            .map(|&i| st.get(i).cloned().unwrap_or_default())
            .collect()
    }

    /// Where this process stands in its node's shared sampler; `None` for a sampler started
    /// with [`Sampler::start`].
    pub fn node_status(&self) -> Option<NodeStatus> {
        lock(&self.shared.node).clone()
    }

    /// How the sampler thread is scheduled, as it set itself when it started (see
    /// [`super::priority`]; set before the start handshake answers).
    pub fn scheduling(&self) -> Scheduling {
        *lock(&self.shared.scheduling)
    }

    pub fn stats(&self) -> Stats {
        let r = self.shared.regions();
        Stats {
            started_ns: self.shared.started_ns,
            loops: self.shared.loops.load(Ordering::Relaxed),
            regions_begun: r.begun,
            regions_resolved: r.resolved,
            dropped_regions: r.dropped,
            frontier_ns: r.frontier_ns,
            pending_marks: r.pending.len() + r.spans.len(),
            undrained: r.done.len(),
        }
    }

    /// Timeline points of source `index` stamped after `since_ns`, oldest first, at most `max`.
    pub fn timeline(&self, index: usize, since_ns: u64, max: usize) -> Vec<Point> {
        let Some(&i) = self.view.get(index) else {
            return Vec::new();
        };
        lock(&self.shared.timelines)
            .get(i)
            .map(|tl| tl.since(since_ns, max))
            .unwrap_or_default()
    }

    /// Joules of source `index` at instant `t_ns`, from the timeline (None if not covered).
    pub fn energy_at(&self, index: usize, t_ns: u64) -> Option<EnergyAt> {
        let i = *self.view.get(index)?;
        lock(&self.shared.timelines).get(i)?.at(t_ns)
    }

    /// Stop the thread now: one last poll, every open mark resolved, the thread joined.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.bell.ring();
        let thread = lock(&self.thread).take();
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } != self.owner_pid {
            // A forked child holds a copy of this object but not the thread: never join it.
            std::mem::forget(thread);
            return;
        }
        if let Some(t) = thread {
            // The thread catches its own panics; a join error cannot carry anything useful.
            let _ = t.join();
        }
        let mut r = self.shared.regions();
        r.stopped = true;
        self.shared.resolved.notify_all();
    }

    pub fn is_running(&self) -> bool {
        lock(&self.thread).is_some()
    }

    /// What the thread shares, for tests that hold its locks.
    #[cfg(test)]
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

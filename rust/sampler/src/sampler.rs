//! The sampler thread: polls each source at its own interval, keeps a timeline per source, and
//! resolves region marks into joules once it has seen past them.
//!
//! Marking a region is the hot path: [`Sampler::begin`] and [`Sampler::end`] take a monotonic
//! timestamp and push it onto a short queue under an uncontended lock; no counter is read and
//! nothing waits for hardware. The thread resolves a mark once every live source has a point at
//! or after it (or has shown no change for a settling time), so results arrive within about one
//! update period of a region's end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::integrate::{Accumulator, Estimate, History, Point, Step};
use crate::phase::PhaseLock;
use crate::source::{EnergySource, SourceInfo, Unavailable};

/// How the sampler runs. Every field has a working default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Poll interval per backend (`powercap`, `msr`, `perf`, `nvml`, `estimate`); a backend not
    /// listed uses its source's own default.
    pub intervals: Vec<(String, Duration)>,
    /// Points kept per source (memory is fixed: 16 bytes a point).
    pub timeline_capacity: usize,
    /// A source whose counter shows no change for this long after a mark is taken to have been
    /// idle: the mark resolves with the last value. At least ten poll intervals are used.
    pub settle: Duration,
    /// A source counts as failed after this many consecutive read errors spanning at least
    /// `fail_time` (a single bad read, or a short stall of whatever updates it, is retried).
    pub fail_after: u32,
    pub fail_time: Duration,
    /// Learn when each counter updates and poll just after (see [`crate::phase`]); when off,
    /// counters are polled at their fixed interval.
    pub phase_lock: bool,
    /// While no region mark has come for `fast_hold`, phase-locked counters are read about this
    /// often instead of at every update (the phase and period are kept, so the first mark after
    /// a quiet spell is timed as precisely as any). Zero: always read every update.
    pub quiet_interval: Duration,
    pub fast_hold: Duration,
    /// How often a failed source is tried again.
    pub retry: Duration,
    /// Resolved regions kept for the caller to drain; beyond it the oldest are dropped and
    /// counted in [`Stats::dropped_regions`].
    pub max_resolved: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            intervals: Vec::new(),
            timeline_capacity: 1 << 16,
            settle: Duration::from_millis(100),
            fail_after: 5,
            fail_time: Duration::from_millis(250),
            phase_lock: true,
            quiet_interval: Duration::from_millis(20),
            fast_hold: Duration::from_secs(2),
            retry: Duration::from_secs(1),
            max_resolved: 1 << 20,
        }
    }
}

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

/// Resolved regions in columns, oldest first: what [`Sampler::drain_packed`] hands over.
/// Row `i`'s joules are `joules[i * n_sources .. (i + 1) * n_sources]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Packed {
    pub ids: Vec<u64>,
    /// The tag given when each region was closed ([`Sampler::end_tagged`]).
    pub tags: Vec<u32>,
    pub t0_ns: Vec<u64>,
    pub t1_ns: Vec<u64>,
    pub joules: Vec<f64>,
    pub uncertainty: Vec<f64>,
}

impl Packed {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Move out the oldest `n` rows (all if fewer), keeping the rest.
    fn take_front(&mut self, n: usize, width: usize) -> Packed {
        if n >= self.len() {
            return std::mem::take(self);
        }
        let rest = Packed {
            ids: self.ids.split_off(n),
            tags: self.tags.split_off(n),
            t0_ns: self.t0_ns.split_off(n),
            t1_ns: self.t1_ns.split_off(n),
            joules: self.joules.split_off(n * width),
            uncertainty: self.uncertainty.split_off(n * width),
        };
        std::mem::replace(self, rest)
    }
}

/// The coarse history: a point every 5 s, 16384 of them (about 22 hours).
const COARSE_STEP_NS: u64 = 5_000_000_000;
const COARSE_POINTS: usize = 16_384;

/// Resolved regions waiting to be drained above which [`Sampler::end_span`] asks the caller to
/// drain.
pub const BACKLOG_HIGH: usize = 1 << 13;

/// A region whose energy is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub id: u64,
    pub t0_ns: u64,
    pub t1_ns: u64,
    /// Joules per source, in the order of [`Sampler::sources`]; NaN where a source had failed.
    pub joules: Vec<f64>,
    /// How far the true joules can be from the figure, per source: the widths of the counter
    /// brackets around both edges added (NaN: unknown).
    pub uncertainty: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    Enter,
    Exit,
}

#[derive(Clone, Copy, Debug)]
struct Mark {
    id: u64,
    t_ns: u64,
    edge: Edge,
    tag: u32,
}

/// A region closed in one go ([`Sampler::end_span`]): both edges wait in one entry.
#[derive(Clone, Copy, Debug)]
struct Span {
    t0_ns: u64,
    /// t1 − t0; a longer region goes through the marks instead.
    dur_ns: u32,
    tag: u32,
}

impl Span {
    fn t1_ns(&self) -> u64 {
        self.t0_ns + u64::from(self.dur_ns)
    }
}

#[derive(Default)]
struct Regions {
    pending: Vec<Mark>,
    spans: Vec<Span>,
    /// Marks or spans taken by the sampler thread and not yet handed back as results.
    in_flight: bool,
    done: Packed,
    frontier_ns: u64,
    stopped: bool,
    begun: u64,
    resolved: u64,
    dropped: u64,
}

struct Shared {
    stop: AtomicBool,
    /// The sampler reads sparsely and sleeps long: a new mark must wake it.
    quiet: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
    regions: Mutex<Regions>,
    resolved: Condvar,
    timelines: Mutex<Vec<History>>,
    status: Mutex<Vec<SourceStatus>>,
    next_id: AtomicU64,
    loops: AtomicU64,
    /// Callers blocked in `wait_until_resolved` (the thread notifies only when there are some).
    waiters: AtomicUsize,
    started_ns: u64,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these structures half-updated in a way that
    // matters more than losing the sampler, so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running sampler. Dropping it stops and joins the thread.
pub struct Sampler {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    infos: Vec<SourceInfo>,
    owner_pid: i32,
}

struct Polled {
    source: Box<dyn EnergySource>,
    acc: Accumulator,
    interval_ns: u64,
    settle_ns: u64,
    due_ns: u64,
    consecutive_errors: u32,
    first_error_ns: u64,
    last_poll_ns: u64,
    failed_since: Option<u64>,
    /// Phase-locked polling, for counters (see [`crate::phase`]).
    phase: Option<PhaseLock>,
    /// How long a read takes, smoothed (ns).
    read_cost_ns: u64,
}

/// A read slower than this is expensive: it is made sparingly while quiet.
const EXPENSIVE_READ_NS: u64 = 500_000;

impl Sampler {
    /// Start the thread. Each source is read once before this returns: a source that fails that
    /// first read is left out and comes back in the second element, with the reason.
    pub fn start(
        sources: Vec<Box<dyn EnergySource>>,
        config: Config,
    ) -> Result<(Sampler, Vec<Unavailable>)> {
        let (tx, rx) = mpsc::channel::<(Vec<SourceInfo>, Vec<Unavailable>)>();
        let started_ns = crate::now_ns();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
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
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("carbonctx-sampler".into())
            .spawn(move || run(thread_shared, sources, config, tx))
            .map_err(|e| Error::Thread(e.to_string()))?;
        match rx.recv() {
            Ok((infos, unavailable)) => Ok((
                Sampler {
                    shared,
                    thread: Mutex::new(Some(thread)),
                    infos,
                    // SAFETY: getpid has no preconditions.
                    owner_pid: unsafe { libc::getpid() },
                },
                unavailable,
            )),
            Err(_) => {
                let why = match thread.join() {
                    Err(_) => "it panicked during start-up".to_string(),
                    Ok(()) => "it ended during start-up".to_string(),
                };
                Err(Error::Thread(why))
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
        let mut r = lock(&self.shared.regions);
        r.begun += 1;
        r.spans.push(Span { t0_ns, dur_ns, tag });
        let backlog = r.done.len();
        drop(r);
        self.wake_if_quiet();
        backlog >= BACKLOG_HIGH
    }

    #[inline]
    fn wake_if_quiet(&self) {
        // Only the first mark after a quiet spell pays for waking the thread.
        if self.shared.quiet.load(Ordering::Relaxed)
            && self.shared.quiet.swap(false, Ordering::AcqRel)
        {
            let _g = lock(&self.shared.sleep);
            self.shared.wake.notify_all();
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
        let mut r = lock(&self.shared.regions);
        if edge == Edge::Enter {
            r.begun += 1;
        }
        r.pending.push(Mark {
            id,
            t_ns,
            edge,
            tag,
        });
        let backlog = r.done.len();
        drop(r);
        self.wake_if_quiet();
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
        lock(&self.shared.regions).done.take_front(max, w)
    }

    /// Wait until every region that ended at or before `t_ns` is resolved, `timeout` passes,
    /// or the resolved rows are full (drain, then wait again). Returns whether all are
    /// resolved.
    pub fn wait_until_resolved(&self, t_ns: u64, timeout: Duration) -> bool {
        let caught_up = |r: &Regions| {
            r.stopped
                || (r.frontier_ns >= t_ns
                    && !r.in_flight
                    && r.spans.first().is_none_or(|s| s.t1_ns() > t_ns))
        };
        let r = lock(&self.shared.regions);
        let _waiting = Waiting::new(&self.shared.waiters);
        // Also return when the resolved rows are full: the caller must drain to make room.
        let (r, _) = self
            .shared
            .resolved
            .wait_timeout_while(r, timeout, |r| !caught_up(r) && r.done.len() < BACKLOG_HIGH)
            .unwrap_or_else(|p| p.into_inner());
        caught_up(&r)
    }

    /// The health of each source, in the order of [`Sampler::sources`].
    pub fn status(&self) -> Vec<SourceStatus> {
        lock(&self.shared.status).clone()
    }

    pub fn stats(&self) -> Stats {
        let r = lock(&self.shared.regions);
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
        lock(&self.shared.timelines)
            .get(index)
            .map(|tl| tl.since(since_ns, max))
            .unwrap_or_default()
    }

    /// Joules of source `index` at instant `t_ns`, from the timeline (None if not covered).
    pub fn energy_at(&self, index: usize, t_ns: u64) -> Option<Estimate> {
        lock(&self.shared.timelines).get(index)?.at(t_ns)
    }

    /// Stop the thread now: one last poll, every open mark resolved, the thread joined.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.sleep);
            self.shared.wake.notify_all();
        }
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
        let mut r = lock(&self.shared.regions);
        r.stopped = true;
        self.shared.resolved.notify_all();
    }

    pub fn is_running(&self) -> bool {
        lock(&self.thread).is_some()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

fn interval_for(info: &SourceInfo, config: &Config) -> Duration {
    config
        .intervals
        .iter()
        .find(|(b, _)| b == info.backend)
        .map(|(_, d)| *d)
        .unwrap_or(info.interval)
        .max(Duration::from_micros(50))
}

fn run(
    shared: Arc<Shared>,
    sources: Vec<Box<dyn EnergySource>>,
    config: Config,
    tx: mpsc::Sender<(Vec<SourceInfo>, Vec<Unavailable>)>,
) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let polled = start_sources(&shared, sources, &config, &tx);
        drop(tx);
        poll_loop(&shared, polled, &config);
    }));
    if outcome.is_err() {
        // Never leave a caller waiting on a thread that is gone.
        let mut r = lock(&shared.regions);
        r.stopped = true;
        shared.resolved.notify_all();
    }
}

fn start_sources(
    shared: &Shared,
    sources: Vec<Box<dyn EnergySource>>,
    config: &Config,
    tx: &mpsc::Sender<(Vec<SourceInfo>, Vec<Unavailable>)>,
) -> Vec<Polled> {
    let mut polled = Vec::new();
    let mut unavailable = Vec::new();
    let mut timelines = Vec::new();
    let mut statuses = Vec::new();
    for mut source in sources {
        let info = source.info().clone();
        let t = crate::now_ns();
        match source.read() {
            Ok(reading) => {
                let interval = interval_for(&info, config);
                let interval_ns = interval.as_nanos() as u64;
                let mut acc = Accumulator::new(info.counter, interval_ns);
                let mut tl = History::new(config.timeline_capacity, COARSE_POINTS, COARSE_STEP_NS);
                if let Step::First(p) = acc.push(t, reading) {
                    tl.push(p);
                }
                timelines.push(tl);
                statuses.push(SourceStatus {
                    reads: 1,
                    interval_ns,
                    ..SourceStatus::default()
                });
                polled.push(Polled {
                    source,
                    acc,
                    interval_ns,
                    settle_ns: (config.settle.as_nanos() as u64).max(10 * interval_ns),
                    due_ns: t + interval_ns,
                    consecutive_errors: 0,
                    first_error_ns: 0,
                    last_poll_ns: t,
                    failed_since: None,
                    phase: (config.phase_lock && info.counter.is_some())
                        .then(|| PhaseLock::new(interval_ns)),
                    read_cost_ns: 0,
                });
            }
            Err(e) => unavailable.push(Unavailable {
                backend: info.backend,
                what: info.path.as_ref().map_or_else(
                    || info.id.clone(),
                    |p| format!("{} ({})", info.id, p.display()),
                ),
                reason: format!("the first read failed: {e}"),
                hint: String::new(),
            }),
        }
    }
    *lock(&shared.timelines) = timelines;
    *lock(&shared.status) = statuses;
    let infos = polled.iter().map(|p| p.source.info().clone()).collect();
    // The receiver only disappears if `start` itself is gone; nothing to tell then.
    let _ = tx.send((infos, unavailable));
    polled
}

fn poll_loop(shared: &Shared, mut polled: Vec<Polled>, config: &Config) {
    set_timer_slack();
    let retry_ns = config.retry.as_nanos() as u64;
    let quiet_ns = config.quiet_interval.as_nanos() as u64;
    let hold_ns = config.fast_hold.as_nanos() as u64;
    let mut fast_until = crate::now_ns() + hold_ns;
    let mut fast = true;
    let mut open = OpenRegions::new();
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let now = crate::now_ns();
        // A mark woke a quiet sampler: read every counter now and every update from here.
        if !fast && !shared.quiet.load(Ordering::Acquire) {
            fast = true;
            fast_until = now + hold_ns;
            for p in polled.iter_mut() {
                if let Some(ph) = p.phase.as_mut().filter(|ph| ph.stride() > 1) {
                    ph.set_stride(1);
                    ph.resync(now);
                    p.due_ns = now;
                }
            }
        }
        {
            let mut timelines = lock(&shared.timelines);
            let mut status = lock(&shared.status);
            for (i, p) in polled.iter_mut().enumerate() {
                // Sources due within a few tens of µs share this wake-up.
                if p.due_ns > now + COALESCE_NS && !stopping {
                    continue;
                }
                poll_one(p, &mut timelines[i], &mut status[i], now, config, retry_ns);
            }
        }
        shared.loops.fetch_add(1, Ordering::Relaxed);
        let marks = resolve(shared, &polled, &mut open, stopping, config.max_resolved);
        if stopping {
            return;
        }
        let now = crate::now_ns();
        if marks > 0 {
            fast_until = now + hold_ns;
        }
        if fast && quiet_ns > 0 && now > fast_until {
            // Quiet: read counters sparsely until the next mark.
            fast = false;
            shared.quiet.store(true, Ordering::Release);
        }
        if !fast {
            // (Re)computed every loop: a counter's period may be learned only after the
            // sampler went quiet.
            for p in polled.iter_mut() {
                // A read that costs real CPU (an NVML energy read takes about 3 ms of it in the
                // driver on an H100) is made once a second while quiet; cheap reads keep the
                // quiet interval.
                let q = if p.read_cost_ns > EXPENSIVE_READ_NS {
                    quiet_ns.max(1_000_000_000)
                } else {
                    quiet_ns
                };
                if let Some(ph) = p.phase.as_mut() {
                    let k = ph.stride_for(q);
                    ph.set_stride(k);
                }
            }
        }
        let next = polled
            .iter()
            .map(|p| p.due_ns)
            .min()
            .unwrap_or(now + retry_ns);
        if next > now {
            let g = lock(&shared.sleep);
            let woken = !fast && !shared.quiet.load(Ordering::Acquire);
            if !shared.stop.load(Ordering::SeqCst) && !woken {
                let _ = shared
                    .wake
                    .wait_timeout(g, Duration::from_nanos(next - now));
            }
        }
    }
}

/// Sources due this close together are read in one wake-up.
const COALESCE_NS: u64 = 30_000;

fn poll_one(
    p: &mut Polled,
    tl: &mut History,
    st: &mut SourceStatus,
    now: u64,
    config: &Config,
    retry_ns: u64,
) {
    let late = now.saturating_sub(p.due_ns);
    if late > p.interval_ns {
        st.late_polls += 1;
        st.skipped_polls += late / p.interval_ns;
    }
    st.max_late_ns = st.max_late_ns.max(late);
    let t_before = crate::now_ns();
    let result = p.source.read();
    let t_after = crate::now_ns();
    p.read_cost_ns = (p.read_cost_ns * 7 + (t_after - t_before)) / 8;
    // The read happened somewhere in [t_before, t_after].
    let t_read = t_before + (t_after - t_before) / 2;
    match result {
        Ok(reading) => {
            st.reads += 1;
            p.consecutive_errors = 0;
            if let Some(since) = p.failed_since.take() {
                st.failed = false;
                push_gap(st, since, t_read);
                p.acc.rebaseline();
            }
            let prev_read = p.last_poll_ns;
            let step = p.acc.push(t_read, reading);
            let changed = matches!(step, Step::Changed(_));
            let stamp = match (&mut p.phase, &step) {
                (Some(ph), Step::Changed(_) | Step::Unchanged) => {
                    ph.observe(prev_read, t_read, changed)
                }
                _ => None,
            };
            match step {
                Step::First(pt) => tl.push(pt),
                Step::Changed(mut pt) => {
                    if let Some(s) = stamp {
                        pt.t_ns = s.clamp(prev_read + 1, t_read);
                    }
                    tl.push(pt);
                }
                Step::Reset(pt) => {
                    push_gap(st, p.last_poll_ns, t_read);
                    tl.push(pt);
                }
                Step::Unchanged => {}
            }
            p.last_poll_ns = t_read;
            if let Some(ph) = &p.phase {
                st.update_period_ns = ph.period_ns().unwrap_or(0.0);
                st.phase_anchors = ph.anchors;
            }
            st.joules = p.acc.joules();
            st.wraps = p.acc.wraps;
            st.resets = p.acc.resets;
        }
        Err(e) => {
            st.errors += 1;
            st.last_error = Some(e.to_string());
            if p.consecutive_errors == 0 {
                p.first_error_ns = t_after;
            }
            p.consecutive_errors += 1;
            if p.consecutive_errors >= config.fail_after
                && t_after - p.first_error_ns >= config.fail_time.as_nanos() as u64
                && p.failed_since.is_none()
            {
                p.failed_since = Some(p.last_poll_ns);
                st.failed = true;
            }
        }
    }
    if p.failed_since.is_some() {
        p.due_ns = t_after + retry_ns;
        return;
    }
    if let Some(ph) = p.phase.as_ref() {
        p.due_ns = ph.due(t_after).max(t_after + 1);
        return;
    }
    p.due_ns += p.interval_ns;
    if p.due_ns <= t_after {
        p.due_ns = t_after + p.interval_ns;
    }
}

fn push_gap(st: &mut SourceStatus, from: u64, to: u64) {
    if st.gaps.len() >= 32 {
        st.gaps.remove(0);
    }
    st.gaps.push((from, to));
}

/// The instant up to which source `p` can answer: its last point, or, when its counter has not
/// moved for the settling time, its last poll less that time.
fn covered_until(p: &Polled, tl: &History) -> u64 {
    let last_point = tl.last().map_or(0, |pt| pt.t_ns);
    last_point.max(p.last_poll_ns.saturating_sub(p.settle_ns))
}

/// Enter marks resolved whose exit is not yet: kept by the sampler thread alone.
type OpenRegions = HashMap<u64, (u64, Vec<Estimate>)>;

/// Resolve what the frontier has passed. The regions lock is held only to take the work and to
/// hand the results over, never while estimating: a thread marking a region never waits for
/// more than a copy.
fn resolve(
    shared: &Shared,
    polled: &[Polled],
    open: &mut OpenRegions,
    stopping: bool,
    max_resolved: usize,
) -> usize {
    let timelines = lock(&shared.timelines);
    let frontier = if stopping {
        u64::MAX
    } else {
        polled
            .iter()
            .zip(timelines.iter())
            .filter(|(p, _)| p.failed_since.is_none())
            .map(|(p, tl)| covered_until(p, tl))
            .min()
            .unwrap_or_else(crate::now_ns)
    };
    // 1. Take the work.
    let (marks, mut ready, spans) = {
        let mut r = lock(&shared.regions);
        let marks = r.pending.len() + r.spans.len();
        let through = frontier.max(r.frontier_ns);
        // Resolve no more spans than the caller can take soon: a burst (a slow counter moving
        // the frontier by 100 ms over a million short regions a second) waits compactly as
        // spans rather than as resolved rows.
        let room = if stopping {
            usize::MAX
        } else {
            BACKLOG_HIGH.saturating_sub(r.done.len())
        };
        let n_spans = r.spans.partition_point(|s| s.t1_ns() <= through).min(room);
        let spans: Vec<Span> = r.spans.drain(..n_spans).collect();
        let mut ready: Vec<Mark> = Vec::new();
        if frontier > r.frontier_ns || stopping {
            r.pending.retain(|m| {
                if m.t_ns <= frontier {
                    ready.push(*m);
                    false
                } else {
                    true
                }
            });
        }
        r.in_flight = !spans.is_empty() || !ready.is_empty();
        (marks, ready, spans)
    };
    // 2. Estimate, without the lock.
    let width = polled.len();
    let mut out = Packed::default();
    let push = |out: &mut Packed,
                id: u64,
                tag: u32,
                t0: u64,
                t1: u64,
                e0: &[Estimate],
                e1: &[Estimate]| {
        out.ids.push(id);
        out.tags.push(tag);
        out.t0_ns.push(t0);
        out.t1_ns.push(t1);
        for (a, b) in e0.iter().zip(e1.iter()) {
            out.joules.push(b.joules - a.joules);
            let u = (b.high - b.low) + (a.high - a.low);
            out.uncertainty
                .push(if u.is_finite() { u } else { f64::NAN });
        }
    };
    let at = |t: u64| -> Vec<Estimate> {
        polled
            .iter()
            .zip(timelines.iter())
            .map(|(p, tl)| estimate(p, tl, t))
            .collect()
    };
    for sp in &spans {
        push(
            &mut out,
            0,
            sp.tag,
            sp.t0_ns,
            sp.t1_ns(),
            &at(sp.t0_ns),
            &at(sp.t1_ns()),
        );
    }
    ready.sort_by_key(|m| (m.t_ns, m.edge == Edge::Exit));
    for m in ready {
        let est = at(m.t_ns);
        match m.edge {
            Edge::Enter => {
                open.insert(m.id, (m.t_ns, est));
            }
            Edge::Exit => {
                if let Some((t0, e0)) = open.remove(&m.id) {
                    push(&mut out, m.id, m.tag, t0, m.t_ns, &e0, &est);
                }
            }
        }
    }
    drop(timelines);
    // 3. Hand the results over.
    let mut r = lock(&shared.regions);
    r.in_flight = false;
    let n = out.len();
    let keep = n.min(max_resolved.max(1).saturating_sub(r.done.len()));
    if keep < n {
        // Nobody is draining: count the regions rather than grow without bound.
        r.dropped += (n - keep) as u64;
        out.ids.truncate(keep);
        out.tags.truncate(keep);
        out.t0_ns.truncate(keep);
        out.t1_ns.truncate(keep);
        out.joules.truncate(keep * width);
        out.uncertainty.truncate(keep * width);
    }
    r.resolved += keep as u64;
    if r.done.is_empty() {
        r.done = out;
    } else {
        let d = &mut r.done;
        d.ids.extend_from_slice(&out.ids);
        d.tags.extend_from_slice(&out.tags);
        d.t0_ns.extend_from_slice(&out.t0_ns);
        d.t1_ns.extend_from_slice(&out.t1_ns);
        d.joules.extend_from_slice(&out.joules);
        d.uncertainty.extend_from_slice(&out.uncertainty);
    }
    r.frontier_ns = r.frontier_ns.max(frontier.min(crate::now_ns()));
    if stopping {
        r.frontier_ns = u64::MAX;
    }
    if stopping || shared.waiters.load(Ordering::Acquire) > 0 {
        shared.resolved.notify_all();
    }
    marks
}

fn estimate(p: &Polled, tl: &History, t_ns: u64) -> Estimate {
    let Some(e) = tl.at(t_ns) else {
        return Estimate::exact(f64::NAN);
    };
    if e.high.is_infinite() {
        // After the last point: either the source is idle (settled) or it has failed.
        if p.failed_since.is_some_and(|since| since < t_ns) {
            return Estimate::exact(f64::NAN);
        }
        return Estimate::exact(e.joules);
    }
    e
}

fn set_timer_slack() {
    // A 10 µs timer slack lets the thread wake close to each deadline (the default is 50 µs).
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 10_000u64, 0u64, 0u64, 0u64);
    }
}

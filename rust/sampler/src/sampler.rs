//! The sampler thread: polls each source at its own interval, keeps a timeline per source, and
//! resolves region marks into joules once it has seen past them.
//!
//! Marking a region is the hot path: [`Sampler::begin`] and [`Sampler::end`] take a monotonic
//! timestamp and push it onto a short queue under an uncontended lock; no counter is read and
//! nothing waits for hardware. The thread resolves a mark once every live source has a point at
//! or after it (or has shown no change for a settling time), so results arrive within about one
//! update period of a region's end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::integrate::{Accumulator, Estimate, Point, Step, Timeline};
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
    /// Marks not yet resolved, regions open, and resolved regions not yet drained.
    pub pending_marks: usize,
    pub open_regions: usize,
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

/// Resolved regions waiting to be drained above which [`Sampler::end_tagged`] asks the caller
/// to drain.
pub const BACKLOG_HIGH: usize = 1 << 15;

/// A region whose energy is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub id: u64,
    pub t0_ns: u64,
    pub t1_ns: u64,
    /// Joules per source, in the order of [`Sampler::sources`]; NaN where a source had failed.
    pub joules: Vec<f64>,
    /// Half-width of the interval the true joules lie in, per source (NaN: unknown).
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

#[derive(Default)]
struct Regions {
    pending: Vec<Mark>,
    open: HashMap<u64, (u64, Vec<Estimate>)>,
    done: Packed,
    frontier_ns: u64,
    stopped: bool,
    begun: u64,
    resolved: u64,
    dropped: u64,
}

struct Shared {
    stop: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
    regions: Mutex<Regions>,
    resolved: Condvar,
    timelines: Mutex<Vec<Timeline>>,
    status: Mutex<Vec<SourceStatus>>,
    next_id: AtomicU64,
    loops: AtomicU64,
    started_ns: u64,
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
}

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
    /// the result so the caller need not keep its own record of the region. Returns true when
    /// more than [`BACKLOG_HIGH`] resolved regions wait to be drained: the caller should drain
    /// (a producer faster than its consumer must not grow memory without bound).
    #[inline]
    pub fn end_tagged(&self, id: u64, tag: u32) -> bool {
        let t = crate::now_ns();
        self.mark(id, t, Edge::Exit, tag) > BACKLOG_HIGH
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
        r.done.len()
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

    /// Wait until every mark made at or before `t_ns` is resolved, or `timeout` passes.
    /// Returns whether it was.
    pub fn wait_until_resolved(&self, t_ns: u64, timeout: Duration) -> bool {
        let r = lock(&self.shared.regions);
        let (r, _) = self
            .shared
            .resolved
            .wait_timeout_while(r, timeout, |r| r.frontier_ns < t_ns && !r.stopped)
            .unwrap_or_else(|p| p.into_inner());
        r.frontier_ns >= t_ns || r.stopped
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
            pending_marks: r.pending.len(),
            open_regions: r.open.len(),
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
                let mut tl = Timeline::with_capacity(config.timeline_capacity);
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
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let now = crate::now_ns();
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
        resolve(shared, &polled, stopping, config.max_resolved);
        if stopping {
            return;
        }
        let next = polled
            .iter()
            .map(|p| p.due_ns)
            .min()
            .unwrap_or(now + retry_ns);
        let now = crate::now_ns();
        if next > now {
            let g = lock(&shared.sleep);
            if !shared.stop.load(Ordering::SeqCst) {
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
    tl: &mut Timeline,
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
                    tl.push(pt)
                }
                Step::Reset(pt) => {
                    push_gap(st, p.last_poll_ns, t_read);
                    tl.push(pt);
                }
                Step::Unchanged => {}
            }
            p.last_poll_ns = t_read;
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
fn covered_until(p: &Polled, tl: &Timeline) -> u64 {
    let last_point = tl.last().map_or(0, |pt| pt.t_ns);
    last_point.max(p.last_poll_ns.saturating_sub(p.settle_ns))
}

fn resolve(shared: &Shared, polled: &[Polled], stopping: bool, max_resolved: usize) {
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
    let mut r = lock(&shared.regions);
    if frontier <= r.frontier_ns && !stopping {
        return;
    }
    let mut ready: Vec<Mark> = Vec::new();
    r.pending.retain(|m| {
        if m.t_ns <= frontier {
            ready.push(*m);
            false
        } else {
            true
        }
    });
    ready.sort_by_key(|m| (m.t_ns, m.edge == Edge::Exit));
    for m in ready {
        let est: Vec<Estimate> = polled
            .iter()
            .zip(timelines.iter())
            .map(|(p, tl)| estimate(p, tl, m.t_ns))
            .collect();
        match m.edge {
            Edge::Enter => {
                r.open.insert(m.id, (m.t_ns, est));
            }
            Edge::Exit => {
                let Some((t0, e0)) = r.open.remove(&m.id) else {
                    continue;
                };
                if r.done.len() >= max_resolved.max(1) {
                    // Nobody is draining: count the region rather than grow without bound.
                    r.dropped += 1;
                    continue;
                }
                r.resolved += 1;
                let done = &mut r.done;
                done.ids.push(m.id);
                done.tags.push(m.tag);
                done.t0_ns.push(t0);
                done.t1_ns.push(m.t_ns);
                for (a, b) in e0.iter().zip(est.iter()) {
                    done.joules.push(b.joules - a.joules);
                    let u = 0.5 * ((b.high - b.low) + (a.high - a.low));
                    done.uncertainty
                        .push(if u.is_finite() { u } else { f64::NAN });
                }
            }
        }
    }
    r.frontier_ns = r.frontier_ns.max(frontier.min(crate::now_ns()));
    if stopping {
        r.frontier_ns = u64::MAX;
    }
    shared.resolved.notify_all();
}

fn estimate(p: &Polled, tl: &Timeline, t_ns: u64) -> Estimate {
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

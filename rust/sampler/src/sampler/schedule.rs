//! The sampler thread's loop: start-up reads (the handshake's answer), polling each source when
//! due (phase-locked counters just after each update), full-rate reading while regions are
//! being marked and sparse reading while quiet, failure and retry, and a resolution pass after
//! every wake-up.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::config::{interval_for, Config};
use super::handle::{Shared, SourceStatus};
use super::lock;
use super::phase::PhaseLock;
use crate::regions::{resolve_into_columns, OpenRegions};
use crate::sensors::{EnergySource, Reading, SourceInfo, Unavailable};
use crate::shared::Segment;
use crate::timeline::{Accumulator, EnergyAt, History, Point, Step};

/// The coarse history: a point every 5 s, 16384 of them (about 22 hours).
pub(super) const COARSE_STEP_NS: u64 = 5_000_000_000;
pub(super) const COARSE_POINTS: usize = 16_384;

/// What the thread answers the start handshake with: the sources the caller sees (a view of
/// those polled, see [`super::handle::Sampler::sources`]), their indices among the polled
/// ones, and what could not be used.
pub(super) type Handshake = (Vec<SourceInfo>, Vec<usize>, Vec<Unavailable>);

/// One source as the thread polls it: the source, its accumulator, and when it is due.
pub(super) struct Polled {
    pub(super) source: Box<dyn EnergySource>,
    acc: Accumulator,
    interval_ns: u64,
    pub(super) settle_ns: u64,
    due_ns: u64,
    consecutive_errors: u32,
    first_error_ns: u64,
    pub(super) last_poll_ns: u64,
    pub(super) failed_since: Option<u64>,
    /// Phase-locked polling, for counters (see [`super::phase`]).
    phase: Option<PhaseLock>,
    /// How long a read takes, smoothed (ns).
    read_cost_ns: u64,
    /// The next point starts after a gap that began at this instant (another process's
    /// sampler died and this one took over).
    pub(super) pending_gap: Option<u64>,
    /// Local joules less those published: the node's segment counts from its own start.
    pub(super) offset_j: f64,
}

impl Polled {
    /// A source whose first read gave `reading` at `t`, with its timeline and status.
    pub(super) fn new(
        source: Box<dyn EnergySource>,
        reading: Reading,
        t: u64,
        base_j: f64,
        config: &Config,
    ) -> (Polled, Point, SourceStatus) {
        let info = source.info().clone();
        let interval_ns = interval_for(&info, config).as_nanos() as u64;
        let mut acc = Accumulator::new(info.counter, interval_ns).continue_from(base_j);
        let first = match acc.push(t, reading) {
            Step::First(p) => p,
            _ => Point {
                t_ns: t,
                joules: base_j,
            },
        };
        let status = SourceStatus {
            reads: 1,
            interval_ns,
            joules: first.joules,
            ..SourceStatus::default()
        };
        let polled = Polled {
            source,
            acc,
            interval_ns,
            settle_ns: settle_ns(config, interval_ns),
            due_ns: t + interval_ns,
            consecutive_errors: 0,
            first_error_ns: 0,
            last_poll_ns: t,
            failed_since: None,
            phase: (config.phase_lock && info.counter.is_some())
                .then(|| PhaseLock::new(interval_ns)),
            read_cost_ns: 0,
            pending_gap: None,
            offset_j: 0.0,
        };
        (polled, first, status)
    }

    /// A source that cannot be read from `since` on (retried like any failed source).
    pub(super) fn failed(
        source: Box<dyn EnergySource>,
        since: u64,
        base_j: f64,
        config: &Config,
    ) -> Polled {
        let info = source.info().clone();
        let interval_ns = interval_for(&info, config).as_nanos() as u64;
        Polled {
            source,
            acc: Accumulator::new(info.counter, interval_ns).continue_from(base_j),
            interval_ns,
            settle_ns: settle_ns(config, interval_ns),
            due_ns: since,
            consecutive_errors: 0,
            first_error_ns: 0,
            last_poll_ns: since,
            failed_since: Some(since),
            phase: None,
            read_cost_ns: 0,
            pending_gap: None,
            offset_j: 0.0,
        }
    }

    pub(super) fn cover(&self) -> Cover {
        Cover {
            last_poll_ns: self.last_poll_ns,
            settle_ns: self.settle_ns,
            failed_since: self.failed_since,
        }
    }
}

/// How far a source's timeline can answer: its last read, how long an unchanged counter takes
/// to count as idle, and since when it has failed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cover {
    pub(super) last_poll_ns: u64,
    pub(super) settle_ns: u64,
    pub(super) failed_since: Option<u64>,
}

pub(super) fn settle_ns(config: &Config, interval_ns: u64) -> u64 {
    (config.settle.as_nanos() as u64).max(10 * interval_ns)
}

/// Append `pt` to source `i`'s timeline (after a gap from `gap_from`, if any) and publish it.
pub(super) fn append(
    i: usize,
    tl: &mut History,
    st: &mut SourceStatus,
    seg: Option<&Segment>,
    offset_j: f64,
    pt: Point,
    gap_from: Option<u64>,
) {
    if let Some(from) = gap_from {
        let last = tl.last();
        let from = last.map_or(from, |l| from.max(l.t_ns)).min(pt.t_ns);
        tl.push_gap(from, pt.t_ns);
        push_gap(st, from, pt.t_ns);
        if let Some(seg) = seg {
            let j = last.map_or(pt.joules, |l| l.joules);
            seg.publish(
                i,
                Point {
                    t_ns: from,
                    joules: j - offset_j,
                },
                true,
            );
        }
    }
    tl.push(pt);
    if let (Some(seg), Some(mut last)) = (seg, tl.last()) {
        last.joules -= offset_j;
        seg.publish(i, last, false);
    }
}

/// A read slower than this is expensive: it is made sparingly while quiet.
const EXPENSIVE_READ_NS: u64 = 500_000;

/// The thread's body: read every source once and answer the start handshake on `tx`, then poll
/// until stopped. A panic is caught and marks the sampler stopped.
pub(super) fn run(
    shared: Arc<Shared>,
    sources: Vec<Box<dyn EnergySource>>,
    config: Config,
    tx: mpsc::Sender<Handshake>,
) {
    guarded(&shared, || {
        let (polled, unavailable) = start_sources(&shared, sources, &config);
        let infos: Vec<SourceInfo> = polled.iter().map(|p| p.source.info().clone()).collect();
        let view = (0..infos.len()).collect();
        // The receiver only disappears if `start` itself is gone; nothing to tell then.
        let _ = tx.send((infos, view, unavailable));
        drop(tx);
        poll_loop(
            &shared,
            polled,
            &config,
            None,
            &mut OpenRegions::new(),
            None,
        );
    });
}

/// Run `body`, catching a panic: never leave a caller waiting on a thread that is gone.
pub(super) fn guarded(shared: &Shared, body: impl FnOnce()) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    if outcome.is_err() {
        let mut r = lock(&shared.regions);
        r.stopped = true;
        shared.resolved.notify_all();
    }
}

/// Read every source once: those that answer are polled from now on (with their timelines and
/// statuses installed in `shared`), the others come back as unavailable.
pub(super) fn start_sources(
    shared: &Shared,
    sources: Vec<Box<dyn EnergySource>>,
    config: &Config,
) -> (Vec<Polled>, Vec<Unavailable>) {
    let mut polled = Vec::new();
    let mut unavailable = Vec::new();
    let mut timelines = Vec::new();
    let mut statuses = Vec::new();
    for mut source in sources {
        let info = source.info().clone();
        let t = crate::now_ns();
        match source.read() {
            Ok(reading) => {
                let (p, first, status) = Polled::new(source, reading, t, 0.0, config);
                let mut tl = History::new(config.timeline_capacity, COARSE_POINTS, COARSE_STEP_NS);
                tl.push(first);
                timelines.push(tl);
                statuses.push(status);
                polled.push(p);
            }
            Err(e) if source.retry_first_read() => {
                // Kept, failed from now on, and retried (a gap until its first reading).
                let p = Polled::failed(source, t, 0.0, config);
                timelines.push(History::new(
                    config.timeline_capacity,
                    COARSE_POINTS,
                    COARSE_STEP_NS,
                ));
                statuses.push(SourceStatus {
                    failed: true,
                    errors: 1,
                    last_error: Some(e.to_string()),
                    interval_ns: p.interval_ns,
                    ..SourceStatus::default()
                });
                polled.push(p);
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
    (polled, unavailable)
}

/// Poll until stopped. `view`: the sources whose joules regions resolve into (all when
/// `None`). `node`: publish every point into the node's segment.
pub(super) fn poll_loop(
    shared: &Shared,
    mut polled: Vec<Polled>,
    config: &Config,
    node: Option<&Segment>,
    open: &mut OpenRegions,
    view: Option<&[usize]>,
) {
    set_timer_slack();
    let all: Vec<usize> = (0..polled.len()).collect();
    let view = view.unwrap_or(&all);
    let retry_ns = config.retry.as_nanos() as u64;
    let quiet_ns = config.quiet_interval.as_nanos() as u64;
    let hold_ns = config.fast_hold.as_nanos() as u64;
    let mut fast_until = crate::now_ns() + hold_ns;
    let mut fast = true;
    let mut status_due = 0;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let now = crate::now_ns();
        // Another process of the node marks regions: as if this one did.
        let demanded = node.is_some_and(|seg| seg.demanded_until() > now);
        if demanded && !fast {
            shared.quiet.store(false, Ordering::Release);
        }
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
                poll_one(
                    p,
                    i,
                    &mut timelines[i],
                    &mut status[i],
                    now,
                    config,
                    retry_ns,
                    node,
                );
            }
        }
        if let Some(seg) = node {
            seg.heartbeat(now);
            if now >= status_due {
                status_due = now + NODE_STATUS_NS;
                if let Some(st) = lock(&shared.node).as_mut() {
                    st.generation = seg.generation();
                    st.node_reads = (0..seg.source_count()).map(|i| seg.reads(i)).collect();
                }
            }
        }
        shared.loops.fetch_add(1, Ordering::Relaxed);
        let covers: Vec<Cover> = polled.iter().map(Polled::cover).collect();
        let marks = resolve(shared, &covers, view, open, stopping, config.max_resolved);
        if stopping {
            return;
        }
        let now = crate::now_ns();
        if marks > 0 || demanded {
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
        let mut next = polled
            .iter()
            .map(|p| p.due_ns)
            .min()
            .unwrap_or(now + retry_ns);
        if node.is_some() {
            // The node's other processes ask for fast reads through the segment, not by waking
            // this thread: look at least every quiet interval (and beat the heart).
            next = next.min(now + quiet_ns.clamp(1_000_000, 100_000_000));
        }
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

/// How often an owner refreshes the node's figures in its [`super::NodeStatus`].
const NODE_STATUS_NS: u64 = 200_000_000;

/// What a counter reset leaves in its source's status (and, through it, in the results).
const RESET_REASON: &str = "its counter stepped back (or leapt) more than a wraparound or any \
plausible power explains: a driver reload or device reset; the interval across it is missing, \
no energy was counted for it";

/// Sources due this close together are read in one wake-up.
const COALESCE_NS: u64 = 30_000;

#[allow(clippy::too_many_arguments)]
fn poll_one(
    p: &mut Polled,
    i: usize,
    tl: &mut History,
    st: &mut SourceStatus,
    now: u64,
    config: &Config,
    retry_ns: u64,
    seg: Option<&Segment>,
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
            let mut gap_from = p.pending_gap.take();
            if let Some(since) = p.failed_since.take() {
                st.failed = false;
                gap_from = Some(gap_from.map_or(since, |g| g.min(since)));
                p.acc.rebaseline();
                if let Some(seg) = seg {
                    seg.set_failed(i, None);
                }
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
            let point = match step {
                Step::First(pt) => Some(pt),
                Step::Changed(mut pt) => {
                    if let Some(s) = stamp {
                        pt.t_ns = s.clamp(prev_read + 1, t_read);
                    }
                    Some(pt)
                }
                Step::Reset(pt) => {
                    gap_from = Some(gap_from.map_or(p.last_poll_ns, |g| g.min(p.last_poll_ns)));
                    st.last_error = Some(RESET_REASON.to_string());
                    Some(pt)
                }
                Step::Unchanged => None,
            };
            match point {
                Some(pt) => append(i, tl, st, seg, p.offset_j, pt, gap_from),
                // Nothing to publish yet: the gap closes at the next point.
                None => p.pending_gap = gap_from,
            }
            p.last_poll_ns = t_read;
            if let Some(seg) = seg {
                seg.polled(i, t_read);
            }
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
                if let Some(seg) = seg {
                    seg.set_failed(i, p.failed_since);
                }
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

pub(super) fn push_gap(st: &mut SourceStatus, from: u64, to: u64) {
    if st.gaps.len() >= 32 {
        st.gaps.remove(0);
    }
    st.gaps.push((from, to));
}

/// The instant up to which a source can answer: its last point, or, when its counter has not
/// moved for the settling time, its last poll less that time.
fn covered_until(c: &Cover, tl: &History) -> u64 {
    let last_point = tl.last().map_or(0, |pt| pt.t_ns);
    last_point.max(c.last_poll_ns.saturating_sub(c.settle_ns))
}

/// Resolve what the frontier has passed, for the sources in `view` (indices into `covers` and
/// the timelines). The regions lock is held only to take the work and to hand the results
/// over, never while computing energies: a thread marking a region never waits for more than
/// a copy.
pub(super) fn resolve(
    shared: &Shared,
    covers: &[Cover],
    view: &[usize],
    open: &mut OpenRegions,
    stopping: bool,
    max_resolved: usize,
) -> usize {
    let timelines = lock(&shared.timelines);
    let frontier = if stopping {
        u64::MAX
    } else {
        view.iter()
            .filter_map(|&i| Some((covers.get(i)?, timelines.get(i)?)))
            .filter(|(c, _)| c.failed_since.is_none())
            .map(|(c, tl)| covered_until(c, tl))
            .min()
            .unwrap_or_else(crate::now_ns)
    };
    // 1. Take the work.
    let work = lock(&shared.regions).take_ready(frontier, stopping);
    let marks = work.marks;
    // 2. Compute energies, without the lock.
    let width = view.len();
    let at = |t: u64| -> Vec<EnergyAt> {
        view.iter()
            .map(|&i| match (covers.get(i), timelines.get(i)) {
                (Some(c), Some(tl)) => energy_at(c, tl, t),
                _ => EnergyAt::exact(f64::NAN),
            })
            .collect()
    };
    let out = resolve_into_columns(work, open, at);
    drop(timelines);
    // 3. Hand the results over.
    let mut r = lock(&shared.regions);
    r.hand_over(
        out,
        width,
        max_resolved,
        frontier,
        crate::now_ns(),
        stopping,
    );
    if stopping || shared.waiters.load(Ordering::Acquire) > 0 {
        shared.resolved.notify_all();
    }
    marks
}

/// The energy of a source at `t_ns`: NaN where it is not covered or the source had failed.
fn energy_at(c: &Cover, tl: &History, t_ns: u64) -> EnergyAt {
    let Some(e) = tl.at(t_ns) else {
        return EnergyAt::exact(f64::NAN);
    };
    if e.high.is_infinite() {
        // After the last point: either the source is idle (settled) or it has failed.
        if c.failed_since.is_some_and(|since| since < t_ns) {
            return EnergyAt::exact(f64::NAN);
        }
        return EnergyAt {
            gaps: e.gaps,
            ..EnergyAt::exact(e.joules)
        };
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

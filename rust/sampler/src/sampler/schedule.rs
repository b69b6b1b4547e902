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
use crate::sensors::{EnergySource, SourceInfo, Unavailable};
use crate::timeline::{Accumulator, EnergyAt, History, Step};

/// The coarse history: a point every 5 s, 16384 of them (about 22 hours).
const COARSE_STEP_NS: u64 = 5_000_000_000;
const COARSE_POINTS: usize = 16_384;

/// One source as the thread polls it: the source, its accumulator, and when it is due.
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
    /// Phase-locked polling, for counters (see [`super::phase`]).
    phase: Option<PhaseLock>,
    /// How long a read takes, smoothed (ns).
    read_cost_ns: u64,
}

/// A read slower than this is expensive: it is made sparingly while quiet.
const EXPENSIVE_READ_NS: u64 = 500_000;

/// The thread's body: read every source once and answer the start handshake on `tx`, then poll
/// until stopped. A panic is caught and marks the sampler stopped.
pub(super) fn run(
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

/// Resolve what the frontier has passed. The regions lock is held only to take the work and to
/// hand the results over, never while computing energies: a thread marking a region never waits
/// for more than a copy.
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
    let work = lock(&shared.regions).take_ready(frontier, stopping);
    let marks = work.marks;
    // 2. Compute energies, without the lock.
    let width = polled.len();
    let at = |t: u64| -> Vec<EnergyAt> {
        polled
            .iter()
            .zip(timelines.iter())
            .map(|(p, tl)| energy_at(p, tl, t))
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

/// The energy of source `p` at `t_ns`: NaN where it is not covered or the source had failed.
fn energy_at(p: &Polled, tl: &History, t_ns: u64) -> EnergyAt {
    let Some(e) = tl.at(t_ns) else {
        return EnergyAt::exact(f64::NAN);
    };
    if e.high.is_infinite() {
        // After the last point: either the source is idle (settled) or it has failed.
        if p.failed_since.is_some_and(|since| since < t_ns) {
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

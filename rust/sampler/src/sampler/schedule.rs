//! The sampler thread's loop: start-up reads (the handshake's answer), polling each source when
//! due (phase-locked counters just after each update), full-rate reading while regions are
//! being marked (an expensive counter in pairs within a share of a core; see `costly`) and
//! sparse reading while quiet (or, with [`Config::fast_reads`] off, sparse
//! reading with reads at region marks; see `marks`; with [`Config::predict_marks`], sparse
//! reading with every update read around predicted marks; see `predict`), failure and retry,
//! and a resolution pass after every wake-up.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::coalesce;
use super::config::Config;
use super::costly;
use super::handle::{Shared, SourceStatus, WAKE_MARK, WAKE_QUIET};
use super::lock;
use super::marks::{self, Budget};
use super::poll::{poll_one, push_gap, Cover, Polled, Why};
use super::power;
use super::predict::Predict;
use super::resolve::resolve;
use crate::regions::OpenRegions;
use crate::sensors::{EnergySource, SourceInfo, Unavailable};
use crate::shared::Segment;
use crate::timeline::History;

/// The coarse history: a point every 5 s, 16384 of them (about 22 hours).
pub(super) const COARSE_STEP_NS: u64 = 5_000_000_000;
pub(super) const COARSE_POINTS: usize = 16_384;

/// What the thread answers the start handshake with: the sources the caller sees (a view of
/// those polled, see [`super::handle::Sampler::sources`]), their indices among the polled
/// ones, and what could not be used.
pub(super) type Handshake = (Vec<SourceInfo>, Vec<usize>, Vec<Unavailable>);

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
        let mut r = shared.regions();
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
        let read = source.read();
        let t_after = crate::now_ns();
        match read {
            Ok(reading) => {
                let (p, first, mut status) =
                    Polled::new(source, reading, (t, t_after), 0.0, config);
                let mut tl = History::new(config.timeline_capacity, COARSE_POINTS, COARSE_STEP_NS);
                if first.t_ns > t {
                    // Its first reading stands for a later instant (a fed source's first read
                    // waited for it): nothing measured it from the start until then.
                    tl.push_gap(t, first.t_ns);
                    push_gap(&mut status, t, first.t_ns);
                }
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
    // Sparse reads while regions are marked (reading at marks, around predicted marks) and the
    // node's looks keep a finer cadence than quiet's.
    let sparse_ns = quiet_ns.min(MARKED_SPARSE_NS);
    let hold_ns = config.fast_hold.as_nanos() as u64;
    let mut fast_until = crate::now_ns() + hold_ns;
    let mut fast = true;
    let mut status_due = 0;
    let mut budget = Budget::new(crate::now_ns());
    // Phase-locked counters are read at marks rather than at every update while marked.
    let at_mark = config.mark_reads && !config.fast_reads;
    // A read at the next mark is asked for (see `marks`); the next mark is to end a quiet spell.
    let mut armed = false;
    let mut asked_quiet = false;
    // Mark wake-ups of late, one bit each (1: late), the latest in the lowest bit.
    let mut late_wakes: u8 = 0;
    let mut busy_until = 0;
    // Regions were marked lately (expensive reads are then made at every sparse interval).
    let mut marked_until = 0;
    // Reads around predicted marks (see `predict`), and whether counters are read so now.
    let mut predict = config.predict_marks.then(|| Predict::new(polled.len()));
    let mut predicting = false;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let now = crate::now_ns();
        if let Some(pr) = predict.as_mut() {
            pr.woke(now);
            pr.edges.take(shared);
        }
        // Another process of the node marks regions: as if this one did.
        let demanded = node.is_some_and(|seg| seg.demanded_until() > now);
        let marked = armed && !shared.wake_asked(WAKE_MARK);
        if marked {
            armed = false;
            // A busy machine wakes the thread late: a read at the mark then comes after
            // updates past it, and the edge is interpolated between reads far apart. After two
            // late wake-ups in eight, every update is read while regions are marked (for the
            // hold, then reads at marks are tried again).
            let by = shared.woke_by_ns.load(Ordering::Relaxed);
            late_wakes = (late_wakes << 1) | u8::from(now.saturating_sub(by) > LATE_WAKE_NS);
            if (at_mark || predicting) && late_wakes.count_ones() >= 2 {
                late_wakes = 0;
                fast_until = now + hold_ns;
                busy_until = fast_until;
                if !fast {
                    fast = true;
                    read_every_update(&mut polled, now);
                }
            }
        }
        let woke_quiet = asked_quiet && !shared.wake_asked(WAKE_QUIET);
        // A mark woke a quiet sampler (or another process of the node marks regions): read
        // every counter now and every update from here.
        if !fast && (demanded || woke_quiet) {
            if asked_quiet {
                shared.withdraw_wake(WAKE_QUIET);
                asked_quiet = false;
            }
            fast = true;
            fast_until = now + hold_ns;
            read_every_update(&mut polled, now);
        }
        // Power-only sources are read more often while regions are marked or open (a long
        // region is open without marks inside it).
        power::set_slots(&mut polled, fast || !open.is_empty(), now, config);
        {
            let mut timelines = lock(&shared.timelines);
            let mut status = lock(&shared.status);
            let mut read_one = |p: &mut Polled, i: usize, why: Why| {
                let (tl, st) = (&mut timelines[i], &mut status[i]);
                poll_one(p, i, tl, st, now, config, retry_ns, node, why);
            };
            if marked {
                let mut wake_ns = marks::WAKE_NS;
                for (i, p) in polled.iter_mut().enumerate() {
                    // A source due now is read as due, which serves the mark as well.
                    if p.due_ns <= now + COALESCE_NS
                        || !marks::wants(p, now, at_mark || predicting)
                        || !budget.affords(now, marks::mark_cost(p) + wake_ns)
                    {
                        continue;
                    }
                    // The read just after the next update, for a sparse counter.
                    let then = marks::mark_cost(p) - marks::cost(p);
                    let t0 = crate::now_ns();
                    read_one(p, i, Why::Mark);
                    budget.charge(crate::now_ns().saturating_sub(t0) + wake_ns + then);
                    wake_ns = 0;
                }
            }
            let mut read = Vec::new();
            // A power source's read, due at a random instant, rides on a wake-up shortly
            // before it only when another kind of source is due now: never on one that a mark
            // or another power source made (the read instants must stay independent of the
            // load, and the wake-up is then paid for by a source that needed it anyway).
            let anchor = polled
                .iter()
                .any(|p| p.dither.is_none() && p.due_ns <= now + COALESCE_NS);
            for (i, p) in polled.iter_mut().enumerate() {
                // Sources due within a few tens of µs share this wake-up, as do counters
                // whose predicted update is past, due soon (see `coalesce`).
                let rides = anchor && p.ride_ns <= now;
                let due = p.due_ns <= now + COALESCE_NS || coalesce::early(p, now);
                if !due && !rides && !stopping {
                    continue;
                }
                read.push(i);
                read_one(p, i, Why::Due);
            }
            power::note_rides(&mut polled, &read, anchor);
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
        let edges = predict.as_mut().map(|pr| &mut pr.edges);
        let marks = resolve(
            shared,
            &covers,
            view,
            open,
            stopping,
            config.max_resolved,
            edges,
        );
        if stopping {
            return;
        }
        let now = crate::now_ns();
        if (marks > 0 && !at_mark) || demanded {
            fast_until = now + hold_ns;
        }
        if marks > 0 {
            marked_until = now + hold_ns;
        }
        if fast && at_mark && !demanded && now >= busy_until && polled.iter().all(marks::settled) {
            // Reading at marks, every update is read only until each counter's phase is
            // learned.
            fast_until = fast_until.min(now);
        }
        if fast && quiet_ns > 0 && now >= fast_until {
            // Quiet: read counters sparsely until the next mark (or, reading at marks, for
            // as long as no other process of the node asks for more).
            fast = false;
            if !at_mark {
                shared.ask_wake(WAKE_QUIET);
                asked_quiet = true;
            }
        }
        if let Some(pr) = predict.as_mut() {
            // Marked, by this process alone, on a machine that wakes the thread in time, with
            // every counter's phase known: read around predicted marks where they repeat.
            let steady = fast
                && quiet_ns > 0
                && !demanded
                && now >= busy_until
                && polled.iter().all(marks::settled);
            if !fast {
                pr.reset();
            } else if !(steady && pr.plan(&mut polled, &lock(&shared.timelines), now, sparse_ns)) {
                pr.release(&mut polled, now);
            }
            predicting = pr.active();
        }
        if fast && !at_mark && predict.is_none() {
            // Regions marked: expensive counters read in pairs within a share of a core.
            costly::while_marked(&mut polled, now);
        }
        if !fast {
            costly::unpair_all(&mut polled, now);
            // Reading at marks while regions are marked: every sparse interval; quiet: every
            // quiet interval.
            let marking = at_mark && now <= marked_until;
            // (Re)computed every loop: a counter's period may be learned only after the
            // sampler went quiet.
            for p in polled.iter_mut() {
                // A read that costs real CPU (an NVML energy read takes about 3 ms of it in the
                // driver on an H100) is made once a second while quiet; cheap reads keep the
                // quiet interval.
                // (Reading at marks, an expensive read keeps the sparse interval while regions are
                // being marked.)
                let q = if marking {
                    sparse_ns
                } else if p.read_cost_ns > EXPENSIVE_READ_NS {
                    quiet_ns.max(1_000_000_000)
                } else {
                    quiet_ns
                };
                if let Some(ph) = p.phase.as_mut() {
                    ph.check_sparse = at_mark;
                    // Sparse only once the period is known closely (coasting on a rough one,
                    // the reads would walk off the updates).
                    let k = if ph.settled() { ph.stride_for(q) } else { 1 };
                    if k < ph.stride() {
                        // Read more often from now on: from the next update.
                        ph.set_stride(k);
                        ph.resync(now);
                        p.due_ns = p.due_ns.min(now);
                    } else {
                        ph.set_stride(k);
                    }
                }
            }
        }
        if config.mark_reads {
            let now = crate::now_ns();
            let wanted = polled.iter().any(|p| {
                marks::wants(p, now, at_mark || predicting)
                    && budget.affords(now, marks::mark_cost(p) + marks::WAKE_NS)
            });
            if wanted && !armed {
                shared.ask_wake(WAKE_MARK);
                armed = true;
            } else if armed && !wanted && predicting {
                // Every update is read around a predicted mark: it need not wake the thread.
                shared.withdraw_wake(WAKE_MARK);
                armed = false;
            }
        }
        let mut next = coalesce::wake_at(&polled, now).unwrap_or(now + retry_ns);
        if node.is_some() {
            // The node's other processes ask for fast reads through the segment, not by waking
            // this thread: look at least every sparse interval (and beat the heart).
            next = next.min(now + sparse_ns.clamp(1_000_000, 100_000_000));
        }
        if let Some(pr) = predict.as_mut() {
            pr.sleeping_until(now, next);
        }
        if next > now {
            // The ticket before the flags: a mark or stop after it rings (see `bell`).
            let ticket = shared.bell.ticket();
            let woken = (asked_quiet && !shared.wake_asked(WAKE_QUIET))
                || (armed && !shared.wake_asked(WAKE_MARK));
            if !shared.stop.load(Ordering::SeqCst) && !woken {
                shared.bell.sleep(ticket, Duration::from_nanos(next - now));
            }
        }
    }
}

/// Counters read every few updates go back to reading every update, from now (the next update
/// is looked for just before it comes: the phase may have drifted while coasting).
pub(super) fn read_every_update(polled: &mut [Polled], now: u64) {
    costly::unpair_all(polled, now);
    for p in polled.iter_mut() {
        if let Some(ph) = p.phase.as_mut().filter(|ph| ph.stride() > 1) {
            ph.set_stride(1);
            ph.resync(now);
            p.due_ns = now;
        }
    }
}

/// How often an owner refreshes the node's figures in its [`super::NodeStatus`].
const NODE_STATUS_NS: u64 = 200_000_000;

/// A wake-up this long after the mark that asked for it is late.
const LATE_WAKE_NS: u64 = 300_000;

/// The most time between sparse reads while regions are marked (with reads at marks or around
/// predicted marks) and between looks at the node's demand: the quiet interval, at most 20 ms.
const MARKED_SPARSE_NS: u64 = 20_000_000;

/// Sources due this close together are read in one wake-up.
const COALESCE_NS: u64 = 30_000;

fn set_timer_slack() {
    // A 10 µs timer slack lets the thread wake close to each deadline (the default is 50 µs).
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 10_000u64, 0u64, 0u64, 0u64);
    }
}

//! A follower's thread: copy what the owner publishes, resolve, and try the lock now and
//! then; a segment replaced under its name is followed to its successor.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::super::handle::{Shared, SourceStatus, WAKE_QUIET};
use super::super::lock;
use super::super::poll::Polled;
use super::super::resolve::resolve;
use super::super::schedule::{guarded, poll_loop, Handshake, COARSE_POINTS, COARSE_STEP_NS};
use super::mirror::{copy_all, Mirror};
use super::takeover::take_over;
use super::{answer, set_status, visible_view, Ctx, Role};
use crate::regions::OpenRegions;
use crate::sensors::SourceInfo;
use crate::shared::{LockFile, NodeConfig, Segment};
use crate::timeline::History;

pub(super) fn follower_thread(
    shared: &Arc<Shared>,
    seg: Segment,
    ctx: &Ctx,
    lockf: LockFile,
    tx: mpsc::Sender<Handshake>,
) {
    guarded(shared, || {
        let published = seg.sources();
        let infos: Vec<SourceInfo> = published.iter().map(|p| p.info.clone()).collect();
        *lock(&shared.timelines) = published
            .iter()
            .map(|_| History::new(ctx.config.timeline_capacity, COARSE_POINTS, COARSE_STEP_NS))
            .collect();
        *lock(&shared.status) = published
            .iter()
            .map(|p| SourceStatus {
                interval_ns: p.info.interval.as_nanos() as u64,
                ..SourceStatus::default()
            })
            .collect();
        let mut mirrors: Vec<Mirror> = published
            .iter()
            .map(|p| Mirror {
                next: 0,
                pending_gap: None,
                offset_j: 0.0,
                rebase: false,
                settle_ns: p.settle_ns,
                var_j2: 0.0,
            })
            .collect();
        let (view, unavailable) = visible_view(&infos, &ctx.options);
        copy_all(shared, &seg, &mut mirrors);
        set_status(shared, &seg, Role::Follower, 0, ctx);
        answer(tx, &infos, &view, unavailable);
        let mut open = OpenRegions::new();
        if let Some((polled, seg, lockf)) =
            follow(shared, seg, &mut mirrors, ctx, lockf, &mut open, &view)
        {
            poll_loop(
                shared,
                polled,
                &ctx.config,
                Some(&seg),
                &mut open,
                Some(&view),
            );
            seg.release();
            drop(lockf);
        }
    });
}

/// How often a follower copies while regions are being marked.
const FOLLOW_FAST: Duration = Duration::from_millis(1);

/// The follower's loop: copy, resolve, and now and then try the lock. Returns the sources to
/// poll (and the segment and lock) when this process took over, `None` when stopped.
fn follow(
    shared: &Shared,
    mut seg: Segment,
    mirrors: &mut [Mirror],
    ctx: &Ctx,
    mut lockf: LockFile,
    open: &mut OpenRegions,
    view: &[usize],
) -> Option<(Vec<Polled>, Segment, LockFile)> {
    let config = &ctx.config;
    let hold_ns = config.fast_hold.as_nanos() as u64;
    let quiet_ns = (config.quiet_interval.as_nanos() as u64).max(1_000_000);
    let try_ns = ctx.node.takeover_poll.as_nanos() as u64;
    let mut fast_until = crate::now_ns() + hold_ns;
    let mut fast = true;
    let mut next_try = crate::now_ns() + try_ns;
    seg.demand(fast_until);
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let now = crate::now_ns();
        if !fast && !shared.wake_asked(WAKE_QUIET) {
            fast = true;
            fast_until = now + hold_ns;
            seg.demand(fast_until);
        }
        let covers = copy_all(shared, &seg, mirrors);
        shared.loops.fetch_add(1, Ordering::Relaxed);
        let marks = resolve(
            shared,
            &covers,
            view,
            open,
            stopping,
            config.max_resolved,
            None,
        );
        if stopping {
            return None;
        }
        let now = crate::now_ns();
        if marks > 0 {
            fast_until = now + hold_ns;
            seg.demand(fast_until);
        }
        if now >= next_try {
            next_try = now + try_ns;
            match lockf.try_lock() {
                Ok(true) => {
                    let polled = take_over(shared, &mut seg, mirrors, ctx);
                    set_status(shared, &seg, Role::Owner, 1, ctx);
                    return Some((polled, seg, lockf));
                }
                _ => {
                    if !seg.is_current() {
                        follow_successor(&mut seg, mirrors, &ctx.node);
                    }
                    set_status(shared, &seg, Role::Follower, 0, ctx);
                }
            }
        }
        if fast && now > fast_until {
            fast = false;
            shared.ask_wake(WAKE_QUIET);
        }
        let sleep_ns = if fast {
            FOLLOW_FAST.as_nanos() as u64
        } else {
            quiet_ns
        }
        .min(next_try.saturating_sub(now).max(1));
        // The ticket before the flags: a mark or stop after it rings (see `bell`).
        let ticket = shared.bell.ticket();
        let woken = !fast && !shared.wake_asked(WAKE_QUIET);
        if !shared.stop.load(Ordering::SeqCst) && !woken {
            shared.bell.sleep(ticket, Duration::from_nanos(sleep_ns));
        }
    }
}

/// The segment's name now names another file (a new job with the same key started over): map
/// that one, with a gap for every source.
fn follow_successor(seg: &mut Segment, mirrors: &mut [Mirror], node: &NodeConfig) {
    let Ok(next) = Segment::open(&node.segment_path()) else {
        return;
    };
    let old: Vec<String> = seg.sources().into_iter().map(|p| p.info.id).collect();
    let new: Vec<String> = next.sources().into_iter().map(|p| p.info.id).collect();
    if old != new {
        // Other sources: this process's columns cannot follow them; it keeps what it has.
        return;
    }
    for (i, m) in mirrors.iter_mut().enumerate() {
        m.next = 0;
        m.rebase = true;
        m.pending_gap = Some(seg.last_poll_ns(i));
    }
    *seg = next;
}

//! Reads at a region mark: a counter that updates more finely than it is polled (a GPU energy
//! counter that moves every millisecond, polled every 20 ms) is read the moment a region's mark
//! wakes the thread, so the region's edge falls microseconds before a point instead of being
//! interpolated across a whole poll.
//!
//! The marking thread pays one relaxed atomic load: the sampler thread raises a flag when it
//! wants a read at the next mark ([`super::handle::WAKE_MARK`]) and the first marker swaps it
//! off and wakes the thread. The reads are bounded by a budget of CPU time (a token bucket
//! charged with each read's measured cost and the wake-up's), and a cheap source is read at
//! marks at most every quarter of its interval. A counter coarser than its poll (an H100's
//! energy counter moves every 100 ms) gets none: a read at the mark would show nothing new, and
//! the phase lock already stamps its updates.

use super::phase::PhaseLock;
use super::poll::Polled;

/// Share of one core that reads at marks may take, sustained.
const SHARE: f64 = 0.01;
/// CPU time (ns) reads at marks may take at once after a pause.
const BURST_NS: f64 = 10_000_000.0;
/// What waking the thread costs in CPU time, ns (about 18 µs on a VM).
pub(super) const WAKE_NS: u64 = 20_000;
/// A counter whose learned update period is at most this share of its poll interval updates
/// more finely than it is polled (learning reads every half interval: a counter that changes at
/// every one of them learns a period of half the interval).
const FINE: f64 = 0.6;

/// CPU time available to reads at marks: a token bucket refilled at [`SHARE`] of a core.
#[derive(Clone, Debug)]
pub(super) struct Budget {
    tokens_ns: f64,
    at_ns: u64,
}

impl Budget {
    pub(super) fn new(now: u64) -> Budget {
        Budget {
            tokens_ns: BURST_NS,
            at_ns: now,
        }
    }

    fn refill(&mut self, now: u64) {
        let dt = now.saturating_sub(self.at_ns) as f64;
        self.tokens_ns = (self.tokens_ns + dt * SHARE).min(BURST_NS);
        self.at_ns = self.at_ns.max(now);
    }

    /// Whether `cost_ns` of CPU time may be spent now.
    pub(super) fn affords(&mut self, now: u64, cost_ns: u64) -> bool {
        self.refill(now);
        self.tokens_ns >= cost_ns as f64
    }

    /// Spend `cost_ns` (the bucket may go below zero after a read dearer than expected: the
    /// next reads wait until it has refilled).
    pub(super) fn charge(&mut self, cost_ns: u64) {
        self.tokens_ns -= cost_ns as f64;
    }
}

/// What a read of `p` is expected to cost (its smoothed measured cost, at least 1 µs).
pub(super) fn cost(p: &Polled) -> u64 {
    p.read_cost_ns.max(1_000)
}

/// Whether `p` updates more finely than it is polled (as its phase lock learned).
pub(super) fn fine(p: &Polled) -> bool {
    p.phase
        .as_ref()
        .is_some_and(|ph| finer_than(ph, p.interval_ns))
}

/// A lock that learned a period of about half the interval may have learned the cadence of
/// its own reads (every read sees a change: a counter finer than its poll) or a counter that
/// really updates that often; the latter's updates get bracketed now and then (a read just
/// before one sees nothing), the former's almost never.
fn finer_than(ph: &PhaseLock, interval_ns: u64) -> bool {
    ph.period_ns()
        .is_some_and(|per| per <= FINE * interval_ns as f64)
        && (ph.anchors + ph.coarse) * 20 <= ph.observed
}

/// Whether `p` reads every few updates (quiet, or marks read at the mark): a read at a mark,
/// and one just after the next update, bracket the mark.
pub(super) fn sparse(p: &Polled) -> bool {
    p.phase
        .as_ref()
        .is_some_and(|ph| ph.is_locked() && ph.stride() > 1)
}

/// Whether `p` is to be read at a mark at `now`: a live counter finer than its poll (or, with
/// `locked`, one read every few updates), not read at a mark within the last quarter of its
/// interval.
pub(super) fn wants(p: &Polled, now: u64, locked: bool) -> bool {
    p.failed_since.is_none()
        && (fine(p) || (locked && sparse(p)))
        && now >= p.last_mark_ns.saturating_add(p.interval_ns / 4)
}

/// Whether `p`'s phase is known well enough to read it every few updates: failed, not
/// phase-locked, finer than its poll, or locked with its period known
/// closely.
pub(super) fn settled(p: &Polled) -> bool {
    p.failed_since.is_some() || fine(p) || p.phase.as_ref().is_none_or(PhaseLock::settled)
}

/// What reading `p` at a mark is expected to cost: its read, and for a sparse counter the read
/// just after its next update with that wake-up.
pub(super) fn mark_cost(p: &Polled) -> u64 {
    if fine(p) {
        cost(p)
    } else {
        2 * cost(p) + WAKE_NS
    }
}

/// The instant to stamp a change seen by a read at a mark of a counter polled every
/// `interval_ns` (`prev`: the previous read; `t`: this one), without teaching the lock
/// anything. A counter finer than its poll changed within one of its updates before the read:
/// the read's own instant. A locked counter: its latest predicted update in `(prev, t]`, else
/// (and while not locked) the middle of the two reads.
pub(super) fn stamp(ph: &PhaseLock, interval_ns: u64, prev: u64, t: u64) -> Option<u64> {
    if finer_than(ph, interval_ns) {
        return Some(t);
    }
    match ph.last_update(t) {
        Some(u) if u > prev => Some(u),
        _ => Some(prev + (t - prev) / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks every millisecond for 10 s, each asking for a read that costs 3 ms of CPU (an
    /// H100's energy read): the bucket lets through about 1 % of the time plus the burst.
    #[test]
    fn the_budget_bounds_expensive_reads() {
        let mut b = Budget::new(0);
        let (mut reads, mut t) = (0u64, 0u64);
        while t < 10_000_000_000 {
            if b.affords(t, 3_000_000 + WAKE_NS) {
                b.charge(3_000_000 + WAKE_NS);
                reads += 1;
            }
            t += 1_000_000;
        }
        let allowed = (BURST_NS + SHARE * 10e9) / 3_020_000.0;
        assert!(
            reads as f64 <= allowed + 1.0,
            "{reads} reads, {allowed} allowed"
        );
        assert!(
            reads as f64 >= allowed - 2.0,
            "{reads} reads, {allowed} allowed"
        );
    }

    /// Cheap reads (10 µs) at a mark every millisecond all fit: 30 µs a millisecond is 3 %,
    /// over the share: after the burst, about a third of them.
    #[test]
    fn the_budget_refills_at_its_share_of_a_core() {
        let mut b = Budget::new(0);
        let (mut reads, mut t) = (0u64, 0u64);
        while t < 10_000_000_000 {
            if b.affords(t, 10_000 + WAKE_NS) {
                b.charge(10_000 + WAKE_NS);
                reads += 1;
            }
            t += 1_000_000;
        }
        let allowed = (BURST_NS + SHARE * 10e9) / 30_000.0;
        assert!(
            (reads as f64 - allowed).abs() <= 2.0,
            "{reads} reads, {allowed} allowed"
        );
    }
}

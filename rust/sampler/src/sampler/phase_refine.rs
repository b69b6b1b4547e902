//! Refining the learned period from the close brackets of a lock.
//!
//! Two close brackets `n` updates apart give the period to within how far each update may lie
//! from its bracket's middle (half the bracket and half a read's cost), summed, over `n`; a
//! period learned from a dozen changes is taken to be known to a thirty-second of itself.
//! Counting the updates between two brackets with a period that may be off by `e` is sure only
//! while `n · e` and how far each update may lie from its bracket's middle stay well under half
//! a period. So the lock keeps its period's uncertainty (what [`PhaseLock::refine`] returns,
//! and the reads walk early at twice it, see `observe`), counts the updates from one close
//! bracket to the next only where that count is sure, chaining the counts from a first bracket,
//! and takes the period the chain gives only where it is known more closely than the one it
//! has. Where the count is not sure, the chain starts again from that bracket (the period and
//! its uncertainty kept); while the next look before an update (see `probe_every`) would come
//! too far on, reading every update, there is one before each update, so that the brackets are
//! counted one update apart.
//!
//! On a busy machine (late wake-ups, reads of milliseconds) close brackets can be milliseconds
//! wide: a period taken as exact from two of them a few updates apart was off by milliseconds
//! (102.8 ms for 100.004), every later count agreed with it, and the lock, and the paired reads
//! built on it, stamped changes tens of milliseconds off for minutes.

use super::PhaseLock;

/// What refining knows since the first close bracket of a lock (see the module's
/// documentation); all in ns.
#[derive(Clone, Debug, Default)]
pub(super) struct Refine {
    /// The bracket the updates are counted from: its middle and how far the update may lie
    /// from it.
    from: f64,
    from_off: f64,
    /// The latest close bracket (the same), and the updates counted from `from` to it.
    last: f64,
    last_off: f64,
    count: f64,
    /// How far the period may be off, and the period it is for (one changed elsewhere, by the
    /// search of paired reads, may be off by as much more).
    err: f64,
    period: f64,
}

impl PhaseLock {
    /// Re-estimate the period from the close brackets so far and this one (`u`, of `width`);
    /// returns how far off the period may still be (ns).
    pub(super) fn refine(&mut self, u: f64, width: f64) -> f64 {
        let Some(p) = self.period.filter(|&p| p > 0.0) else {
            return 0.0;
        };
        // The update lies within the bracket, and each of its reads may have taken the counter
        // anywhere in its cost.
        let off = (width + self.read_cost as f64) / 2.0;
        let r = &mut self.refining;
        if self.base.is_none() {
            // The first close bracket of this lock.
            self.base = Some((u, p));
            *r = Refine {
                from: u,
                from_off: off,
                last: u,
                last_off: off,
                count: 0.0,
                err: p / 32.0,
                period: p,
            };
            return r.err;
        }
        if r.period != p {
            r.err = (r.err + (p - r.period).abs()).min(p / 32.0).max(r.err);
            r.period = p;
        }
        let steps = ((u - r.last) / p).round();
        if steps < 1.0 {
            return r.err;
        }
        if !sure(steps * r.err + r.last_off + off, p) {
            // Too far from the latest bracket for the count to be sure: count from here.
            (r.from, r.from_off, r.last, r.last_off, r.count) = (u, off, u, off, 0.0);
            return r.err;
        }
        r.count += steps;
        (r.last, r.last_off) = (u, off);
        let err = (r.from_off + off) / r.count;
        if err < r.err {
            r.err = err;
            r.period = (u - r.from) / r.count;
            self.period = Some(r.period);
        }
        r.err
    }

    /// Whether the updates between the latest close bracket and one `steps` updates after it
    /// could not be counted surely (see [`Self::refine`]), brackets as wide as the latest.
    pub(super) fn refine_unsure(&self, steps: u32) -> bool {
        let (Some(p), r) = (self.period, &self.refining) else {
            return false;
        };
        // (Only where looks can help: brackets as wide as the latest one update apart.)
        self.base.is_some()
            && !sure(f64::from(steps) * r.err + 2.0 * r.last_off, p)
            && sure(r.err + 2.0 * r.last_off, p)
    }
}

/// Whether updates between two brackets are counted surely when the count may be off by `off`
/// ns of period `p`: the period's error over them and how far each update may lie from its
/// bracket's middle, well under half a period (an eighth of it kept for updates that come a
/// little early or late).
fn sure(off: f64, p: f64) -> bool {
    off < 0.375 * p
}

#[cfg(test)]
#[path = "phase_refine_tests.rs"]
mod tests;

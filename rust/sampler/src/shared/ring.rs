//! The seqlock rings: the writer's side (the owner: points, reads, failures, heartbeat,
//! takeover) and the readers' (copies without lock or system call).

use std::sync::atomic::{fence, Ordering};

use super::segment::*;
use crate::timeline::Point;

/// One entry of a ring: a timeline point, and whether the interval after it is a gap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub point: Point,
    pub gap_after: bool,
    /// Placed between two measured points by finer power samples (an estimate).
    pub placed: bool,
    /// Not a point: the cumulative variance (J²) of a power integral at `point.t_ns`, in
    /// `point.joules` (`var`), or its bound (J, `bound`); see `History::push_spread`.
    pub var: bool,
    pub bound: bool,
}

/// What one read of a ring gave.
#[derive(Debug, Default)]
pub struct Copied {
    pub entries: Vec<Entry>,
    /// Entries that were overwritten before they could be copied.
    pub lost: u64,
}

impl Segment {
    // ---- the writer (the owner; one at a time, which the lock ensures) ----

    /// Append a point to source `i`'s ring. A few atomic stores.
    #[inline]
    pub fn publish(&self, i: usize, p: Point, gap_after: bool) {
        self.publish_flagged(i, p, if gap_after { GAP_BIT } else { 0 });
    }

    /// Append a point placed between two measured ones (see `Timeline::push_placed`).
    #[inline]
    pub fn publish_placed(&self, i: usize, p: Point) {
        self.publish_flagged(i, p, PLACED_BIT);
    }

    /// The cumulative uncertainty of a power integral at `t_ns` (see `History::push_spread`),
    /// published before the point of the same read: followers state it as the owner does.
    pub fn publish_spread(&self, i: usize, t_ns: u64, var_j2: f64, bound_j: f64) {
        for (joules, flag) in [(var_j2, VAR_BIT), (bound_j, BOUND_BIT)] {
            self.publish_flagged(i, Point { t_ns, joules }, flag);
        }
    }

    fn publish_flagged(&self, i: usize, p: Point, flags: u64) {
        let seq = self.word(self.desc(i) + S_SEQ);
        // A writer that died mid-write left the number odd: that entry is written again.
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        let pos = odd / 2;
        let s = self.slot(i, pos);
        let t = p.t_ns & !FLAGS | flags;
        self.word(s).store(t, Ordering::Relaxed);
        self.word(s + 8)
            .store(p.joules.to_bits(), Ordering::Relaxed);
        seq.store(odd + 1, Ordering::Release);
    }

    /// Source `i` was read at `t_ns` (after any point that read gave was published).
    #[inline]
    pub fn polled(&self, i: usize, t_ns: u64) {
        let d = self.desc(i);
        self.word(d + S_READS).fetch_add(1, Ordering::Relaxed);
        self.word(d + S_LAST_POLL).store(t_ns, Ordering::Release);
    }

    /// Source `i` has failed since `t_ns` (`None`: it works).
    pub fn set_failed(&self, i: usize, since: Option<u64>) {
        self.word(self.desc(i) + S_FAILED)
            .store(since.map_or(0, |t| t.max(1)), Ordering::Release);
    }

    pub fn heartbeat(&self, now_ns: u64) {
        self.word(H_HEARTBEAT).store(now_ns, Ordering::Release);
    }

    /// Make this process the owner: a new generation. Returns it.
    pub fn take_over(&self, pid: i32) -> u64 {
        self.word(H_OWNER).store(pid as u64, Ordering::Release);
        self.heartbeat(crate::now_ns());
        self.word(H_GENERATION).fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The owner stops (its process goes on, or exits normally): the segment names no owner,
    /// so that once nobody takes it over it can be reclaimed without waiting for `stale_after`.
    pub fn release(&self) {
        self.word(H_OWNER).store(0, Ordering::Release);
    }

    // ---- readers ----

    pub fn owner_pid(&self) -> i32 {
        self.word(H_OWNER).load(Ordering::Acquire) as i32
    }

    pub fn generation(&self) -> u64 {
        self.word(H_GENERATION).load(Ordering::Acquire)
    }

    pub fn heartbeat_ns(&self) -> u64 {
        self.word(H_HEARTBEAT).load(Ordering::Acquire)
    }

    /// A reader has regions to resolve until `until_ns`: the owner reads every update until
    /// then instead of sparsely.
    pub fn demand(&self, until_ns: u64) {
        self.word(H_DEMAND).fetch_max(until_ns, Ordering::AcqRel);
    }

    pub fn demanded_until(&self) -> u64 {
        self.word(H_DEMAND).load(Ordering::Acquire)
    }

    /// When the owner last read source `i` (everything it published from that read is visible
    /// to a copy made after this load).
    pub fn last_poll_ns(&self, i: usize) -> u64 {
        self.word(self.desc(i) + S_LAST_POLL)
            .load(Ordering::Acquire)
    }

    pub fn failed_since(&self, i: usize) -> Option<u64> {
        let t = self.word(self.desc(i) + S_FAILED).load(Ordering::Acquire);
        (t != 0).then_some(t)
    }

    /// Counter reads the owners made of source `i` over the segment's life.
    pub fn reads(&self, i: usize) -> u64 {
        self.word(self.desc(i) + S_READS).load(Ordering::Relaxed)
    }

    /// Entries written to source `i`'s ring so far.
    pub fn written(&self, i: usize) -> u64 {
        self.word(self.desc(i) + S_SEQ).load(Ordering::Acquire) / 2
    }

    /// Copy source `i`'s entries from position `next` on. Returns the position to continue
    /// from. No lock, no system call.
    pub fn copy_since(&self, i: usize, next: u64, out: &mut Copied) -> u64 {
        let seq = self.word(self.desc(i) + S_SEQ);
        let s1 = seq.load(Ordering::Acquire);
        let end = s1 / 2;
        let ring = self.ring as u64;
        let from = next.max(end.saturating_sub(ring));
        out.lost += from.saturating_sub(next);
        let start = out.entries.len();
        for pos in from..end {
            let s = self.slot(i, pos);
            let t = self.word(s).load(Ordering::Relaxed);
            let j = self.word(s + 8).load(Ordering::Relaxed);
            out.entries.push(Entry {
                point: Point {
                    t_ns: t & !FLAGS,
                    joules: f64::from_bits(j),
                },
                gap_after: t & GAP_BIT != 0,
                placed: t & PLACED_BIT != 0,
                var: t & VAR_BIT != 0,
                bound: t & BOUND_BIT != 0,
            });
        }
        fence(Ordering::Acquire);
        let s2 = seq.load(Ordering::Relaxed);
        // Entries below this may have been overwritten while they were copied.
        let valid_from = s2.div_ceil(2).saturating_sub(ring);
        if valid_from > from {
            let drop = ((valid_from - from) as usize).min(out.entries.len() - start);
            out.entries.drain(start..start + drop);
            out.lost += drop as u64;
        }
        end.max(next)
    }
}

//! Regions: the marks callers take, waiting until the sampler has seen past them, and their
//! resolution into joules per source, handed back in columns.
//!
//! Marking is the hot path: a mark is a timestamp (a region closed in one go is one `Span`)
//! handed over without a lock and moved into `Regions::pending` (or `Regions::spans`, kept in
//! order of their end) by whoever locks the regions next (see the sampler's inbox). The sampler
//! thread takes what its frontier has passed (`Regions::take_ready`), computes the energy at
//! each edge without the lock (`resolve_into_columns`), and hands the rows back
//! (`Regions::hand_over`) for [`crate::Sampler::drain_packed`]. Names are interned by the
//! caller: a region carries a `u32` tag, returned with its row.

use std::collections::{HashMap, VecDeque};

use crate::timeline::EnergyAt;

/// Resolved regions in columns, oldest first: what [`crate::Sampler::drain_packed`] hands over.
/// Row `i`'s joules are `joules[i * n_sources .. (i + 1) * n_sources]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Packed {
    pub ids: Vec<u64>,
    /// The tag given when each region was closed ([`crate::Sampler::end_tagged`]).
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

    /// Append `other`'s rows after these (the same sources).
    pub fn extend(&mut self, other: &Packed) {
        self.ids.extend_from_slice(&other.ids);
        self.tags.extend_from_slice(&other.tags);
        self.t0_ns.extend_from_slice(&other.t0_ns);
        self.t1_ns.extend_from_slice(&other.t1_ns);
        self.joules.extend_from_slice(&other.joules);
        self.uncertainty.extend_from_slice(&other.uncertainty);
    }

    /// Move out the oldest `n` rows (all if fewer), keeping the rest.
    pub fn take_front(&mut self, n: usize, width: usize) -> Packed {
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

/// Resolved regions waiting to be drained above which [`crate::Sampler::end_span`] asks the caller to
/// drain.
pub const BACKLOG_HIGH: usize = 1 << 13;

/// A region whose energy is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub id: u64,
    pub t0_ns: u64,
    pub t1_ns: u64,
    /// Joules per source, in the order of [`crate::Sampler::sources`]; NaN where a source had failed.
    pub joules: Vec<f64>,
    /// How far the true joules can be from the figure, per source: the widths of the counter
    /// brackets around both edges added (NaN: unknown).
    pub uncertainty: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Edge {
    Enter,
    Exit,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    pub(crate) id: u64,
    pub(crate) t_ns: u64,
    pub(crate) edge: Edge,
    pub(crate) tag: u32,
}

/// A region closed in one go ([`crate::Sampler::end_span`]): both edges wait in one entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) t0_ns: u64,
    /// t1 − t0; a longer region goes through the marks instead.
    pub(crate) dur_ns: u32,
    pub(crate) tag: u32,
}

impl Span {
    pub(crate) fn t1_ns(&self) -> u64 {
        self.t0_ns + u64::from(self.dur_ns)
    }
}

#[derive(Default)]
pub(crate) struct Regions {
    /// Marks in the order they were handed over (an enter before its exit).
    pub(crate) pending: VecDeque<Mark>,
    /// Spans in order of their end (`t1_ns`).
    pub(crate) spans: Vec<Span>,
    /// Marks or spans taken by the sampler thread and not yet handed back as results.
    pub(crate) in_flight: bool,
    /// Marks the frontier may have passed were left pending because the resolved rows are full
    /// (see [`Regions::take_ready`]): nothing is resolved up to the frontier until they are.
    pub(crate) marks_held: bool,
    pub(crate) done: Packed,
    pub(crate) frontier_ns: u64,
    pub(crate) stopped: bool,
    pub(crate) begun: u64,
    pub(crate) resolved: u64,
    pub(crate) dropped: u64,
}

/// Enter marks resolved whose exit is not yet: kept by the sampler thread alone.
pub(crate) type OpenRegions = HashMap<u64, (u64, Vec<EnergyAt>)>;

/// The work one resolution pass took: how many marks and spans were waiting, the marks the
/// frontier has passed, and the spans it has passed.
pub(crate) struct Work {
    pub marks: usize,
    pub ready: Vec<Mark>,
    pub spans: Vec<Span>,
}

impl Regions {
    /// Take the marks and spans that end at or before `frontier` (everything when `stopping`).
    /// Resolves no more spans than the caller can take soon, and no marks while the resolved
    /// rows are full: a burst (a slow counter moving the frontier by 100 ms over a million
    /// short regions a second) waits compactly as spans and marks rather than as resolved rows,
    /// and no region the caller is about to drain is dropped for want of room.
    pub(crate) fn take_ready(&mut self, frontier: u64, stopping: bool) -> Work {
        let marks = self.pending.len() + self.spans.len();
        let through = frontier.max(self.frontier_ns);
        let room = if stopping {
            usize::MAX
        } else {
            BACKLOG_HIGH.saturating_sub(self.done.len())
        };
        let n_spans = self
            .spans
            .partition_point(|s| s.t1_ns() <= through)
            .min(room);
        let spans: Vec<Span> = self.spans.drain(..n_spans).collect();
        let mut ready: Vec<Mark> = Vec::new();
        if room == 0 {
            // The rows are full (the caller drains slower than regions end): the marks wait as
            // marks, never resolved only to be dropped, until the caller has drained.
            self.marks_held = self.marks_held || !self.pending.is_empty();
        } else if frontier > self.frontier_ns || stopping || self.marks_held {
            // At most two marks a row of room, the oldest first: a prefix of the marks the
            // frontier has passed, in the order they were taken, holds the enter of every exit
            // in it (an enter comes first), so no exit is taken without its enter. Taking from
            // the front costs what is taken, not what waits behind it (a burst can leave a
            // million marks pending while the caller drains a few thousand rows at a time).
            // Marks are nearly in time order (stamped before they are pushed), so one not yet passed
            // may come before some that are: it stays in its place.
            let limit = room.saturating_mul(2);
            let mut taken = 0;
            let mut early: Vec<Mark> = Vec::new();
            while taken < limit {
                let Some(m) = self.pending.pop_front() else {
                    break;
                };
                if m.t_ns <= through {
                    ready.push(m);
                    taken += 1;
                } else {
                    early.push(m);
                }
            }
            for m in early.into_iter().rev() {
                self.pending.push_front(m);
            }
            self.marks_held = taken >= limit;
        }
        self.in_flight = !spans.is_empty() || !ready.is_empty();
        Work {
            marks,
            ready,
            spans,
        }
    }

    /// Append resolved rows (`width` sources each), keeping at most `max_resolved` undrained,
    /// and move the frontier to `frontier` (capped at `now_ns`).
    pub(crate) fn hand_over(
        &mut self,
        mut out: Packed,
        width: usize,
        max_resolved: usize,
        frontier: u64,
        now_ns: u64,
        stopping: bool,
    ) {
        self.in_flight = false;
        let n = out.len();
        let keep = n.min(max_resolved.max(1).saturating_sub(self.done.len()));
        if keep < n {
            // Nobody is draining: count the regions rather than grow without bound.
            self.dropped += (n - keep) as u64;
            out.ids.truncate(keep);
            out.tags.truncate(keep);
            out.t0_ns.truncate(keep);
            out.t1_ns.truncate(keep);
            out.joules.truncate(keep * width);
            out.uncertainty.truncate(keep * width);
        }
        self.resolved += keep as u64;
        if self.done.is_empty() {
            self.done = out;
        } else {
            self.done.extend(&out);
        }
        self.frontier_ns = self.frontier_ns.max(frontier.min(now_ns));
        if stopping {
            self.frontier_ns = u64::MAX;
        }
    }
}

/// Resolve the work taken into rows: spans at once, marks in time order (an enter is kept in
/// `open` until its exit comes). `at(t)` is the energy of every source at instant `t`.
pub(crate) fn resolve_into_columns(
    work: Work,
    open: &mut OpenRegions,
    at: impl Fn(u64) -> Vec<EnergyAt>,
) -> Packed {
    let Work {
        mut ready, spans, ..
    } = work;
    let mut out = Packed::default();
    let push = |out: &mut Packed,
                id: u64,
                tag: u32,
                t0: u64,
                t1: u64,
                e0: &[EnergyAt],
                e1: &[EnergyAt]| {
        out.ids.push(id);
        out.tags.push(tag);
        out.t0_ns.push(t0);
        out.t1_ns.push(t1);
        for (a, b) in e0.iter().zip(e1.iter()) {
            if a.gaps != b.gaps {
                // The region crossed an interval the source was not measured in.
                out.joules.push(f64::NAN);
                out.uncertainty.push(f64::NAN);
                continue;
            }
            out.joules.push(b.joules - a.joules);
            // The edges' brackets, two standard deviations of the integral in between where
            // the source keeps its variance (power read at random instants), and the bound a
            // device holding its reading leaves (it adds up, see `timeline::held`).
            let u = (b.high - b.low)
                + (a.high - a.low)
                + 2.0 * (b.var_j2 - a.var_j2).max(0.0).sqrt()
                + (b.bound_j - a.bound_j).max(0.0);
            out.uncertainty
                .push(if u.is_finite() { u } else { f64::NAN });
        }
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: u64, t_ns: u64, edge: Edge) -> Mark {
        Mark {
            id,
            t_ns,
            edge,
            tag: 0,
        }
    }

    /// Resolved rows waiting, `n` of them.
    fn rows(n: usize) -> Packed {
        Packed {
            ids: vec![0; n],
            tags: vec![0; n],
            t0_ns: vec![0; n],
            t1_ns: vec![0; n],
            joules: Vec::new(),
            uncertainty: Vec::new(),
        }
    }

    #[test]
    fn held_marks_are_taken_from_the_front_a_little_at_a_time() {
        // A million marks wait while the caller drains 64 rows at a time: each pass takes at
        // most two marks a row of room, from the front, enters before their exits.
        let mut r = Regions::default();
        for i in 0..1_000_000u64 {
            let edge = if i % 2 == 0 { Edge::Enter } else { Edge::Exit };
            r.pending.push_back(mark(i / 2 + 1, i + 1, edge));
        }
        r.done = rows(BACKLOG_HIGH - 64);
        r.marks_held = true;
        let mut seen = 0u64;
        for _ in 0..100 {
            let w = r.take_ready(u64::MAX - 1, false);
            assert_eq!(w.ready.len(), 128);
            assert!(w.ready.iter().all(|m| {
                seen += 1;
                m.t_ns == seen
            }));
            assert!(r.marks_held);
            r.in_flight = false;
        }
        assert_eq!(r.pending.len(), 1_000_000 - 12_800);
    }

    #[test]
    fn a_mark_behind_the_frontier_handed_over_is_taken_though_the_frontier_recedes() {
        // The rows were full when the frontier reached 100: the region ending at 90 waited.
        // A later pass computes a lower frontier (80, a source's coverage changed): the mark is
        // still taken (it lies behind the frontier already handed over), so a waiter for 95 is
        // never told it is caught up while that region is pending.
        let mut r = Regions::default();
        r.pending.push_back(mark(1, 10, Edge::Enter));
        r.pending.push_back(mark(1, 90, Edge::Exit));
        r.done = rows(BACKLOG_HIGH);
        let w = r.take_ready(100, false);
        assert!(w.ready.is_empty() && r.marks_held);
        r.hand_over(Packed::default(), 0, usize::MAX, 100, u64::MAX, false);
        let _ = r.done.take_front(usize::MAX, 0);
        let w = r.take_ready(80, false);
        assert_eq!(w.ready.len(), 2);
        assert!(r.pending.is_empty() && !r.marks_held);
    }

    #[test]
    fn a_mark_not_yet_passed_keeps_its_place() {
        // Stamped before the lock, marks can be a few µs out of order: one the frontier has not
        // passed stays pending, in front of those behind it, and the others are taken.
        let mut r = Regions::default();
        r.pending.push_back(mark(1, 10, Edge::Enter));
        r.pending.push_back(mark(2, 60, Edge::Enter));
        r.pending.push_back(mark(1, 40, Edge::Exit));
        r.pending.push_back(mark(3, 70, Edge::Enter));
        let w = r.take_ready(50, false);
        let taken: Vec<u64> = w.ready.iter().map(|m| m.t_ns).collect();
        assert_eq!(taken, vec![10, 40]);
        let left: Vec<u64> = r.pending.iter().map(|m| m.t_ns).collect();
        assert_eq!(left, vec![60, 70]);
        assert!(!r.marks_held);
    }
}

//! Regions: the marks callers take, waiting until the sampler has seen past them, and their
//! resolution into joules per source, handed back in columns.
//!
//! Marking is the hot path: a mark is a timestamp pushed onto `Regions::pending` (a region
//! closed in one go is one `Span`) under an uncontended lock held for a push. The sampler
//! thread takes what its frontier has passed (`Regions::take_ready`), computes the energy at
//! each edge without the lock (`resolve_into_columns`), and hands the rows back
//! (`Regions::hand_over`) for [`crate::Sampler::drain_packed`]. Names are interned by the
//! caller: a region carries a `u32` tag, returned with its row.

use std::collections::HashMap;

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

    /// Move out the oldest `n` rows (all if fewer), keeping the rest.
    pub(crate) fn take_front(&mut self, n: usize, width: usize) -> Packed {
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
    pub(crate) pending: Vec<Mark>,
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
            // At most two marks a row of room, the oldest first: a prefix of the ready marks
            // in the order they were taken holds the enter of every exit in it (an enter comes
            // first), so no exit is taken without its enter.
            let limit = room.saturating_mul(2);
            let mut taken = 0;
            self.pending.retain(|m| {
                if taken < limit && m.t_ns <= frontier {
                    ready.push(*m);
                    taken += 1;
                    false
                } else {
                    true
                }
            });
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
            let d = &mut self.done;
            d.ids.extend_from_slice(&out.ids);
            d.tags.extend_from_slice(&out.tags);
            d.t0_ns.extend_from_slice(&out.t0_ns);
            d.t1_ns.extend_from_slice(&out.t1_ns);
            d.joules.extend_from_slice(&out.joules);
            d.uncertainty.extend_from_slice(&out.uncertainty);
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
            // The edges' brackets, and two standard deviations of the integral in between
            // where the source keeps its variance (power read at random instants).
            let u =
                (b.high - b.low) + (a.high - a.low) + 2.0 * (b.var_j2 - a.var_j2).max(0.0).sqrt();
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

//! History: a source's points in two bounded rings (fine and recent, coarse and far back), the
//! gaps it was not measured across and the uncertainty of a power integral, and the energy at any
//! instant with the bracket it lies in (each ring is a [`Timeline`], see [`super::ring`]).

use std::collections::VecDeque;

use super::Point;
// (Their former home: `history::{EnergyAt, Timeline}` still names them.)
pub use super::ring::{EnergyAt, Timeline};

/// A fine timeline of recent points and a coarse one reaching far back, so that the start of a
/// long region can be found after the fine ring has moved on.
#[derive(Clone, Debug)]
pub struct History {
    fine: Timeline,
    coarse: Timeline,
    step_ns: u64,
    gaps: VecDeque<(u64, u64)>,
    gaps_dropped: u64,
    /// Cumulative variance of the integral (J², as `joules`) and bound (J) at each read of a
    /// source that keeps them; made at its first [`Self::push_spread`], as long as fine.
    spread: Option<Box<(Timeline, Timeline)>>,
    /// What is added to the variance and the bound pushed, where an integral started anew.
    spread_from: [f64; 2],
}

impl History {
    /// `fine` points of full resolution; `coarse` points at least `step_ns` apart.
    pub fn new(fine: usize, coarse: usize, step_ns: u64) -> Self {
        History {
            fine: Timeline::with_capacity(fine),
            coarse: Timeline::with_capacity(coarse),
            step_ns,
            gaps: VecDeque::new(),
            gaps_dropped: 0,
            spread: None,
            spread_from: [0.0; 2],
        }
    }

    /// Record the cumulative uncertainty of the source's integral at `t_ns` (a power source
    /// read at random instants: see [`crate::timeline::Accumulator::uncertain`]).
    ///
    /// Within one integral either part only grows. One below what the timeline holds comes from
    /// an integral started anew (a process that took over the node's sampler, or the sampler of
    /// a segment that replaced another, counts from 0): it counts on from where the timeline
    /// stood, as the joules do, so that a region after the change does not read a fall (its
    /// start the old integral's, its end the new one's) and lose its uncertainty.
    pub fn push_spread(&mut self, t_ns: u64, u: super::Uncertain) {
        let cap = self.fine.capacity();
        let (var, bound) = &mut **self.spread.get_or_insert_with(|| {
            Box::new((Timeline::with_capacity(cap), Timeline::with_capacity(cap)))
        });
        let [var_from, bound_from] = &mut self.spread_from;
        for (tl, from, value) in [(var, var_from, u.var_j2), (bound, bound_from, u.bound_j)] {
            let last = tl.last().map_or(0.0, |p| p.joules);
            if value + *from < last {
                *from = last - value;
            }
            // (A device asleep bounds each read alike: a sleep keeps two points, and the start
            // of a long region, resolved when it ends, stays in the ring.)
            tl.push_extending(Point {
                t_ns,
                joules: value + *from,
            });
        }
    }

    /// Append a point placed between two measured ones (see [`Timeline::push_placed`]); only
    /// measured points enter the coarse ring.
    pub fn push_placed(&mut self, p: Point) {
        self.fine.push_placed(p);
    }

    pub fn push(&mut self, p: Point) {
        self.fine.push(p);
        if self
            .coarse
            .last()
            .is_none_or(|c| p.t_ns >= c.t_ns.saturating_add(self.step_ns))
        {
            self.coarse.push(p);
        }
    }

    pub fn last(&self) -> Option<Point> {
        self.fine.last()
    }

    /// The last measured point (placed points after it wait for the measured point that ends
    /// their update: a copy that has them but not it cannot answer past that point).
    pub fn last_measured(&self) -> Option<Point> {
        self.fine.last_measured()
    }

    /// Points in the fine ring.
    pub fn len(&self) -> usize {
        self.fine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fine.is_empty()
    }

    /// Points of full resolution stamped after `since_ns`.
    pub fn since(&self, since_ns: u64, max: usize) -> Vec<Point> {
        self.fine.since(since_ns, max)
    }

    /// Joules at `t_ns` from the points alone; before the fine ring, from the coarse one.
    fn at_points(&self, t_ns: u64) -> Option<EnergyAt> {
        let first = self.fine.first()?;
        if t_ns >= first.t_ns {
            return self.fine.at(t_ns);
        }
        let e = self.coarse.at(t_ns)?;
        if !e.high.is_infinite() {
            return Some(e);
        }
        // Between the last coarse point and the first fine one.
        let lo = self.coarse.last()?;
        if first.t_ns <= lo.t_ns {
            return Some(e);
        }
        let frac = (t_ns - lo.t_ns) as f64 / (first.t_ns - lo.t_ns) as f64;
        Some(EnergyAt {
            joules: lo.joules + (first.joules - lo.joules) * frac,
            low: lo.joules,
            high: first.joules,
            gaps: 0,
            var_j2: 0.0,
            bound_j: 0.0,
        })
    }

    /// Record that the energy between `from_ns` and `to_ns` was not measured (the source
    /// failed, its counter was reset, or the node's sampler died and another took over). The
    /// points on either side stay; an instant inside the gap has no energy (NaN), and instants
    /// on either side of it count different [`EnergyAt::gaps`], so a region across it is known
    /// to have crossed it. The newest [`GAPS_KEPT`] are kept.
    pub fn push_gap(&mut self, from_ns: u64, to_ns: u64) {
        if self.gaps.len() >= GAPS_KEPT {
            self.gaps.pop_front();
            self.gaps_dropped += 1;
        }
        self.gaps.push_back((from_ns, to_ns.max(from_ns)));
    }

    /// The gaps recorded (the newest [`GAPS_KEPT`]), oldest first.
    pub fn gaps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.gaps.iter().copied()
    }

    /// The earliest point held (the coarse ring's first, once the fine ring has moved on).
    fn earliest(&self) -> Option<Point> {
        match (self.coarse.first(), self.fine.first()) {
            (Some(c), Some(f)) if c.t_ns <= f.t_ns => Some(c),
            (_, f) => f,
        }
    }

    /// Joules at `t_ns` (see [`Timeline::at`]), with the gaps that ended by then counted;
    /// NaN inside a gap, and before the earliest point held: no reading brackets such an
    /// instant (the source was first read later, or its points have left the rings), and the
    /// first point's joules there would leave out whatever it drew before.
    pub fn at(&self, t_ns: u64) -> Option<EnergyAt> {
        let mut e = self.at_points(t_ns)?;
        let unread = self.earliest().is_some_and(|p| t_ns < p.t_ns);
        // (Before the spread ring's first point, its first value: a long region's start that
        // has left it counts the variance from there on only.)
        if let Some((var, bound)) = self.spread.as_deref() {
            e.var_j2 = var.at(t_ns).map_or(0.0, |v| v.joules);
            e.bound_j = bound.at(t_ns).map_or(0.0, |v| v.joules);
        }
        e.gaps = self.gaps_dropped + self.gaps.iter().filter(|g| g.1 <= t_ns).count() as u64;
        if unread || self.gaps.iter().any(|g| g.0 < t_ns && t_ns < g.1) {
            e.joules = f64::NAN;
            e.low = f64::NAN;
            e.high = f64::NAN;
        }
        Some(e)
    }
}

/// Gaps a [`History`] remembers.
pub const GAPS_KEPT: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_points_without_the_measured_point_after_them_do_not_extend_the_cover() {
        // A follower's copy can hold an update's placed points before the measured point that
        // ends the update: the last measured point is where it can answer up to.
        let mut h = History::new(8, 4, 1_000);
        h.push(Point {
            t_ns: 0,
            joules: 0.0,
        });
        h.push_placed(Point {
            t_ns: 20,
            joules: 8.0,
        });
        h.push_placed(Point {
            t_ns: 40,
            joules: 9.0,
        });
        assert_eq!(h.last().map(|p| p.t_ns), Some(40));
        assert_eq!(h.last_measured().map(|p| p.t_ns), Some(0));
        h.push(Point {
            t_ns: 100,
            joules: 10.0,
        });
        assert_eq!(h.last_measured().map(|p| p.t_ns), Some(100));
    }

    #[test]
    fn an_uncertainty_started_anew_counts_on_from_where_the_timeline_stood() {
        use crate::timeline::Uncertain;
        let u = |var_j2, bound_j| Uncertain { var_j2, bound_j };
        let mut h = History::new(16, 16, 100);
        for t_ns in [0, 40] {
            h.push(Point { t_ns, joules: 0.0 });
        }
        h.push_spread(0, u(0.0, 0.0));
        h.push_spread(10, u(4.0, 6.0));
        // Another process took over: its integral counts from 0 (the variance's and the
        // bound's each), and grows by 1 J² and 3 J between 20 and 30.
        h.push_spread(20, u(0.0, 0.0));
        h.push_spread(30, u(1.0, 3.0));
        let (a, b) = (h.at(15).unwrap(), h.at(30).unwrap());
        assert_eq!((a.var_j2, a.bound_j), (4.0, 6.0));
        assert_eq!((b.var_j2, b.bound_j), (5.0, 9.0));
        // A part that grows on is kept as it is.
        h.push_spread(40, u(2.0, 3.0));
        let e = h.at(40).unwrap();
        assert_eq!((e.var_j2, e.bound_j), (6.0, 9.0));
    }

    #[test]
    fn old_instants_come_from_the_coarse_ring() {
        let mut h = History::new(4, 16, 10);
        for t in 0..40u64 {
            h.push(Point {
                t_ns: t,
                joules: 2.0 * t as f64,
            });
        }
        // The fine ring holds 36..39; 15 is found between coarse points 10 and 20.
        let e = h.at(15).unwrap();
        assert!((e.joules - 30.0).abs() < 1e-9);
        assert_eq!((e.low, e.high), (20.0, 40.0));
        // Between the last coarse point (30) and the first fine one (36).
        let e = h.at(33).unwrap();
        assert!((e.joules - 66.0).abs() < 1e-9);
        assert!((h.at(38).unwrap().joules - 76.0).abs() < 1e-9);
    }

    #[test]
    fn instants_before_the_earliest_point_held_are_unknown() {
        let mut h = History::new(4, 2, 10);
        assert!(h.at(5).is_none());
        h.push(Point {
            t_ns: 100,
            joules: 7.0,
        });
        assert!(h.at(99).unwrap().joules.is_nan());
        assert_eq!(h.at(100).unwrap().joules, 7.0);
        // Both rings moved on (the coarse one holds 130 and 140): before 130, unknown.
        for t in 101..150u64 {
            h.push(Point {
                t_ns: t,
                joules: t as f64,
            });
        }
        let e = h.at(125).unwrap();
        assert!(e.joules.is_nan() && e.low.is_nan() && e.high.is_nan());
        assert_eq!(h.at(135).unwrap().joules, 135.0);
    }

    #[test]
    fn a_gap_makes_instants_inside_unknown_and_counts_across() {
        let mut h = History::new(16, 16, 100);
        h.push(Point {
            t_ns: 0,
            joules: 0.0,
        });
        h.push(Point {
            t_ns: 10,
            joules: 1.0,
        });
        h.push_gap(12, 20);
        h.push(Point {
            t_ns: 20,
            joules: 1.0,
        });
        h.push(Point {
            t_ns: 30,
            joules: 2.0,
        });
        let before = h.at(5).unwrap();
        assert_eq!(before.gaps, 0);
        assert!((before.joules - 0.5).abs() < 1e-12);
        assert!(h.at(15).unwrap().joules.is_nan());
        let after = h.at(25).unwrap();
        assert_eq!(after.gaps, 1);
        assert!((after.joules - 1.5).abs() < 1e-12);
        assert_eq!(h.gaps().collect::<Vec<_>>(), vec![(12, 20)]);
    }
}

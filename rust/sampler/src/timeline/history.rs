//! History: bounded rings of timeline points, and the energy at any instant with the bracket it
//! lies in.

use std::collections::VecDeque;

use super::Point;

/// A bounded ring of timeline points, oldest first. Memory is fixed at construction.
#[derive(Clone, Debug)]
pub struct Timeline {
    points: Vec<Point>,
    /// Per slot: the point was placed between two measured points (see [`Timeline::push_placed`]).
    placed: Vec<bool>,
    start: usize,
    len: usize,
}

impl Timeline {
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Timeline {
            points: vec![
                Point {
                    t_ns: 0,
                    joules: 0.0
                };
                capacity
            ],
            placed: vec![false; capacity],
            start: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The i-th point, oldest first.
    pub fn get(&self, i: usize) -> Point {
        self.points[(self.start + i) % self.points.len()]
    }

    pub fn first(&self) -> Option<Point> {
        (self.len > 0).then(|| self.get(0))
    }

    pub fn last(&self) -> Option<Point> {
        (self.len > 0).then(|| self.get(self.len - 1))
    }

    /// The last point that was measured, not placed.
    pub fn last_measured(&self) -> Option<Point> {
        (0..self.len)
            .rev()
            .find(|&i| !self.is_placed(i))
            .map(|i| self.get(i))
    }

    /// Append a point; times never go backwards (a point stamped before the last one is moved
    /// to the last one's time).
    pub fn push(&mut self, p: Point) {
        self.push_as(p, false);
    }

    /// Append a point placed between two measured ones (a counter update's energy spread by
    /// finer power samples): its energy is an estimate, so the bracket of an instant next to it
    /// reaches to the measured points on either side (see [`Timeline::at`]).
    pub fn push_placed(&mut self, p: Point) {
        self.push_as(p, true);
    }

    fn push_as(&mut self, mut p: Point, placed: bool) {
        if let Some(last) = self.last() {
            p.t_ns = p.t_ns.max(last.t_ns);
        }
        let cap = self.points.len();
        let slot = if self.len == cap {
            let s = self.start;
            self.start = (self.start + 1) % cap;
            s
        } else {
            self.len += 1;
            (self.start + self.len - 1) % cap
        };
        self.points[slot] = p;
        self.placed[slot] = placed;
    }

    fn is_placed(&self, i: usize) -> bool {
        self.placed[(self.start + i) % self.points.len()]
    }

    /// The bracket of an instant between points `lo` and `lo + 1` (or at `lo` itself when
    /// `hi == lo`): from the nearest measured point at or before `lo` to the nearest at or
    /// after `hi` (the ring's ends when it holds none).
    fn bracket(&self, mut lo: usize, mut hi: usize) -> (f64, f64) {
        while lo > 0 && self.is_placed(lo) {
            lo -= 1;
        }
        while hi + 1 < self.len && self.is_placed(hi) {
            hi += 1;
        }
        (self.get(lo).joules, self.get(hi).joules)
    }

    /// Index of the first point stamped at or after `t_ns` (`len` if none).
    fn lower_bound(&self, t_ns: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).t_ns < t_ns {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Joules at `t_ns`, linearly interpolated between the points around it, with the bracket
    /// `(low, high)` the true value lies in (energy never decreases). Before the first point
    /// the first value is used; after the last, the last (and the bracket is open above: `high`
    /// is infinite). `None` if the timeline is empty.
    pub fn at(&self, t_ns: u64) -> Option<EnergyAt> {
        let first = self.first()?;
        if t_ns <= first.t_ns {
            return Some(EnergyAt::exact(first.joules));
        }
        let i = self.lower_bound(t_ns);
        if i == self.len {
            let last = self.get(self.len - 1);
            return Some(EnergyAt {
                joules: last.joules,
                low: last.joules,
                high: f64::INFINITY,
                gaps: 0,
                var_j2: 0.0,
                bound_j: 0.0,
            });
        }
        let hi = self.get(i);
        if hi.t_ns == t_ns {
            let (low, high) = self.bracket(i, i);
            return Some(EnergyAt {
                joules: hi.joules,
                low,
                high,
                gaps: 0,
                var_j2: 0.0,
                bound_j: 0.0,
            });
        }
        let lo = self.get(i - 1);
        let frac = (t_ns - lo.t_ns) as f64 / (hi.t_ns - lo.t_ns) as f64;
        let (low, high) = self.bracket(i - 1, i);
        Some(EnergyAt {
            joules: lo.joules + (hi.joules - lo.joules) * frac,
            low,
            high,
            gaps: 0,
            var_j2: 0.0,
            bound_j: 0.0,
        })
    }

    /// Points stamped after `since_ns`, oldest first, at most `max` of them.
    pub fn since(&self, since_ns: u64, max: usize) -> Vec<Point> {
        let i = self.lower_bound(since_ns.saturating_add(1));
        (i..self.len).take(max).map(|k| self.get(k)).collect()
    }
}

/// The energy at an instant (interpolated) and the bracket `[low, high]` it lies in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnergyAt {
    pub joules: f64,
    pub low: f64,
    pub high: f64,
    /// Gaps (unmeasured intervals) of the source that ended at or before the instant: two
    /// instants with different counts have a gap between them, so the energy between them is
    /// unknown.
    pub gaps: u64,
    /// Variance (J²) of the source's integral up to the instant, cumulative, where the source
    /// keeps one (power sampled at random instants, see [`History::push_spread`]); the variance
    /// of a region's energy is its difference between the two edges. 0 for counters.
    pub var_j2: f64,
    /// Bound (J) on the error a device that holds its reading leaves, cumulative likewise
    /// (see [`crate::timeline::held`]); a region's is the difference, taken as it is.
    pub bound_j: f64,
}

impl EnergyAt {
    pub fn exact(joules: f64) -> Self {
        EnergyAt {
            joules,
            low: joules,
            high: joules,
            gaps: 0,
            var_j2: 0.0,
            bound_j: 0.0,
        }
    }
}

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
        }
    }

    /// Record the cumulative uncertainty of the source's integral at `t_ns` (a power source
    /// read at random instants: see [`crate::timeline::Accumulator::uncertain`]).
    pub fn push_spread(&mut self, t_ns: u64, u: super::Uncertain) {
        let cap = self.fine.points.len();
        let (var, bound) = &mut **self.spread.get_or_insert_with(|| {
            Box::new((Timeline::with_capacity(cap), Timeline::with_capacity(cap)))
        });
        for (tl, joules) in [(var, u.var_j2), (bound, u.bound_j)] {
            tl.push(Point { t_ns, joules });
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

    /// Joules at `t_ns` (see [`Timeline::at`]), with the gaps that ended by then counted;
    /// NaN inside a gap.
    pub fn at(&self, t_ns: u64) -> Option<EnergyAt> {
        let mut e = self.at_points(t_ns)?;
        // (Before the spread ring's first point, its first value: a long region's start that
        // has left it counts the variance from there on only.)
        if let Some((var, bound)) = self.spread.as_deref() {
            e.var_j2 = var.at(t_ns).map_or(0.0, |v| v.joules);
            e.bound_j = bound.at(t_ns).map_or(0.0, |v| v.joules);
        }
        e.gaps = self.gaps_dropped + self.gaps.iter().filter(|g| g.1 <= t_ns).count() as u64;
        if self.gaps.iter().any(|g| g.0 < t_ns && t_ns < g.1) {
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
    fn timeline_interpolates_and_brackets() {
        let mut tl = Timeline::with_capacity(4);
        assert!(tl.at(5).is_none());
        for (t, j) in [(10, 0.0), (20, 1.0), (30, 3.0)] {
            tl.push(Point { t_ns: t, joules: j });
        }
        assert_eq!(tl.at(0).unwrap(), EnergyAt::exact(0.0));
        let e = tl.at(25).unwrap();
        assert!((e.joules - 2.0).abs() < 1e-12);
        assert_eq!((e.low, e.high), (1.0, 3.0));
        assert_eq!(tl.at(20).unwrap(), EnergyAt::exact(1.0));
        let after = tl.at(40).unwrap();
        assert_eq!(after.joules, 3.0);
        assert!(after.high.is_infinite());
    }

    #[test]
    fn placed_points_move_the_estimate_but_not_the_bracket() {
        let mut tl = Timeline::with_capacity(8);
        tl.push(Point {
            t_ns: 0,
            joules: 0.0,
        });
        tl.push_placed(Point {
            t_ns: 20,
            joules: 8.0,
        });
        tl.push_placed(Point {
            t_ns: 40,
            joules: 9.0,
        });
        tl.push(Point {
            t_ns: 100,
            joules: 10.0,
        });
        let e = tl.at(10).unwrap();
        assert_eq!((e.joules, e.low, e.high), (4.0, 0.0, 10.0));
        let at = tl.at(20).unwrap();
        assert_eq!((at.joules, at.low, at.high), (8.0, 0.0, 10.0));
        let late = tl.at(70).unwrap();
        assert!((late.joules - 9.5).abs() < 1e-12);
        assert_eq!((late.low, late.high), (0.0, 10.0));
        // A measured point is exact.
        assert_eq!(tl.at(100).unwrap(), EnergyAt::exact(10.0));
    }

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
    fn timeline_is_bounded_and_keeps_the_newest() {
        let mut tl = Timeline::with_capacity(3);
        for t in 0..10u64 {
            tl.push(Point {
                t_ns: t,
                joules: t as f64,
            });
        }
        assert_eq!(tl.len(), 3);
        assert_eq!(tl.first().unwrap().t_ns, 7);
        assert_eq!(
            tl.since(7, 10).iter().map(|p| p.t_ns).collect::<Vec<_>>(),
            vec![8, 9]
        );
        // Out-of-order stamps are clamped, never reorder the ring.
        tl.push(Point {
            t_ns: 1,
            joules: 10.0,
        });
        assert_eq!(tl.last().unwrap().t_ns, 9);
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

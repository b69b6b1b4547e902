//! A bounded ring of timeline points, and the energy at any instant with the bracket it lies in
//! (points placed between measured ones widen the bracket to the measured points around them).

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

    /// Append a point, or, where it lies on the straight line through the last two points,
    /// move the last one to it (the values between are interpolated the same): a cumulative
    /// value that stands or grows steadily keeps two points however many reads record it.
    pub fn push_extending(&mut self, p: Point) {
        if self.len >= 2 && !self.is_placed(self.len - 1) {
            let (a, b) = (self.get(self.len - 2), self.get(self.len - 1));
            let p = Point {
                t_ns: p.t_ns.max(b.t_ns),
                ..p
            };
            if on_line(a, b, p) {
                let slot = (self.start + self.len - 1) % self.points.len();
                self.points[slot] = p;
                return;
            }
        }
        self.push(p);
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

    /// Points it holds at most.
    pub(super) fn capacity(&self) -> usize {
        self.points.len()
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

/// Whether `p` lies on the straight line through `a` and `b` (in this order in time): to a
/// billionth of its value, or exactly where the value stands.
fn on_line(a: Point, b: Point, p: Point) -> bool {
    if a.joules == b.joules && b.joules == p.joules {
        return true;
    }
    if b.t_ns <= a.t_ns || p.t_ns <= b.t_ns {
        return false;
    }
    let slope = (b.joules - a.joules) / (b.t_ns - a.t_ns) as f64;
    let want = b.joules + slope * (p.t_ns - b.t_ns) as f64;
    (p.joules - want).abs() <= 1e-9 * p.joules.abs().max(b.joules.abs())
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
    /// keeps one (power sampled at random instants, see [`super::History::push_spread`]); the
    /// variance of a region's energy is its difference between the two edges. 0 for counters.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straight_run_keeps_its_two_ends_and_every_bend() {
        let mut tl = Timeline::with_capacity(8);
        let mut push = |t_ns: u64, joules: f64| tl.push_extending(Point { t_ns, joules });
        // Stands, then grows 3 J a second (a bound summed read by read), for 10 000 reads at
        // uneven instants; then stands again after a step at one instant.
        push(0, 5.0);
        push(1_000, 5.0);
        let (mut t, mut j) = (2_000u64, 5.0);
        push(t, j);
        for k in 0..10_000u64 {
            let dt = 1_000_000 + (k * 7_919) % 3_000_000;
            t += dt;
            j += 3.0 * dt as f64 * 1e-9;
            push(t, j);
        }
        push(t, j + 1.0);
        push(t + 1_000, j + 1.0);
        let pts: Vec<Point> = (0..tl.len()).map(|i| tl.get(i)).collect();
        let times: Vec<u64> = pts.iter().map(|p| p.t_ns).collect();
        assert_eq!(times, [0, 2_000, t, t, t + 1_000], "{pts:?}");
        // Anywhere on the run: as summed.
        let mid = tl.at(2_000 + (t - 2_000) / 3).unwrap().joules;
        let want = 5.0 + 3.0 * ((t - 2_000) / 3) as f64 * 1e-9;
        assert!((mid - want).abs() < 1e-9 * want, "{mid} {want}");
        assert_eq!(tl.at(t).unwrap().joules, j);
        assert_eq!(tl.at(t + 500).unwrap().joules, j + 1.0);
    }

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
}

//! From raw readings to cumulative joules on a timeline, and joules at any instant.
//!
//! A counter is read more often than it changes (RAPL about every millisecond, NVML every 10 to
//! 100 ms). A value is stamped with *when it changed*, not when it was read: the change happened
//! between the previous read, which still showed the old value, and this one. Points stamped that
//! way lie on the true energy curve to within half a poll interval, and linear interpolation
//! between them estimates the energy at a region's edge far better than interpolation between
//! read times does (see `DESIGN.md`, "What limits short regions").
//!
//! Power readings (a GPU without an energy counter, the utilisation estimate) are integrated with
//! the trapezoid rule and stamped at their read time.

use crate::source::{CounterSpec, Reading};

/// One point of a source's timeline: cumulative joules since the source was first read, and the
/// monotonic instant (ns) at which the energy had that value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub t_ns: u64,
    pub joules: f64,
}

/// What the accumulator made of one reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// The first reading: the baseline point (zero joules).
    First(Point),
    /// The energy changed: a new point.
    Changed(Point),
    /// A counter read that showed the same value as before.
    Unchanged,
    /// A counter went backwards though it never wraps (driver reload, device reset): the
    /// accumulator re-baselines and the energy of the interval is lost; the caller records it.
    Reset(Point),
}

/// Turns the readings of one source into cumulative joules, handling wraparound.
#[derive(Clone, Debug)]
pub struct Accumulator {
    counter: Option<CounterSpec>,
    /// How often the source is expected to change, in ns (bounds the change-time estimate).
    update_ns: u64,
    last_read_ns: Option<u64>,
    last_raw: u64,
    last_watts: f64,
    /// Cumulative counter units (exact integer arithmetic for counters).
    units: u128,
    /// Cumulative joules (integrated power).
    joules: f64,
    /// Number of counter wraps seen.
    pub wraps: u64,
    /// Number of times a counter went backwards though it never wraps.
    pub resets: u64,
}

impl Accumulator {
    /// `counter`: the counter's spec, or `None` for a source that gives power.
    /// `update_ns`: the interval at which the source is expected to change (its poll interval
    /// when unknown).
    pub fn new(counter: Option<CounterSpec>, update_ns: u64) -> Self {
        Accumulator {
            counter,
            update_ns: update_ns.max(1),
            last_read_ns: None,
            last_raw: 0,
            last_watts: 0.0,
            units: 0,
            joules: 0.0,
            wraps: 0,
            resets: 0,
        }
    }

    /// Forget the previous reading, so that the next one is a new baseline (after a gap in
    /// which the source could not be read). Energy so far is kept.
    pub fn rebaseline(&mut self) {
        self.last_read_ns = None;
    }

    /// Cumulative joules so far.
    pub fn joules(&self) -> f64 {
        match self.counter {
            Some(spec) => self.units as f64 * spec.joules_per_unit,
            None => self.joules,
        }
    }

    /// Take one reading made at `t_ns`.
    pub fn push(&mut self, t_ns: u64, reading: Reading) -> Step {
        let Some(prev_ns) = self.last_read_ns else {
            self.last_read_ns = Some(t_ns);
            match reading {
                Reading::Counter(raw) => self.last_raw = raw,
                Reading::Power(w) => self.last_watts = sanitize_watts(w),
            }
            return Step::First(Point {
                t_ns,
                joules: self.joules(),
            });
        };
        let t_ns = t_ns.max(prev_ns);
        self.last_read_ns = Some(t_ns);
        match (reading, self.counter) {
            (Reading::Counter(raw), Some(spec)) => {
                let prev = self.last_raw;
                self.last_raw = raw;
                if raw == prev {
                    return Step::Unchanged;
                }
                let delta = if raw > prev {
                    raw - prev
                } else if let Some(wrap) = spec.wrap {
                    self.wraps += 1;
                    (wrap - prev.min(wrap)) + raw
                } else {
                    self.resets += 1;
                    return Step::Reset(Point {
                        t_ns,
                        joules: self.joules(),
                    });
                };
                self.units += u128::from(delta);
                // The change happened after the previous read; when reads were late, it most
                // likely happened within the last update period.
                let gap = t_ns - prev_ns;
                let stamp = t_ns - gap.min(self.update_ns) / 2;
                Step::Changed(Point {
                    t_ns: stamp,
                    joules: self.joules(),
                })
            }
            (Reading::Power(w), _) => {
                let w = sanitize_watts(w);
                let dt = (t_ns - prev_ns) as f64 * 1e-9;
                self.joules += 0.5 * (self.last_watts + w) * dt;
                self.last_watts = w;
                Step::Changed(Point {
                    t_ns,
                    joules: self.joules(),
                })
            }
            (Reading::Counter(_), None) => Step::Unchanged,
        }
    }
}

fn sanitize_watts(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 {
        w
    } else {
        0.0
    }
}

/// A bounded ring of timeline points, oldest first. Memory is fixed at construction.
#[derive(Clone, Debug)]
pub struct Timeline {
    points: Vec<Point>,
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

    /// Append a point; times never go backwards (a point stamped before the last one is moved
    /// to the last one's time).
    pub fn push(&mut self, mut p: Point) {
        if let Some(last) = self.last() {
            p.t_ns = p.t_ns.max(last.t_ns);
        }
        let cap = self.points.len();
        if self.len == cap {
            self.points[self.start] = p;
            self.start = (self.start + 1) % cap;
        } else {
            self.points[(self.start + self.len) % cap] = p;
            self.len += 1;
        }
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
    pub fn at(&self, t_ns: u64) -> Option<Estimate> {
        let first = self.first()?;
        if t_ns <= first.t_ns {
            return Some(Estimate::exact(first.joules));
        }
        let i = self.lower_bound(t_ns);
        if i == self.len {
            let last = self.get(self.len - 1);
            return Some(Estimate {
                joules: last.joules,
                low: last.joules,
                high: f64::INFINITY,
            });
        }
        let hi = self.get(i);
        if hi.t_ns == t_ns {
            return Some(Estimate::exact(hi.joules));
        }
        let lo = self.get(i - 1);
        let frac = (t_ns - lo.t_ns) as f64 / (hi.t_ns - lo.t_ns) as f64;
        Some(Estimate {
            joules: lo.joules + (hi.joules - lo.joules) * frac,
            low: lo.joules,
            high: hi.joules,
        })
    }

    /// Points stamped after `since_ns`, oldest first, at most `max` of them.
    pub fn since(&self, since_ns: u64, max: usize) -> Vec<Point> {
        let i = self.lower_bound(since_ns.saturating_add(1));
        (i..self.len).take(max).map(|k| self.get(k)).collect()
    }
}

/// The energy at an instant and the bracket it lies in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub joules: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    pub fn exact(joules: f64) -> Self {
        Estimate {
            joules,
            low: joules,
            high: joules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn counter(wrap: Option<u64>) -> Accumulator {
        Accumulator::new(
            Some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap,
            }),
            MS,
        )
    }

    #[test]
    fn counter_changes_are_stamped_between_reads() {
        let mut a = counter(None);
        assert_eq!(
            a.push(10 * MS, Reading::Counter(1_000)),
            Step::First(Point {
                t_ns: 10 * MS,
                joules: 0.0
            })
        );
        assert_eq!(a.push(11 * MS, Reading::Counter(1_000)), Step::Unchanged);
        match a.push(12 * MS, Reading::Counter(3_000)) {
            Step::Changed(p) => {
                assert_eq!(p.t_ns, 11 * MS + MS / 2);
                assert!((p.joules - 0.002).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn late_read_stamps_within_one_update_period() {
        let mut a = counter(None);
        a.push(0, Reading::Counter(0));
        match a.push(30 * MS, Reading::Counter(30_000)) {
            Step::Changed(p) => assert_eq!(p.t_ns, 30 * MS - MS / 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wraparound_adds_the_remaining_range() {
        let mut a = counter(Some(1_000_000));
        a.push(0, Reading::Counter(999_000));
        a.push(MS, Reading::Counter(500));
        assert_eq!(a.wraps, 1);
        assert!((a.joules() - 0.0015).abs() < 1e-12);
        a.push(2 * MS, Reading::Counter(999_999));
        a.push(3 * MS, Reading::Counter(0));
        assert_eq!(a.wraps, 2);
        assert!((a.joules() - 1.001).abs() < 1e-12);
    }

    #[test]
    fn a_counter_that_never_wraps_and_goes_back_is_a_reset() {
        let mut a = counter(None);
        a.push(0, Reading::Counter(5_000));
        a.push(MS, Reading::Counter(7_000));
        assert!(matches!(
            a.push(2 * MS, Reading::Counter(10)),
            Step::Reset(_)
        ));
        assert_eq!(a.resets, 1);
        assert!((a.joules() - 0.002).abs() < 1e-12);
        a.push(3 * MS, Reading::Counter(1_010));
        assert!((a.joules() - 0.003).abs() < 1e-12);
    }

    #[test]
    fn power_is_integrated_with_the_trapezoid_rule() {
        let mut a = Accumulator::new(None, 20 * MS);
        a.push(0, Reading::Power(100.0));
        a.push(1_000 * MS, Reading::Power(200.0));
        assert!((a.joules() - 150.0).abs() < 1e-9);
        a.push(2_000 * MS, Reading::Power(f64::NAN));
        assert!((a.joules() - 250.0).abs() < 1e-9);
    }

    #[test]
    fn timeline_interpolates_and_brackets() {
        let mut tl = Timeline::with_capacity(4);
        assert!(tl.at(5).is_none());
        for (t, j) in [(10, 0.0), (20, 1.0), (30, 3.0)] {
            tl.push(Point { t_ns: t, joules: j });
        }
        assert_eq!(tl.at(0).unwrap(), Estimate::exact(0.0));
        let e = tl.at(25).unwrap();
        assert!((e.joules - 2.0).abs() < 1e-12);
        assert_eq!((e.low, e.high), (1.0, 3.0));
        assert_eq!(tl.at(20).unwrap(), Estimate::exact(1.0));
        let after = tl.at(40).unwrap();
        assert_eq!(after.joules, 3.0);
        assert!(after.high.is_infinite());
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

/// A fine timeline of recent points and a coarse one reaching far back, so that the start of a
/// long region can be found after the fine ring has moved on.
#[derive(Clone, Debug)]
pub struct History {
    fine: Timeline,
    coarse: Timeline,
    step_ns: u64,
}

impl History {
    /// `fine` points of full resolution; `coarse` points at least `step_ns` apart.
    pub fn new(fine: usize, coarse: usize, step_ns: u64) -> Self {
        History {
            fine: Timeline::with_capacity(fine),
            coarse: Timeline::with_capacity(coarse),
            step_ns,
        }
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

    /// Points of full resolution stamped after `since_ns`.
    pub fn since(&self, since_ns: u64, max: usize) -> Vec<Point> {
        self.fine.since(since_ns, max)
    }

    /// Joules at `t_ns` (see [`Timeline::at`]); before the fine ring, from the coarse one.
    pub fn at(&self, t_ns: u64) -> Option<Estimate> {
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
        Some(Estimate {
            joules: lo.joules + (first.joules - lo.joules) * frac,
            low: lo.joules,
            high: first.joules,
        })
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

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
}

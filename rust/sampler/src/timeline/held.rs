//! Held readings: a power source whose device takes a sample every `U` and reports it until the
//! next one (NVML's board power moves every 20-100 ms), learned from the sampler's own reads.
//!
//! Read more often than it moves, such a source shows runs of identical readings, and its
//! changes fall on a grid: each change happened between the last read that showed the old
//! value and the first that showed the new one, and one grid `φ + n U` meets all these
//! brackets. [`Hold`] keeps the last [`CHANGES`] changes and takes the source as held for `U`
//! when one grid meets every bracket, runs of unrelated lengths would meet it by chance less
//! often than [`CHANCE`], values are read twice a run on average, and the runs show a grid
//! rather than the load's own pieces (see [`Hold::learn`]). A read every 4-12 ms learns a
//! 20 ms hold as well as one every millisecond (the brackets are one read gap wide).
//!
//! What the readings cannot tell, and what is assumed:
//! - A device's sample stands for its interval. Whether it is the power at one instant of the
//!   interval or the interval's average, readings alike; the instant is assumed (NVML's board
//!   power on older GPUs; the simulated GPU), which is the case with the larger error. The
//!   sample at `s` is placed over `[s - U/2, s + U/2)` (the midpoint rule: exact for a ramp),
//!   that is, each reading is stamped `U/2` before it was read ([`Hold::shift_ns`]). An average
//!   over the hold would belong `U/2` earlier still; the bound below covers that lag too (a
//!   region's lag error is at most `U/2` times the change of power across it, at most the sum
//!   of the changes inside it).
//! - The load changes at most once between two of the device's samples. Then each change the
//!   readings show happened somewhere in the `U` before the sample that showed it, and placing
//!   it in the middle errs by at most `|Δ| U / 2`. These errors do not average out: under a
//!   periodic load commensurate with the device's grid they have the same sign change after
//!   change (a 50 ms load on a 20 ms grid: +13 % over any length), so they are summed as they
//!   are ([`Hold::bound_j`], joules, cumulative), not in quadrature. A steady or slowly varying
//!   load keeps a narrow bound; a load that varies as fast as the hold gets a wide one, which
//!   is what the readings can say of it. A load that changes and changes back between two
//!   samples of the device is not seen at all: no reading can bound that.
//! - A load without noise made of a few levels, each lasting its own length (a square wave of
//!   any duty: pieces of 15 and 35 ms), reads like a device holding for their common divisor
//!   (the power's own grid): a pattern of at most [`FEW_VALUES`] values whose every level's
//!   runs last one length is not taken as a hold (it would place the readings of a source that
//!   reads the power at the read half a hold early and widen its bound for nothing). A held
//!   device shows one level in runs of different whole holds as soon as its grid falls
//!   differently on the level's pieces; under a load whose period is a whole number of holds
//!   the two cannot be told apart, and such a device is not taken as held until the load
//!   varies otherwise (a noisy load shows more values at once).

use std::collections::VecDeque;

/// Changes kept to learn the hold from.
pub const CHANGES: usize = 33;
/// Changes needed before a hold is learned.
pub const MIN_CHANGES: usize = 9;
/// A pattern of this many values or fewer, each value's runs of one length, is the load's own.
pub const FEW_VALUES: usize = 4;
/// A hold is learned only where changes at instants unrelated to any grid would meet it less
/// often than this.
pub const CHANCE: f64 = 1e-6;
/// The most holds tried at one attempt to learn (each tries the changes kept until one
/// misses).
const MAX_TRIES: f64 = 20_000.0;
/// The shortest hold learned, ns: below a couple of milliseconds reads cannot tell.
const MIN_HOLD_NS: f64 = 2e6;
/// Slack on a change's bracket, ns (the device's grid jitters a little; a read's instant is
/// known to within its own duration).
const SLACK_NS: f64 = 500_000.0;

/// One change of the readings.
#[derive(Clone, Copy, Debug)]
struct Change {
    /// The last read that showed the old value and the first that showed the new one, ns.
    a_ns: u64,
    b_ns: u64,
    /// The change, W (absolute), and the new value.
    step_w: f64,
    value: f64,
    /// Reads that showed the old value.
    reads: u32,
}

impl Change {
    fn mid(&self) -> f64 {
        0.5 * (self.a_ns as f64 + self.b_ns as f64)
    }
}

/// Learns whether a source holds its readings, for how long, and the bound on the integral's
/// error that the device's own samples leave.
#[derive(Clone, Debug, Default)]
pub struct Hold {
    started: bool,
    value: f64,
    last_ns: u64,
    reads: u32,
    changes: VecDeque<Change>,
    /// Changes since the last attempt to learn (or refine) the hold, and how many changes
    /// apart attempts are now (8, doubling after each one that learns nothing, up to 64; the
    /// ring's length once held).
    since_learn: usize,
    learn_every: usize,
    hold_ns: u64,
    /// A sample instant of the learned grid, ns.
    grid_ns: f64,
    /// Recent changes off the learned grid, of the last [`CHANGES`].
    off_grid: u64,
    bound_j: f64,
}

impl Hold {
    /// The learned hold, ns; 0 while the source is not known to hold its readings.
    pub fn hold_ns(&self) -> u64 {
        self.hold_ns
    }

    /// How far before its read a reading is placed: half the hold (see the module's notes).
    pub fn shift_ns(&self) -> u64 {
        self.hold_ns / 2
    }

    /// The bound (J, cumulative) on the error the device's own sampling leaves in the integral:
    /// `|Δ| U / 2` for each change read since the hold was learned (and for those that taught
    /// it). Errors of this kind add up; a region's share is the difference at its two edges.
    pub fn bound_j(&self) -> f64 {
        self.bound_j
    }

    /// The source could not be read for a while: the changes before are not comparable.
    pub fn rebaseline(&mut self) {
        self.started = false;
        self.changes.clear();
    }

    /// A reading of `w` watts made at `t_ns`.
    pub fn observe(&mut self, t_ns: u64, w: f64) {
        if !self.started {
            (self.started, self.value, self.reads, self.last_ns) = (true, w, 1, t_ns);
            return;
        }
        let t_ns = t_ns.max(self.last_ns);
        if w == self.value {
            self.last_ns = t_ns;
            self.reads += 1;
            return;
        }
        let change = Change {
            a_ns: self.last_ns,
            b_ns: t_ns,
            step_w: (w - self.value).abs(),
            value: w,
            reads: self.reads,
        };
        (self.value, self.reads, self.last_ns) = (w, 1, t_ns);
        self.changes.push_back(change);
        if self.changes.len() > CHANGES {
            self.changes.pop_front();
        }
        if self.hold_ns > 0 {
            self.bound_j += change.step_w * self.hold_ns as f64 * 0.5e-9;
            self.follow(&change);
        }
        self.since_learn += 1;
        if self.changes.len() >= MIN_CHANGES && self.since_learn >= self.learn_every.max(8) {
            self.since_learn = 0;
            self.learn();
            self.learn_every = match self.hold_ns {
                0 => (2 * self.learn_every).clamp(8, 64),
                _ => CHANGES,
            };
        }
    }

    /// Whether the learned grid meets `c`'s bracket; the grid's instant moves up to it.
    fn follow(&mut self, c: &Change) {
        let u = self.hold_ns as f64;
        let n = ((c.mid() - self.grid_ns) / u).round();
        let s = self.grid_ns + n * u;
        let fits = s >= c.a_ns as f64 - SLACK_NS && s <= c.b_ns as f64 + SLACK_NS;
        self.off_grid = (self.off_grid << 1 | u64::from(!fits)) & ((1 << CHANGES) - 1);
        if fits {
            self.grid_ns = s;
        }
        if 2 * self.off_grid.count_ones() as usize > CHANGES {
            // Most recent changes are off the grid: not (or no longer) a hold.
            (self.hold_ns, self.off_grid) = (0, 0);
        }
    }

    /// The instants `[lo, hi]` (relative to the first change's middle) where a grid of `u`
    /// meets every change's bracket, if any.
    fn grid(&self, u: f64) -> Option<(f64, f64)> {
        let t0 = self.changes.front()?.mid();
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for c in &self.changes {
            let n = ((c.mid() - t0) / u).round() * u;
            lo = lo.max(c.a_ns as f64 - SLACK_NS - t0 - n);
            hi = hi.min(c.b_ns as f64 + SLACK_NS - t0 - n);
            if lo > hi {
                return None;
            }
        }
        Some((lo, hi))
    }

    /// Whether the changes keep to every `m`-th point (`m` from 2 to 16) of a grid of `u` from
    /// `phase`, four in five of those whose point is known (their bracket narrower than the
    /// hold): a finer grid fits a coarser one's
    /// changes when one of them is misplaced (a read stamped far from its sample, preempted
    /// during it; a change published late), so the coarser grid, not a hold, is what the
    /// changes show. Also when too few points are known to tell.
    fn coarser(&self, u: f64, phase: f64) -> bool {
        let points: Vec<i64> = self
            .changes
            .iter()
            .filter(|c| ((c.b_ns - c.a_ns) as f64 + 2.0 * SLACK_NS) < u)
            .map(|c| ((c.mid() - phase) / u).round() as i64)
            .collect();
        points.len() < MIN_CHANGES
            || (2..=16i64).any(|m| {
                (0..m).any(|j| {
                    5 * points.iter().filter(|n| n.rem_euclid(m) == j).count() >= 4 * points.len()
                })
            })
    }

    /// Learn (or refine) the hold from the changes kept.
    ///
    /// Nothing is learned unless values are read twice a run on average. A hold is at most
    /// the shortest run's longest possible length (the last read of the value before it to
    /// the first read of the value after it). Holds from there down to [`MIN_HOLD_NS`] are
    /// tried in steps fine enough that the grid moves by less than a fifth of the narrowest
    /// bracket across the changes kept (at most [`MAX_TRIES`] of them: coarser steps may miss
    /// a hold, never make one up); the largest interval of holds whose grid meets every
    /// bracket gives the hold (its middle) and the grid. It is taken when brackets of
    /// unrelated changes would all meet it by chance less often than [`CHANCE`] (each as often
    /// as it is wide against the hold), and either one value's runs differ in length (in
    /// whole holds) or they show more than [`FEW_VALUES`] values, and no coarser grid explains the changes
    /// (see [`Self::coarser`]). A hold learned is refined the same way within 2 % of itself.
    fn learn(&mut self) {
        let ch = &self.changes;
        let (Some(first), Some(last)) = (ch.front(), ch.back()) else {
            return;
        };
        let span = last.mid() - first.mid();
        let width = |c: &Change| (c.b_ns - c.a_ns) as f64 + 2.0 * SLACK_NS;
        let narrowest = ch.iter().map(width).fold(f64::INFINITY, f64::min);
        let reads: u32 = ch.iter().skip(1).map(|c| c.reads).sum();
        if (reads as usize) < 2 * (ch.len() - 1) {
            return;
        }
        let longest = ch
            .iter()
            .zip(ch.iter().skip(1))
            .map(|(a, b)| (b.b_ns - a.a_ns) as f64)
            .fold(f64::INFINITY, f64::min)
            + SLACK_NS;
        let (top, bottom) = match self.hold_ns {
            0 => (longest, MIN_HOLD_NS),
            h => (h as f64 * 1.02, h as f64 * 0.98),
        };
        if span <= 0.0 || top <= bottom {
            return;
        }
        // The grid's last instant moves by `span / u * du` when the hold changes by `du`.
        let step = (0.2 * narrowest / span).max((top / bottom).ln() / MAX_TRIES);
        let mut u = top;
        let mut fit: Option<(f64, f64)> = None;
        while u >= bottom {
            match (self.grid(u).is_some(), fit) {
                (true, None) => fit = Some((u, u)),
                (true, Some((hi, _))) => fit = Some((hi, u)),
                (false, Some(_)) => break,
                (false, None) => {}
            }
            u -= step * u;
        }
        let Some((hi, lo)) = fit else {
            return;
        };
        let u = 0.5 * (hi + lo);
        let Some((g_lo, g_hi)) = self.grid(u) else {
            return;
        };
        let chance: f64 = ch.iter().map(|c| (width(c) / u).min(1.0).ln()).sum();
        // The runs' lengths in holds, where the brackets at their two ends leave no doubt: the
        // middles' distance is off the run's length by less than half a hold. A load of a few
        // levels, each lasting its own length (a square wave of any duty), repeats its runs
        // exactly; a held device shows one level's runs in different whole holds (its grid
        // falls differently on each of the level's pieces).
        let mut runs: Vec<(f64, f64)> = ch
            .iter()
            .zip(ch.iter().skip(1))
            .filter(|(a, b)| width(a) + width(b) < u)
            .map(|(a, b)| (a.value, ((b.mid() - a.mid()) / u).round()))
            .collect();
        runs.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.total_cmp(&y.1)));
        let varied = runs
            .windows(2)
            .any(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1);
        let mut values: Vec<f64> = ch.iter().map(|c| c.value).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let grid_like = varied || values.len() > FEW_VALUES;
        let phase = first.mid() + 0.5 * (g_lo + g_hi);
        if chance >= CHANCE.ln() || !(grid_like || self.hold_ns > 0) || self.coarser(u, phase) {
            return;
        }
        if self.hold_ns == 0 {
            // The changes that taught the hold count too (they are the latest ones).
            let steps: f64 = ch.iter().map(|c| c.step_w).sum();
            self.bound_j += steps * u * 0.5e-9;
            self.off_grid = 0;
        }
        self.hold_ns = u as u64;
        self.grid_ns = phase + ((last.mid() - phase) / u).round() * u;
    }
}

#[cfg(test)]
#[path = "held_tests.rs"]
mod tests;

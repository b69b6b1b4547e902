//! Accumulate: from raw readings to cumulative joules, one point per change.
//!
//! A counter is read more often than it changes (RAPL about every millisecond, NVML every 10 to
//! 100 ms). A value is stamped with *when it changed*, not when it was read: the change happened
//! between the previous read, which still showed the old value, and this one. Points stamped that
//! way lie on the true energy curve to within half a poll interval, and linear interpolation
//! between them estimates the energy at a region's edge far better than interpolation between
//! read times does (see `DESIGN.md`, "What limits short regions").
//!
//! Power readings (a GPU without an energy counter, the utilisation × TDP model) are integrated
//! with the trapezoid rule and stamped at their read time; a reading that says when its power
//! stood ([`Reading::PowerAt`], a meter's average stamped at the middle of its window) is
//! stamped then, and one that brings no newer instant adds nothing; a source fed from elsewhere
//! holds each reading from its instant until the next one's ([`Accumulator::held`]). A power sampled at the read
//! keeps what its integral is uncertain by ([`super::spread`]); one whose device turns out to
//! hold its reading (learned from the reads, [`super::held`]) is placed on the device's samples,
//! half a hold before each read. Counters that wrap are unwrapped with their range; a counter
//! that goes back though it never wraps is a reset (no energy invented).
//!
//! A step back of a counter that does wrap is a wraparound only when the wrap explains it: the
//! energy it implies (the rest of the range above the previous value, plus the new value) fits
//! in less than half the range and in the time since the previous change at no more than
//! [`MAX_PLAUSIBLE_W`]. Otherwise the counter was reset (driver reload, firmware reset, a
//! hot-plugged device): no energy is counted for the interval, which the caller records as a
//! gap. A forward jump no plausible power explains is a reset too.

use super::spread::{Spread, Uncertain, Unread};
use super::Point;
use crate::sensors::{CounterSpec, Reading};

/// More than any one counter's domain draws (a CPU package, a GPU, a platform domain are below
/// 2 kW): a change that needs more power than this to be real is a reset, not energy.
pub const MAX_PLAUSIBLE_W: f64 = 10_000.0;

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
    /// The earliest instant the energy counted by the next change can have begun to accrue:
    /// the read before the one that saw the last change.
    since_ns: u64,
    last_watts: f64,
    /// Cumulative counter units (exact integer arithmetic for counters).
    units: u128,
    /// Cumulative joules (integrated power).
    joules: f64,
    /// Joules counted before this accumulator started (another process's sampler counted
    /// them, see [`Accumulator::continue_from`]).
    base_j: f64,
    /// The uncertainty of the integral of power readings, where kept (see [`Spread`]).
    spread: Option<Box<Spread>>,
    /// The bound on the energy of a device counted without being read (see [`Unread`]).
    unread: Unread,
    /// Each power reading holds from its instant until the next one's (see [`Self::held`]).
    holds: bool,
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
            since_ns: 0,
            last_watts: 0.0,
            units: 0,
            joules: 0.0,
            base_j: 0.0,
            spread: None,
            unread: Unread::default(),
            holds: false,
            wraps: 0,
            resets: 0,
        }
    }

    /// Keep the uncertainty of the integral, for power sampled at the read (read at instants
    /// independent of the load; see [`Spread`]); such a source whose device holds its reading
    /// is learned to do so, and its readings are placed on the device's samples (see
    /// [`super::held`]).
    pub fn with_spread(mut self) -> Self {
        self.spread = Some(Box::default());
        self
    }

    /// Take each power reading as holding from its instant until the next one's (piecewise
    /// constant, as [`Self::push_spanned`] with the reading's own instant for its slot): a
    /// source fed from elsewhere, whose readings say when they stood and are held between
    /// them. A trapezoid would spread each change over the read spacing before it.
    pub fn held(mut self) -> Self {
        self.holds = true;
        self
    }

    /// The variance (J²) of the integral so far (see [`Spread::variance_j2`]); 0 where not kept.
    pub fn variance_j2(&self) -> f64 {
        self.spread.as_ref().map_or(0.0, |s| s.variance_j2())
    }

    /// The integral's uncertainty so far, both parts (see [`Uncertain`]); the bound of a
    /// device counted without being read is added to the bound (see [`Unread`]).
    pub fn uncertain(&self) -> Uncertain {
        let mut u = self
            .spread
            .as_ref()
            .map_or(Uncertain::default(), |s| s.uncertain());
        u.bound_j += self.unread.bound_j();
        u
    }

    /// The reading the source gave at `t_ns` (pushed next) may be low by up to `low_w` watts:
    /// the device was counted at a stated figure without being read (see [`Unread`]). Whether
    /// the bound grew.
    pub fn unread(&mut self, t_ns: u64, low_w: f64) -> bool {
        self.unread.add(t_ns, low_w)
    }

    /// Whether the integral carries a bound for a device counted without being read.
    pub fn bounds_unread(&self) -> bool {
        self.unread.bound_j() > 0.0
    }

    /// How long the device holds its readings, as learned (ns; 0: it does not, or not known).
    pub fn hold_ns(&self) -> u64 {
        self.spread.as_ref().map_or(0, |s| s.hold.hold_ns())
    }

    /// The reads' spacing changed on purpose (a power source read faster while regions are
    /// open, slower after): the usual gap is learned again from the next reading, so that the
    /// first gaps at the new spacing are not taken for stalls.
    pub fn new_spacing(&mut self) {
        if let Some(s) = self.spread.as_mut() {
            s.new_spacing();
        }
    }

    /// Forget the previous reading, so that the next one is a new baseline (after a gap in
    /// which the source could not be read). Energy so far is kept.
    pub fn rebaseline(&mut self) {
        self.last_read_ns = None;
        self.unread.rebaseline();
        if let Some(s) = self.spread.as_mut() {
            s.hold.rebaseline();
        }
    }

    /// Start counting at `joules` instead of zero: a sampler that takes over a timeline
    /// another one kept continues its cumulative joules (the interval between is a gap).
    pub fn continue_from(mut self, joules: f64) -> Self {
        self.base_j = if joules.is_finite() { joules } else { 0.0 };
        self
    }

    /// Cumulative joules so far.
    pub fn joules(&self) -> f64 {
        self.base_j
            + match self.counter {
                Some(spec) => self.units as f64 * spec.joules_per_unit,
                None => self.joules,
            }
    }

    /// Whether a change of `delta` units within `window_ns` can be energy: no more than
    /// [`MAX_PLAUSIBLE_W`] on average, and, across a wrap, less than half the counter's range.
    fn plausible(spec: CounterSpec, delta: u64, window_ns: u64, wrapped: bool) -> bool {
        if wrapped && spec.wrap.is_some_and(|w| delta > w / 2) {
            return false;
        }
        let joules = delta as f64 * spec.joules_per_unit;
        joules <= MAX_PLAUSIBLE_W * window_ns as f64 * 1e-9
    }

    /// Take one reading made at `t_ns`.
    pub fn push(&mut self, t_ns: u64, reading: Reading) -> Step {
        self.push_spanned(t_ns, reading, None)
    }

    /// As [`Self::push`]; a power reading with `slot_ns` is taken as the power of its whole
    /// interval, which starts at `slot_ns`: the previous reading holds until then, this one
    /// from then on (piecewise constant, exact for a constant power) instead of a trapezoid
    /// between the two reads. Used when reads fall at scattered instants of successive
    /// intervals, where a trapezoid's weights would depend on where in its interval each read
    /// fell (and so, under a periodic load, on the load); here each reading weighs one interval.
    pub fn push_spanned(&mut self, t_ns: u64, reading: Reading, slot_ns: Option<u64>) -> Step {
        // A device that holds its reading: read at `t`, its sample was taken in the hold
        // before `t` and stands for the hold around it; stamped half a hold earlier, the
        // reading falls in that interval (see `held`).
        let reading = match (reading, self.spread.as_mut()) {
            (Reading::Power(w), Some(s)) => {
                s.hold.observe(t_ns, sanitize_watts(w));
                match s.hold.shift_ns() {
                    0 => reading,
                    ago_ns => Reading::PowerAt { watts: w, ago_ns },
                }
            }
            (r, _) => r,
        };
        // A power that stood earlier is placed when it stood.
        let (t_ns, reading) = match reading {
            Reading::PowerAt { watts, ago_ns } => {
                let at = t_ns.saturating_sub(ago_ns);
                // (A held reading that stood no later than the previous one and brings a new
                // power holds from the previous one's instant on, the earliest still open: a
                // feed hands each reading over once.)
                let new_power = self.holds && sanitize_watts(watts) != self.last_watts;
                if self.last_read_ns.is_some_and(|prev| at <= prev) && !new_power {
                    return Step::Unchanged;
                }
                (at, Reading::Power(watts))
            }
            r => (t_ns, r),
        };
        let Some(prev_ns) = self.last_read_ns else {
            self.last_read_ns = Some(t_ns);
            // The value read may have been set up to one update period earlier.
            self.since_ns = t_ns.saturating_sub(self.update_ns);
            match reading {
                Reading::Counter(raw) => self.last_raw = raw,
                Reading::Power(w) | Reading::PowerAt { watts: w, .. } => {
                    self.last_watts = sanitize_watts(w)
                }
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
                    Some(raw - prev)
                } else {
                    spec.wrap.map(|wrap| (wrap - prev.min(wrap)) + raw)
                };
                let window_ns = t_ns - self.since_ns.min(t_ns) + self.update_ns;
                self.since_ns = prev_ns;
                let Some(delta) =
                    delta.filter(|&d| Self::plausible(spec, d, window_ns, raw < prev))
                else {
                    self.resets += 1;
                    return Step::Reset(Point {
                        t_ns,
                        joules: self.joules(),
                    });
                };
                if raw < prev {
                    self.wraps += 1;
                }
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
            (Reading::Power(w) | Reading::PowerAt { watts: w, .. }, _) => {
                let w = sanitize_watts(w);
                if let Some(s) = self.spread.as_mut() {
                    s.add(self.last_watts, w, (t_ns - prev_ns) as f64 * 1e-9);
                }
                match slot_ns.or(self.holds.then_some(t_ns)) {
                    Some(slot) => {
                        let split = slot.clamp(prev_ns, t_ns);
                        self.joules += (self.last_watts * (split - prev_ns) as f64
                            + w * (t_ns - split) as f64)
                            * 1e-9;
                    }
                    None => {
                        let dt = (t_ns - prev_ns) as f64 * 1e-9;
                        self.joules += 0.5 * (self.last_watts + w) * dt;
                    }
                }
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

#[cfg(test)]
#[path = "accumulate_tests.rs"]
mod tests;

//! The uncertainty of a power integral: the spread of the trapezoid over reads at random
//! instants (a variance, summed in quadrature), and, for a device that holds its reading, the
//! bound its own samples leave (summed as it is: see [`super::held`]); and, for any source,
//! the bound a device counted without being read leaves ([`Unread`]).

use super::held::Hold;

/// A gap between power readings this many times the usual one is a stall (see
/// [`Spread::variance_j2`]).
pub const STALL_GAPS: f64 = 4.0;

/// What a power source's integral is uncertain by, kept along with it.
#[derive(Clone, Debug, Default)]
pub struct Spread {
    var_j2: f64,
    /// Smoothed power, its variance (W²) and the gap between reads (s), for the spread of a
    /// gap much longer than usual.
    mean_w: f64,
    var_w2: f64,
    mean_gap_s: f64,
    /// Whether (and for how long) the device holds its readings.
    pub hold: Hold,
}

/// A source's uncertainty at one point of its timeline, cumulative: a region's is the
/// difference at its two edges (the variance's square root, the bound as it is).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Uncertain {
    /// Variance of the integral, J² (see [`Spread::variance_j2`]).
    pub var_j2: f64,
    /// Bound on the error of a device's own samples (see [`Hold::bound_j`]) and on the energy
    /// of a device counted without being read (see [`Unread`]), J, summed as they are.
    pub bound_j: f64,
}

/// The bound on the energy of a device that was counted at a stated figure without being read
/// (an AMD GPU runtime-suspended reads as 0 W and may draw a few watts more: see
/// `sensors/amd/runpm.rs`): the stated power times the time it held, cumulative (J).
///
/// The interval between two reads is bounded at the larger of their two figures: the device
/// fell asleep, or woke, somewhere inside it. The truth is one-sided (the device may draw more,
/// never less, than it is counted at), but a region's uncertainty is one ± half-width: the
/// whole bound is added to it, so the interval stated covers the truth on both sides and no
/// energy is moved (the figure counted stays what was read).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Unread {
    /// The read time of the latest reading and the power it may be low by (W).
    last: Option<(u64, f64)>,
    bound_j: f64,
}

impl Unread {
    /// A reading at `t_ns` that may be low by up to `low_w` (0: a measured reading). Whether
    /// the bound grew (the time since the previous read was bounded).
    pub fn add(&mut self, t_ns: u64, low_w: f64) -> bool {
        let low_w = if low_w.is_finite() {
            low_w.max(0.0)
        } else {
            0.0
        };
        let before = self.bound_j;
        if let Some((prev_ns, prev_w)) = self.last {
            let dt = t_ns.saturating_sub(prev_ns) as f64 * 1e-9;
            self.bound_j += prev_w.max(low_w) * dt;
        }
        self.last = Some((t_ns, low_w));
        self.bound_j > before
    }

    /// The bound so far, J.
    pub fn bound_j(&self) -> f64 {
        self.bound_j
    }

    /// The next reading starts anew (after an interval that was not measured at all: a gap).
    pub fn rebaseline(&mut self) {
        self.last = None;
    }
}

impl Spread {
    /// The variance (J²) of the integral so far, for power read at instants independent of the
    /// load: where two successive readings differ by `Δ` over a gap `g`, the power changed
    /// somewhere in the gap, and the trapezoid's error, `Δ` times the distance from the gap's
    /// middle to the change, has a variance of `Δ² g² / 12` (the change uniform in the gap).
    /// Exact for a step; more than the error of a smooth ramp (which the trapezoid follows).
    /// A gap more than [`STALL_GAPS`] times the usual one (the thread was not woken for a
    /// while) may hide several changes that the readings at its ends do not show: it counts
    /// at least `σ² g² / 2`, with `σ²` the variance of the recent readings (the trapezoid's
    /// chord, the mean of two readings, against the mean power over the gap).
    pub fn variance_j2(&self) -> f64 {
        self.var_j2
    }

    /// Both parts, as a timeline keeps them.
    pub fn uncertain(&self) -> Uncertain {
        Uncertain {
            var_j2: self.var_j2,
            bound_j: self.hold.bound_j(),
        }
    }

    /// The reads' spacing changed on purpose: the usual gap is learned again.
    pub fn new_spacing(&mut self) {
        self.mean_gap_s = 0.0;
    }

    /// The trapezoid from a reading of `last_w` to one of `w`, `g` seconds later.
    pub fn add(&mut self, last_w: f64, w: f64, g: f64) {
        let dw = w - last_w;
        let mut var = dw * dw * g * g / 12.0;
        if self.mean_gap_s > 0.0 && g > STALL_GAPS * self.mean_gap_s {
            var = var.max(self.var_w2 * g * g / 2.0);
        }
        self.var_j2 += var;
        // Smoothed over about twenty readings.
        if self.mean_gap_s == 0.0 {
            (self.mean_w, self.mean_gap_s) = (last_w, g);
        }
        let d = w - self.mean_w;
        self.mean_w += 0.05 * d;
        self.var_w2 = 0.95 * (self.var_w2 + 0.05 * d * d);
        self.mean_gap_s += 0.05 * (g - self.mean_gap_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_device_counted_unread_bounds_each_interval_at_the_larger_figure() {
        let mut u = Unread::default();
        assert!(!u.add(0, 0.0), "the first reading starts it");
        assert!(!u.add(S, 0.0), "measured: no bound");
        // Fell asleep in the next second, slept two, woke in the one after.
        assert!(u.add(2 * S, 3.0));
        assert!(u.add(4 * S, 3.0));
        assert!(u.add(5 * S, 0.0));
        assert!(!u.add(6 * S, 0.0));
        assert!((u.bound_j() - 3.0 * 4.0).abs() < 1e-9, "{}", u.bound_j());
        // Nothing is bounded across an interval not measured at all (a gap), and a figure
        // that is not a power bounds nothing.
        u.rebaseline();
        assert!(!u.add(60 * S, 3.0));
        assert!(u.add(61 * S, f64::NAN), "asleep at its start");
        assert!(!u.add(62 * S, f64::NAN) && !u.add(63 * S, -1.0));
        assert!((u.bound_j() - 15.0).abs() < 1e-9, "{}", u.bound_j());
    }

    #[test]
    fn a_device_asleep_at_every_other_read_is_bounded_for_all_the_time_once() {
        // Its status flips at each read: it slept somewhere in every interval, each is bounded
        // once (never per end).
        let mut u = Unread::default();
        for k in 0..=10u64 {
            u.add(k * S / 10, if k % 2 == 0 { 3.0 } else { 0.0 });
        }
        assert!((u.bound_j() - 3.0).abs() < 1e-9, "{}", u.bound_j());
    }
}

//! The uncertainty of a power integral: the spread of the trapezoid over reads at random
//! instants (a variance, summed in quadrature), and, for a device that holds its reading, the
//! bound its own samples leave (summed as it is: see [`super::held`]).

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
    /// Bound on the error of a device's own samples, J (see [`Hold::bound_j`]).
    pub bound_j: f64,
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

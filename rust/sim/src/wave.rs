//! The one definition of the simulated power traces: a square wave and its exact integral.
//!
//! Every language that needs a simulated waveform uses this one: the writer thread writes CPU
//! counters and the GPU state file from it, the fake `libnvidia-ml` reads that file (it computes
//! no wave of its own), and Python's `carbonctx.testing.Wave` calls [`SquareWave::power_w`] and
//! [`SquareWave::energy_j`] through the native module.

use carbonctx_sampler::Error;

/// A power trace: `high_w` for the first `duty · period_ns` of every period, `low_w` for the
/// rest, starting at `t0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SquareWave {
    /// Power in the low part of the period, watts.
    pub low_w: f64,
    /// Power in the high part of the period, watts.
    pub high_w: f64,
    /// Length of one period, nanoseconds. 0 means a constant `mean_w()`.
    pub period_ns: u64,
    /// Fraction of each period spent at `high_w`, in 0..=1.
    pub duty: f64,
}

impl SquareWave {
    /// A constant power.
    pub fn constant(watts: f64) -> SquareWave {
        SquareWave {
            low_w: watts,
            high_w: watts,
            period_ns: 0,
            duty: 1.0,
        }
    }

    /// Mean power over a whole period, watts.
    pub fn mean_w(&self) -> f64 {
        let d = self.duty.clamp(0.0, 1.0);
        self.high_w * d + self.low_w * (1.0 - d)
    }

    fn high_ns(&self) -> f64 {
        self.duty.clamp(0.0, 1.0) * self.period_ns as f64
    }

    /// Power at `elapsed_ns` after `t0`, watts.
    pub fn power_w(&self, elapsed_ns: u64) -> f64 {
        if self.period_ns == 0 {
            return self.mean_w();
        }
        if ((elapsed_ns % self.period_ns) as f64) < self.high_ns() {
            self.high_w
        } else {
            self.low_w
        }
    }

    /// Energy from `t0` to `t0 + elapsed_ns`, joules: the exact integral of [`Self::power_w`].
    pub fn energy_j(&self, elapsed_ns: u64) -> f64 {
        if self.period_ns == 0 {
            return self.mean_w() * elapsed_ns as f64 * 1e-9;
        }
        let period = self.period_ns as f64;
        let high = self.high_ns();
        let full = (elapsed_ns / self.period_ns) as f64;
        let rem = (elapsed_ns % self.period_ns) as f64;
        let per_period = self.high_w * high + self.low_w * (period - high);
        let partial = if rem <= high {
            self.high_w * rem
        } else {
            self.high_w * high + self.low_w * (rem - high)
        };
        (full * per_period + partial) * 1e-9
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let ok = self.low_w.is_finite()
            && self.high_w.is_finite()
            && self.low_w >= 0.0
            && self.high_w >= 0.0
            && (0.0..=1.0).contains(&self.duty);
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "invalid square wave {self:?}: powers must be finite and >= 0, duty in 0..=1"
            )))
        }
    }
}

/// Seconds (as Python and configuration files give them) to whole nanoseconds: rounded, and 0
/// for anything not positive or not finite. Both wave parameters and instants go through this
/// one conversion, so a trace and its truth agree to the nanosecond.
pub fn secs_to_ns(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        (secs * 1e9).round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_wave_closed_form() {
        let w = SquareWave {
            low_w: 40.0,
            high_w: 120.0,
            period_ns: 50_000_000,
            duty: 0.4,
        };
        // One whole period: 20 ms at 120 W + 30 ms at 40 W.
        assert!((w.energy_j(50_000_000) - (2.4 + 1.2)).abs() < 1e-12);
        assert!((w.energy_j(10_000_000) - 1.2).abs() < 1e-12);
        assert!((w.energy_j(30_000_000) - (2.4 + 0.4)).abs() < 1e-12);
        assert_eq!(w.power_w(0), 120.0);
        assert_eq!(w.power_w(20_000_000), 40.0);
        assert_eq!(SquareWave::constant(10.0).energy_j(1_000_000_000), 10.0);
    }

    #[test]
    fn period_zero_is_the_mean_power() {
        // One definition: period 0 is a constant `high_w · duty + low_w · (1 − duty)`.
        let w = SquareWave {
            low_w: 40.0,
            high_w: 120.0,
            period_ns: 0,
            duty: 0.25,
        };
        assert_eq!(w.power_w(0), 60.0);
        assert_eq!(w.power_w(123_456_789), 60.0);
        assert!((w.energy_j(2_000_000_000) - 120.0).abs() < 1e-12);
    }
}

//! Read times for a source that reports power only: one read inside each successive
//! interval, at a position that moves by the golden ratio (see [`Dither`]).

/// Read times for a source that reports power only (integrated with the trapezoid rule): one
/// read inside each successive interval, at a position that moves by the golden ratio of an
/// interval from one to the next (from a random start), instead of on a fixed grid. A load whose
/// period is commensurate with a fixed grid is sampled at the same few phases over and over, a
/// bias that no span length averages away (+12 % over 5 s under a 50 ms periodic load). Here
/// each read is a fair sample of its interval and the positions spread evenly over the interval
/// (and so over the load's phases) within a few reads, so the integral is unbiased for a load
/// of any period, and its spread shrinks like 1/n, not 1/√n as with independent random
/// instants (which leave ±3 % over 5 s when the load's period is near the interval). The mean
/// read rate is unchanged.
#[derive(Clone, Debug)]
pub(super) struct Dither {
    /// Start of the interval the next read falls in, ns.
    slot_ns: u64,
    /// Position of the next read inside its interval, in [0, 1).
    phase: f64,
    state: u64,
}

/// The golden ratio's fractional part: the most evenly spreading step.
const GOLDEN: f64 = 0.618_033_988_749_894_9;

impl Dither {
    /// Reads after a first one at `start_ns`, one per `interval`.
    pub(super) fn new(start_ns: u64, interval: u64, seed: u64) -> Dither {
        let mut d = Dither {
            slot_ns: start_ns.saturating_sub(interval),
            phase: 0.0,
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        };
        d.phase = d.uniform();
        d
    }

    /// A uniform number in [0, 1) (splitmix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Start of the interval of the read just made (after [`Self::next`]), ns.
    pub(super) fn slot(&self) -> u64 {
        self.slot_ns
    }

    /// When to read next, after a read that completed at `t`: a random instant in the next
    /// interval (the interval after `t` when reads fell behind).
    pub(super) fn next(&mut self, t: u64, interval: u64) -> u64 {
        self.slot_ns += interval;
        if self.slot_ns + interval <= t {
            self.slot_ns = t;
        }
        self.phase = (self.phase + GOLDEN).fract();
        let at = self.slot_ns + (self.phase * interval as f64) as u64;
        at.max(t + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Dither;

    const SPAN: u64 = 5_000_000_000;

    fn power(period_ns: u64) -> impl Fn(u64) -> f64 {
        move |t: u64| {
            if t % period_ns < period_ns / 2 {
                120.0
            } else {
                40.0
            }
        }
    }

    /// Relative error over 5 s of a 40/120 W square wave of period `period_ns` read on a fixed
    /// 20 ms grid, integrated with the trapezoid rule.
    fn fixed_error(period_ns: u64) -> f64 {
        let p = power(period_ns);
        let (mut t, mut joules) = (0u64, 0.0);
        while t < SPAN {
            let n = t + 20_000_000;
            joules += (p(t) + p(n)) / 2.0 * 0.02;
            t = n;
        }
        joules / 400.0 - 1.0
    }

    /// The same, read as the sampler reads a power source: at the instants [`Dither`] gives,
    /// each reading standing for the span it gives.
    fn dithered_error(period_ns: u64, seed: u64) -> f64 {
        let p = power(period_ns);
        let interval = 20_000_000;
        let mut d = Dither::new(0, interval, seed);
        let (mut t, mut w, mut joules) = (0u64, p(0), 0.0);
        while t < SPAN {
            let n = d.next(t, interval);
            let q = p(n);
            let split = d.slot().clamp(t, n);
            joules += (w * (split - t) as f64 + q * (n - split) as f64) * 1e-9;
            (t, w) = (n, q);
        }
        joules / (80.0 * t as f64 * 1e-9) - 1.0
    }

    #[test]
    fn dithered_reads_do_not_alias_with_a_periodic_load() {
        for period_ms in [10u64, 20, 30, 37, 40, 50, 60, 100, 200] {
            let period = period_ms * 1_000_000;
            // Unbiased: over random starts the mean is the truth; and no start is far from it
            // (the fixed grid is 10 % off at 50 ms, 30 % at 20 ms).
            let errors: Vec<f64> = (0..16)
                .map(|seed| dithered_error(period, seed * 7919 + period_ms))
                .collect();
            let mean = errors.iter().sum::<f64>() / errors.len() as f64;
            let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
            assert!(mean.abs() < 0.005, "{period_ms} ms: mean {mean}");
            assert!(worst < 0.03, "{period_ms} ms: worst {worst}");
        }
        // A fixed grid meets a 50 ms load at the same phases every 100 ms: biased.
        assert!(fixed_error(50_000_000).abs() > 0.05);
    }

    #[test]
    fn dithered_reads_keep_the_mean_rate_and_catch_up_after_a_stall() {
        let interval = 10_000_000;
        let mut d = Dither::new(0, interval, 7);
        let (mut t, mut reads) = (0u64, 0);
        while t < 1_000_000_000 {
            let n = d.next(t, interval);
            assert!(d.slot() <= n && n < d.slot() + interval);
            t = n;
            reads += 1;
        }
        assert!((98..=102).contains(&reads), "{reads}");
        // A stall of a second: the next read comes within the interval after it, not a burst.
        let late = t + 1_000_000_000;
        let n = d.next(late, interval);
        assert!(n > late && n <= late + interval, "{n} after {late}");
    }
}

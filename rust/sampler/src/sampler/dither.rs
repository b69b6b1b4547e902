//! Read times for a source that reports power only: one read at an independent, uniformly
//! random instant of each successive slot (see [`Dither`]).

/// Read times for a source that reports power only (integrated with the trapezoid rule over
/// read times): one read at an independent, uniformly random instant of each successive slot,
/// instead of on a fixed grid.
///
/// A fixed grid meets a load whose period is commensurate with it at the same few phases over
/// and over: a bias no span averages away (+12 % over 5 s under a 50 ms periodic load). Read
/// times independent of the load make every read a fair sample, so the integral is unbiased
/// for a load of any period; the trapezoid's weight for a read (half the span from the read
/// before it to the read after it) does not depend on where in its slot that read fell, so
/// the weights stay unbiased too.
///
/// Why independent positions and not a low-discrepancy sequence: a sequence that spreads
/// evenly (a golden-ratio step inside each slot) cancels the error at some periods (a period
/// equal to the slot) but, by Parseval, the error's spectrum averages the same over any wide
/// band of frequencies above one per slot, so it must peak elsewhere: 20 ms slots with a
/// golden-ratio step are off by up to 23 % over 5 s under a 34 ms square-wave load (and 15 %
/// near 52 and 157 ms), where independent positions stay within their spread of about ±3 %
/// (one standard deviation), which has no peak. The spread falls with the slot length, which
/// the sampler shortens while regions are open (see `power`).
#[derive(Clone, Debug)]
pub(super) struct Dither {
    /// Start of the slot the next read falls in, ns.
    slot_ns: u64,
    state: u64,
}

impl Dither {
    /// Reads after a first one at `start_ns`.
    pub(super) fn new(start_ns: u64, seed: u64) -> Dither {
        Dither {
            slot_ns: start_ns,
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
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

    /// When to read next, after a read at `t`: a random instant of the next slot of `slot`
    /// ns (the slot after `t` when reads fell behind, or when the slots changed length).
    pub(super) fn next(&mut self, t: u64, slot: u64) -> u64 {
        let slot = slot.max(1);
        // A read may ride up to a slot before its due instant (see `power::ride_from`), so up to
        // two slots before the next slot's start: the slots go on from there (restarting them
        // would put two reads in one slot). Further off, the slots start afresh at `t`.
        if self.slot_ns + slot <= t || self.slot_ns > t + 2 * slot {
            self.slot_ns = t;
        }
        let at = self.slot_ns + (self.uniform() * slot as f64) as u64;
        self.slot_ns += slot;
        at.max(t + 1)
    }

    /// Start afresh at `t` (the slot length changed): the next read falls within one slot.
    pub(super) fn restart(&mut self, t: u64) {
        self.slot_ns = t;
    }
}

#[cfg(test)]
mod tests {
    use super::Dither;

    const SPAN: u64 = 5_000_000_000;
    const MS: u64 = 1_000_000;

    /// A 50/250 W square wave of period `period_ns` starting at `phase_ns`.
    fn power(period_ns: u64, phase_ns: u64) -> impl Fn(u64) -> f64 {
        move |t: u64| {
            if (t + phase_ns) % period_ns < period_ns / 2 {
                250.0
            } else {
                50.0
            }
        }
    }

    /// Relative error over 5 s of the wave read on a fixed 20 ms grid (trapezoid rule).
    fn fixed_error(period_ns: u64) -> f64 {
        let p = power(period_ns, 0);
        let (mut t, mut joules) = (0u64, 0.0);
        while t < SPAN {
            let n = t + 20 * MS;
            joules += (p(t) + p(n)) / 2.0 * 0.02;
            t = n;
        }
        joules / (150.0 * t as f64 * 1e-9) - 1.0
    }

    /// The same, read at the instants [`Dither`] gives with slots of `slot_ns`, integrated with
    /// the trapezoid rule as the sampler does.
    fn dithered_error(period_ns: u64, slot_ns: u64, seed: u64) -> f64 {
        let p = power(period_ns, (seed * 7_919_993) % period_ns);
        let mut d = Dither::new(0, seed);
        let (mut t, mut w, mut joules) = (0u64, p(0), 0.0);
        while t < SPAN {
            let n = d.next(t, slot_ns);
            let q = p(n);
            joules += (w + q) / 2.0 * (n - t) as f64 * 1e-9;
            (t, w) = (n, q);
        }
        // The exact energy up to `t`: whole half-periods and the rest.
        let truth = {
            let phase = (seed * 7_919_993) % period_ns;
            let e = |x: u64| {
                let whole = (x / period_ns) as f64 * 150.0 * period_ns as f64;
                let r = x % period_ns;
                let half = period_ns / 2;
                let part = if r < half {
                    250.0 * r as f64
                } else {
                    250.0 * half as f64 + 50.0 * (r - half) as f64
                };
                (whole + part) * 1e-9
            };
            e(t + phase) - e(phase)
        };
        joules / truth - 1.0
    }

    fn stats(period_ns: u64, slot_ns: u64, runs: u64) -> (f64, f64) {
        let errors: Vec<f64> = (1..=runs)
            .map(|seed| dithered_error(period_ns, slot_ns, seed * 31 + period_ns / MS))
            .collect();
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        (mean, rms)
    }

    /// The spread (rms, relative) of the energy of the 50/250 W square wave of period `p` read
    /// at one independent uniform instant of each slot of `h` over `t` (seconds): each
    /// harmonic `n` keeps `1 - sinc²(π n h / p)` of the error of independent instants.
    fn jittered_rms(p: f64, h: f64, t: f64) -> f64 {
        let sum: f64 = (1..2000)
            .step_by(2)
            .map(|n| {
                let x = std::f64::consts::PI * n as f64 * h / p;
                let sinc = x.sin() / x;
                8.0 / (std::f64::consts::PI * n as f64).powi(2) * (1.0 - sinc * sinc)
            })
            .sum();
        100.0 / 150.0 * (h / t * sum).sqrt()
    }

    #[test]
    fn random_reads_do_not_alias_with_a_periodic_load_of_any_period() {
        // 34 ms is where a golden-ratio step inside 20 ms slots resonates (23 % off).
        for period_ms in [10u64, 20, 30, 34, 40, 50, 52, 60, 77, 100, 157, 250] {
            let (mean, rms) = stats(period_ms * MS, 20 * MS, 24);
            // Unbiased: the mean over runs is the truth within its own spread; and the spread
            // is that of independent reads in their slots, nowhere a resonance.
            let bound = jittered_rms(period_ms as f64 * 1e-3, 0.02, 5.0);
            assert!(rms < 1.5 * bound, "{period_ms} ms: rms {rms} bound {bound}");
            assert!(
                mean.abs() < 3.0 * rms / 24f64.sqrt() + 1e-3,
                "{period_ms} ms: {mean}"
            );
        }
        // The same seed gives the same instants.
        assert_eq!(
            dithered_error(50 * MS, 20 * MS, 5),
            dithered_error(50 * MS, 20 * MS, 5)
        );
        // A fixed grid meets a 50 ms load at the same phases every 100 ms: biased.
        assert!(fixed_error(50 * MS).abs() > 0.05);
    }

    #[test]
    fn shorter_slots_shrink_the_spread() {
        // Read every 2.5 ms instead of 20: 8 times the reads, a spread about 8 times smaller
        // (it scales with the slot for periods longer than it), within 1 % for a 50 ms load.
        let (_, slow) = stats(50 * MS, 20 * MS, 24);
        let (_, fast) = stats(50 * MS, 2_500_000, 24);
        assert!(fast < slow / 3.0, "{fast} vs {slow}");
        assert!(fast < 0.004, "{fast}");
    }

    #[test]
    fn reads_keep_the_mean_rate_and_catch_up_after_a_stall() {
        let slot = 10 * MS;
        let mut d = Dither::new(0, 7);
        let (mut t, mut reads) = (0u64, 0);
        let mut slot_start = 0;
        while t < 1_000_000_000 {
            let n = d.next(t, slot);
            assert!(
                n >= slot_start && n < slot_start + slot,
                "{n} in {slot_start}"
            );
            slot_start += slot;
            t = n;
            reads += 1;
        }
        assert!((99..=101).contains(&reads), "{reads}");
        // A stall of a second: the next read comes within the slot after it, not a burst.
        let late = t + 1_000_000_000;
        let n = d.next(late, slot);
        assert!(n > late && n <= late + slot, "{n} after {late}");
        // Slots shortened: after a restart the next read comes within one short slot.
        d.restart(n);
        let m = d.next(n, MS);
        assert!(m > n && m <= n + MS, "{m} after {n}");
        // Positions are spread over the slot, not clustered.
        let mut d = Dither::new(0, 3);
        let mut hist = [0u32; 4];
        let mut t = 0;
        for k in 0..4000u64 {
            t = d.next(t, MS);
            hist[((t - k * MS) * 4 / MS).min(3) as usize] += 1;
        }
        assert!(hist.iter().all(|&c| (850..1150).contains(&c)), "{hist:?}");
    }
}

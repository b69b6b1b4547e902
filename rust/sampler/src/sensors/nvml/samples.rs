//! The driver's buffer of timed power samples (`nvmlDeviceGetSamples` with
//! `NVML_TOTAL_POWER_SAMPLES`), used to place the energy counter's updates in time.
//!
//! NVML's total-energy counter moves only every ~100 ms; the driver also keeps a power sample
//! about every 20 ms, each stamped with the CPU's CLOCK_REALTIME in µs. [`PowerSamples`] keeps
//! the recent ones (fetched incrementally: only those newer than the last one seen), converted
//! to CLOCK_MONOTONIC ns, and [`fractions`] says how the energy of one counter update
//! (between two counter points) is spread over the instants inside it. The totals stay the
//! counter's: the samples only say *where* inside an update its energy went.
//!
//! Each sample is taken to be the mean power since the previous sample (a step that ends at the
//! sample's instant); where samples are missing the next sample's power fills the hole, and
//! after the last sample the last power holds.

use std::collections::VecDeque;

/// Samples kept: ten seconds at one every 20 ms.
const KEPT: usize = 512;
/// CLOCK_REALTIME less CLOCK_MONOTONIC moving by more than this between two fetches is a step of
/// the realtime clock (NTP slews by at most 0.5 ms a second): samples fetched across it cannot
/// be placed, and the intervals they fall in stay linear.
pub(super) const CLOCK_STEP_NS: i64 = 2_000_000;
/// Power beyond this (W) is not a GPU's board power: the sample is ignored.
const MAX_WATTS: f64 = 100_000.0;

/// Recent power samples of one GPU, on CLOCK_MONOTONIC.
#[derive(Debug, Default)]
pub(super) struct PowerSamples {
    /// (CLOCK_MONOTONIC ns, watts), in increasing time.
    kept: VecDeque<(u64, f64)>,
    /// The newest sample's own timestamp (CLOCK_REALTIME µs): the next fetch asks for newer.
    pub(super) last_seen_us: u64,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC (ns) at the last fetch.
    offset_ns: Option<i64>,
    /// Samples kept are unusable before this instant (a realtime clock step).
    pub(super) valid_from_ns: u64,
    /// Samples refused (not finite, negative, absurd, out of order).
    pub(super) rejected: u64,
}

impl PowerSamples {
    /// Notes the clock offset measured at a fetch made at `mono_ns`; a step of the realtime
    /// clock since the last fetch drops what was kept and makes the samples before `mono_ns`
    /// unusable.
    pub(super) fn clock(&mut self, offset_ns: i64, mono_ns: u64) {
        if let Some(prev) = self.offset_ns {
            if (offset_ns - prev).abs() > CLOCK_STEP_NS {
                self.kept.clear();
                self.valid_from_ns = mono_ns;
            }
        }
        self.offset_ns = Some(offset_ns);
    }

    /// Adds one sample stamped `time_us` (CLOCK_REALTIME) of `milliwatts`; refuses one that is
    /// not finite, negative or absurd, or not after the newest sample.
    pub(super) fn add(&mut self, time_us: u64, milliwatts: f64) {
        let Some(offset) = self.offset_ns else {
            return;
        };
        if time_us <= self.last_seen_us {
            self.rejected += 1;
            return;
        }
        self.last_seen_us = time_us;
        let watts = milliwatts / 1000.0;
        let mono = i128::from(time_us) * 1000 - i128::from(offset);
        if !(watts.is_finite() && (0.0..=MAX_WATTS).contains(&watts)) || mono <= 0 {
            self.rejected += 1;
            return;
        }
        let mono = mono as u64;
        if mono < self.valid_from_ns || self.kept.back().is_some_and(|b| b.0 >= mono) {
            self.rejected += 1;
            return;
        }
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back((mono, watts));
    }

    /// Where the energy of the update spanning `(from_ns, to_ns]` went: see [`fractions`].
    pub(super) fn shape(&self, from_ns: u64, to_ns: u64) -> Option<Vec<(u64, f64)>> {
        if from_ns < self.valid_from_ns {
            return None;
        }
        let (a, b) = self.kept.as_slices();
        if b.is_empty() {
            fractions(a, from_ns, to_ns)
        } else {
            let all: Vec<(u64, f64)> = self.kept.iter().copied().collect();
            fractions(&all, from_ns, to_ns)
        }
    }
}

/// The instants inside `(from_ns, to_ns)` at which samples fall, each with the fraction of the
/// energy of `(from_ns, to_ns]` spent by then, from `samples` ((CLOCK_MONOTONIC ns, watts) in
/// increasing time). Each sample stands for the mean power since the one before it (so a
/// stretch no sample covers, after a missed sample, takes the next sample's power), and after
/// the last sample its power holds. `None` when no sample falls inside or the energy is not positive: the
/// update's energy is then spread evenly (linearly) as without samples.
pub(super) fn fractions(
    samples: &[(u64, f64)],
    from_ns: u64,
    to_ns: u64,
) -> Option<Vec<(u64, f64)>> {
    if to_ns <= from_ns {
        return None;
    }
    let start = samples.partition_point(|s| s.0 <= from_ns);
    let mut cursor = from_ns;
    let mut energy = 0.0;
    let mut last_w = None;
    let mut inside: Vec<(u64, f64)> = Vec::new();
    for &(t, w) in &samples[start..] {
        // The sample's step (since the sample before it), clipped to the interval.
        let end = t.min(to_ns);
        if end > cursor {
            energy += w * (end - cursor) as f64;
            cursor = end;
        }
        last_w = Some(w);
        if t >= to_ns {
            break;
        }
        inside.push((t, energy));
    }
    if inside.is_empty() {
        return None;
    }
    if cursor < to_ns {
        energy += last_w? * (to_ns - cursor) as f64;
    }
    if !(energy.is_finite() && energy > 0.0) {
        return None;
    }
    Some(inside.into_iter().map(|(t, e)| (t, e / energy)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_busy_then_idle_update_puts_its_energy_in_the_busy_part() {
        // 100 ms update, samples every 20 ms: 300 W for the first 60 ms, 100 W after.
        let samples: Vec<(u64, f64)> = (1..=5)
            .map(|k| (k * 20 * MS, if k <= 3 { 300.0 } else { 100.0 }))
            .collect();
        let f = fractions(&samples, 0, 100 * MS).unwrap();
        let total = 300.0 * 60.0 + 100.0 * 40.0;
        let want = [6000.0, 12000.0, 18000.0, 20000.0];
        assert_eq!(
            f.len(),
            4,
            "the sample at the update itself is its end, not inside"
        );
        for ((t, frac), (k, w)) in f.iter().zip(want.iter().enumerate()) {
            assert_eq!(*t, (k as u64 + 1) * 20 * MS);
            assert!((frac - w / total).abs() < 1e-12, "{frac} vs {}", w / total);
        }
    }

    #[test]
    fn the_edges_are_filled_by_the_next_sample_and_then_the_last() {
        // Samples at 30 and 70 ms inside (10, 90]: (10, 30] takes 30's power (its step), (30,
        // 70] 70's, and (70, 90] holds 70's power (no later sample yet).
        let samples = [(5 * MS, 1000.0), (30 * MS, 200.0), (70 * MS, 100.0)];
        let f = fractions(&samples, 10 * MS, 90 * MS).unwrap();
        let total = 200.0 * 20.0 + 100.0 * 40.0 + 100.0 * 20.0;
        assert_eq!(f.len(), 2);
        assert!((f[0].1 - 4000.0 / total).abs() < 1e-12);
        assert!((f[1].1 - 8000.0 / total).abs() < 1e-12);
        // A later sample, once there, says what (70, 90] drew.
        let later = [(30 * MS, 200.0), (70 * MS, 100.0), (110 * MS, 300.0)];
        let g = fractions(&later, 10 * MS, 90 * MS).unwrap();
        let total = 200.0 * 20.0 + 100.0 * 40.0 + 300.0 * 20.0;
        assert!((g[1].1 - 8000.0 / total).abs() < 1e-12);
    }

    #[test]
    fn no_sample_inside_or_no_energy_is_linear() {
        assert!(fractions(&[], 0, 100 * MS).is_none());
        assert!(fractions(&[(150 * MS, 100.0)], 0, 100 * MS).is_none());
        assert!(fractions(&[(50 * MS, 0.0), (120 * MS, 0.0)], 0, 100 * MS).is_none());
        assert!(fractions(&[(50 * MS, 10.0)], 100 * MS, 100 * MS).is_none());
    }

    #[test]
    fn bad_samples_and_clock_steps_are_refused() {
        let mut s = PowerSamples::default();
        // Realtime is 1000 s ahead of monotonic.
        let off = 1_000_000_000_000i64;
        s.clock(off, 0);
        let us = |mono_ms: u64| (mono_ms * MS + off as u64) / 1000;
        s.add(us(20), 100_000.0);
        s.add(us(40), f64::NAN);
        s.add(us(60), -5.0);
        s.add(us(30), 100_000.0); // backwards
        s.add(us(80), 1e12); // a gigawatt
        s.add(us(100), 300_000.0);
        assert_eq!(s.rejected, 4);
        assert_eq!(
            s.kept.iter().map(|k| k.0).collect::<Vec<_>>(),
            [20 * MS, 100 * MS]
        );
        assert_eq!(s.kept[1].1, 300.0);
        // The realtime clock steps by a second: what was kept is dropped, and no interval that
        // starts before the step is shaped.
        s.clock(off + 1_000_000_000, 150 * MS);
        assert!(s.kept.is_empty());
        assert!(s.shape(100 * MS, 200 * MS).is_none());
        // A slew of a few µs is no step.
        let mut t = PowerSamples::default();
        t.clock(off, 0);
        t.add(us(20), 100_000.0);
        t.clock(off + 5_000, 50 * MS);
        assert_eq!(t.kept.len(), 1);
    }

    #[test]
    fn the_ring_is_bounded() {
        let mut s = PowerSamples::default();
        s.clock(0, 0);
        for k in 1..=(KEPT as u64 + 10) {
            s.add(k * 20_000, 1000.0);
        }
        assert_eq!(s.kept.len(), KEPT);
        assert_eq!(s.kept.front().unwrap().0, 11 * 20 * MS);
    }
}

//! Tests of power integrals: their spread, a device that holds its reading, an average placed
//! in its window.

use super::{Accumulator, Point, Step};
use crate::sensors::Reading;

const MS: u64 = 1_000_000;

#[test]
fn power_integrals_keep_their_variance_when_asked() {
    // A step from 100 to 300 W between reads 10 ms apart: Δ² g² / 12.
    let mut a = Accumulator::new(None, 10 * MS).with_spread();
    a.push(0, Reading::Power(100.0));
    a.push(10 * MS, Reading::Power(300.0));
    assert!((a.variance_j2() - 200.0f64.powi(2) * 0.01f64.powi(2) / 12.0).abs() < 1e-12);
    // A steady power adds nothing; without the option nothing is kept.
    a.push(20 * MS, Reading::Power(300.0));
    assert!((a.variance_j2() - 1.0 / 3.0).abs() < 1e-12);
    let mut b = Accumulator::new(None, 10 * MS);
    b.push(0, Reading::Power(100.0));
    b.push(10 * MS, Reading::Power(300.0));
    assert_eq!(b.variance_j2(), 0.0);
    // Readings every 10 ms of a load alternating 100/300 W, then a stall of 200 ms whose
    // two ends read the same: the stall counts the variance of the readings (about 100²
    // W²) over its length, not nothing.
    let mut c = Accumulator::new(None, 10 * MS).with_spread();
    let mut t = 0;
    for k in 0..100u64 {
        c.push(t, Reading::Power(if k % 2 == 0 { 100.0 } else { 300.0 }));
        t += 10 * MS;
    }
    let before = c.variance_j2();
    c.push(t - 10 * MS + 200 * MS, Reading::Power(300.0));
    let stall = c.variance_j2() - before;
    let expect = 100.0f64.powi(2) * 0.2f64.powi(2) / 2.0;
    assert!(
        (0.7 * expect..1.3 * expect).contains(&stall),
        "{stall} vs {expect}"
    );
    // An ordinary gap with unchanged readings adds nothing.
    let v = c.variance_j2();
    c.push(t - 10 * MS + 210 * MS, Reading::Power(300.0));
    assert_eq!(c.variance_j2(), v);
}

#[test]
fn a_new_spacing_of_power_reads_is_no_stall() {
    // Readings every millisecond of a load alternating 100/300 W, then (regions closed)
    // every 20 ms: told of the new spacing, the first 20 ms gaps count Δ² g² / 12 each,
    // not the readings' variance over a stall.
    let mut a = Accumulator::new(None, MS).with_spread();
    let mut t = 0;
    for k in 0..100u64 {
        a.push(t, Reading::Power(if k % 2 == 0 { 100.0 } else { 300.0 }));
        t += MS;
    }
    a.new_spacing();
    let before = a.variance_j2();
    a.push(t - MS + 20 * MS, Reading::Power(300.0));
    assert_eq!(a.variance_j2(), before); // the same reading: no change, no stall
    a.push(t - MS + 40 * MS, Reading::Power(100.0));
    let step = a.variance_j2() - before;
    let expect = 200.0f64.powi(2) * 0.02f64.powi(2) / 12.0;
    assert!((step - expect).abs() < 1e-9, "{step} vs {expect}");
}

/// A meter that averages over 200 ms, read every 50 ms, while the power steps from 0 to
/// 100 W at 1 s: its averages placed at their window's middle give the energy between two
/// instants as it was; placed at the read, half a window late (10 J short here).
#[test]
fn an_average_stands_at_the_middle_of_its_window() {
    const W: u64 = 200 * MS;
    let truth = |t: u64| 100.0 * (t.saturating_sub(1_000 * MS) as f64 * 1e-9);
    let average = |t: u64| (truth(t) - truth(t.saturating_sub(W))) / (W as f64 * 1e-9);
    let mut placed = Accumulator::new(None, 50 * MS);
    let mut late = Accumulator::new(None, 50 * MS);
    let (mut at_middle, mut at_read) = (Vec::new(), Vec::new());
    for k in 4..=60u64 {
        let t = k * 50 * MS;
        let watts = average(t);
        let reading = Reading::PowerAt {
            watts,
            ago_ns: W / 2,
        };
        if let Step::First(p) | Step::Changed(p) = placed.push(t, reading) {
            at_middle.push(p);
        }
        if let Step::First(p) | Step::Changed(p) = late.push(t, Reading::Power(watts)) {
            at_read.push(p);
        }
        // The same instant again brings nothing new.
        assert_eq!(placed.push(t, reading), Step::Unchanged);
    }
    let at = |pts: &[Point], t: u64| {
        let i = pts.iter().position(|p| p.t_ns >= t).unwrap();
        let (a, b) = (pts[i - 1], pts[i]);
        let f = (t - a.t_ns) as f64 / (b.t_ns - a.t_ns) as f64;
        a.joules + f * (b.joules - a.joules)
    };
    let (t0, t1) = (500 * MS, 1_900 * MS);
    let want = truth(t1) - truth(t0);
    let middle = at(&at_middle, t1) - at(&at_middle, t0);
    let read = at(&at_read, t1) - at(&at_read, t0);
    assert!((middle - want).abs() < 0.01, "{middle} J, truth {want} J");
    assert!((read - want).abs() > 9.0, "{read} J, truth {want} J");
    assert_eq!(at_middle[0].t_ns, 200 * MS - W / 2);
}

/// A device that takes a sample of `load` (W, one value a millisecond tick) every `hold` ns
/// from `phase` on and reports it until the next, read once at a random instant of each
/// `slot` ns; the region `[0.5 s, 5.5 s]`: its relative error and stated uncertainty (two
/// standard deviations and the bound, as a region's), and the hold learned.
fn held_region(
    load: &dyn Fn(u64) -> f64,
    hold: u64,
    phase: u64,
    slot: u64,
    seed: u64,
) -> (f64, f64, u64) {
    use super::History;
    let device = |t: u64| {
        let s = if t < phase {
            0
        } else {
            (t - phase) / hold * hold + phase
        };
        load(s / MS)
    };
    let mut acc = Accumulator::new(None, 20 * MS).with_spread();
    let mut tl = History::new(16_384, 64, 100 * MS);
    let (mut t, mut x) = (0u64, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut slot_start = 0u64;
    while t < 5_800 * MS {
        if let Step::First(pt) | Step::Changed(pt) = acc.push(t, Reading::Power(device(t))) {
            tl.push(pt);
            tl.push_spread(pt.t_ns, acc.uncertain());
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        slot_start += slot;
        t = (slot_start + x % slot).max(t + 1);
    }
    let (a, b) = (tl.at(500 * MS).unwrap(), tl.at(5_500 * MS).unwrap());
    let truth: f64 = (500..5_500).map(|k| load(k) * 1e-3).sum();
    let stated = 2.0 * (b.var_j2 - a.var_j2).max(0.0).sqrt() + (b.bound_j - a.bound_j);
    (
        (b.joules - a.joules) / truth - 1.0,
        stated / truth,
        acc.hold_ns(),
    )
}

fn square(period_ms: u64) -> impl Fn(u64) -> f64 {
    move |k| {
        if k % period_ms < period_ms / 2 {
            250.0
        } else {
            50.0
        }
    }
}

#[test]
fn a_held_readings_uncertainty_covers_its_aliasing() {
    // A 20 ms hold under 34 and 50 ms square waves (4-14 % off over 5 s: the device's own
    // samples alias with the load, at every read rate), read every 1.3 ms and every 8 ms.
    let mut worst: f64 = 0.0;
    for period in [34u64, 50] {
        for slot in [1_300_000u64, 8 * MS] {
            for seed in 0..4u64 {
                let phase = seed * 7 * MS % (20 * MS);
                let (err, stated, hold) = held_region(&square(period), 20 * MS, phase, slot, seed);
                assert!(
                    (19 * MS..21 * MS).contains(&hold),
                    "{period} ms, {slot}: {hold}"
                );
                assert!(
                    err.abs() <= stated,
                    "{period} ms, {slot}, {seed}: {err} > {stated}"
                );
                worst = worst.max(err.abs());
            }
        }
    }
    // The aliasing is there (the bound is not covering nothing).
    assert!(worst > 0.03, "{worst}");
}

#[test]
fn a_held_reading_of_a_random_load_is_covered() {
    // Random levels (50-300 W) lasting 1-4 holds (the load changes at most once between two
    // of the device's samples), a 20 ms and a 100 ms hold.
    for hold in [20 * MS, 100 * MS] {
        for seed in 1..6u64 {
            let levels: Vec<(u64, f64)> = {
                let (mut v, mut at, mut x) = (Vec::new(), 0u64, seed * 0x2545_F491_4F6C_DD1D);
                while at < 6_000 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    v.push((at, 50.0 + (x % 250) as f64));
                    at += hold / MS + (x >> 20) % (3 * hold / MS);
                }
                v
            };
            let load = |k: u64| levels[levels.partition_point(|l| l.0 <= k) - 1].1;
            let (err, stated, learned) = held_region(&load, hold, 3 * MS, 2 * MS, seed);
            assert!(learned > 0, "{hold}, {seed}: not learned");
            assert!(err.abs() <= stated, "{hold}, {seed}: {err} > {stated}");
        }
    }
}

#[test]
fn a_held_steady_or_slowly_varying_load_keeps_a_narrow_uncertainty() {
    // Steady at 200 W with ±1 % noise from one millisecond to the next, and a ramp from 100 to
    // 300 W over the region: narrow (under 1 %), and covering.
    let noisy = |k: u64| 200.0 + ((k * 2_654_435_761) % 401) as f64 / 100.0 - 2.0;
    let ramp = |k: u64| 100.0 + 200.0 * (k.clamp(500, 5_500) - 500) as f64 / 5_000.0;
    for (name, load) in [("steady", &noisy as &dyn Fn(u64) -> f64), ("ramp", &ramp)] {
        for slot in [1_300_000u64, 8 * MS] {
            let (err, stated, hold) = held_region(load, 20 * MS, 5 * MS, slot, 3);
            assert!(hold > 0, "{name}: not learned");
            assert!(
                err.abs() <= stated && stated < 0.01,
                "{name}, {slot}: {err}, {stated}"
            );
        }
    }
    // The ramp placed on the device's samples (each stands for the hold around it): no lag.
    // Placed at the reads, the integral would lag by half a hold, 0.2 % here.
    let (err, _, _) = held_region(&ramp, 20 * MS, 5 * MS, 1_300_000, 3);
    assert!(err.abs() < 0.0005, "{err}");
}

#[test]
fn a_held_reading_that_is_not_a_number_leaves_the_bound_a_number() {
    // A 20 ms hold over seven levels, learned; then readings that are not numbers now and then.
    let mut a = Accumulator::new(None, 20 * MS).with_spread();
    let level =
        |t: u64| 100.0 + 20.0 * ((t / (20 * MS)).wrapping_mul(2_654_435_761) >> 7) as f64 % 7.0;
    let mut t = 0;
    for k in 0..4_000u64 {
        let w = match (k > 2_000, k % 37) {
            (true, 0) => f64::NAN,
            (true, 1) => f64::INFINITY,
            _ => level(t),
        };
        a.push(t, Reading::Power(w));
        t += MS + k % 3 * MS / 2;
        if k == 2_000 {
            assert!(a.hold_ns() > 0);
        }
    }
    let u = a.uncertain();
    assert!(u.bound_j.is_finite() && u.var_j2.is_finite(), "{u:?}");
}

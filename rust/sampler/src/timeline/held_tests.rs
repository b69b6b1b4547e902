//! Tests of learning a hold from reads (see [`super`]).

use super::*;

const MS: u64 = 1_000_000;

/// Reads every `gap` ns (jittered by a fixed pattern) of a device holding `hold` ns, whose
/// load at `t` is `load(t)`; the learner after `span`.
fn read(hold: u64, gap: u64, span: u64, load: impl Fn(u64) -> f64) -> Hold {
    let mut h = Hold::default();
    let mut t = 3 * MS;
    let mut k = 0u64;
    while t < span {
        let sample = t.checked_div(hold).map_or(t, |n| n * hold);
        h.observe(t, load(sample));
        k += 1;
        t += gap / 2 + (k * 7_919 % 1_000) * gap / 1_000;
    }
    h
}

/// A load stepping to random levels at random instants 5-60 ms apart from `from` on.
fn random_steps(from: u64, span: u64) -> impl Fn(u64) -> f64 {
    let mut edges = vec![(0u64, 100.0)];
    let mut x = 12_345u64 ^ from;
    while edges.last().unwrap().0 < from + span {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let gap = 5 * MS + (x >> 33) % (55 * MS);
        let at = edges.last().unwrap().0.max(from) + gap;
        edges.push((at, 50.0 + ((x >> 20) % 200) as f64));
    }
    move |t: u64| edges[edges.partition_point(|e| e.0 <= t) - 1].1
}

fn square(period: u64, high: u64) -> impl Fn(u64) -> f64 {
    move |t| if t % period < high { 250.0 } else { 50.0 }
}

#[test]
fn a_device_holding_its_reading_is_learned_under_periodic_loads() {
    for period in [34, 50, 77] {
        for gap in [MS, 8 * MS] {
            let h = read(
                20 * MS,
                gap,
                3_000 * MS,
                square(period * MS, period * MS / 2),
            );
            // Read every 4-12 ms, the runs pin it down less finely.
            let u = h.hold_ns() as f64 / MS as f64;
            let within = if gap == MS { 1.0 } else { 3.0 };
            assert!(
                (u - 20.0).abs() < within,
                "{period} ms load, {gap} gap: {u} ms"
            );
            assert!(h.bound_j() > 0.0);
        }
    }
    // A noisy steady load: every sample differs, every run one hold.
    let noisy = |t: u64| 200.0 + ((t / MS) * 2_654_435_761 % 1_000) as f64 / 500.0;
    let h = read(50 * MS, 2 * MS, 3_000 * MS, noisy);
    assert!(
        (h.hold_ns() as f64 / 50e6 - 1.0).abs() < 0.05,
        "{}",
        h.hold_ns()
    );
}

#[test]
fn power_read_at_the_read_is_not_taken_for_a_hold() {
    // Noiseless square waves read at the read: runs of the wave's own pieces, one length
    // (a 50 % duty) or a few values; a noisy load: no two readings alike.
    for (period, high) in [(34, 17), (40, 20), (50, 25), (100, 50)] {
        for gap in [MS, 8 * MS, 20 * MS] {
            let h = read(0, gap, 5_000 * MS, square(period * MS, high * MS));
            assert_eq!(h.hold_ns(), 0, "{period} ms, read every {gap}");
        }
    }
    let noisy = |t: u64| 200.0 + (t % 7_777) as f64 / 1_000.0;
    assert_eq!(read(0, MS, 3_000 * MS, noisy).hold_ns(), 0);
    // A load whose steps fall at random instants (5-60 ms apart): no grid explains them.
    let steps = random_steps(0, 3_000 * MS);
    assert_eq!(read(0, MS, 3_000 * MS, steps).hold_ns(), 0);
    // A steady load teaches nothing, and bounds nothing.
    let h = read(20 * MS, MS, 3_000 * MS, |_| 200.0);
    assert_eq!((h.hold_ns(), h.bound_j()), (0, 0.0));
}

#[test]
fn the_hold_is_kept_while_the_load_is_steady_and_dropped_when_contradicted() {
    let mut h = read(20 * MS, MS, 2_000 * MS, square(50 * MS, 25 * MS));
    assert!(h.hold_ns() > 0);
    // Steady for a second: after the change to it, no bound, and the hold stays.
    h.observe(2_000 * MS, 120.0);
    let bound = h.bound_j();
    for k in 1..1_000 {
        h.observe(2_000 * MS + k * MS, 120.0);
    }
    assert!(h.hold_ns() > 0 && h.bound_j() == bound);
    // Then values that change at random instants, not on any grid, read every 0.5 ms.
    let steps = random_steps(3_000 * MS, 3_000 * MS);
    for k in 0..6_000u64 {
        let t = 3_000 * MS + k * MS / 2;
        h.observe(t, steps(t));
    }
    assert_eq!(h.hold_ns(), 0);
}

/// Whether a hold is learned over 6 s of reads at a random instant of each `slot`, of a
/// 50/250 W square wave of `period` ms read at the read (`hold` 0) or held.
fn learned(hold: u64, period: u64, slot: u64, seed: u64) -> bool {
    let mut h = Hold::default();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (mut t, mut start) = (0u64, 0u64);
    let phase = seed * 3 * MS;
    while t < 6_000 * MS {
        let s = t.checked_div(hold).map_or(t, |n| n * hold);
        h.observe(t, square(period * MS, period * MS / 2)(s + phase));
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        start += slot;
        t = (start + x % slot).max(t + 1);
    }
    h.hold_ns() > 0
}

#[test]
fn a_loads_own_pieces_published_late_at_times_are_not_a_hold() {
    // A 34 ms square wave read at the read, whose changes are published up to 3 ms late
    // now and then (a simulated device's writer thread on a busy machine): a finer grid
    // meets the late ones too, but the changes keep to every third point of it.
    for seed in 1..21u64 {
        let late = |n: u64| {
            let x = (n ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            if x % 5 == 0 {
                x % 3_000_000
            } else {
                0
            }
        };
        let load = |t: u64| {
            let n = t / (17 * MS);
            let piece = if t - n * 17 * MS < late(n) {
                n.saturating_sub(1)
            } else {
                n
            };
            if piece % 2 == 0 {
                250.0
            } else {
                50.0
            }
        };
        for slot in [MS, 2 * MS] {
            let mut h = Hold::default();
            let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
            let (mut t, mut start) = (0u64, 0u64);
            while t < 6_000 * MS {
                h.observe(t, load(t));
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                start += slot;
                t = (start + x % slot).max(t + 1);
            }
            assert_eq!(h.hold_ns(), 0, "seed {seed}, slots of {slot}");
        }
    }
}

/// Reads at a random instant of each `slot` for 6 s of `load` (sampled by the device at
/// the instant given), one read in `every` stamped up to 10 ms after it sampled (the
/// thread preempted during the read, twice): the hold learned.
fn misplaced(seed: u64, slot: u64, every: u64, load: impl Fn(u64) -> f64) -> u64 {
    let mut h = Hold::default();
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let (mut t, mut start) = (0u64, 0u64);
    while t < 6_000 * MS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let late = if x % every == 0 {
            (x >> 8) % (10 * MS)
        } else {
            0
        };
        h.observe(t + late, load(t));
        start += slot;
        t = (start + (x >> 20) % slot).max(t + late + 1);
    }
    h.hold_ns()
}

#[test]
fn stamps_misplaced_now_and_then_neither_make_a_hold_nor_hide_one() {
    for seed in 1..41u64 {
        for (half, slot) in [(25, 8 * MS), (17, 2 * MS), (25, MS)] {
            // The load's own 25 or 17 ms pieces, read at the read, one read in 40 misplaced.
            let own = misplaced(seed, slot, 40, |t| square(2 * half * MS, half * MS)(t));
            assert_eq!(own, 0, "seed {seed}, {half} ms pieces, slots of {slot}");
            // The same load on a device holding for 20 ms, one read in 400 misplaced (a
            // change bracketed wrong keeps the hold from being learned until 33 more
            // changes have passed).
            let held = misplaced(seed, slot, 400, |t| {
                square(2 * half * MS, half * MS)(t / (20 * MS) * 20 * MS)
            });
            assert!(
                (18 * MS..22 * MS).contains(&held),
                "seed {seed}, {half} ms, {slot}: {held}"
            );
        }
    }
}

#[test]
fn reads_at_random_instants_tell_a_held_reading_from_the_loads_own_pieces() {
    // As the sampler reads a power source: at a random instant of each slot (1.3-20 ms),
    // whose gaps range from nothing to two slots.
    let cases = [
        (0, 34, 8 * MS),
        (0, 50, 8 * MS),
        (0, 34, 2 * MS),
        (0, 50, 20 * MS),
        (20 * MS, 34, 8 * MS),
        (20 * MS, 50, 8 * MS),
        (20 * MS, 34, 1_300_000),
        (100 * MS, 157, 8 * MS),
        (20 * MS, 250, 2 * MS),
        (0, 250, 2 * MS),
    ];
    for (hold, period, slot) in cases {
        let n = (1..41u64)
            .filter(|&seed| learned(hold, period, slot, seed))
            .count();
        let want = if hold == 0 { 0 } else { 40 };
        assert_eq!(n, want, "hold {hold}, {period} ms load, slots of {slot}");
    }
}

#[test]
fn a_loads_own_pieces_of_any_duty_are_not_a_hold() {
    // Noiseless square waves of other duties than a half, read at the read: runs of two
    // lengths, each level always its own. (Taken for a hold of their common divisor, the
    // readings would be placed half of it early and the bound widened for nothing.)
    let duties = [
        (50, 15),
        (50, 20),
        (100, 30),
        (40, 10),
        (34, 10),
        (60, 25),
        (100, 20),
    ];
    for (period, high) in duties {
        for gap in [MS, 2 * MS, 8 * MS] {
            let h = read(0, gap, 5_000 * MS, square(period * MS, high * MS));
            assert_eq!(h.hold_ns(), 0, "{period}/{high} ms, read every {gap}");
            assert_eq!(h.bound_j(), 0.0, "{period}/{high} ms, read every {gap}");
        }
    }
    // Held, the same waves' levels last different whole holds: the hold is learned.
    for (period, high) in [(50, 15), (50, 20), (34, 10)] {
        for gap in [MS, 8 * MS] {
            let h = read(20 * MS, gap, 5_000 * MS, square(period * MS, high * MS));
            let u = h.hold_ns() as f64 / MS as f64;
            assert!(
                (u - 20.0).abs() < 1.0,
                "{period}/{high} ms, {gap} gap: {u} ms"
            );
        }
    }
}

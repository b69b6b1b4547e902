//! Tests of the phase lock (`phase.rs`), driven against counters with known update times.

use super::*;

/// Drives a lock against a counter updating every `period` ns from `phase`, with the
/// reads taking `latency` ns longer than asked; returns the stamp errors (ns) and the
/// number of reads per update.
fn run(period: u64, phase: u64, latency: u64, interval: u64, updates: u64) -> (Vec<f64>, f64) {
    let mut pl = PhaseLock::new(interval);
    let update_at = |k: u64| phase + k * period;
    let mut t = 0u64;
    let mut prev = 0u64;
    let mut seen = 0u64; // updates seen so far (counter value)
    let mut errors = Vec::new();
    let mut reads = 0u64;
    let end = update_at(updates);
    while t < end {
        let due = pl.due(prev).max(prev + 1);
        t = due + latency;
        reads += 1;
        let count = if t < phase {
            0
        } else {
            (t - phase) / period + 1
        };
        let changed = count != seen;
        let stamp = pl.observe(prev, t, changed);
        if changed {
            let last_update = update_at(count - 1) as f64;
            if pl.is_locked() && count > seen + 1 {
                // several updates merged: the stamp is for the latest
            }
            if let Some(s) = stamp {
                errors.push(s as f64 - last_update);
            }
            seen = count;
        }
        prev = t;
    }
    (errors, reads as f64 / updates as f64)
}

/// As [`run`], the lock told after each read that a read costs `cost` ns (reads per update
/// counted past the 50th update, once learned); also the guard at the end.
fn run_costing(
    period: u64,
    phase: u64,
    latency: u64,
    interval: u64,
    updates: u64,
    cost: u64,
) -> (Vec<f64>, f64, u64) {
    let mut pl = PhaseLock::new(interval);
    let update_at = |k: u64| phase + k * period;
    let (mut t, mut prev, mut seen, mut reads) = (0u64, 0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    while t < update_at(updates) {
        t = pl.due(prev).max(prev + 1) + latency;
        // Reads once learned (past the 50th update).
        reads += u64::from(t > update_at(50));
        let count = if t < phase {
            0
        } else {
            (t - phase) / period + 1
        };
        pl.fit_guard(cost);
        let stamp = pl.observe(prev, t, count != seen);
        if count != seen {
            if let Some(s) = stamp {
                errors.push(s as f64 - update_at(count - 1) as f64);
            }
            seen = count;
        }
        prev = t;
    }
    (errors, reads as f64 / (updates - 50) as f64, pl.guard)
}

#[test]
fn a_slow_counter_read_cheaply_is_stamped_within_a_fraction_of_a_millisecond() {
    for phase in [3_000_000, 33_000_000, 71_000_000] {
        for latency in [20_000, 60_000, 300_000] {
            // A 100 ms counter (NVML's) read in 20 µs, polled every 20 ms.
            let (errors, reads_per_update, guard) =
                run_costing(100_000_000, phase, latency, 20_000_000, 300, 20_000);
            // While the period is learned, reads every millisecond: changes stamped to
            // within one.
            let learning = median_abs(&errors[..12]);
            assert!(learning < 1_000_000.0, "learning: {learning} ns");
            let median = median_abs(&errors[50..]);
            assert!(
                median < 250_000.0,
                "phase {phase}, latency {latency}: {median} ns"
            );
            assert!(
                reads_per_update < 3.5,
                "{reads_per_update} reads per update"
            );
            assert!((guard as i64 - 250_000).abs() < 1_000, "{guard}");
        }
    }
    // Read at an H100's cost (about 3 ms), it keeps the 2 ms guard and one look in eight.
    let (errors, reads_per_update, guard) = run_costing(
        100_000_000,
        33_000_000,
        1_000_000,
        20_000_000,
        300,
        3_000_000,
    );
    assert!((guard as i64 - 2_000_000).abs() < 10_000, "{guard}");
    assert!(median_abs(&errors[50..]) < 4_000_000.0);
    assert!(reads_per_update < 2.0, "{reads_per_update}");
}

#[test]
fn locks_onto_a_steady_update_and_stamps_it_closely() {
    let (errors, reads_per_update) = run(1_000_000, 370_000, 60_000, 1_000_000, 3000);
    let tail = &errors[errors.len() / 2..];
    let mut abs: Vec<f64> = tail.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.total_cmp(b));
    let median = abs[abs.len() / 2];
    assert!(median < 120_000.0, "median stamp error {median} ns");
    assert!(
        reads_per_update < 1.6,
        "{reads_per_update} reads per update"
    );
}

#[test]
fn learns_a_period_unlike_the_poll_interval() {
    // NVML-like: the counter moves every 100 ms, polled every 20 ms while learning.
    let (errors, reads_per_update) = run(100_000_000, 33_000_000, 1_000_000, 20_000_000, 400);
    let tail = &errors[errors.len() / 2..];
    let mut abs: Vec<f64> = tail.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.total_cmp(b));
    assert!(abs[abs.len() / 2] < 4_000_000.0, "{:?}", &abs[..10]);
    assert!(reads_per_update < 2.0, "{reads_per_update}");
}

/// Stamp errors (ns) of a lock driven against updates at `times` (sorted), each read
/// landing `latency(k)` ns after it was asked for (k: the read's number).
fn drive(times: &[u64], latency: impl Fn(u64) -> u64) -> Vec<f64> {
    let mut pl = PhaseLock::new(1_000_000);
    let (mut prev, mut seen, mut k) = (0u64, 0usize, 0u64);
    let mut errors = Vec::new();
    let end = *times.last().unwrap_or(&0);
    while prev < end {
        let t = pl.due(prev).max(prev + 1) + latency(k);
        k += 1;
        let count = times.partition_point(|&u| u <= t);
        let stamp = pl.observe(prev, t, count != seen);
        if count != seen {
            if let Some(s) = stamp {
                errors.push(s as f64 - times[count - 1] as f64);
            }
            seen = count;
        }
        prev = t;
    }
    errors
}

pub(super) fn median_abs(errors: &[f64]) -> f64 {
    let mut abs: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.total_cmp(b));
    abs[abs.len() / 2]
}

/// The lock has settled: over the second half of the updates, the median stamp error (ns) is
/// below `bound`.
fn assert_tail_median_below(errors: &[f64], bound: f64) {
    let tail = &errors[errors.len() / 2..];
    assert!(median_abs(tail) < bound, "median {} ns", median_abs(tail));
}

#[test]
fn follows_a_period_that_differs_from_the_learned_one() {
    // Learned at 1 ms; then the counter runs 3 % slower (its clock against ours): the reads
    // after each update land later and later unless the lock checks itself.
    let mut times: Vec<u64> = (1..=200).map(|k| k * 1_000_000 + 300_000).collect();
    let last = *times.last().unwrap();
    times.extend((1..=3000).map(|k| last + k * 1_030_000));
    let errors = drive(&times, |_| 20_000);
    assert_tail_median_below(&errors, 60_000.0);
    let tail = &errors[errors.len() / 2..];
    let mut abs: Vec<f64> = tail.iter().map(|e| e.abs()).collect();
    abs.sort_by(|a, b| a.total_cmp(b));
    let p95 = abs[abs.len() * 95 / 100];
    assert!(p95 < 300_000.0, "p95 {p95} ns");
}

#[test]
fn stays_on_the_updates_when_reads_wake_late_at_random() {
    // Exact 1 ms updates; reads wake 10 µs to 1.3 ms late (a busy machine: a long-tailed,
    // pseudo-random delay, the same in every run).
    let times: Vec<u64> = (1..=6000).map(|k| k * 1_000_000 + 450_000).collect();
    let late = |k: u64| {
        let x = (k
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
            >> 33)
            % 1000;
        10_000 + x * x * x / 770_000
    };
    let errors = drive(&times, late);
    assert_tail_median_below(&errors, 60_000.0);
}

#[test]
fn finds_the_phase_again_after_it_jumps() {
    // Updates every 1 ms; then one comes 600 µs late and the rest keep the new phase (a
    // stalled update): the lock must not go on predicting the old phase.
    let mut times: Vec<u64> = (1..=300).map(|k| k * 1_000_000 + 300_000).collect();
    let last = *times.last().unwrap();
    times.extend((1..=3000).map(|k| last + 600_000 + k * 1_000_000));
    let errors = drive(&times, |_| 20_000);
    assert_tail_median_below(&errors, 60_000.0);
}

#[test]
fn finds_the_phase_again_when_looks_after_a_miss_come_late() {
    // Exact 1 ms updates; every read wakes 20 µs late, and every seventh one 400 µs late
    // (a busy machine): brackets after a miss are often wide.
    let times: Vec<u64> = (1..=4000).map(|k| k * 1_000_000 + 700_000).collect();
    let errors = drive(&times, |k| if k % 7 == 3 { 400_000 } else { 20_000 });
    assert_tail_median_below(&errors, 60_000.0);
}

#[test]
fn learns_the_period_when_reads_sit_on_the_update_edge() {
    // Updates on the poll's own 1 ms cadence, 10 µs after the reads are asked for; each read
    // wakes 0-20 µs late, so the reads near an update see it or not at random.
    let times: Vec<u64> = (1..=3000).map(|k| k * 1_000_000 + 10_000).collect();
    for seed in 0..20u64 {
        let late = |k: u64| {
            let x = (k ^ seed.wrapping_mul(0x9E37_79B9))
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % 20_000
        };
        let mut pl = PhaseLock::new(1_000_000);
        let (mut prev, mut seen, mut k) = (0u64, 0usize, 0u64);
        while !pl.is_locked() && prev < 100_000_000 {
            let t = pl.due(prev).max(prev + 1) + late(k);
            k += 1;
            let count = times.partition_point(|&u| u <= t);
            pl.observe(prev, t, count != seen);
            seen = count;
            prev = t;
        }
        let p = pl.period_ns().unwrap_or(0.0);
        assert!(
            (p - 1_000_000.0).abs() < 50_000.0,
            "seed {seed}: period {p} ns"
        );
    }
}

#[test]
fn an_idle_counter_is_not_chased_forever() {
    let mut pl = PhaseLock::new(1_000_000);
    let mut t = 0;
    let mut prev = 0;
    // Learn on a moving counter.
    for k in 0..40u64 {
        t = k * 1_000_000 + 500_000;
        pl.observe(prev, t, true);
        prev = t;
    }
    assert!(pl.is_locked());
    // Then it stops: reads should settle to about one per period.
    let start = t;
    let mut reads = 0;
    while t < start + 100_000_000 {
        t = pl.due(prev).max(prev + 1);
        pl.observe(prev, t, false);
        prev = t;
        reads += 1;
    }
    assert!(reads < 100 * 8, "{reads} reads in 100 periods");
}

/// Stamp errors (ns) of a lock driven against updates at `times`, learning at every update
/// for the first `learn` ns and then reading every `stride` updates.
fn drive_sparse(times: &[u64], learn: u64, stride: u32) -> (Vec<f64>, u64) {
    let mut pl = PhaseLock::new(1_000_000);
    let (mut prev, mut seen, mut reads) = (0u64, 0usize, 0u64);
    let mut errors = Vec::new();
    let end = *times.last().unwrap_or(&0);
    while prev < end {
        // As the sampler does: sparse only once the period is known.
        pl.set_stride(if prev > learn && pl.settled() {
            stride
        } else {
            1
        });
        pl.check_sparse = true;
        let t = pl.due(prev).max(prev + 1) + 20_000;
        let count = times.partition_point(|&u| u <= t);
        let stamp = pl.observe(prev, t, count != seen);
        if count != seen && prev > learn {
            if let Some(s) = stamp {
                errors.push(s as f64 - times[count - 1] as f64);
            }
            reads += 1;
        }
        seen = count;
        prev = t;
    }
    (errors, reads)
}

#[test]
fn reading_every_twentieth_update_keeps_the_phase_of_a_drifting_counter() {
    // Updates every 1.0003 ms (the counter's clock against ours), read every 20th once the
    // period is known: the looks just before every eighth read keep the stamps on them.
    let times: Vec<u64> = (1..=20_000).map(|k| k * 1_000_300 + 400_000).collect();
    let (errors, reads) = drive_sparse(&times, 1_000_000_000, 20);
    assert!(errors.len() > 500, "{} stamps", errors.len());
    assert_tail_median_below(&errors, 60_000.0);
    // About one read in 20 updates, plus the looks.
    assert!(reads < 19_000 / 10, "{reads} reads");
}

#[test]
fn reading_every_twentieth_update_keeps_the_phase_when_updates_come_late() {
    // Exact 1 ms updates written late by 0-100 µs at random (a busy writer), read every
    // 20th once the period is known.
    let times: Vec<u64> = (1..=20_000u64)
        .map(|k| {
            let x = (k.wrapping_mul(6_364_136_223_846_793_005) >> 33) % 100_000;
            k * 1_000_000 + 300_000 + x
        })
        .collect();
    let (errors, _) = drive_sparse(&times, 1_000_000_000, 20);
    assert_tail_median_below(&errors, 120_000.0);
}

#[test]
fn a_counter_finer_than_its_poll_is_learned_at_the_reads_cadence_even_when_cheap() {
    // A GPU counter moving every millisecond, polled every 20 ms, read in 20 µs: after a few
    // changes closer than the interval, learning goes back to half the interval, so the lock's
    // period stays about half the interval (reads at marks take over its edges), never the
    // counter's own millisecond (which would read it a thousand times a second).
    let mut pl = PhaseLock::new(20_000_000);
    let (mut prev, mut seen) = (0u64, 0u64);
    while prev < 2_000_000_000 && !pl.is_locked() {
        pl.fit_guard(20_000);
        let t = pl.due(prev).max(prev + 1) + 30_000;
        let count = t / 1_000_000;
        pl.observe(prev, t, count != seen);
        seen = count;
        prev = t;
    }
    let p = pl.period_ns().expect("locked");
    assert!(p > 5_000_000.0, "learned {p} ns");
}

#[test]
fn learning_from_close_reads_is_bounded() {
    // A cheap counter polled every 20 ms that never changes: read every millisecond while it
    // is learned, but only for a hundred intervals; then every 10 ms.
    let mut pl = PhaseLock::new(20_000_000);
    let (mut prev, mut reads) = (0u64, 0u64);
    while prev < 10_000_000_000 {
        pl.fit_guard(20_000);
        let t = pl.due(prev).max(prev + 1);
        pl.observe(prev, t, false);
        reads += 1;
        prev = t;
    }
    assert!(
        reads < 2_000 + 1_000 + 10,
        "{reads} reads in 10 s (unbounded: 10,000)"
    );
}

#[test]
fn follows_a_period_shorter_than_the_learned_one() {
    // Learned at 1 ms; then the counter runs 8.3 % faster (as a lock that learned 12/11 of the
    // period when one merged gap was counted as one update): the updates come before the
    // predictions, every read sees a change, the looks before a predicted update too. Such a
    // lock must find the period again, not stamp the updates a fraction of a period late.
    let mut times: Vec<u64> = (1..=200).map(|k| k * 1_000_000 + 300_000).collect();
    let last = *times.last().unwrap();
    times.extend((1..=3000).map(|k| last + k * 1_000_000 * 11 / 12));
    let errors = drive(&times, |_| 20_000);
    assert_tail_median_below(&errors, 60_000.0);
}

#[test]
fn jittered_updates_do_not_make_the_lock_learn_again() {
    // Updates 1 ms apart, each up to 80 µs early or late (a counter written by a thread that
    // wakes with jitter): looks before a predicted update now and then see an early update,
    // but not several in a row, so the period is not thrown away.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut jitter = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 160_001) as i64 - 80_000
    };
    let times: Vec<u64> = (1..=6000i64)
        .map(|k| k * 1_000_000 + 400_000 + jitter())
        .map(|t| t as u64)
        .collect();
    let mut pl = PhaseLock::new(1_000_000);
    let (mut prev, mut seen) = (0u64, 0usize);
    let mut relocks_after_learning = 0;
    while prev < *times.last().unwrap() {
        let t = pl.due(prev).max(prev + 1) + 20_000;
        let count = times.partition_point(|&u| u <= t);
        let before = pl.relocks;
        pl.observe(prev, t, count != seen);
        if t > times[100] {
            relocks_after_learning += pl.relocks - before;
        }
        seen = count;
        prev = t;
    }
    assert!(
        relocks_after_learning <= 3,
        "{relocks_after_learning} relocks"
    );
}

#[test]
fn switching_between_sparse_and_every_update_keeps_a_healthy_lock() {
    // A settled lock on exact 1 ms updates read every 20th update, then every update again
    // from a mark (resync and a read at once: it sees the updates skipped, before the next
    // predicted one), for a few updates, over and over (predict_marks plans and releases):
    // those reads are no looks that saw an early update, and the lock is never thrown away.
    let period = 1_000_000u64;
    for (fast, look) in [(1u64, false), (2, false), (1, true), (3, true)] {
        let times: Vec<u64> = (1..=400_000u64).map(|i| i * period + 300_000).collect();
        let mut pl = PhaseLock::new(period);
        let (mut prev, mut seen) = (0u64, 0usize);
        let mut read = |pl: &mut PhaseLock, prev: &mut u64, t: u64| {
            let c = times.partition_point(|&u| u <= t);
            pl.observe(*prev, t, c != seen);
            seen = c;
            *prev = t;
        };
        while prev < 3000 * period {
            let t = pl.due(prev).max(prev + 1) + 20_000;
            read(&mut pl, &mut prev, t);
        }
        assert!(pl.settled());
        let relocks = pl.relocks;
        for _ in 0..60 {
            pl.set_stride(20);
            if look {
                pl.resync(prev + 5 * period); // a look before the update before a window
            }
            for _ in 0..5 {
                let t = pl.due(prev).max(prev + 1) + 20_000;
                read(&mut pl, &mut prev, t);
            }
            let mark = prev + 3 * period / 2 + 123_456;
            pl.set_stride(1);
            pl.resync(mark);
            read(&mut pl, &mut prev, mark);
            let end = prev + fast * period;
            while prev < end {
                let t = pl.due(prev).max(prev + 1) + 20_000;
                read(&mut pl, &mut prev, t);
            }
        }
        assert_eq!(pl.relocks, relocks, "fast {fast}, look {look}");
    }
}

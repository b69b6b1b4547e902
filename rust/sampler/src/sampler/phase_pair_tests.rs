//! Tests of paired reads (`phase_pair.rs`), driven in simulated time against a counter that
//! updates every 100 ms and whose read costs milliseconds (an H100's energy counter).

use super::super::tests::median_abs;
use super::super::PhaseLock;
use super::pair_stride;

const MS: u64 = 1_000_000;
const HOUR: u64 = 3_600_000 * MS;

/// A small deterministic generator (xorshift): a number in [0, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a simulated run gave: stamp errors (ns) once paired, stamps that claim an update the
/// read did not see or put the latest one it saw more than 10 ms early, reads and the simulated
/// time they span, pairs lost, and the checks made (see `Pair::check`, `Pair::check_after`) and
/// those that found the period wrong.
struct Outcome {
    errors: Vec<f64>,
    misplaced: u64,
    reads: u64,
    span_ns: u64,
    losses: u64,
    checks: u64,
    failed_checks: u64,
}

/// Asserts that the reads of `out`, each costing `cost` ns, took at most 1 % of a core over
/// its `span_ns` (`what`: the case, for the message).
fn assert_within_share(out: &Outcome, cost: u64, what: &str) {
    let share = out.reads as f64 * cost as f64 / out.span_ns as f64;
    assert!(share <= 0.01, "{what}: {:.2} % of a core", share * 100.0);
}

/// Drives a lock as the sampler does: reading every update until it brackets one closely,
/// then one update in `stride` as a pair (never, with `None`: every update is read, as before
/// pairs), for `duration` ns of simulated time. The update
/// instants are `times`; each read costs `cost` ns (the counter is sampled at a random
/// instant inside it) and starts 20-320 µs after it is due (a wake-up's lateness).
fn simulate(times: &[u64], cost: u64, stride: Option<u32>, duration: u64, seed: u64) -> Outcome {
    simulate_late(times, cost, stride, duration, seed, |x| x * 300_000.0)
}

/// As [`simulate`], each read starting `late(x)` ns (and 20 µs) after it is due, `x` uniform in
/// [0, 1).
fn simulate_late(
    times: &[u64],
    cost: u64,
    stride: Option<u32>,
    duration: u64,
    seed: u64,
    late: impl Fn(f64) -> f64,
) -> Outcome {
    simulate_reads(times, stride, duration, seed, |x, _| (late(x), cost))
}

/// As [`simulate`], each read starting `read(x, y).0` ns (and 20 µs) after it is due and
/// taking `read(x, y).1` ns (the lock told their smoothed cost, as the sampler does), `x` and
/// `y` uniform in [0, 1).
fn simulate_reads(
    times: &[u64],
    stride: Option<u32>,
    duration: u64,
    seed: u64,
    read: impl Fn(f64, f64) -> (f64, u64),
) -> Outcome {
    simulate_strides(times, stride.is_none(), |_| stride, duration, seed, read)
}

/// As [`simulate`], pairs at the stride the sampler takes for the period the lock has learned
/// (`sampler::costly`: within 1 % of a core).
fn simulate_budget(times: &[u64], cost: u64, duration: u64, seed: u64) -> Outcome {
    let stride = |pl: &PhaseLock| pair_stride(cost as f64, pl.period_ns()?, 0.01);
    simulate_strides(times, false, stride, duration, seed, |x, _| {
        (x * 300_000.0, cost)
    })
}

/// As [`simulate_reads`], pairing at `stride(lock)` (every update read, with `every`).
fn simulate_strides(
    times: &[u64],
    every: bool,
    stride: impl Fn(&PhaseLock) -> Option<u32>,
    duration: u64,
    seed: u64,
    read: impl Fn(f64, f64) -> (f64, u64),
) -> Outcome {
    let (mut rng, mut rng_y) = (Rng(seed | 1), Rng(seed.wrapping_mul(0x9e37_79b9) | 1));
    let mut smoothed = 0u64;
    let mut pl = PhaseLock::new(20 * MS);
    let (mut end, mut prev_mid, mut seen) = (0u64, 0u64, 0usize);
    let (mut errors, mut reads, mut since) = (Vec::new(), 0u64, None);
    let (mut misplaced, mut checks, mut failed_checks) = (0, 0, 0);
    while end < duration {
        let (late, cost) = read(rng.next(), rng_y.next());
        let start = pl.due(end).max(end + 1) + 20_000 + late as u64;
        let sample = start + (rng.next() * cost as f64) as u64;
        end = start + cost;
        let mid = start + cost / 2;
        let count = times.partition_point(|&u| u <= sample);
        smoothed = if smoothed == 0 {
            cost
        } else {
            (smoothed * 7 + cost) / 8
        };
        pl.fit_guard(smoothed);
        let failed = |pl: &PhaseLock| {
            pl.pair
                .as_ref()
                .map_or(0, |pr| pr.early_checks + pr.missed_checks)
        };
        let (checking, failed_before) = (
            pl.pair
                .as_ref()
                .is_some_and(|pr| pr.check.is_some() || pr.check_after.is_some()),
            failed(&pl),
        );
        let stamp = pl.observe(prev_mid, mid, count != seen);
        checks += u64::from(checking);
        failed_checks += u64::from(checking && (failed(&pl) > failed_before || !pl.paired()));
        if since.is_some() {
            reads += 1;
            if count != seen {
                let s = stamp.expect("a change is stamped") as f64;
                errors.push(s - times[count - 1] as f64);
                let next = times.get(count).map_or(f64::MAX, |&u| u as f64);
                misplaced += u64::from(s < times[count - 1] as f64 - 10e6 || s > next + 10e6);
            }
        }
        seen = count;
        prev_mid = mid;
        // Counted from the first pair (or, reading every update, from 20 s on).
        if mid > 20_000 * MS {
            if let Some(k) = stride(&pl).filter(|_| pl.is_locked()) {
                pl.pair_with(k, end);
            }
            if (pl.paired() || every) && since.is_none() {
                since = Some(end);
            }
        }
    }
    Outcome {
        errors,
        misplaced,
        reads,
        span_ns: end - since.unwrap_or(end),
        losses: pl.pair_losses(),
        checks,
        failed_checks,
    }
}

/// Update instants over `duration`: every `period` ns, with a phase that wanders by
/// `wander` ns (a slow sine of 10 minutes, the counter's clock against ours) and each update
/// `jitter` ns early or late at random.
fn updates(period: f64, wander: f64, jitter: f64, duration: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    let mut k = 0u64;
    loop {
        let base = 7.0 * MS as f64 + k as f64 * period;
        let w = wander * (base / (600_000.0 * MS as f64) * std::f64::consts::TAU).sin();
        let t = base + w + jitter * (2.0 * rng.next() - 1.0);
        if t > (duration + 10 * MS * 100) as f64 {
            return out;
        }
        out.push(t.max(0.0) as u64);
        k += 1;
    }
}

#[test]
fn an_expensive_counter_read_in_pairs_stays_on_its_updates_for_an_hour() {
    // An H100-like counter: updates every 100.004 ms (40 ppm against our clock), its phase
    // wandering by 2 ms over ten minutes, each update 300 µs early or late at random; a read
    // costs 3 ms. Within 1 % of a core: a pair every 7 updates.
    let cost = 3 * MS;
    let stride = pair_stride(cost as f64, 100e6, 0.01).expect("expensive");
    assert_eq!(stride, 7);
    for seed in [1u64, 2, 3] {
        let times = updates(100.004e6, 2.0 * MS as f64, 300_000.0, HOUR, seed);
        let out = simulate(&times, cost, Some(stride), HOUR, seed * 7);
        // Reading every update (as before pairs) costs 3.5 % of a core and stamps no closer.
        let every = simulate(&times, cost, None, HOUR, seed * 7);
        let every_share = every.reads as f64 * cost as f64 / every.span_ns as f64;
        assert!(every_share > 0.03, "{every_share}");
        let hours = out.span_ns as f64 / HOUR as f64;
        assert!(hours > 0.95, "paired for {hours} h");
        // Median stamp error within a millisecond, over the run and over its last ten minutes.
        let all = median_abs(&out.errors);
        let tail = median_abs(&out.errors[out.errors.len() * 5 / 6..]);
        assert!(
            all < 1.0e6 && tail < 1.0e6,
            "seed {seed}: median {all} ns, last {tail} ns"
        );
        assert!(all <= median_abs(&every.errors), "seed {seed}: {all} ns");
        // The reads' CPU: at most the 1 % budget.
        assert_within_share(&out, cost, &format!("seed {seed}"));
        assert!(out.losses <= 2, "seed {seed}: lost {} times", out.losses);
        assert_eq!(out.misplaced, 0, "seed {seed}");
    }
}

#[test]
fn a_phase_jump_is_found_again_within_a_few_pairs() {
    // Exact 100 ms updates; after ten minutes every update comes 9 ms later (a firmware stall),
    // after twenty 14 ms earlier than that. Reads cost 2 ms (a pair every 4 updates).
    let cost = 2 * MS;
    let stride = pair_stride(cost as f64, 100e6, 0.01).expect("expensive");
    let dur = 1_800_000 * MS;
    let times: Vec<u64> = updates(100e6, 0.0, 0.0, dur, 1)
        .into_iter()
        .map(|t| match t {
            t if t > 1_200_000 * MS => t - 5 * MS,
            t if t > 600_000 * MS => t + 9 * MS,
            t => t,
        })
        .collect();
    let out = simulate(&times, cost, Some(stride), dur, 5);
    // The stamps settle again within a minute of each jump: the median of each settled part.
    let n = out.errors.len();
    let part =
        |a: f64, b: f64| median_abs(&out.errors[(a * n as f64) as usize..(b * n as f64) as usize]);
    for (a, b) in [(0.05, 0.3), (0.38, 0.63), (0.71, 1.0)] {
        assert!(part(a, b) < 0.5e6, "{a}-{b}: {} ns", part(a, b));
    }
    assert_within_share(&out, cost, "");
}

#[test]
fn the_stride_keeps_two_reads_a_visit_within_the_share() {
    // Cheap reads, or a slow counter: every update already fits.
    assert_eq!(pair_stride(20_000.0, 100e6, 0.01), None);
    assert_eq!(pair_stride(3e6, 1e9, 0.01), None);
    assert_eq!(pair_stride(3e6, 100e6, 0.0), None);
    // Expensive: two reads every `k` updates within the share, never fewer than three apart.
    for cost in [0.9e6, 1.5e6, 2.9e6, 7e6] {
        let k = pair_stride(cost, 100e6, 0.01).expect("expensive");
        assert!(
            k >= 3 && 2.0 * cost / (f64::from(k) * 100e6) <= 0.01 / 1.1,
            "{cost}: {k}"
        );
        assert!(
            2.0 * cost / (f64::from(k - 1) * 100e6) > 0.01 / 1.1 || k == 3,
            "{cost}: {k}"
        );
    }
}

#[test]
fn late_wake_ups_never_put_an_update_a_period_off() {
    // A busy machine: reads start up to 10 ms late (long-tailed: a few milliseconds now and
    // then). A look that may have come after the update it was to come before is stamped at
    // its own read; no update's energy is placed a period away from it.
    for (seed, out) in paired_a_period_never_off(3, |x| x.powi(4) * 10e6) {
        assert_within_share(&out, 3 * MS, &format!("seed {seed}"));
    }
}

/// A 100 ms counter read in pairs (3 ms reads) for ten minutes, twice (seeds 1 and 2; the
/// wake-ups' seed times `late_seed`), its reads late by `late` of a uniform draw: it stays
/// paired for most of the run and no update is put a period off. The outcomes, for each test's
/// own assertions.
fn paired_a_period_never_off(late_seed: u64, late: impl Fn(f64) -> f64) -> Vec<(u64, Outcome)> {
    let cost = 3 * MS;
    let stride = pair_stride(cost as f64, 100e6, 0.01).expect("expensive");
    let dur = HOUR / 6;
    let mut outs = Vec::new();
    for seed in [1u64, 2] {
        let times = updates(100.004e6, 2.0 * MS as f64, 300_000.0, dur, seed);
        let out = simulate_late(&times, cost, Some(stride), dur, seed * late_seed, &late);
        assert!(
            out.span_ns > dur / 2,
            "paired for {} s",
            out.span_ns / 1_000_000_000
        );
        assert_eq!(out.misplaced, 0, "seed {seed}");
        outs.push((seed, out));
    }
    outs
}

#[test]
fn a_thread_descheduled_for_a_period_never_puts_an_update_a_period_off() {
    // Now and then (one read in fifty) the thread is descheduled for 150 ms: a read after its
    // look may come after the next update too. What it saw is stamped at the latest update it
    // can have seen, never at the one it was aimed at a period before.
    let late = |x: f64| if x < 0.02 { 150e6 } else { x * 300_000.0 };
    for (seed, out) in paired_a_period_never_off(5, late) {
        assert!(median_abs(&out.errors) < 1.0e6, "seed {seed}");
    }
}

#[test]
fn a_read_that_takes_much_longer_than_usual_never_puts_an_update_a_period_off() {
    // Reads cost 3 ms, one in twenty 7 ms (the counter taken anywhere in it): a look that
    // lasts that long may end after the update it was to come before, and must not be taken
    // as a look before it.
    let stride = pair_stride(3e6, 100e6, 0.01).expect("expensive");
    let dur = HOUR / 6;
    for seed in [1u64, 2, 3] {
        let times = updates(100.004e6, 2.0 * MS as f64, 300_000.0, dur, seed);
        let out = simulate_reads(&times, Some(stride), dur, seed * 11, |x, y| {
            let cost = if y < 0.05 { 7 * MS } else { 3 * MS };
            (x * 300_000.0, cost)
        });
        assert!(
            out.span_ns > dur / 2,
            "paired for {} s",
            out.span_ns / 1_000_000_000
        );
        assert_eq!(out.misplaced, 0, "seed {seed}");
    }
}

#[test]
fn a_steady_counter_read_in_pairs_is_never_learned_again() {
    // The checks between two predicted updates see nothing on a steady counter (updates
    // jittered by 300 µs, a phase wandering by 2 ms): over an hour, no pair is lost.
    let cost = 3 * MS;
    for seed in 1u64..=6 {
        let times = updates(100.004e6, 2.0 * MS as f64, 300_000.0, HOUR, seed);
        let out = simulate_budget(&times, cost, HOUR, seed * 7);
        assert!(out.span_ns as f64 > 0.95 * HOUR as f64, "seed {seed}");
        assert_eq!(out.losses, 0, "seed {seed}");
        assert_eq!(out.misplaced, 0, "seed {seed}");
        assert!(median_abs(&out.errors) < 1.0e6, "seed {seed}");
        // The checks' reads too: within the 1 % budget.
        assert_within_share(&out, cost, &format!("seed {seed}"));
    }
}

#[test]
fn an_expensive_counter_that_updates_every_50_ms_is_read_in_pairs() {
    // Reads cost 3 ms, the counter moves every 33 to 75 ms: a look and the read a guard after
    // it are 3 ms and a guard apart, so with a guard of a fiftieth of the period (1 ms at
    // 50 ms) no update was ever bracketed closely and the counter was read at every update
    // (6 % of a core or more), never in pairs. Its guard is two thirds of a read's cost.
    let cost = 3 * MS;
    let dur = HOUR / 6;
    for period in [100e6 / 3.0, 50e6, 75e6] {
        let times = updates(period, 2.0 * MS as f64, 300_000.0, dur, 1);
        let out = simulate_budget(&times, cost, dur, 3);
        assert!(
            out.span_ns > dur - 60_000 * MS,
            "{period}: paired for {} ms",
            out.span_ns / MS
        );
        assert_within_share(&out, cost, &format!("{period}"));
        assert!(median_abs(&out.errors) < 1.0e6, "{period}");
        assert_eq!(out.misplaced, 0, "{period}");
    }
}

#[test]
fn a_steady_counter_on_a_busy_machine_passes_every_check() {
    // A busy machine: reads start up to 10 ms late (long-tailed), one in fifty up to 30 ms (the
    // thread descheduled), and cost 2 to 6 ms each (the lock told their smoothed cost); the
    // counter's updates are 1 ms early or late at random. Every check (a read before the next
    // predicted update, which must see nothing, and one just after it, which must see it) finds
    // the period right: none costs a pair and the period learned again.
    for seed in 1u64..=4 {
        let times = updates(100.004e6, 2.0 * MS as f64, 1e6, HOUR, seed);
        let stride = |pl: &PhaseLock| pair_stride(4e6, pl.period_ns()?, 0.01);
        let out = simulate_strides(&times, false, stride, HOUR, seed * 7, |x, y| {
            let late = if x < 0.02 {
                30e6 * x / 0.02
            } else {
                x.powi(4) * 10e6
            };
            (late, (2e6 + 4e6 * y) as u64)
        });
        assert!(out.checks > 100, "seed {seed}: {} checks", out.checks);
        assert_eq!(out.failed_checks, 0, "seed {seed}");
    }
}

#[path = "phase_pair_change_tests.rs"]
mod change;

//! Tests of paired reads (`phase_pair.rs`) when the counter's period changes under them: the
//! lock must learn the new period again (driven as in [`super`], whose helpers they share).

use super::*;

#[test]
fn a_period_that_changes_is_learned_again() {
    // The device's clocks change after five minutes: updates every 95 ms (or 101 or 120 ms)
    // instead of 100. The search alone would chase the update tens of milliseconds off for the rest of
    // the run; the lock learns the period again and the stamps settle on the updates.
    let cost = 3 * MS;
    let stride = pair_stride(cost as f64, 100e6, 0.01).expect("expensive");
    let dur = HOUR / 6;
    for new_period in [95e6, 101e6, 120e6] {
        let times = period_change(100e6, new_period, 0.0, dur);
        let out = simulate(&times, cost, Some(stride), dur, 3);
        assert_learned_again(&out, cost, &format!("{new_period}"));
    }
}

/// Update instants over `duration`: every `old_period` ns until five minutes, then every
/// `new_period` ns from `shift` ns after the last of those (with no shift, every old update
/// instant is a new one's too).
fn period_change(old_period: f64, new_period: f64, shift: f64, duration: u64) -> Vec<u64> {
    let (mut times, mut t) = (Vec::new(), 7e6);
    while t < (duration + 1_000 * MS) as f64 {
        times.push(t as u64);
        t += if t < 300e9 {
            old_period
        } else if t - old_period < 300e9 {
            new_period + shift
        } else {
            new_period
        };
    }
    times
}

/// Asserts that the lock learned the period again (`what`: the case) and that the stamps
/// settled on the updates (their median error in the last quarter of the run under 1 ms),
/// reading within the share of a core.
fn assert_learned_again(out: &Outcome, cost: u64, what: &str) {
    let n = out.errors.len();
    let last = median_abs(&out.errors[n * 3 / 4..]);
    assert!(
        last < 1.0e6,
        "{what}: median {last} ns in the last quarter of the run"
    );
    assert!(out.losses >= 1, "{what}");
    assert_within_share(out, cost, what);
}

#[test]
fn a_period_that_falls_to_a_half_or_a_third_is_learned_again() {
    // A driver or clock change after five minutes: updates every 50 ms (or 33.3) instead of
    // 100, every old update instant still an update (or the new ones shifted by 20 ms). The
    // look (it sees the updates since the last visit whatever the period) and the read after
    // answer as before, and every other update falls where predicted: without the checks
    // between two predicted updates the pair stays on, stamping each change a half (or two
    // thirds) of the old period early. The lock learns the period again and the stamps
    // settle on the updates; the stride follows the new period, within the share.
    let cost = 3 * MS;
    let dur = HOUR;
    for (new_period, shift) in [(50e6, 0.0), (100e6 / 3.0, 0.0), (50e6, 20e6)] {
        let times = period_change(100e6, new_period, shift, dur);
        let out = simulate_budget(&times, cost, dur, 3);
        // Paired again (reading every update of it would take 6 % of a core or more).
        assert_learned_again(&out, cost, &format!("{new_period} (+{shift})"));
    }
}

#[test]
fn a_period_that_halves_is_learned_again_when_the_check_is_close_to_its_limit() {
    // A counter that updates every 40 (or 36) ms whose reads cost 4 (or 3.5) ms: a look's
    // margin and a read come to more than a quarter of the period, so the check before the next
    // predicted update was aimed at the latest end at which it counts, and counted only if it
    // came with no lateness at all: never. Every check was a read wasted, and a period that
    // halved was never found (each look stamping its change half a period early for good).
    // Aimed a guard earlier, the checks count and find it.
    let dur = HOUR / 2;
    for (p0, cost) in [(40e6, 4 * MS), (36e6, 3_500_000)] {
        let times = period_change(p0, p0 / 2.0, 0.0, dur);
        let out = simulate_budget(&times, cost, dur, 3);
        assert!(out.losses >= 1, "{p0}");
        assert!(
            out.misplaced * 100 < out.errors.len() as u64,
            "{p0}: {} of {} stamps misplaced",
            out.misplaced,
            out.errors.len()
        );
    }
}

#[test]
fn a_period_that_doubles_is_learned_again() {
    // A driver or clock change after five minutes: updates every 200 ms instead of 100, from
    // an old update instant (or 37 ms after one). Read in pairs every 4 or 8 updates (reads of
    // 1.5 or 3.5 ms), every visit falls on a new update once the search has found one: the look
    // (it sees the updates since the last visit) and the read after answer as before, and the
    // check before the next predicted update sees nothing, as it should. Without a read just
    // after that update (which must see it) the pair stayed on for good, each look stamping its
    // change at a predicted update 100 ms after the real one. The lock learns the period again
    // and no stamp is a predicted update off.
    let dur = HOUR / 2;
    for cost in [1_500_000u64, 3_500_000] {
        for shift in [0.0, 37e6] {
            let times = period_change(100e6, 200e6, shift, dur);
            let out = simulate_budget(&times, cost, dur, 2);
            let n = out.errors.len();
            let off = out.errors[n * 3 / 4..]
                .iter()
                .filter(|e| e.abs() > 10e6)
                .count();
            assert_eq!(off, 0, "{cost} (+{shift}): stamps off in the last quarter");
            assert!(out.losses >= 1, "{cost} (+{shift})");
            // Until the pair is lost (seconds after a change 37 ms off the old updates), looks
            // stamp their change at the predicted instant, up to 37 ms early: 8 to 14 such
            // stamps in most runs (whether any depends on where the reads fall).
            let most = if shift == 0.0 { 0 } else { 16 };
            assert!(
                out.misplaced <= most,
                "{cost} (+{shift}): {}",
                out.misplaced
            );
            assert_within_share(&out, cost, "");
        }
    }
}

//! Tests of turning readings into cumulative joules (see [`super`]).

use super::*;

const MS: u64 = 1_000_000;

fn counter(wrap: Option<u64>) -> Accumulator {
    Accumulator::new(
        Some(CounterSpec {
            joules_per_unit: 1e-6,
            wrap,
        }),
        MS,
    )
}

#[test]
fn counter_changes_are_stamped_between_reads() {
    let mut a = counter(None);
    assert_eq!(
        a.push(10 * MS, Reading::Counter(1_000)),
        Step::First(Point {
            t_ns: 10 * MS,
            joules: 0.0
        })
    );
    assert_eq!(a.push(11 * MS, Reading::Counter(1_000)), Step::Unchanged);
    match a.push(12 * MS, Reading::Counter(3_000)) {
        Step::Changed(p) => {
            assert_eq!(p.t_ns, 11 * MS + MS / 2);
            assert!((p.joules - 0.002).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn late_read_stamps_within_one_update_period() {
    let mut a = counter(None);
    a.push(0, Reading::Counter(0));
    match a.push(30 * MS, Reading::Counter(30_000)) {
        Step::Changed(p) => assert_eq!(p.t_ns, 30 * MS - MS / 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wraparound_adds_the_remaining_range() {
    let mut a = counter(Some(1_000_000));
    a.push(0, Reading::Counter(999_000));
    a.push(MS, Reading::Counter(500));
    assert_eq!(a.wraps, 1);
    assert!((a.joules() - 0.0015).abs() < 1e-12);
    a.push(2 * MS, Reading::Counter(999_999));
    a.push(3 * MS, Reading::Counter(0));
    assert_eq!(a.wraps, 2);
    assert!((a.joules() - 1.001).abs() < 1e-12);
}

#[test]
fn a_counter_that_never_wraps_and_goes_back_is_a_reset() {
    let mut a = counter(None);
    a.push(0, Reading::Counter(5_000));
    a.push(MS, Reading::Counter(7_000));
    assert!(matches!(
        a.push(2 * MS, Reading::Counter(10)),
        Step::Reset(_)
    ));
    assert_eq!(a.resets, 1);
    assert!((a.joules() - 0.002).abs() < 1e-12);
    a.push(3 * MS, Reading::Counter(1_010));
    assert!((a.joules() - 0.003).abs() < 1e-12);
}

/// A powercap package counter: µJ, wrapping at `max_energy_range_uj` (262,143 J).
const RANGE_UJ: u64 = 262_143_328_850;

#[test]
fn a_step_back_no_wrap_explains_is_a_reset_not_a_range_of_energy() {
    // 9 J counted, then the driver reloads: the counter starts again near zero. Taken for
    // a wrap, this was 262,134 J in 20 ms.
    let mut a = counter(Some(RANGE_UJ));
    a.push(0, Reading::Counter(8_000_000));
    a.push(10 * MS, Reading::Counter(9_000_000));
    assert!(matches!(
        a.push(20 * MS, Reading::Counter(300)),
        Step::Reset(_)
    ));
    assert_eq!((a.resets, a.wraps), (1, 0));
    assert!((a.joules() - 1.0).abs() < 1e-9);
    // Counting resumes from the new value.
    a.push(30 * MS, Reading::Counter(500_300));
    assert!((a.joules() - 1.5).abs() < 1e-9);
}

#[test]
fn a_step_back_mid_range_is_a_reset_even_after_a_long_pause() {
    // 100 s without a change (a stalled sampler): still less than half the range is needed
    // for a wrap, and going back from mid-range needs more.
    let mut a = counter(Some(RANGE_UJ));
    a.push(0, Reading::Counter(RANGE_UJ / 3));
    assert!(matches!(
        a.push(100_000 * MS, Reading::Counter(1_000)),
        Step::Reset(_)
    ));
    assert_eq!((a.resets, a.wraps), (1, 0));
}

#[test]
fn a_wrap_near_the_top_at_a_plausible_power_is_counted() {
    let mut a = counter(Some(RANGE_UJ));
    a.push(0, Reading::Counter(RANGE_UJ - 1_000_000));
    // 50 W for 20 ms: 1 J, of which 0.6 J after the wrap.
    match a.push(20 * MS, Reading::Counter(600_000)) {
        Step::Changed(p) => assert!((p.joules - 1.6).abs() < 1e-9),
        other => panic!("{other:?}"),
    }
    assert_eq!((a.resets, a.wraps), (0, 1));
}

#[test]
fn a_wrap_that_needs_more_power_than_any_device_is_a_reset() {
    // 100 J across the top in 1 ms: 100 kW.
    let mut a = counter(Some(RANGE_UJ));
    a.push(0, Reading::Counter(RANGE_UJ - 50_000_000));
    assert!(matches!(
        a.push(MS, Reading::Counter(50_000_000)),
        Step::Reset(_)
    ));
    assert_eq!((a.resets, a.wraps), (1, 0));
    assert_eq!(a.joules(), 0.0);
}

#[test]
fn a_forward_jump_no_power_explains_is_a_reset() {
    let mut a = counter(None);
    a.push(0, Reading::Counter(1_000));
    // 1 MJ in 10 ms.
    assert!(matches!(
        a.push(10 * MS, Reading::Counter(1_000_000_000_000)),
        Step::Reset(_)
    ));
    assert_eq!(a.joules(), 0.0);
}

#[test]
fn a_slow_counter_read_often_is_judged_over_the_time_since_its_last_change() {
    // A 700 W GPU whose counter (mJ) moves every 100 ms, read every millisecond: each
    // change is 70 J after 99 reads that showed no change (70 kW over one read interval).
    let mut a = Accumulator::new(
        Some(CounterSpec {
            joules_per_unit: 1e-3,
            wrap: None,
        }),
        MS,
    );
    let mut raw = 0;
    a.push(0, Reading::Counter(raw));
    for k in 1..=1_000u64 {
        if k % 100 == 0 {
            raw += 70_000;
        }
        assert!(!matches!(
            a.push(k * MS, Reading::Counter(raw)),
            Step::Reset(_)
        ));
    }
    assert_eq!(a.resets, 0);
    assert!((a.joules() - 700.0).abs() < 1e-9);
}

#[test]
fn power_read_as_the_power_of_its_interval() {
    // Readings at scattered instants of 20 ms intervals: the previous reading holds until
    // the next one's interval begins. A constant power comes out exact wherever reads fall.
    let mut a = Accumulator::new(None, 20 * MS);
    a.push_spanned(3 * MS, Reading::Power(100.0), None);
    a.push_spanned(37 * MS, Reading::Power(100.0), Some(20 * MS));
    a.push_spanned(41 * MS, Reading::Power(100.0), Some(40 * MS));
    assert!((a.joules() - 100.0 * 0.038).abs() < 1e-9, "{}", a.joules());
    // 100 W until 60 ms, then 300 W: a read at 75 ms in the interval from 60 ms.
    a.push_spanned(75 * MS, Reading::Power(300.0), Some(60 * MS));
    let want = 100.0 * 0.038 + 100.0 * 0.019 + 300.0 * 0.015;
    assert!((a.joules() - want).abs() < 1e-9, "{} vs {want}", a.joules());
}

#[test]
fn power_is_integrated_with_the_trapezoid_rule() {
    let mut a = Accumulator::new(None, 20 * MS);
    a.push(0, Reading::Power(100.0));
    a.push(1_000 * MS, Reading::Power(200.0));
    assert!((a.joules() - 150.0).abs() < 1e-9);
    a.push(2_000 * MS, Reading::Power(f64::NAN));
    assert!((a.joules() - 250.0).abs() < 1e-9);
}

#[test]
fn a_held_power_holds_each_reading_until_the_next_ones_instant() {
    // A fed source: 100 W read at 0 and 20 ms, 300 W standing for 30 ms read at 40 ms, and
    // held: 100 W until 30 ms exactly (a trapezoid would give 200 W from 20 ms on).
    let mut a = Accumulator::new(None, 20 * MS).held();
    a.push(0, Reading::Power(100.0));
    a.push(20 * MS, Reading::Power(100.0));
    let step = a.push(
        40 * MS,
        Reading::PowerAt {
            watts: 300.0,
            ago_ns: 10 * MS,
        },
    );
    assert!(matches!(step, Step::Changed(p) if p.t_ns == 30 * MS));
    assert!((a.joules() - 100.0 * 0.030).abs() < 1e-9, "{}", a.joules());
    a.push(60 * MS, Reading::Power(300.0));
    assert!(
        (a.joules() - (3.0 + 300.0 * 0.030)).abs() < 1e-9,
        "{}",
        a.joules()
    );
    // No hold learned, no spread: nothing is re-timed.
    assert_eq!((a.hold_ns(), a.variance_j2()), (0, 0.0));
    // A reading that says it stood before the previous one (its read's end was taken
    // before the previous read's stamp, a thread stalled): 200 W from 60 ms on, not passed
    // over (300 W held until the next read at 80 ms).
    a.push(
        61 * MS,
        Reading::PowerAt {
            watts: 200.0,
            ago_ns: 2 * MS,
        },
    );
    a.push(80 * MS, Reading::Power(200.0));
    assert!(
        (a.joules() - (12.0 + 200.0 * 0.020)).abs() < 1e-9,
        "{}",
        a.joules()
    );
    // The same power again at an instant passed adds nothing (a feed that lags repeats its
    // latest reading until the timeline reaches its instant).
    let again = Reading::PowerAt {
        watts: 200.0,
        ago_ns: 5 * MS,
    };
    assert_eq!(a.push(81 * MS, again), Step::Unchanged);
}

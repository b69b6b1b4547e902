//! Tests of how often power-only sources are read and how a slow read is made again (see
//! [`super`]).

use super::*;
use crate::error::Error;
use crate::sensors::{CounterSpec, Domain, EnergySource, Method, Reading};
use std::path::PathBuf;
use std::time::Duration;

const MS: u64 = 1_000_000;

struct Fake(SourceInfo, bool);
impl EnergySource for Fake {
    fn info(&self) -> &SourceInfo {
        &self.0
    }
    fn read(&mut self) -> Result<Reading, Error> {
        if self.1 {
            return Err(Error::Invalid("unreadable".into()));
        }
        Ok(Reading::Power(100.0))
    }
}

fn info(backend: &'static str, file: &str, counter: Option<CounterSpec>) -> SourceInfo {
    SourceInfo {
        id: "fake:0".into(),
        backend,
        domain: Domain::Gpu,
        index: 0,
        label: "gpu-0".into(),
        method: if counter.is_some() {
            Method::Counter
        } else {
            Method::IntegratedPower
        },
        counter,
        interval: Duration::from_millis(20),
        path: (!file.is_empty()).then(|| PathBuf::from(file)),
        uuid: None,
    }
}

fn polled(info: SourceInfo, read_cost_ns: u64) -> Polled {
    let (mut p, _, _) = Polled::new(
        Box::new(Fake(info, false)),
        Reading::Power(100.0),
        (0, 0),
        0.0,
        &Config::default(),
    );
    p.read_cost_ns = read_cost_ns;
    p
}

#[test]
fn only_power_sampled_at_the_read_is_read_more_often() {
    let spec = CounterSpec {
        joules_per_unit: 1e-3,
        wrap: None,
    };
    assert!(samples_at_read(&info("nvml", "", None)));
    assert!(samples_at_read(&info("hwmon", "/x/power1_input", None)));
    assert!(!samples_at_read(&info("hwmon", "/x/power1_average", None)));
    assert!(!samples_at_read(&info("external", "", None)));
    // A fed source (the node's BMC) says when each reading stood: not sampled at the read.
    assert!(!samples_at_read(&info("redfish", "", None)));
    assert!(!samples_at_read(&info("nvml", "", Some(spec))));
    let averaged = polled(info("hwmon", "/x/power1_average", None), 4_000);
    assert_eq!(fast_slot(&averaged, &Config::default()), 20 * MS);
}

#[test]
fn the_fast_slot_keeps_reads_within_their_share_of_a_core() {
    let config = Config::default();
    // A 4 µs read that wakes the thread each time: 24 µs a read, at most 0.3 % of a core.
    let mut p = polled(info("nvml", "", None), 4_000);
    let slot = fast_slot(&p, &config);
    assert_eq!(slot, 8 * MS);
    // Riding on other wake-ups, the read alone counts: 4 µs in 0.3 % of a core, 1.33 ms
    // (the configured 1 ms asks for more than the share affords).
    p.rode = 1.0;
    assert_eq!(fast_slot(&p, &config), 1_333_333);
    // A larger share buys reads as often as configured, and no more often.
    let generous = Config {
        power_share: 0.03,
        ..Config::default()
    };
    assert_eq!(fast_slot(&p, &generous), MS);
    p.rode = 0.0;
    assert_eq!(fast_slot(&p, &generous), MS);
    let tenth = Config {
        power_share: 0.01,
        ..Config::default()
    };
    assert_eq!(fast_slot(&p, &tenth), 2_400_000);
    p.rode = 1.0;
    // An expensive read (3 ms of CPU) is never read more often than its interval.
    p.read_cost_ns = 3_000_000;
    assert_eq!(fast_slot(&p, &config), 20 * MS);
    // Off: the interval.
    let off = Config {
        power_interval: Duration::ZERO,
        ..Config::default()
    };
    p.read_cost_ns = 4_000;
    assert_eq!(fast_slot(&p, &off), 20 * MS);
}

#[test]
fn slots_shorten_at_once_and_lengthen_from_the_next_read() {
    let config = Config::default();
    let mut ps = vec![polled(info("nvml", "", None), 4_000)];
    ps[0].rode = 1.0;
    ps[0].due_ns = 20 * MS;
    set_slots(&mut ps, true, 5 * MS, &config);
    assert_eq!(ps[0].slot_ns, 1_333_333);
    // The next read comes within one short slot, and may ride from up to 1 ms before.
    assert!(
        ps[0].due_ns > 5 * MS && ps[0].due_ns <= 5 * MS + 1_333_333,
        "{}",
        ps[0].due_ns
    );
    assert!(ps[0].ride_ns + MS >= ps[0].due_ns && ps[0].ride_ns > 5 * MS);
    assert_eq!(ride_from(10 * MS, 1_333_333), 9 * MS);
    assert_eq!(ride_from(10 * MS, 500_000), 9_500_000);
    let due = ps[0].due_ns;
    set_slots(&mut ps, false, 6 * MS, &config);
    assert_eq!((ps[0].slot_ns, ps[0].due_ns), (20 * MS, due));
    // Rides: only a wake-up made for another kind of source counts; two power sources
    // sharing one among themselves pay for it (several power-only GPUs).
    note_rides(&mut ps, &[0], false);
    assert!(ps[0].rode < 1.0);
    let mut two = vec![
        polled(info("nvml", "", None), 4_000),
        polled(info("nvml", "", None), 4_000),
    ];
    for _ in 0..50 {
        note_rides(&mut two, &[0, 1], false);
    }
    assert!(two.iter().all(|p| p.rode == 0.0));
    assert_eq!(fast_slot(&two[0], &config), 8 * MS);
    note_rides(&mut two, &[0, 1], true);
    assert!(two.iter().all(|p| p.rode > 0.0));
}

#[test]
fn a_read_rides_on_other_wake_ups_only_while_it_succeeds() {
    use super::super::handle::SourceStatus;
    use super::super::poll::{poll_one, Why};
    use crate::timeline::History;
    let config = Config::default();
    let mut p = polled(info("nvml", "", None), 4_000);
    let (mut tl, mut st) = (History::new(64, 8, MS), SourceStatus::default());
    let before = crate::now_ns();
    poll_one(
        &mut p,
        0,
        &mut tl,
        &mut st,
        before,
        &config,
        1_000 * MS,
        None,
        Why::Due,
    );
    let after = crate::now_ns();
    // The next read is due at a random instant of the next slot (reads take the clock's
    // time), and a wake-up up to 1 ms before it takes it along.
    assert!(
        p.due_ns > before && p.due_ns <= after + 20 * MS,
        "{}",
        p.due_ns
    );
    assert!(p.ride_ns < p.due_ns && p.ride_ns + MS >= p.due_ns);
    // A source that failed is retried at the retry interval, not at every wake-up.
    p.source = Box::new(Fake(info("nvml", "", None), true));
    let now = p.due_ns;
    let config = Config {
        fail_after: 1,
        fail_time: Duration::ZERO,
        ..Config::default()
    };
    poll_one(
        &mut p,
        0,
        &mut tl,
        &mut st,
        now,
        &config,
        1_000 * MS,
        None,
        Why::Due,
    );
    assert!(p.failed_since.is_some());
    assert_eq!(p.ride_ns, u64::MAX);
    assert!(p.due_ns > now + 500 * MS);
}

#[test]
fn a_power_read_that_took_too_long_is_made_again() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    // A source whose first read stalls (the thread preempted during it): the reading is
    // taken again, and the read instants are those of the second read.
    struct Stalls(SourceInfo, Arc<AtomicU32>, u32);
    impl EnergySource for Stalls {
        fn info(&self) -> &SourceInfo {
            &self.0
        }
        fn read(&mut self) -> Result<Reading, Error> {
            let n = self.1.fetch_add(1, Ordering::SeqCst);
            if n < self.2 {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(Reading::Power(100.0 + f64::from(n)))
        }
    }
    let reads = Arc::new(AtomicU32::new(0));
    let mut p = polled(info("nvml", "", None), 4_000);
    p.source = Box::new(Stalls(info("nvml", "", None), reads.clone(), 1));
    let start = crate::now_ns();
    let (r, t0, t1) = read_timed(&mut p);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    assert!(matches!(r, Ok(Reading::Power(w)) if w == 101.0));
    assert!(t0 >= start + 5 * MS && t1 >= t0, "{t0} {t1} after {start}");
    // Stalled twice: the second reading is taken as it is (no third read).
    reads.store(0, Ordering::SeqCst);
    p.source = Box::new(Stalls(info("nvml", "", None), reads.clone(), 5));
    let _ = read_timed(&mut p);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    // A counter that is not phase-locked (see
    // `a_phase_locked_counter_read_held_up_is_read_again`), or power that is not sampled at
    // the read, is read once however long.
    reads.store(0, Ordering::SeqCst);
    let spec = CounterSpec {
        joules_per_unit: 1e-3,
        wrap: None,
    };
    let mut c = polled(info("nvml", "", Some(spec)), 4_000);
    c.phase = None;
    c.source = Box::new(Stalls(info("nvml", "", Some(spec)), reads.clone(), 5));
    let _ = read_timed(&mut c);
    assert_eq!(reads.load(Ordering::SeqCst), 1);
}

#[test]
fn the_stated_spread_is_that_of_the_error() {
    use crate::timeline::{Accumulator, History, Step};
    // A 50/250 W square wave of 34 ms read at random instants of 5 ms slots for 5 s; the
    // variance kept along the way against the errors over many runs.
    let (mut inside, mut sq_err, mut sq_stated) = (0, 0.0, 0.0);
    let runs = 100u64;
    for seed in 0..runs {
        let period = 34 * MS;
        let phase = seed * 7_777_777 % period;
        let w = |t: u64| {
            if (t + phase) % period < period / 2 {
                250.0
            } else {
                50.0
            }
        };
        let e = |t: u64| {
            let x = t + phase;
            let r = x % period;
            let part = if r < period / 2 {
                250.0 * r as f64
            } else {
                250.0 * (period / 2) as f64 + 50.0 * (r - period / 2) as f64
            };
            ((x / period) as f64 * 150.0 * period as f64 + part) * 1e-9
        };
        let mut acc = Accumulator::new(None, 5 * MS).with_spread();
        let mut tl = History::new(4096, 64, 100 * MS);
        let mut d = super::super::dither::Dither::new(0, seed);
        let mut t = 0;
        while t < 5_200 * MS {
            if let Step::First(pt) | Step::Changed(pt) = acc.push(t, Reading::Power(w(t))) {
                tl.push(pt);
                tl.push_spread(pt.t_ns, acc.uncertain());
            }
            t = d.next(t, 5 * MS);
        }
        let (a, b) = (tl.at(100 * MS).unwrap(), tl.at(5_100 * MS).unwrap());
        let err = (b.joules - a.joules) - (e(5_100 * MS) - e(100 * MS));
        let sd = (b.var_j2 - a.var_j2).sqrt();
        inside += u32::from(err.abs() <= 2.0 * sd);
        sq_err += err * err;
        sq_stated += sd * sd;
    }
    // Two standard deviations cover the error in most runs, and the stated spread is
    // the error's own (400 runs: 0.97 of it; not a bound many times too wide).
    let ratio = (sq_stated / sq_err).sqrt();
    assert!(inside as f64 >= 0.85 * runs as f64, "{inside} of {runs}");
    assert!((0.7..1.5).contains(&ratio), "{ratio}");
}

#[test]
fn reads_riding_up_to_a_slot_early_keep_one_read_a_slot() {
    // The CPU counters wake the thread every 976 µs; a power source in slots of 1.33 ms or
    // 1 ms rides on any wake-up from up to a slot before its due instant, else wakes the
    // thread itself. The reads stay one a slot, as the budget counts them (restarting the
    // slots at each early ride put two or three reads in some).
    for slot in [1_333_333u64, 1_000_000] {
        let wake = 976_000u64;
        let mut d = crate::sampler::dither::Dither::new(0, 42);
        let (mut t, mut reads) = (0u64, 0u64);
        let span = 10_000_000_000u64;
        while t < span {
            let due = d.next(t, slot);
            let ride = ride_from(due, slot).max(t + 1);
            let first_wake = ride.div_ceil(wake) * wake;
            t = if first_wake + 30_000 < due {
                first_wake
            } else {
                due
            };
            reads += 1;
            t += 4_000;
        }
        let per_slot = reads as f64 / (span / slot) as f64;
        assert!(
            (0.97..1.03).contains(&per_slot),
            "slot {slot}: {per_slot} reads a slot"
        );
    }
}
/// A counter whose first read is held up (the thread preempted in it) and whose later
/// reads are not; each read returns the next value.
struct Stalling(SourceInfo, u64);
impl EnergySource for Stalling {
    fn info(&self) -> &SourceInfo {
        &self.0
    }
    fn read(&mut self) -> Result<Reading, Error> {
        self.1 += 1;
        if self.1 == 1 {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Reading::Counter(self.1))
    }
}

/// A counter of `backend` (1 µJ a unit) whose first read stalls 2 ms, as `config` polls it.
fn stalling_counter(backend: &'static str, config: &Config) -> Polled {
    let spec = CounterSpec {
        joules_per_unit: 1e-6,
        wrap: None,
    };
    let (p, _, _) = Polled::new(
        Box::new(Stalling(info(backend, "", Some(spec)), 0)),
        Reading::Counter(0),
        (0, 0),
        0.0,
        config,
    );
    p
}

#[test]
fn a_phase_locked_counter_read_held_up_is_read_again() {
    // Its change is put at the latest update before the read's middle: a read held up
    // for milliseconds after it took its value saw an update periods before that.
    let mut p = stalling_counter("powercap", &Config::default());
    assert!(p.phase.is_some());
    p.read_cost_ns = 2_000;
    let (reading, t_before, t_after) = read_timed(&mut p);
    assert!(matches!(reading, Ok(Reading::Counter(2))), "{reading:?}");
    assert!(t_after >= t_before);
    // Without a phase lock (read at its own pace, stamped at the read), a counter keeps
    // its first reading.
    let unlocked = Config {
        phase_lock: false,
        ..Config::default()
    };
    let mut q = stalling_counter("powercap", &unlocked);
    assert!(q.phase.is_none());
    assert!(matches!(read_timed(&mut q).0, Ok(Reading::Counter(1))));
}

#[test]
fn a_source_whose_usual_cost_is_not_known_yet_is_read_once() {
    // A source's usual cost is learned from its reads (see `poll_one`): before the first,
    // any read is "four times" the nothing known, and an expensive counter (an NVML energy
    // read of a few ms) was read twice at each of its first few polls, the usual cost
    // ramping up from zero.
    let mut p = stalling_counter("nvml", &Config::default());
    assert!(p.phase.is_some());
    assert_eq!(p.read_cost_ns, 0);
    assert!(matches!(read_timed(&mut p).0, Ok(Reading::Counter(1))));
    // The same for power sampled at the read.
    let mut q = polled(info("nvml", "", None), 0);
    q.source = Box::new(Stalling(info("nvml", "", None), 0));
    assert!(q.instant);
    assert!(matches!(read_timed(&mut q).0, Ok(Reading::Counter(1))));
}

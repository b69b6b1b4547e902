//! How often a power-only source is read: at its interval while quiet, and while regions are
//! marked or open as often as [`Config::power_interval`] asks, within a budget of CPU time
//! ([`Config::power_share`] of a core).
//!
//! A power-only source (a GPU without an energy counter, a hwmon meter sampled at the read) is
//! integrated with the trapezoid rule over reads at random instants (see [`super::dither`]).
//! The integral is unbiased for a load of any period, and its spread under a load with sharp
//! edges is set by the read spacing `h` (whatever the sequence of read instants: the error's
//! spectrum cannot be lowered at every frequency above one per slot at once): each harmonic of
//! the load keeps `1 - sinc²(π n h / P)` of the error of independent instants. Over 5 s under a
//! 50/250 W square wave that is, one standard deviation, ±1.9 % (20 ms period) and ±1.2 %
//! (50 ms) read every 8 ms, ±0.49 % and ±0.31 % every 2 ms, ±0.32 % and ±0.20 % every 1.3 ms:
//! within 1 % in every run at periods from 20 ms needs reads about every 1.3 ms. Each source
//! also keeps the variance of its integral, estimated from its
//! readings (see [`crate::timeline::Accumulator::variance_j2`]): a region's uncertainty adds
//! two standard deviations of it.
//!
//! A device that holds its reading (NVML's board power moves every 20-100 ms) samples the load
//! on its own fixed grid, and those samples alias with a load of a commensurate period (4-14 %
//! over 5 s under 34 and 50 ms loads on a 20 ms grid), at any read rate: reading more often
//! than the device moves buys nothing there. The accumulator learns the hold from the reads,
//! places each reading on the device's sample, and states the bound the device's sampling
//! leaves, summed as it is (see [`crate::timeline::held`]).
//!
//! A read costs the read itself (an NVML power read: 3-5 µs) and, when nothing else wakes the
//! thread then, a wake-up ([`WAKE_NS`]). A power source's read instant is random anyway, so it
//! rides on a wake-up for another source (CPU counters read every millisecond while regions
//! are marked) that comes within [`RIDE_NS`] before it. Reads take at most
//! [`Config::power_share`] of a core (0.3 % unless set): the slot is never shorter than the
//! smoothed cost of a read (wake-up included as often as reads do not ride) divided by that
//! share. Riding on the CPU counters' wake-ups, that is about 1.3 ms; paying its own
//! wake-ups (a GPU alone, or the counters read sparsely in a long region without marks) about
//! 8 ms, which leaves 2-3 % errors in some runs under 20-60 ms loads: 1 % in every run then
//! takes a share of about 2-3 % of a core.

use super::config::Config;
use super::marks::WAKE_NS;
use super::poll::Polled;
use crate::error::Error;
use crate::sensors::{check, Reading, SourceInfo};

/// How early a read may ride on a wake-up for another source, at most (ns).
pub(super) const RIDE_NS: u64 = 1_000_000;
/// A read of power sampled at the read that takes longer than this (and than four times its
/// usual cost) is made again (see [`read_timed`]), ns.
pub(super) const SLOW_READ_NS: u64 = 200_000;
/// The same for a phase-locked counter: a guard of a RAPL zone (its changes are put at
/// updates as close as that to the read).
pub(super) const SLOW_COUNTER_READ_NS: u64 = 50_000;

/// Read `p`'s source: the result, and the instants just before and just after the read.
///
/// A power sampled at the read is taken at an unknown instant between the two, and stamped in
/// the middle. When the read took far longer than usual (the thread was preempted during it:
/// tens of milliseconds at times on a busy machine), the stamp can be that far from the
/// sample's instant, an error no spread accounts for (up to 2 % over 5 s under a 20 ms load,
/// measured): such a read is made again at once, and the second one counts (slow too, it is
/// taken as it is). So is a phase-locked counter's: the update its change is put at is the
/// latest before the read's middle, and a read preempted for milliseconds between its value
/// and its end saw an update one or more periods before that (a 20 ms region 5-10 % off at
/// that edge, measured on a busy machine).
pub(super) fn read_timed(p: &mut Polled) -> (Result<Reading, Error>, u64, u64) {
    let locked = p.phase.is_some();
    let floor = if locked {
        SLOW_COUNTER_READ_NS
    } else {
        SLOW_READ_NS
    };
    let slow = floor.max(4 * p.read_cost_ns);
    let t_before = crate::now_ns();
    let result = p.source.read();
    let t_after = crate::now_ns();
    // (No usual cost before the first read: nothing to be four times.)
    let unknown = p.read_cost_ns == 0;
    if !(p.instant || locked) || result.is_err() || unknown || t_after - t_before <= slow {
        return (result, t_before, t_after);
    }
    let t_again = crate::now_ns();
    match p.source.read() {
        Ok(again) => (Ok(again), t_again, crate::now_ns()),
        // The second read failed: the first one's reading stands, with its own instants.
        Err(_) => (result, t_before, t_after),
    }
}

/// Whether the source's power is sampled at the read: read more often, it tells more. (A
/// meter's average over its own window, a model's estimate or a value fed from elsewhere would
/// only repeat itself.)
pub(super) fn samples_at_read(info: &SourceInfo) -> bool {
    info.counter.is_none()
        && info.backend != "external"
        && check::reading_kind(info) == "instantaneous"
}

/// The earliest instant a read due at `due_ns` in slots of `slot_ns` may ride on another
/// wake-up: up to one slot before (at most [`RIDE_NS`]), so that a read whose slot is longer
/// than the CPU counters' wake-ups (about 1 ms apart) always finds one of them (a window of
/// half a slot missed a third of them at 1.3 ms slots, and each miss costs a wake-up).
pub(super) fn ride_from(due_ns: u64, slot_ns: u64) -> u64 {
    due_ns.saturating_sub(RIDE_NS.min(slot_ns))
}

/// The slot length for `p` while regions are open: the configured power interval, or longer
/// when the reads would cost more than [`Config::power_share`] of a core; never longer than its
/// interval.
pub(super) fn fast_slot(p: &Polled, config: &Config) -> u64 {
    let want = config.power_interval.as_nanos() as u64;
    if want == 0 || !p.instant {
        return p.interval_ns;
    }
    let cost = p.read_cost_ns.max(1_000) as f64 + (1.0 - p.rode) * WAKE_NS as f64;
    let floor = (cost / config.power_share.clamp(1e-6, 1.0)) as u64;
    want.max(floor).min(p.interval_ns)
}

/// Set each power source's slot length for the sampler's state (`fast`: regions are marked or
/// open).
/// A source whose slots got shorter is read within one of the new slots.
pub(super) fn set_slots(polled: &mut [Polled], fast: bool, now: u64, config: &Config) {
    for p in polled.iter_mut() {
        if p.dither.is_none() || p.failed_since.is_some() {
            continue;
        }
        let slot = if fast {
            fast_slot(p, config)
        } else {
            p.interval_ns
        };
        // Going fast, the next read comes within one short slot; other changes (the cost's
        // smoothing, going quiet) take effect from the next read.
        let shorter = slot < p.slot_ns && p.slot_ns == p.interval_ns;
        // Going fast or quiet (the slot's length follows the smoothed cost of a read too, by
        // a little at a time): the gaps between readings change on purpose.
        if slot > 2 * p.slot_ns || 2 * slot < p.slot_ns {
            p.new_spacing();
        }
        p.slot_ns = slot;
        if shorter {
            if let Some(d) = p.dither.as_mut() {
                d.restart(now);
                p.due_ns = p.due_ns.min(d.next(now, slot));
                p.ride_ns = ride_from(p.due_ns, slot).max(now + 1);
            }
        }
    }
}

/// After a wake-up that read the sources in `read` (by index): note, for each power source
/// read, whether the wake-up was made for another kind of source (`anchor`: one due then that
/// is not a power source). Power sources sharing a wake-up only among themselves do not count:
/// none of them would be paying for it.
pub(super) fn note_rides(polled: &mut [Polled], read: &[usize], anchor: bool) {
    for &i in read {
        let p = &mut polled[i];
        if p.dither.is_some() {
            p.rode = p.rode * 0.9 + if anchor { 0.1 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
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
            0,
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

    #[test]
    fn a_phase_locked_counter_read_held_up_is_read_again() {
        // Its change is put at the latest update before the read's middle: a read held up
        // for milliseconds after it took its value saw an update periods before that.
        let spec = CounterSpec {
            joules_per_unit: 1e-6,
            wrap: None,
        };
        let (mut p, _, _) = Polled::new(
            Box::new(Stalling(info("powercap", "", Some(spec)), 0)),
            Reading::Counter(0),
            0,
            0.0,
            &Config::default(),
        );
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
        let (mut q, _, _) = Polled::new(
            Box::new(Stalling(info("powercap", "", Some(spec)), 0)),
            Reading::Counter(0),
            0,
            0.0,
            &unlocked,
        );
        assert!(q.phase.is_none());
        assert!(matches!(read_timed(&mut q).0, Ok(Reading::Counter(1))));
    }

    #[test]
    fn a_source_whose_usual_cost_is_not_known_yet_is_read_once() {
        // A source's usual cost is learned from its reads (see `poll_one`): before the first,
        // any read is "four times" the nothing known, and an expensive counter (an NVML energy
        // read of a few ms) was read twice at each of its first few polls, the usual cost
        // ramping up from zero.
        let spec = CounterSpec {
            joules_per_unit: 1e-6,
            wrap: None,
        };
        let (mut p, _, _) = Polled::new(
            Box::new(Stalling(info("nvml", "", Some(spec)), 0)),
            Reading::Counter(0),
            0,
            0.0,
            &Config::default(),
        );
        assert!(p.phase.is_some());
        assert_eq!(p.read_cost_ns, 0);
        assert!(matches!(read_timed(&mut p).0, Ok(Reading::Counter(1))));
        // The same for power sampled at the read.
        let mut q = polled(info("nvml", "", None), 0);
        q.source = Box::new(Stalling(info("nvml", "", None), 0));
        assert!(q.instant);
        assert!(matches!(read_timed(&mut q).0, Ok(Reading::Counter(1))));
    }
}

//! The simulated machine: its power traces, and the counters it writes as the real backends
//! read them.

use std::time::Duration;

use carbonctx_sampler::{msr, now_ns, powercap, Domain, EnergySource, Reading};
use carbonctx_sim::{SimMachine, SimSpec, SimZone, SquareWave, SIM_PERF_TYPE};

fn numeric_energy(w: &SquareWave, elapsed_ns: u64, step_ns: u64) -> f64 {
    // Midpoint rule on a grid fine against the period.
    let mut e = 0.0;
    let mut t = 0;
    while t < elapsed_ns {
        let dt = step_ns.min(elapsed_ns - t);
        e += w.power_w(t + dt / 2) * dt as f64 * 1e-9;
        t += dt;
    }
    e
}

#[test]
fn square_wave_integral_matches_numeric_integral() {
    let waves = [
        SquareWave {
            low_w: 40.0,
            high_w: 120.0,
            period_ns: 50_000_000,
            duty: 0.5,
        },
        SquareWave {
            low_w: 3.0,
            high_w: 17.5,
            period_ns: 7_000_003,
            duty: 0.3,
        },
        SquareWave {
            low_w: 10.0,
            high_w: 90.0,
            period_ns: 1_000_000,
            duty: 0.0,
        },
        SquareWave {
            low_w: 10.0,
            high_w: 90.0,
            period_ns: 1_000_000,
            duty: 1.0,
        },
        SquareWave::constant(42.0),
    ];
    for w in &waves {
        for elapsed in [
            0,
            1,
            999,
            12_345_678,
            50_000_000,
            123_456_789,
            1_000_000_007,
        ] {
            let exact = w.energy_j(elapsed);
            let numeric = numeric_energy(w, elapsed, 1_000);
            // The midpoint rule errs only in the steps that straddle an edge: at most
            // two edges per period, each off by at most one step's worth of the jump.
            let edges = 2.0 * (elapsed as f64 / w.period_ns.max(1) as f64 + 1.0);
            let bound = edges * (w.high_w - w.low_w).abs() * 1_000e-9 + 1e-9;
            assert!(
                (exact - numeric).abs() <= bound,
                "{w:?} at {elapsed}: {exact} vs {numeric}"
            );
        }
        // Monotone: power is never negative.
        assert!(w.energy_j(77_777_777) >= w.energy_j(33_333_333));
    }
    // Whole periods give exactly the mean power.
    let w = waves[0];
    assert!((w.energy_j(20 * w.period_ns) - w.mean_w() * 20.0 * 0.05).abs() < 1e-9);
}

/// Accumulates counter deltas modulo `wrap`.
struct Accumulator {
    last: Option<u64>,
    wrap: u64,
    units: u128,
}

impl Accumulator {
    fn new(wrap: u64) -> Self {
        Accumulator {
            last: None,
            wrap,
            units: 0,
        }
    }

    fn push(&mut self, v: u64) {
        if let Some(last) = self.last {
            self.units += u128::from(if v >= last {
                v - last
            } else {
                self.wrap - last + v
            });
        }
        self.last = Some(v);
    }
}

fn read_counter(src: &mut dyn EnergySource) -> u64 {
    match src.read().expect("read") {
        Reading::Counter(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn stepped_counters_wrap_and_match_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let wave = SquareWave {
        low_w: 40.0,
        high_w: 120.0,
        period_ns: 50_000_000,
        duty: 0.5,
    };
    // 0.5 J range: wraps every ~4-12 ms.
    let spec = SimSpec::new(dir.path(), 1)
        .with_zone(
            SimZone::new(Domain::Package, 0, wave)
                .with_max_energy_range_uj(499_999)
                .with_offset_j(0.25),
        )
        .with_zone(
            SimZone::new(Domain::Dram, 0, SquareWave::constant(6.0))
                .with_max_energy_range_uj(99_999),
        );
    let sim = SimMachine::new(spec).unwrap();
    let found = powercap::discover(&sim.roots());
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let mut sources = found.sources;
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].info().counter.unwrap().wrap, Some(500_000));
    assert_eq!(sources[1].info().id, "powercap:intel-rapl:0:0");

    let t0 = sim.t0_ns();
    let mut acc: Vec<Accumulator> = sources
        .iter()
        .map(|s| Accumulator::new(s.info().counter.unwrap().wrap.unwrap()))
        .collect();
    for (a, s) in acc.iter_mut().zip(sources.iter_mut()) {
        a.push(read_counter(s.as_mut()));
    }
    let mut wraps = 0;
    let steps = 300u64;
    for k in 1..=steps {
        let t = t0 + k * 1_000_000;
        sim.write_at(t).unwrap();
        for (a, s) in acc.iter_mut().zip(sources.iter_mut()) {
            let v = read_counter(s.as_mut());
            assert_eq!(v, sim.counter_uj_at(s.info().domain, 0, t).unwrap());
            if a.last.is_some_and(|l| v < l) {
                wraps += 1;
            }
            a.push(v);
        }
    }
    assert!(wraps > 20, "only {wraps} wraps");
    let t_end = t0 + steps * 1_000_000;
    for (a, s) in acc.iter().zip(sources.iter()) {
        let measured = a.units as f64 * 1e-6;
        let truth = sim.truth_j(s.info().domain, 0, t0, t_end).unwrap();
        // Only the floor at both ends can differ.
        assert!(
            (measured - truth).abs() <= 2e-6,
            "{}: {measured} vs {truth}",
            s.info().id
        );
    }
    assert_eq!(sim.write_count(), steps);
    assert_eq!(sim.write_times().len() as u64, steps);
}

#[test]
fn the_writer_thread_moves_counters_that_powercap_reads() {
    let dir = tempfile::tempdir().unwrap();
    // 2 J range at 10-30 W: a wrap every 70-200 ms, far more than the reader's poll period.
    let wave = SquareWave {
        low_w: 10.0,
        high_w: 30.0,
        period_ns: 20_000_000,
        duty: 0.25,
    };
    let spec = SimSpec::new(dir.path(), 1)
        .with_zone(SimZone::new(Domain::Package, 0, wave).with_max_energy_range_uj(1_999_999));
    let mut sim = SimMachine::new(spec).unwrap();
    let mut found = powercap::discover(&sim.roots());
    let src = found.sources[0].as_mut();
    let mut acc = Accumulator::new(2_000_000);
    acc.push(read_counter(src));
    sim.start().unwrap();
    assert!(sim.is_running());

    // The thread is named (by itself, once it runs: look a few times).
    let named = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "carbonctx-sim")
            })
    };
    let mut tries = 0;
    while !named() && tries < 10_000 {
        std::thread::sleep(Duration::from_millis(1));
        tries += 1;
    }
    assert!(named(), "no thread named carbonctx-sim");

    // Poll until three wraps have been checked against the truth (no time limit is asserted).
    // Each value read is matched to the write that produced it, and each interval between two
    // reads is checked on its own. An interval in which the trace moved by a whole counter range
    // or more (the reader, or the writer, was descheduled that long) cannot be told from a
    // shorter one by any reader; it is skipped, not counted, so scheduling never fails the test.
    let range_j = 2.0;
    let t0 = sim.t0_ns();
    let write_of = |v: u64, before_ns: u64| -> u64 {
        sim.write_times()
            .iter()
            .rev()
            .copied()
            .chain(std::iter::once(t0))
            .filter(|&t| t <= before_ns)
            .find(|&t| sim.counter_uj_at(Domain::Package, 0, t).unwrap() == v)
            .unwrap_or_else(|| panic!("no write produced {v}"))
    };
    let mut prev_write = write_of(acc.last.unwrap(), now_ns());
    let (mut checked, mut checked_wraps, mut skipped) = (0, 0, 0);
    while checked_wraps < 3 {
        std::thread::sleep(Duration::from_millis(1));
        let v = read_counter(src);
        let w = write_of(v, now_ns());
        let wrapped = acc.last.is_some_and(|l| v < l);
        let before = acc.units;
        acc.push(v);
        let truth = sim.truth_j(Domain::Package, 0, prev_write, w).unwrap();
        prev_write = w;
        if truth >= 0.95 * range_j {
            skipped += 1;
            continue;
        }
        let measured = (acc.units - before) as f64 * 1e-6;
        assert!(
            (measured - truth).abs() <= 2e-6,
            "interval {checked}: {measured} vs {truth}"
        );
        checked += 1;
        checked_wraps += u32::from(wrapped);
    }
    sim.stop();
    assert!(!sim.is_running());
    let times = sim.write_times();
    assert!(times.len() >= 2);
    assert!(times.windows(2).all(|w| w[0] < w[1]));
    // Without a skipped interval, the sum of the intervals is the whole trace to the last write
    // read; with one, it is short by whole ranges only.
    acc.push(read_counter(src));
    let t_last = *times.last().unwrap();
    let truth = sim.truth_j(Domain::Package, 0, t0, t_last).unwrap();
    let measured = acc.units as f64 * 1e-6;
    let missed = ((truth - measured) / range_j).round();
    assert!(
        (measured + missed * range_j - truth).abs() <= 4e-6,
        "{measured} vs {truth}"
    );
    assert!(
        missed <= f64::from(skipped),
        "{missed} ranges missed, {skipped} skipped"
    );
    assert!(sim.last_error().is_none());
    // Stopped means stopped.
    let count = sim.write_count();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(sim.write_count(), count);
}

#[test]
fn msr_files_follow_the_same_energy() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimSpec::new(dir.path(), 2)
        .with_zone(SimZone::new(
            Domain::Package,
            0,
            SquareWave::constant(100.0),
        ))
        .with_zone(SimZone::new(Domain::Dram, 0, SquareWave::constant(10.0)))
        .with_zone(SimZone::new(Domain::Package, 1, SquareWave::constant(80.0)))
        .with_zone(SimZone::new(Domain::Core, 1, SquareWave::constant(60.0)))
        .with_zone(SimZone::new(Domain::Psys, 0, SquareWave::constant(150.0)));
    let sim = SimMachine::new(spec).unwrap();
    let found = msr::discover(&sim.roots());
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let mut sources = found.sources;
    let ids: Vec<_> = sources.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(
        ids,
        [
            "msr:0:package",
            "msr:0:dram",
            "msr:0:psys",
            "msr:1:package",
            "msr:1:core"
        ]
    );
    // Ice Lake-X (the default model) counts DRAM in 2^-16 J, the rest in 2^-14 J.
    let t = sim.t0_ns() + 2_000_000_000;
    sim.write_at(t).unwrap();
    for s in &mut sources {
        let info = s.info().clone();
        let spec = info.counter.unwrap();
        let expect_unit = if info.domain == Domain::Dram {
            1.0 / 65536.0
        } else {
            1.0 / 16384.0
        };
        assert_eq!(spec.joules_per_unit, expect_unit, "{}", info.id);
        assert_eq!(spec.wrap, Some(1 << 32));
        let raw = read_counter(s.as_mut());
        let watts = match (info.domain, info.index) {
            (Domain::Package, 0) => 100.0,
            (Domain::Dram, 0) => 10.0,
            (Domain::Package, 1) => 80.0,
            (Domain::Core, 1) => 60.0,
            (Domain::Psys, 0) => 150.0,
            other => panic!("{other:?}"),
        };
        let e = 1000.0 + watts * 2.0;
        assert_eq!(
            raw,
            ((e / expect_unit).floor() as u64) & 0xFFFF_FFFF,
            "{}",
            info.id
        );
    }
}

/// The counters count in the unit the model gives each domain, as the MSR backend reads it:
/// 2^ESU µJ on a Silvermont Atom, whole joules for Sapphire Rapids' platform counter.
#[test]
fn msr_counters_count_in_the_models_units() {
    for (model, esu, domain, unit) in [
        (0x37, 5, Domain::Package, 32e-6),
        (0x4C, 5, Domain::Core, 32e-6),
        (0x8F, 14, Domain::Psys, 1.0),
        (0x8F, 14, Domain::Package, 1.0 / 16384.0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = SimSpec::new(dir.path(), 1).with_zone(SimZone::new(
            domain,
            0,
            SquareWave::constant(7.0),
        ));
        if domain != Domain::Package {
            spec = spec.with_zone(SimZone::new(Domain::Package, 0, SquareWave::constant(20.0)));
        }
        spec.cpu_model = model;
        spec.energy_status_unit = esu;
        let sim = SimMachine::new(spec).unwrap();
        let t = sim.t0_ns() + 2_000_000_000;
        sim.write_at(t).unwrap();
        let found = msr::discover(&sim.roots());
        assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
        let mut sources = found.sources;
        let s = sources
            .iter_mut()
            .find(|s| s.info().domain == domain)
            .unwrap();
        assert_eq!(
            s.info().counter.unwrap().joules_per_unit,
            unit,
            "{model:#x}"
        );
        let raw = read_counter(s.as_mut());
        let e = 1000.0 + 7.0 * 2.0;
        assert_eq!(
            raw,
            ((e / unit).floor() as u64) & 0xFFFF_FFFF,
            "{model:#x} {domain:?}"
        );
    }
}

#[test]
fn fail_reads_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimSpec::new(dir.path(), 1)
        .with_zone(SimZone::new(Domain::Package, 0, SquareWave::constant(20.0)))
        .with_zone(SimZone::new(Domain::Core, 0, SquareWave::constant(10.0)))
        .with_zone(SimZone::new(Domain::Uncore, 0, SquareWave::constant(1.0)))
        .with_zone(SimZone::new(Domain::Dram, 0, SquareWave::constant(2.0)))
        .with_zone(SimZone::new(Domain::Psys, 0, SquareWave::constant(40.0)));
    let sim = SimMachine::new(spec).unwrap();
    let found = powercap::discover(&sim.roots());
    let ids: Vec<_> = found
        .sources
        .iter()
        .map(|s| (s.info().id.clone(), s.info().domain))
        .collect();
    assert_eq!(
        ids,
        [
            ("powercap:intel-rapl:0".to_string(), Domain::Package),
            ("powercap:intel-rapl:0:0".to_string(), Domain::Core),
            ("powercap:intel-rapl:0:1".to_string(), Domain::Uncore),
            ("powercap:intel-rapl:0:2".to_string(), Domain::Dram),
            ("powercap:intel-rapl:1".to_string(), Domain::Psys),
        ]
    );
    let mut sources = found.sources;
    // Fixed width: the default range has 12 digits.
    let text = std::fs::read_to_string(sim.energy_path(Domain::Core, 0).unwrap()).unwrap();
    assert_eq!(text.len(), 13, "{text:?}");
    assert!(text.starts_with("00"), "{text:?}");

    sim.fail_reads(Domain::Core, 0, true).unwrap();
    assert!(sources[1].read().is_err());
    assert!(sources[0].read().is_ok());
    sim.fail_reads(Domain::Core, 0, false).unwrap();
    assert!(sources[1].read().is_ok());

    // The perf PMU description and cpuinfo are there too.
    let pmu = sim.roots().sys.join("bus/event_source/devices/power");
    assert_eq!(
        std::fs::read_to_string(pmu.join("type")).unwrap().trim(),
        SIM_PERF_TYPE.to_string()
    );
    let cpuinfo = std::fs::read_to_string(sim.roots().proc.join("cpuinfo")).unwrap();
    assert!(cpuinfo.contains("GenuineIntel"));
}

#[test]
fn invalid_specs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        SimSpec::new(dir.path(), 0),
        SimSpec::new(dir.path(), 1).with_zone(SimZone::new(
            Domain::Package,
            1,
            SquareWave::constant(1.0),
        )),
        SimSpec::new(dir.path(), 1).with_zone(SimZone::new(
            Domain::Gpu,
            0,
            SquareWave::constant(1.0),
        )),
        SimSpec::new(dir.path(), 1)
            .with_zone(SimZone::new(Domain::Package, 0, SquareWave::constant(1.0)))
            .with_zone(SimZone::new(Domain::Package, 0, SquareWave::constant(2.0))),
        SimSpec::new(dir.path(), 1).with_zone(SimZone::new(
            Domain::Package,
            0,
            SquareWave {
                low_w: 1.0,
                high_w: f64::NAN,
                period_ns: 1,
                duty: 0.5,
            },
        )),
    ];
    for spec in bad {
        let err = SimMachine::new(spec.clone()).unwrap_err();
        assert!(!err.to_string().is_empty(), "{spec:?}");
    }
    let sim = SimMachine::new(SimSpec::new(dir.path(), 1)).unwrap();
    assert!(sim.truth_j(Domain::Package, 0, 0, now_ns()).is_err());
    // Never on the live system.
    let err = SimMachine::new(SimSpec::new("/", 1)).unwrap_err();
    assert!(err.to_string().contains("live system"), "{err}");
    // A second machine on the same root replaces the first one's tree.
    drop(sim);
    let small = SimSpec::new(dir.path(), 1).with_zone(SimZone::new(
        Domain::Package,
        0,
        SquareWave::constant(1.0),
    ));
    let big = SimSpec::server(
        dir.path(),
        2,
        SquareWave::constant(1.0),
        SquareWave::constant(1.0),
    );
    drop(SimMachine::new(big).unwrap());
    let sim = SimMachine::new(small).unwrap();
    assert_eq!(powercap::discover(&sim.roots()).sources.len(), 1);
    assert_eq!(msr::discover(&sim.roots()).sources.len(), 1);
}

#[test]
fn readers_never_see_a_half_written_counter() {
    // Updates every 10 µs and a reader that reads as fast as it can: without guarded writes,
    // about one read in 10^6 saw a mix of two values' digits.
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SimSpec::new(dir.path(), 1).with_zone(
        SimZone::new(Domain::Package, 0, SquareWave::constant(300.0)).with_offset_j(0.0),
    );
    spec.update_period_ns = 10_000;
    let mut sim = SimMachine::new(spec).unwrap();
    let mut found = powercap::discover(&sim.roots());
    let src = found.sources[0].as_mut();
    sim.start().unwrap();
    let mut last = 0;
    let mut values = 0;
    while values < 300_000 {
        // A read that stays unparseable through the retries is an honest error; a wrong
        // number is not.
        if let Ok(Reading::Counter(v)) = src.read() {
            assert!(v >= last, "went back from {last} to {v}");
            last = v;
            values += 1;
        }
    }
    sim.stop();
    assert!(sim.write_count() > 0);
}

//! How good each source is, measured: how often its value changes, what a read costs, when its
//! counter wraps, and the shortest region it measures to about 1%.
//!
//! [`check`] reads every source on a thread of its own, as fast as its pace allows, for a bounded
//! time, and reports per source:
//!
//! - **update period**: the median time between changes of the value. A change is stamped at
//!   the midpoint between the read that first saw it and the read before, so the period is
//!   known to within the pace of the reads (a tenth of the source's default poll interval, or
//!   of the configured one where shorter, between 50 µs and 2 ms).
//! - **read cost**: the median wall time of one read.
//! - **wrap**: the counter's range in joules (`max_energy_range_uj` for powercap, the register
//!   width for MSRs) and, at the power seen during the check, how long it takes to wrap.
//! - **reading**: what one value is: `averaged` for energy counters (each update adds the energy
//!   since the one before, so the power between updates is their exact average) and for power
//!   files that say so; `instantaneous` for power sampled at one moment; `model` for estimates.
//!
//! ## The shortest region measured within about 1%
//!
//! A region's energy is the difference of the timeline at its two edges. The sampler learns of
//! a change one read after it happens and stamps it at the midpoint, so each edge is placed to
//! within half of the longer of the update period `U` and the poll interval `P`, plus the read
//! cost `c`: `δ = max(U, P) / 2 + c`. With power steady near the region's mean, an edge
//! misplaced by `δ` errs by at most `δ / T` of a region of length `T`; two edges, `2δ / T`.
//! Keeping that under 1% needs
//!
//! ```text
//! T ≥ 200 · δ = 100 · max(U, P) + 200 · c
//! ```
//!
//! (about 100 ms for RAPL, updated every millisecond; 2 to 10 s for GPU counters updated every
//! 20 to 100 ms). It is a bound for the worst placement of both edges, not a typical error:
//! typical errors are several times smaller, and phase-locked polling narrows `δ` further. A
//! source whose value did not change during the check, and an estimate, have no such length.

use std::time::{Duration, Instant};

use crate::sensors::{EnergySource, Method, Reading, SourceInfo};

/// Shortest and longest pause between two reads of one source during a check.
const MIN_PACE: Duration = Duration::from_micros(50);
const MAX_PACE: Duration = Duration::from_millis(2);
/// Changes needed before an update period is stated.
const MIN_CHANGES: usize = 3;

/// What a check found about one source.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceCheck {
    pub info: SourceInfo,
    /// Reads made, and how many of them failed.
    pub reads: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// How often the sampler polls it (its backend's configured interval, or its default).
    pub poll_interval: Duration,
    /// How often the source was read during the check (the pause between reads).
    pub pace: Duration,
    /// Changes of the value seen.
    pub changes: u64,
    /// Median time between changes; `None` with fewer than three changes.
    pub update_period: Option<Duration>,
    /// Median time one read takes.
    pub read_cost: Option<Duration>,
    /// Mean power over the check, watts (from the counter, or the mean of power readings).
    pub mean_power_w: Option<f64>,
    /// The counter's range in joules; `None` for power readings and counters that never wrap.
    pub wrap_joules: Option<f64>,
    /// How long the counter takes to wrap at `mean_power_w`.
    pub wrap_after: Option<Duration>,
    /// `averaged`, `instantaneous` or `model` (see the module documentation).
    pub reading: &'static str,
    /// The shortest region measured within about 1% (the module documentation gives the rule).
    pub shortest_region: Option<Duration>,
}

/// Reads each source on its own thread for `duration` and reports what it saw, in the order the
/// sources were given. Returns within about `duration` plus one read of the slowest source.
/// A source that cannot be read makes an entry with its errors; nothing here panics.
///
/// `intervals` are the sampler's poll intervals per backend, as its configuration gives them (a
/// backend not listed polls at its source's default): the poll interval enters the rule for the
/// shortest region.
pub fn check(
    sources: Vec<Box<dyn EnergySource>>,
    duration: Duration,
    intervals: &[(String, Duration)],
) -> Vec<SourceCheck> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .into_iter()
            .map(|mut src| {
                let info = src.info().clone();
                let poll = poll_interval(&info, intervals);
                let handle = std::thread::Builder::new()
                    .name("carbonctx-check".into())
                    .spawn_scoped(scope, move || check_one(src.as_mut(), duration, poll));
                (info, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(info, handle)| match handle {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| failed(info, intervals, "reading the source panicked")),
                Err(e) => failed(
                    info,
                    intervals,
                    &format!("could not start a thread to check it: {e}"),
                ),
            })
            .collect()
    })
}

/// The poll interval the sampler uses for a source: its backend's entry in `intervals`, else the
/// source's default; never below 50 µs.
pub fn poll_interval(info: &SourceInfo, intervals: &[(String, Duration)]) -> Duration {
    intervals
        .iter()
        .find(|(b, _)| b == info.backend)
        .map_or(info.interval, |(_, d)| *d)
        .max(MIN_PACE)
}

fn failed(info: SourceInfo, intervals: &[(String, Duration)], error: &str) -> SourceCheck {
    let poll = poll_interval(&info, intervals);
    SourceCheck {
        reading: reading_kind(&info),
        poll_interval: poll,
        pace: pace_for(info.interval.min(poll)),
        info,
        reads: 0,
        errors: 1,
        last_error: Some(error.to_string()),
        changes: 0,
        update_period: None,
        read_cost: None,
        mean_power_w: None,
        wrap_joules: None,
        wrap_after: None,
        shortest_region: None,
    }
}

/// The pause between reads for a source polled every `interval`.
pub fn pace_for(interval: Duration) -> Duration {
    (interval / 10).clamp(MIN_PACE, MAX_PACE)
}

/// The rule of the module documentation: `100 · max(U, P) + 200 · c`.
pub fn shortest_region(update: Duration, poll: Duration, read_cost: Duration) -> Duration {
    update.max(poll) * 100 + read_cost * 200
}

fn check_one(src: &mut dyn EnergySource, duration: Duration, poll: Duration) -> SourceCheck {
    let info = src.info().clone();
    // Paced by the source's own default (near its update rate) even where the sampler is set to
    // poll more slowly: the check is there to see the updates.
    let pace = pace_for(info.interval.min(poll));
    let start = Instant::now();
    let mut reads = 0u64;
    let mut errors = 0u64;
    let mut last_error = None;
    let mut costs: Vec<u64> = Vec::new();
    let mut change_times: Vec<f64> = Vec::new();
    let mut prev: Option<(Reading, f64)> = None;
    let mut first: Option<(Reading, f64)> = None;
    let mut joules = 0.0f64;
    let mut power_sum = 0.0f64;
    let mut power_count = 0u64;
    loop {
        let a = Instant::now();
        let r = src.read();
        let b = Instant::now();
        reads += 1;
        costs.push((b - a).as_nanos() as u64);
        let mid = ((a - start) + (b - a) / 2).as_secs_f64();
        match r {
            Ok(v) => {
                // A power that says when it stood: its value is what changes.
                let v = match v {
                    Reading::PowerAt { watts, .. } => Reading::Power(watts),
                    v => v,
                };
                if let Some((p, p_mid)) = prev {
                    if p != v {
                        change_times.push((p_mid + mid) / 2.0);
                    }
                    if let (Reading::Counter(old), Reading::Counter(new)) = (p, v) {
                        joules += counter_joules(&info, old, new);
                    }
                }
                if let Reading::Power(w) = v {
                    power_sum += w;
                    power_count += 1;
                }
                first.get_or_insert((v, mid));
                prev = Some((v, mid));
            }
            Err(e) => {
                errors += 1;
                last_error = Some(e.to_string());
            }
        }
        if start.elapsed() >= duration {
            break;
        }
        std::thread::sleep(pace);
    }
    costs.sort_unstable();
    let read_cost = (!costs.is_empty()).then(|| Duration::from_nanos(costs[costs.len() / 2]));
    let mut gaps: Vec<f64> = change_times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let update_period =
        (change_times.len() >= MIN_CHANGES).then(|| Duration::from_secs_f64(gaps[gaps.len() / 2]));
    let mean_power_w = match (first, prev) {
        (Some((Reading::Counter(_), t0)), Some((_, t1))) if t1 > t0 => Some(joules / (t1 - t0)),
        _ if power_count > 0 => Some(power_sum / power_count as f64),
        _ => None,
    };
    let wrap_joules = info
        .counter
        .and_then(|c| c.wrap.map(|w| w as f64 * c.joules_per_unit));
    let wrap_after = match (wrap_joules, mean_power_w) {
        (Some(j), Some(w)) if w > 0.0 => Duration::try_from_secs_f64(j / w).ok(),
        _ => None,
    };
    let shortest = match (info.method, update_period, read_cost) {
        (Method::Estimate, _, _) => None,
        (_, Some(u), Some(c)) => Some(shortest_region(u, poll, c)),
        _ => None,
    };
    SourceCheck {
        reading: reading_kind(&info),
        poll_interval: poll,
        info,
        reads,
        errors,
        last_error,
        pace,
        changes: change_times.len() as u64,
        update_period,
        read_cost,
        mean_power_w,
        wrap_joules,
        wrap_after,
        shortest_region: shortest,
    }
}

/// Joules between two counter values, across one wrap where the counter has a range.
fn counter_joules(info: &SourceInfo, old: u64, new: u64) -> f64 {
    let Some(spec) = info.counter else {
        return 0.0;
    };
    let units = if new >= old {
        new - old
    } else {
        match spec.wrap {
            Some(w) if old < w => w - old + new,
            _ => 0,
        }
    };
    units as f64 * spec.joules_per_unit
}

/// What one value of the source is (see the module documentation).
pub fn reading_kind(info: &SourceInfo) -> &'static str {
    match info.method {
        Method::Counter => "averaged",
        Method::Estimate => "model",
        Method::IntegratedPower => {
            let file = info
                .path
                .as_ref()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("");
            if file.contains("average") {
                "averaged"
            } else {
                "instantaneous"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::{CounterSpec, Domain};
    use crate::Error;

    /// A counter that moves by 1000 units (1 mJ at 1 µJ/unit) every `period`, wrapping at 10^6.
    struct Stepper {
        info: SourceInfo,
        start: Instant,
        period: Duration,
    }

    impl EnergySource for Stepper {
        fn info(&self) -> &SourceInfo {
            &self.info
        }
        fn read(&mut self) -> Result<Reading, Error> {
            let steps = self.start.elapsed().as_nanos() / self.period.as_nanos();
            Ok(Reading::Counter((steps as u64 * 1000) % 1_000_000))
        }
    }

    fn info(method: Method, path: &str) -> SourceInfo {
        SourceInfo {
            id: "test:0".into(),
            backend: "test",
            domain: Domain::Package,
            index: 0,
            label: "test".into(),
            method,
            counter: (method == Method::Counter).then_some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap: Some(1_000_000),
            }),
            interval: Duration::from_millis(10),
            path: Some(path.into()),
            uuid: None,
        }
    }

    #[test]
    fn measures_a_counter_with_a_known_cadence() {
        // A loaded machine may starve the reading thread for most of a short check (3 changes
        // seen in 400 ms under a load of 9 on 2 CPUs): a longer check is then run, as a user
        // would run it again.
        let mut out = Vec::new();
        for ms in [400, 3_000] {
            let src = Stepper {
                info: info(Method::Counter, "/x/energy_uj"),
                start: Instant::now(),
                period: Duration::from_millis(20),
            };
            let t = Instant::now();
            out = check(vec![Box::new(src)], Duration::from_millis(ms), &[]);
            // Bounded: the duration, one pause and one read (generous for a loaded machine).
            assert!(t.elapsed() < Duration::from_millis(ms) + Duration::from_secs(5));
            if out[0].changes >= 5 {
                break;
            }
        }
        let c = &out[0];
        assert_eq!(c.errors, 0);
        assert!(c.changes >= 5, "{c:?}");
        let u = c.update_period.unwrap().as_secs_f64();
        assert!((0.01..0.04).contains(&u), "{c:?}");
        // 1 mJ per 20 ms: 50 mW; wraps at 1 J, after about 20 s.
        let w = c.mean_power_w.unwrap();
        assert!((0.025..0.1).contains(&w), "{c:?}");
        assert_eq!(c.wrap_joules, Some(1.0));
        assert!(c.wrap_after.is_some());
        assert_eq!(c.reading, "averaged");
        let s = c.shortest_region.unwrap();
        assert!(s >= Duration::from_secs_f64(100.0 * u), "{c:?}");
    }

    /// Fails every read, or panics, as asked.
    struct Broken {
        info: SourceInfo,
        panic: bool,
    }

    impl EnergySource for Broken {
        fn info(&self) -> &SourceInfo {
            &self.info
        }
        fn read(&mut self) -> Result<Reading, Error> {
            assert!(!self.panic, "a source that panics");
            Err(Error::Invalid("the counter is gone".into()))
        }
    }

    #[test]
    fn failing_sources_are_reported_not_raised() {
        let failing = Broken {
            info: info(Method::Counter, "/x/energy_uj"),
            panic: false,
        };
        let panicking = Broken {
            info: info(Method::IntegratedPower, "/h/power1_input"),
            panic: true,
        };
        let out = check(
            vec![Box::new(failing), Box::new(panicking)],
            Duration::from_millis(50),
            &[("test".into(), Duration::from_millis(5))],
        );
        assert_eq!(out.len(), 2);
        let f = &out[0];
        assert!(f.reads >= 1 && f.errors == f.reads, "{f:?}");
        assert!(f
            .last_error
            .as_deref()
            .unwrap()
            .contains("the counter is gone"));
        assert_eq!(f.poll_interval, Duration::from_millis(5));
        assert_eq!(
            (f.update_period, f.shortest_region, f.mean_power_w),
            (None, None, None)
        );
        let p = &out[1];
        assert_eq!(p.last_error.as_deref(), Some("reading the source panicked"));
        assert_eq!((p.reading, p.shortest_region), ("instantaneous", None));
    }

    #[test]
    fn the_rule_and_the_labels() {
        let ms = Duration::from_millis;
        assert_eq!(
            shortest_region(ms(1), ms(1), Duration::from_micros(2)),
            Duration::from_micros(100_400)
        );
        assert_eq!(
            shortest_region(ms(20), ms(100), Duration::ZERO),
            Duration::from_secs(10)
        );
        assert_eq!(pace_for(ms(1)), Duration::from_micros(100));
        assert_eq!(pace_for(Duration::from_secs(1)), MAX_PACE);
        assert_eq!(pace_for(Duration::ZERO), MIN_PACE);
        assert_eq!(
            reading_kind(&info(Method::IntegratedPower, "/h/power1_average")),
            "averaged"
        );
        assert_eq!(
            reading_kind(&info(Method::IntegratedPower, "/h/power1_input")),
            "instantaneous"
        );
        assert_eq!(reading_kind(&info(Method::Estimate, "/proc/stat")), "model");
        let i = info(Method::Counter, "/x");
        assert!((counter_joules(&i, 999_000, 1_000) - 0.002).abs() < 1e-12);
    }
}

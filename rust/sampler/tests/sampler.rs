//! The sampler thread against synthetic sources whose counters follow a known power trace.

mod common_wave;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use carbonctx_sampler::sampler::{Config, Sampler};
use carbonctx_sampler::{
    now_ns, CounterSpec, Domain, EnergySource, Error, Method, Reading, SourceInfo,
};

const MS: u64 = 1_000_000;

/// 40 W / 120 W square wave with a 50 ms period, starting at `t0`.
fn energy_j(t0: u64, t: u64) -> f64 {
    common_wave::square_j(t0, t, 40.0, 120.0, 50 * MS)
}

/// A RAPL-like counter in µJ that updates every `update` ns and wraps at `wrap` µJ.
struct Synthetic {
    info: SourceInfo,
    t0: u64,
    update: u64,
    wrap: u64,
    fail: Arc<AtomicBool>,
}

impl Synthetic {
    fn new(id: &str, t0: u64, wrap: u64) -> Self {
        Synthetic {
            info: SourceInfo {
                id: id.into(),
                backend: "powercap",
                domain: Domain::Package,
                index: 0,
                label: id.into(),
                method: Method::Counter,
                counter: Some(CounterSpec {
                    joules_per_unit: 1e-6,
                    wrap: Some(wrap),
                }),
                interval: Duration::from_millis(1),
                path: None,
                uuid: None,
            },
            t0,
            update: MS,
            wrap,
            fail: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The energy the counter shows at `t`: the trace at the last update instant.
    fn shown(t0: u64, update: u64, t: u64) -> f64 {
        let k = (t.saturating_sub(t0)) / update;
        energy_j(t0, t0 + k * update)
    }
}

impl EnergySource for Synthetic {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn read(&mut self) -> Result<Reading, Error> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Invalid("zone vanished".into()));
        }
        let uj = (Self::shown(self.t0, self.update, now_ns()) * 1e6) as u64;
        Ok(Reading::Counter(uj % self.wrap))
    }
}

fn wait_resolved(s: &Sampler, t: u64) {
    assert!(
        s.wait_until_resolved(t, Duration::from_secs(10)),
        "marks not resolved within 10 s"
    );
}

#[test]
fn regions_match_the_trace_and_survive_fast_wraparound() {
    let t0 = now_ns();
    // 80 W on average: a 60 J range wraps every 0.75 s (often enough to wrap six times, rarely
    // enough that a loaded machine does not stall the sampler thread past a wrap).
    let src = Synthetic::new("pkg", t0, 60_000_000);
    let (s, unavailable) = Sampler::start(vec![Box::new(src)], Config::default()).unwrap();
    assert!(unavailable.is_empty());
    assert_eq!(s.sources().len(), 1);

    let mut spans = Vec::new();
    for _ in 0..3 {
        let id = s.begin();
        std::thread::sleep(Duration::from_millis(1700));
        s.end(id);
        spans.push(id);
    }
    wait_resolved(&s, now_ns());
    let done = s.drain();
    assert_eq!(done.len(), 3);
    let mut total_measured = 0.0;
    let mut total_truth = 0.0;
    for r in &done {
        let truth = energy_j(t0, r.t1_ns) - energy_j(t0, r.t0_ns);
        let got = r.joules[0];
        assert!(
            (got - truth).abs() / truth < 1e-3,
            "region {}: measured {got} J, truth {truth} J",
            r.id
        );
        assert!(r.uncertainty[0].is_finite());
        total_measured += got;
        total_truth += truth;
    }
    assert!((total_measured - total_truth).abs() / total_truth < 1e-3);
    let st = &s.status()[0];
    assert!(
        st.wraps >= 5,
        "expected the counter to wrap, saw {}",
        st.wraps
    );
    assert!(!st.failed);
}

#[test]
fn nested_and_overlapping_regions_resolve_independently() {
    let t0 = now_ns();
    let src = Synthetic::new("pkg", t0, u64::MAX);
    let (s, _) = Sampler::start(vec![Box::new(src)], Config::default()).unwrap();
    let outer = s.begin();
    std::thread::sleep(Duration::from_millis(30));
    let inner = s.begin();
    std::thread::sleep(Duration::from_millis(30));
    s.end(inner);
    std::thread::sleep(Duration::from_millis(30));
    s.end(outer);
    wait_resolved(&s, now_ns());
    let done = s.drain();
    let get = |id| done.iter().find(|r| r.id == id).unwrap().clone();
    let (o, i) = (get(outer), get(inner));
    assert!(o.t0_ns < i.t0_ns && i.t1_ns < o.t1_ns);
    assert!(o.joules[0] > i.joules[0]);
    for r in [&o, &i] {
        let truth = energy_j(t0, r.t1_ns) - energy_j(t0, r.t0_ns);
        // Edge error is bounded by about one update period of peak power on each side.
        assert!(
            (r.joules[0] - truth).abs() < 2.0 * 120.0 * 1e-3,
            "{r:?} vs {truth}"
        );
        assert!(
            (r.joules[0] - truth).abs() <= r.uncertainty[0] + 0.5 * 120.0 * 1e-3,
            "{r:?}"
        );
    }
    assert!(s.drain().is_empty(), "drain takes each region once");
}

#[test]
fn a_failing_source_is_marked_and_its_figures_are_nan() {
    let t0 = now_ns();
    let good = Synthetic::new("good", t0, u64::MAX);
    let bad = Synthetic::new("bad", t0, u64::MAX);
    let fail = Arc::clone(&bad.fail);
    let (s, _) = Sampler::start(vec![Box::new(good), Box::new(bad)], Config::default()).unwrap();
    let id = s.begin();
    std::thread::sleep(Duration::from_millis(20));
    fail.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    s.end(id);
    wait_resolved(&s, now_ns());
    let done = s.drain();
    assert_eq!(done.len(), 1);
    assert!(done[0].joules[0] > 0.0);
    assert!(done[0].joules[1].is_nan());
    // Marked once its errors have persisted (a few polls over some milliseconds): wait for it
    // rather than assume the sampler thread was scheduled often enough during the region.
    let deadline = now_ns() + 10_000_000_000;
    while !s.status()[1].failed && now_ns() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = s.status();
    assert!(st[1].failed);
    assert!(st[1]
        .last_error
        .as_deref()
        .unwrap()
        .contains("zone vanished"));
    assert!(!st[0].failed);
}

#[test]
fn a_source_failing_its_first_read_is_reported_not_polled() {
    let t0 = now_ns();
    let bad = Synthetic::new("bad", t0, u64::MAX);
    bad.fail.store(true, Ordering::SeqCst);
    let (s, unavailable) = Sampler::start(
        vec![Box::new(bad), Box::new(Synthetic::new("ok", t0, u64::MAX))],
        Config::default(),
    )
    .unwrap();
    assert_eq!(s.sources().len(), 1);
    assert_eq!(s.sources()[0].id, "ok");
    assert_eq!(unavailable.len(), 1);
    assert!(unavailable[0].reason.contains("zone vanished"));
}

#[test]
fn stop_resolves_open_marks_and_joins() {
    let t0 = now_ns();
    let (s, _) = Sampler::start(
        vec![Box::new(Synthetic::new("pkg", t0, u64::MAX))],
        Config::default(),
    )
    .unwrap();
    let id = s.begin();
    s.end(id);
    s.stop();
    assert!(!s.is_running());
    assert!(s.wait_until_resolved(u64::MAX, Duration::from_millis(1)));
    assert_eq!(s.drain().len(), 1);
}

#[test]
fn an_idle_counter_still_lets_marks_resolve() {
    struct Still(SourceInfo);
    impl EnergySource for Still {
        fn info(&self) -> &SourceInfo {
            &self.0
        }
        fn read(&mut self) -> Result<Reading, Error> {
            Ok(Reading::Counter(42))
        }
    }
    let info = Synthetic::new("idle", 0, u64::MAX).info;
    let (s, _) = Sampler::start(vec![Box::new(Still(info))], Config::default()).unwrap();
    let id = s.begin();
    let t = s.end(id);
    wait_resolved(&s, t);
    let done = s.drain();
    assert_eq!(done[0].joules[0], 0.0);
}

#[test]
fn a_caller_that_drains_slowly_loses_no_region() {
    use carbonctx_sampler::sampler::BACKLOG_HIGH;
    let t0 = now_ns();
    // Rows kept for the caller capped just above the backlog mark: every region ended in a
    // burst must still come out, resolved a little at a time as the caller makes room.
    let config = Config {
        max_resolved: BACKLOG_HIGH + 10,
        ..Config::default()
    };
    let (s, _) =
        Sampler::start(vec![Box::new(Synthetic::new("pkg", t0, u64::MAX))], config).unwrap();
    let n = 3 * BACKLOG_HIGH;
    let mut last = 0;
    for _ in 0..n {
        let id = s.begin();
        last = s.end(id);
    }
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up = s.wait_until_resolved(last, Duration::from_secs(5));
        let p = s.drain_packed(BACKLOG_HIGH / 2);
        got += p.len();
        if caught_up && p.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{got} of {n} regions after 30 s"
        );
    }
    got += s.drain_packed(usize::MAX).len();
    assert_eq!(got, n);
    assert_eq!(s.stats().dropped_regions, 0);
}

/// Three zones that update every millisecond, their updates 80 µs apart (learned by three
/// phase locks): while quiet, each is read every few updates. (That their reads share
/// wake-ups is measured in `benches/bench_sampler_cost.py`, wake-ups per second: how many
/// share depends on when the thread is scheduled, which a test must not.)
#[test]
fn counters_that_update_together_are_read_sparsely_while_quiet() {
    let t0 = now_ns();
    let zones: Vec<Box<dyn EnergySource>> = (0..3u64)
        .map(|k| {
            let src = Synthetic::new(&format!("zone{k}"), t0 + k * 80_000, u64::MAX);
            Box::new(src) as Box<dyn EnergySource>
        })
        .collect();
    let config = Config {
        fast_hold: Duration::from_millis(300),
        ..Config::default()
    };
    let (s, _) = Sampler::start(zones, config).unwrap();
    // Learned, bracketed over a few hundred updates, then quiet.
    std::thread::sleep(Duration::from_millis(2000));
    let reads = |s: &Sampler| s.status().iter().map(|st| st.reads).collect::<Vec<_>>();
    let r0 = reads(&s);
    std::thread::sleep(Duration::from_millis(1500));
    let r1 = reads(&s);
    s.stop();
    let per_zone: Vec<u64> = r0.iter().zip(&r1).map(|(a, b)| b - a).collect();
    // Read every few updates (1500 updates went by), not every one.
    assert!(
        per_zone.iter().all(|&n| (10..300).contains(&n)),
        "reads per zone {per_zone:?}: not sparse"
    );
}

#[test]
fn a_region_begun_before_a_sources_first_reading_has_no_figure_from_it() {
    // The counter was drawing power (40-120 W) for 30 ms before the sampler first read it:
    // a region begun then (an instant taken earlier) is not bracketed by any reading of it at
    // its start, and counting from the first reading would leave that energy out.
    let early = now_ns();
    std::thread::sleep(Duration::from_millis(30));
    let (s, _) = Sampler::start(
        vec![Box::new(Synthetic::new("pkg", early, u64::MAX))],
        Config::default(),
    )
    .unwrap();
    let before = s.begin_at(early);
    let after = s.begin();
    std::thread::sleep(Duration::from_millis(50));
    s.end(before);
    let t = s.end(after);
    wait_resolved(&s, t);
    let mut done = s.drain();
    done.sort_by_key(|r| r.t0_ns);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].t0_ns, early);
    assert!(done[0].joules[0].is_nan(), "{} J", done[0].joules[0]);
    assert!(done[0].uncertainty[0].is_nan());
    // One begun after the first reading is measured as always.
    let want = energy_j(early, done[1].t1_ns) - energy_j(early, done[1].t0_ns);
    let got = done[1].joules[0];
    assert!((got - want).abs() < 0.1 * want, "{got} J, want {want}");
    s.stop();
}

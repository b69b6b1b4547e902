//! A source the caller feeds (the node's BMC reading, pushed from Python) in the real sampler:
//! kept when it has no first reading (a gap until it has, however late the sampler's read of
//! it, and when the sampler's start waited for it, for the node's followers too), its held
//! power integrated into the region's joules, failed once its reading goes stale, and a
//! reading that says when it stood placed then (within the feed's lag), not when it was pushed.

use std::time::Duration;

use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::external::Feed;
use carbonctx_sampler::sampler::{Config, Sampler};
use carbonctx_sampler::{
    Domain, EnergySource, Error, Method, NodeConfig, Reading, Role, Roots, SourceInfo,
};

fn feed(stale: Duration) -> Feed {
    lagged(stale, Duration::ZERO)
}

fn info() -> SourceInfo {
    SourceInfo {
        id: "redfish:node".into(),
        backend: "redfish",
        domain: Domain::Node,
        index: 0,
        label: "node (BMC, Redfish)".into(),
        method: Method::IntegratedPower,
        counter: None,
        interval: Duration::from_millis(20),
        path: None,
        uuid: None,
    }
}

fn lagged(stale: Duration, lag: Duration) -> Feed {
    Feed::lagged(info(), stale, Duration::ZERO, lag)
}

/// The joules of the one region that ended at `t`, and its duration in seconds.
fn resolved(s: &Sampler, t: u64) -> (f64, f64) {
    assert!(s.wait_until_resolved(t, Duration::from_secs(30)));
    let mut all = s.drain();
    assert_eq!(all.len(), 1);
    let r = all.remove(0);
    (r.joules[0], (r.t1_ns - r.t0_ns) as f64 * 1e-9)
}

/// A region of 300 ms begun now measures the fed 200 W (within 1 %).
fn measures_the_held_200_w(s: &Sampler) {
    let id = s.begin();
    std::thread::sleep(Duration::from_millis(300));
    let t1 = s.end(id);
    let (j, d) = resolved(s, t1);
    assert!(
        (j - 200.0 * d).abs() <= 0.01 * 200.0 * d,
        "{j} J over {d} s"
    );
}

#[test]
fn a_fed_source_without_a_first_reading_is_kept_and_measures_once_fed() {
    let f = feed(Duration::from_secs(30));
    let (s, unavailable) = Sampler::start(vec![f.source()], Config::default()).unwrap();
    assert!(unavailable.is_empty());
    assert_eq!(s.sources().len(), 1);
    assert!(s.status()[0].failed);
    assert!(f.wanted(Duration::from_secs(5), Duration::ZERO));

    // A region begun before the first reading crosses the gap: no figure.
    let early = s.begin();
    f.push(200.0);
    std::thread::sleep(Duration::from_millis(1_500)); // the failed source is retried every 1 s
    assert!(!s.status()[0].failed);
    let t = s.end(early);
    assert!(resolved(&s, t).0.is_nan());

    // A region inside the fed time: the held power integrated.
    measures_the_held_200_w(&s);
    s.stop();
}

/// The sampler's end of a feed, its thread stalled for a while inside each read before the
/// feed takes its clock (as a loaded machine preempts it).
struct Stalled(Box<dyn EnergySource>, Duration);

impl EnergySource for Stalled {
    fn info(&self) -> &SourceInfo {
        self.0.info()
    }
    fn read(&mut self) -> Result<Reading, Error> {
        std::thread::sleep(self.1);
        self.0.read()
    }
    fn retry_first_read(&self) -> bool {
        self.0.retry_first_read()
    }
    fn lag(&self) -> Duration {
        self.0.lag()
    }
}

#[test]
fn a_first_reading_read_in_a_stalled_read_covers_nothing_before_its_instant() {
    let f = feed(Duration::from_secs(30));
    let cfg = Config {
        retry: Duration::from_millis(100),
        ..Config::default()
    };
    let stalled = Box::new(Stalled(f.source(), Duration::from_millis(20)));
    let (s, _) = Sampler::start(vec![stalled], cfg).unwrap();
    assert!(s.status()[0].failed);
    // A region begun 1 ns before the instant the first reading stands for: no reading
    // brackets its start, however the sampler's read of it was delayed.
    let t0 = carbonctx_sampler::now_ns();
    let early = s.begin_at(t0);
    assert!(f.push_at(200.0, Some(t0 + 1)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.status()[0].failed {
        assert!(std::time::Instant::now() < deadline, "never read");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = s.end(early);
    let (j, _) = resolved(&s, t);
    assert!(j.is_nan(), "{j} J");
    s.stop();
}

#[test]
fn a_first_reading_the_sampler_start_waited_for_covers_nothing_before_its_instant() {
    let f = Feed::new(info(), Duration::from_secs(30), Duration::from_secs(30));
    // Pushed while the sampler's first read waits for it, standing for 1 ns after `t0`.
    let pusher = f.clone();
    let push = std::thread::spawn(move || {
        assert!(pusher.wanted(Duration::from_secs(30), Duration::from_secs(30)));
        let t0 = carbonctx_sampler::now_ns();
        assert!(pusher.push_at(200.0, Some(t0 + 1)));
        t0
    });
    let (s, _) = Sampler::start(vec![f.source()], Config::default()).unwrap();
    let t0 = push.join().unwrap();
    assert!(!s.status()[0].failed);
    // A region begun (at an instant taken earlier) before the reading stood: no figure.
    let early = s.begin_at(t0);
    let t = s.end(early);
    let (j, _) = resolved(&s, t);
    assert!(j.is_nan(), "{j} J");
    // One begun after it measures it.
    measures_the_held_200_w(&s);
    s.stop();
}

#[test]
fn a_node_owners_first_read_that_waited_is_a_gap_for_its_followers_too() {
    let empty = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let f = Feed::new(info(), Duration::from_secs(30), Duration::from_secs(30));
    let opts = |external: Vec<Feed>| Options {
        roots: Roots {
            sys: empty.path().join("sys"),
            dev: empty.path().join("dev"),
            proc: empty.path().join("proc"),
            nvml_library: None,
        },
        cpu_backends: Vec::new(),
        nvml: false,
        gpu: false,
        hwmon: false,
        amd: false,
        tdp_model: TdpModelUse::Never,
        external,
        ..Options::default()
    };
    let node = NodeConfig::new("job-fed alice boot-x").in_dir(shm.path());
    let pusher = f.clone();
    let push = std::thread::spawn(move || {
        assert!(pusher.wanted(Duration::from_secs(30), Duration::from_secs(30)));
        let t0 = carbonctx_sampler::now_ns();
        assert!(pusher.push_at(200.0, Some(t0 + 1)));
        t0
    });
    let (owner, _) =
        Sampler::start_on_node(opts(vec![f]), Config::default(), node.clone()).unwrap();
    let t0 = push.join().unwrap();
    let (follower, _) = Sampler::start_on_node(opts(Vec::new()), Config::default(), node).unwrap();
    assert_eq!(follower.node_status().unwrap().role, Role::Follower);
    for s in [&owner, &follower] {
        assert_eq!(s.sources().len(), 1);
        // Begun before the first reading stood: no figure; begun after it: the held power.
        let early = s.begin_at(t0);
        let t = s.end(early);
        let (j, _) = resolved(s, t);
        assert!(j.is_nan(), "{j} J");
        measures_the_held_200_w(s);
    }
    follower.stop();
    owner.stop();
}

#[test]
fn a_stale_reading_is_not_held_forever() {
    let f = feed(Duration::from_millis(200));
    f.push(100.0);
    let cfg = Config {
        fail_after: 2,
        fail_time: Duration::from_millis(50),
        ..Config::default()
    };
    let (s, _) = Sampler::start(vec![f.source()], cfg).unwrap();
    assert!(!s.status()[0].failed);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !s.status()[0].failed {
        assert!(std::time::Instant::now() < deadline, "never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = s.status()[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("no new reading"), "{err}");
    let id = s.begin();
    let t = s.end(id);
    assert!(resolved(&s, t).0.is_nan());
    s.stop();
}

/// A region around a step from 100 W to 300 W pushed `delay` after it (standing for the step
/// when `timed`, for its push otherwise) into a feed that lags 1 s: the region's joules less
/// those of the step where it happened.
fn step_error(timed: bool, delay: Duration) -> f64 {
    let f = lagged(Duration::from_secs(30), Duration::from_secs(1));
    f.push(100.0);
    let (s, _) = Sampler::start(vec![f.source()], Config::default()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let id = s.begin();
    std::thread::sleep(Duration::from_millis(300));
    let step = carbonctx_sampler::now_ns();
    std::thread::sleep(delay);
    f.push_at(300.0, timed.then_some(step));
    std::thread::sleep(Duration::from_millis(400));
    let t1 = s.end(id);
    let (j, d) = resolved(&s, t1);
    s.stop();
    let t0 = t1 as f64 - d * 1e9;
    let truth = (100.0 * (step as f64 - t0) + 300.0 * (t1 - step) as f64) * 1e-9;
    j - truth
}

#[test]
fn a_timed_reading_is_placed_at_its_instant_not_at_its_push() {
    // Pushed 300 ms after the step it stands for: placed at the step (off by the sampler's
    // read spacing and any stall, here a few joules), where an untimed push is placed at the
    // push (200 W x 300 ms = 60 J short). The bound is half that.
    let delay = Duration::from_millis(300);
    let timed = step_error(true, delay);
    assert!(timed.abs() < 30.0, "timed: {timed} J off");
    let untimed = step_error(false, delay);
    assert!(untimed < -30.0, "untimed: {untimed} J off");
}

/// A region over part of a feed pushed every `period` (lagging `lag`) with readings that vary
/// (a BMC's node power), each standing for the instant of its push: the region's joules,
/// uncertainty, the truth (each reading held from its instant until the next one's), and the
/// readings the feed placed late (pushed as the sampler read it: their instant was passed).
fn regular_pushes(period: Duration, lag: Duration) -> (f64, f64, f64, u64) {
    let f = lagged(Duration::from_secs(30), lag);
    let mut pushed: Vec<(u64, f64)> = Vec::new();
    let mut push = |k: u64| {
        // 100-300 W, a different value each time (pseudo-random, fixed).
        let w = 100.0 + ((k * 7_919 + 13) % 201) as f64;
        let t = carbonctx_sampler::now_ns();
        assert!(f.push_at(w, Some(t)));
        pushed.push((t, w));
    };
    push(0);
    let (s, _) = Sampler::start(vec![f.source()], Config::default()).unwrap();
    // Pushes before the region (enough for a hold to be learned from them, were it learned),
    // through it, and after it.
    let mut next = std::time::Instant::now();
    let mut region = None;
    let mut t1 = 0;
    for k in 1..120 {
        next += period;
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        push(k);
        if k == 40 {
            region = Some(s.begin());
        }
        if k == 100 {
            t1 = s.end(region.take().unwrap());
        }
    }
    assert!(s.wait_until_resolved(t1, Duration::from_secs(30)));
    let r = s.drain().remove(0);
    s.stop();
    let (t0, t1) = (r.t0_ns, r.t1_ns);
    let mut truth = 0.0;
    for (i, &(t, w)) in pushed.iter().enumerate() {
        let end = pushed.get(i + 1).map_or(u64::MAX, |p| p.0);
        let (a, b) = (t.max(t0), end.min(t1));
        if b > a {
            truth += w * (b - a) as f64 * 1e-9;
        }
    }
    (r.joules[0], r.uncertainty[0], truth, f.late())
}

#[test]
fn a_feed_pushed_at_a_regular_period_is_integrated_as_held_not_retimed() {
    // Pushed every 30 ms (about every other read, at times two between reads): each reading
    // holds from its instant until the next one's. Read as if sampled at the read, the
    // readings' steps on a regular grid were learned as a device's hold (a bound of about
    // 100 J on this region, and held readings shifted back by half the period), and a
    // reading pushed as the one before it was still unread was passed over (2-4 J).
    for lag in [Duration::ZERO, Duration::from_millis(300)] {
        let (j, u, truth, late) = regular_pushes(Duration::from_millis(30), lag);
        let off = j - truth;
        eprintln!("lag {lag:?}: {j} J, truth {truth} J ({off:+} J), ± {u} J, {late} late");
        // Each reading is placed as late as the rest of the read that took it (a few µs:
        // 0.01 J here; 0.5 % leaves room for a read stalled 10 ms), one placed late (pushed
        // as the sampler read the feed, its instant passed) from one read later: at most
        // 300 W x 2 read slots (20 ms).
        let slack = late as f64 * 300.0 * 0.04;
        assert!(
            off.abs() < 5e-3 * truth + slack,
            "lag {lag:?}: {j} J, truth {truth} J"
        );
        // The edges' brackets (a read slot's joules each), no learned hold's bound.
        assert!(u < 0.1 * truth, "lag {lag:?}: ± {u} J of {truth} J");
    }
}

//! A source the caller feeds (the node's BMC reading, pushed from Python) in the real sampler:
//! kept when it has no first reading (a gap until it has), its held power integrated into
//! the region's joules, and failed once its reading goes stale.

use std::time::Duration;

use carbonctx_sampler::external::Feed;
use carbonctx_sampler::sampler::{Config, Sampler};
use carbonctx_sampler::{Domain, Method, SourceInfo};

fn feed(stale: Duration) -> Feed {
    let info = SourceInfo {
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
    };
    Feed::new(info, stale, Duration::ZERO)
}

/// The joules of the one region that ended at `t`, and its duration in seconds.
fn resolved(s: &Sampler, t: u64) -> (f64, f64) {
    assert!(s.wait_until_resolved(t, Duration::from_secs(30)));
    let mut all = s.drain();
    assert_eq!(all.len(), 1);
    let r = all.remove(0);
    (r.joules[0], (r.t1_ns - r.t0_ns) as f64 * 1e-9)
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
    let id = s.begin();
    std::thread::sleep(Duration::from_millis(300));
    let t1 = s.end(id);
    let (j, d) = resolved(&s, t1);
    assert!(
        (j - 200.0 * d).abs() <= 0.01 * 200.0 * d,
        "{j} J over {d} s"
    );
    s.stop();
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

//! An AMD GPU counted asleep (runtime-suspended: its PCI device's `power/runtime_status`, as
//! `Documentation/ABI/testing/sysfs-devices-power` describes it) through the real sampler, from
//! a temporary sysfs tree laid out as `amdgpu_pm.c` and the PM core make it: the energy is what
//! was read (0 W while asleep, the power file never read then), and each region's uncertainty
//! holds what a sleeping card may draw beyond that (up to 3 W) for the time it slept.

#[allow(dead_code)]
mod common_fs;
#[allow(dead_code)]
mod common_hwmon;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::discover::{self, Options};
use carbonctx_sampler::now_ns;
use carbonctx_sampler::sampler::{Config, Sampler};
use carbonctx_sampler::{NodeConfig, Resolved, Role};
use common_hwmon::{chip, options};

/// What a sleeping card may draw beyond the 0 W it is counted at (the label says so).
const ASLEEP_BOUND_W: f64 = 3.0;
const BDF: &str = "0000:0b:00.0";

/// An amdgpu card: `PPT` in `power1_label`, `watts` in `power1_input` (µW), and its PCI
/// device's runtime PM status.
fn card(root: &Path, status: &str, watts: u64) -> PathBuf {
    card_with(root, status, watts, "power1_input")
}

/// As [`card`], its power in `file` (`power1_average` on older kernels and parts: an average,
/// not sampled at the read).
fn card_with(root: &Path, status: &str, watts: u64, file: &str) -> PathBuf {
    let hw = chip(
        root,
        &format!("pci0000:00/0000:00:01.1/{BDF}"),
        2,
        &[
            (false, "name", "amdgpu\n"),
            (false, "power1_label", "PPT\n"),
            (false, file, &format!("{}\n", watts * 1_000_000)),
        ],
    );
    fs::create_dir_all(hw.join("device/power")).unwrap();
    fs::write(hw.join("device/power/runtime_status"), status).unwrap();
    fs::write(hw.join("device/power/control"), "auto\n").unwrap();
    hw
}

fn set_status(hw: &Path, status: &str) {
    fs::write(hw.join("device/power/runtime_status"), status).unwrap();
}

fn opts(root: &Path) -> Options {
    let mut opts = options(root);
    opts.amdsmi_library = Some(root.join("missing/libamd_smi.so"));
    opts
}

fn start(root: &Path) -> Sampler {
    start_with(root, Config::default())
}

fn start_with(root: &Path, config: Config) -> Sampler {
    let d = discover::discover(&opts(root));
    let ids: Vec<&str> = d.chosen.iter().map(|s| s.info().id.as_str()).collect();
    assert_eq!(
        ids,
        [format!("hwmon:amdgpu:{BDF}:power1")],
        "{:?}",
        d.unavailable
    );
    let (s, unavailable) = Sampler::start(d.chosen, config).unwrap();
    assert!(unavailable.is_empty(), "{unavailable:?}");
    s
}

/// Ends region `id` and waits for its result.
fn ended(s: &Sampler, id: u64) -> Resolved {
    let t = s.end(id);
    assert!(s.wait_until_resolved(t, Duration::from_secs(30)));
    s.drain().remove(0)
}

/// Asserts that `r`'s uncertainty is the sleep bound over `d` seconds asleep, once.
fn assert_bounded_asleep(r: &Resolved, d: f64, what: &str) {
    assert!(
        (r.uncertainty[0] - ASLEEP_BOUND_W * d).abs() <= 1e-6 * ASLEEP_BOUND_W * d + 1e-9,
        "± {} J over {d} s asleep{what}",
        r.uncertainty[0]
    );
}

fn seconds(t0: u64, t1: u64) -> f64 {
    t1.saturating_sub(t0) as f64 * 1e-9
}

/// A GPU asleep all through a region: 0 J (its file, which says 100 W, is not read), within
/// ± at least 3 W times the region's length.
#[test]
fn a_region_a_gpu_sleeps_through_is_0_j_within_the_bound_of_its_sleep() {
    let tmp = tempfile::tempdir().unwrap();
    let hw = card(tmp.path(), "suspended\n", 100);
    let s = start(tmp.path());
    sleep(Duration::from_millis(100));
    let id = s.begin();
    sleep(Duration::from_millis(300));
    let r = ended(&s, id);
    let d = seconds(r.t0_ns, r.t1_ns);
    assert_eq!(r.joules[0], 0.0);
    // Once for the time asleep, however many reads fell in it (and nothing else: every
    // reading is 0 W).
    assert_bounded_asleep(&r, d, "");
    // Awake from then on: its power is read (a steady 100 W).
    set_status(&hw, "active\n");
    sleep(Duration::from_millis(200));
    let id = s.begin();
    sleep(Duration::from_millis(300));
    let r = ended(&s, id);
    let d = seconds(r.t0_ns, r.t1_ns);
    assert!(
        (r.joules[0] - 100.0 * d).abs() < 1e-6 * 100.0 * d + 1e-9,
        "{r:?}"
    );
    s.stop();
}

/// A GPU asleep through a region longer than its timeline holds reads: the whole sleep is
/// bounded, not only its last reads (a sleeping GPU is read as often as an awake one, and its
/// bound grows at each read; a straight run of it is kept as its two ends).
#[test]
fn a_sleep_longer_than_the_timeline_holds_reads_is_bounded_in_full() {
    let tmp = tempfile::tempdir().unwrap();
    card(tmp.path(), "suspended\n", 100);
    let config = Config {
        timeline_capacity: 64,
        ..Config::default()
    };
    let s = start_with(tmp.path(), config);
    sleep(Duration::from_millis(100));
    // A span (a call of a tracked function: its start resolved only when it ends).
    let t0 = now_ns();
    sleep(Duration::from_millis(1000));
    s.end_span(t0, 7);
    assert!(s.wait_until_resolved(now_ns(), Duration::from_secs(30)));
    let r = s.drain().remove(0);
    let reads = s.status()[0].reads;
    assert_eq!(r.t0_ns, t0);
    let d = seconds(r.t0_ns, r.t1_ns);
    assert_eq!(r.joules[0], 0.0);
    assert_bounded_asleep(&r, d, &format!(" ({reads} reads)"));
    s.stop();
}

/// A GPU that wakes inside a region (a program starts using it): read again at the sampler's
/// next read, its power counts from then on, and the time it slept within the region is in
/// the bound.
#[test]
fn a_gpu_waking_mid_region_is_read_at_once_and_its_sleep_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let hw = card(tmp.path(), "suspended\n", 100);
    let s = start(tmp.path());
    sleep(Duration::from_millis(100));
    let id = s.begin();
    sleep(Duration::from_millis(300));
    // The status is read at every read: the sampler sees it asleep until at least now.
    let t_wake = now_ns();
    set_status(&hw, "active\n");
    sleep(Duration::from_millis(400));
    let r = ended(&s, id);
    let asleep = seconds(r.t0_ns, t_wake);
    let awake = seconds(t_wake, r.t1_ns);
    assert!(
        r.uncertainty[0] >= ASLEEP_BOUND_W * asleep - 1e-9,
        "± {} J for {asleep} s asleep",
        r.uncertainty[0]
    );
    // 100 W from its first read awake (reads are 50 ms apart or less; the trapezoid from
    // 0 W to it may reach half a read back): no more than 100 W for the time awake, and
    // most of it counted (a read that came late on a busy machine loses a little).
    let j = r.joules[0];
    assert!(j <= 100.0 * (awake + 0.05), "{j} J for {awake} s awake");
    assert!(
        j >= 100.0 * awake * 0.5,
        "{j} J for {awake} s awake: not read after waking"
    );
    s.stop();
}

/// A GPU counted by the power it averages (not sampled at the read: its uncertainty gets points
/// only once it sleeps) that slept under one owner of the node's sampler, then sleeps again
/// after a follower took over: that sleep is bounded in full, for the new owner and for the
/// process that follows it alike (the new owner's bound counts on from where the timeline's
/// stood; counted from 0 again, a region's start would read the old owner's bound and its end
/// the new one's, lower, and the region would get no bound at all).
#[test]
fn a_sleep_after_a_takeover_is_bounded_in_full_by_the_new_owner_and_its_follower() {
    let tmp = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    // 1 W awake: the regions' ± is the bound and little else.
    let hw = card_with(tmp.path(), "suspended\n", 1, "power1_average");
    let node = NodeConfig {
        takeover_poll: Duration::from_millis(100),
        ..NodeConfig::new("job-amd-takeover").in_dir(shm.path())
    };
    let start = || {
        let (s, _) = Sampler::start_on_node(opts(tmp.path()), Config::default(), node.clone())
            .expect("start on the node");
        assert_eq!(
            s.sources()[0].id,
            format!("hwmon:amdgpu:{BDF}:power1"),
            "{:?}",
            s.sources()
        );
        s
    };
    let owner = start();
    let both = [start(), start()];
    assert!(both
        .iter()
        .all(|s| s.node_status().unwrap().role == Role::Follower));
    // Asleep under the first owner (a bound of several joules), then awake.
    sleep(Duration::from_millis(1500));
    set_status(&hw, "active\n");
    sleep(Duration::from_millis(200));
    drop(owner);
    let deadline = now_ns() + 30_000_000_000;
    while !both
        .iter()
        .any(|s| s.node_status().unwrap().role == Role::Owner)
    {
        assert!(now_ns() < deadline, "nobody took over");
        sleep(Duration::from_millis(10));
    }
    sleep(Duration::from_millis(300));
    let ids: Vec<u64> = both.iter().map(|s| s.begin()).collect();
    sleep(Duration::from_millis(50));
    set_status(&hw, "suspended\n");
    let t_asleep = now_ns();
    sleep(Duration::from_millis(400));
    for (s, id) in both.iter().zip(ids) {
        let r = ended(s, id);
        let asleep = seconds(t_asleep, r.t1_ns);
        let d = seconds(r.t0_ns, r.t1_ns);
        assert!(
            (0.0..=1.0 * d).contains(&r.joules[0]),
            "{r:?} {:?} {:?}",
            s.node_status(),
            s.status()
        );
        assert!(
            r.uncertainty[0] >= ASLEEP_BOUND_W * asleep - 1e-9,
            "{:?}: ± {} J for {asleep} s asleep",
            s.node_status().unwrap().role,
            r.uncertainty[0]
        );
    }
}

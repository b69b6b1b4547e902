//! One sampler per node: owner and followers on one simulated node, counter reads that do not
//! grow with the followers, the owner killed with SIGKILL (in a child process: this test binary
//! run again with `CARBONCTX_NODE_CHILD` set), and what killed jobs leave behind.
//!
//! Tolerances come from the simulator's truth and every wait has a generous timeout: nothing
//! here depends on how fast the machine is.

#[allow(dead_code)]
mod common_fs;
mod common_nvml;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::{now_ns, Config, Domain, NodeConfig, Role, Sampler};
use carbonctx_sim::{SimGpu, SimMachine, SimSpec, SimZone, SquareWave};
use common_nvml::FakeNvml;

const WAVE: SquareWave = SquareWave {
    low_w: 40.0,
    high_w: 120.0,
    period_ns: 50_000_000,
    duty: 0.5,
};
const GPU_WAVES: [SquareWave; 2] = [
    SquareWave {
        low_w: 60.0,
        high_w: 250.0,
        period_ns: 70_000_000,
        duty: 0.4,
    },
    SquareWave {
        low_w: 30.0,
        high_w: 90.0,
        period_ns: 110_000_000,
        duty: 0.7,
    },
];
const WAIT: Duration = Duration::from_secs(60);

/// A running simulated node: one package (package and DRAM zones), and `gpus` GPUs.
fn node_sim(dir: &Path, gpus: usize) -> SimMachine {
    let mut spec = SimSpec::new(dir, 1)
        .with_zone(SimZone::new(Domain::Package, 0, WAVE))
        .with_zone(SimZone::new(Domain::Dram, 0, SquareWave::constant(5.0)));
    spec.gpus = GPU_WAVES[..gpus].iter().map(|w| SimGpu::new(*w)).collect();
    let mut sim = SimMachine::new(spec).expect("simulate a node");
    sim.start().expect("start the writer");
    sim
}

fn options(sim_root: &Path, nvml: Option<&FakeNvml>, visible: Option<&str>) -> Options {
    let mut roots = common_fs::roots_at(sim_root);
    roots.nvml_library = nvml.map(|f| f.lib.clone());
    Options {
        roots,
        cpu_backends: vec!["powercap".into()],
        nvml: nvml.is_some(),
        tdp_model: TdpModelUse::Never,
        cuda_visible_devices: visible.map(str::to_string),
        ..Options::default()
    }
}

fn node_config(dir: &Path, key: &str) -> NodeConfig {
    NodeConfig {
        takeover_poll: Duration::from_millis(100),
        ..NodeConfig::new(key).in_dir(dir)
    }
}

fn start(opts: Options, node: NodeConfig) -> Sampler {
    let (s, unavailable) =
        Sampler::start_on_node(opts, Config::default(), node).expect("start on the node");
    assert!(unavailable.is_empty(), "{unavailable:?}");
    s
}

fn role(s: &Sampler) -> Role {
    s.node_status().expect("a node sampler").role
}

fn ids(s: &Sampler) -> Vec<String> {
    s.sources().iter().map(|i| i.id.clone()).collect()
}

/// The truth of source `id` between two instants.
fn truth(sim: &SimMachine, id: &str, t0: u64, t1: u64) -> f64 {
    match id {
        "powercap:intel-rapl:0" => sim.truth_j(Domain::Package, 0, t0, t1).unwrap(),
        "powercap:intel-rapl:0:0" => sim.truth_j(Domain::Dram, 0, t0, t1).unwrap(),
        gpu => {
            let k: usize = gpu.trim_start_matches("nvml:").parse().unwrap();
            sim.gpu_truth_j(k, t0, t1).unwrap()
        }
    }
}

/// Whether `got` J is close enough to `want` J: within `rel` of it, or within the bracket the
/// sampler gives (`unc`, the counter brackets at both edges) and half an update of peak power
/// (a loaded machine polls late, which widens the bracket rather than moving the truth out).
fn close(got: f64, want: f64, rel: f64, unc: f64, slack_j: f64) -> bool {
    let err = (got - want).abs();
    err <= rel * want || err <= unc + slack_j
}

/// One region over `[t0, t1]` in `s`, resolved: its joules and uncertainty per source.
fn region_with_uncertainty(s: &Sampler, t0: u64, t1: u64) -> (Vec<f64>, Vec<f64>) {
    let id = s.begin_at(t0);
    s.end_at(id, t1);
    // Marks stamped in the past may wait one more pass of the thread after the frontier.
    let deadline = now_ns() + WAIT.as_nanos() as u64;
    loop {
        assert!(
            s.wait_until_resolved(now_ns(), WAIT),
            "not resolved in {WAIT:?}"
        );
        if let Some(r) = s.drain().into_iter().find(|r| r.id == id) {
            return (r.joules, r.uncertainty);
        }
        assert!(now_ns() < deadline, "region not resolved in {WAIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn owner_and_followers_resolve_the_same_joules_and_pick_their_own_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let sim = node_sim(dir.path(), 2);
    let fake = FakeNvml::for_sim(&sim, "");
    let node = node_config(shm.path(), "job-1 alice boot-x");
    let owner = start(options(dir.path(), Some(&fake), None), node.clone());
    assert_eq!(role(&owner), Role::Owner);
    let by_index = start(options(dir.path(), Some(&fake), Some("1")), node.clone());
    let by_uuid = start(
        options(
            dir.path(),
            Some(&fake),
            Some("GPU-00000000-0000-0000-0000-000000000000"),
        ),
        node.clone(),
    );
    for f in [&by_index, &by_uuid] {
        let st = f.node_status().unwrap();
        assert_eq!(st.role, Role::Follower);
        assert_eq!(st.owner_pid, std::process::id() as i32);
        assert_eq!(st.generation, 1);
        assert_eq!(st.node_sources.len(), 4);
    }
    let cpu = ["powercap:intel-rapl:0", "powercap:intel-rapl:0:0"];
    assert_eq!(ids(&owner), [cpu[0], cpu[1], "nvml:0", "nvml:1"]);
    assert_eq!(ids(&by_index), [cpu[0], cpu[1], "nvml:1"]);
    assert_eq!(ids(&by_uuid), [cpu[0], cpu[1], "nvml:0"]);
    assert_eq!(
        by_uuid.sources()[2].uuid.as_deref(),
        Some("GPU-00000000-0000-0000-0000-000000000000")
    );

    // The same interval in every process, marked while the counters move.
    let t0 = now_ns();
    let ids_live: Vec<u64> = [&owner, &by_index, &by_uuid]
        .iter()
        .map(|s| s.begin())
        .collect();
    std::thread::sleep(Duration::from_millis(2000));
    let t1 = now_ns();
    for (s, id) in [&owner, &by_index, &by_uuid].iter().zip(&ids_live) {
        s.end(*id);
    }
    let all = [
        ("owner", &owner, region_with_uncertainty(&owner, t0, t1)),
        (
            "by index",
            &by_index,
            region_with_uncertainty(&by_index, t0, t1),
        ),
        (
            "by uuid",
            &by_uuid,
            region_with_uncertainty(&by_uuid, t0, t1),
        ),
    ];
    for (who, s, (joules, unc)) in &all {
        for ((info, j), u) in s.sources().iter().zip(joules).zip(unc) {
            let want = truth(&sim, &info.id, t0, t1);
            // GPU counters update every 20 ms, RAPL every 1 ms.
            let (rel, slack) = if info.domain == Domain::Gpu {
                (0.02, 0.5 * 250.0 * 0.020)
            } else {
                (0.005, 0.5 * 120.0 * 0.001)
            };
            assert!(
                close(*j, want, rel, *u, slack),
                "{who} {}: {j} J (± {u}), truth {want} J",
                info.id
            );
            // Every process resolves against the same points: the same figure.
            let k = ids(&owner).iter().position(|x| *x == info.id).unwrap();
            let o = all[0].2 .0[k];
            assert!(
                (j - o).abs() <= 1e-9 * o.abs().max(1.0),
                "{who} {}: {j} J, owner {o} J",
                info.id
            );
        }
    }
    // Live marks resolve too (and followers' status shows no read of their own).
    for (s, id) in [&owner, &by_index, &by_uuid].iter().zip(&ids_live) {
        assert!(s.wait_until_resolved(now_ns(), WAIT));
        let _ = id;
    }
    for f in [&by_index, &by_uuid] {
        assert!(f
            .status()
            .iter()
            .all(|st| st.reads == 0 && st.gaps.is_empty()));
    }
    assert!(owner.status().iter().all(|st| st.reads > 10));
}

#[test]
fn counter_reads_on_the_node_do_not_grow_with_followers() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let _sim = node_sim(dir.path(), 0);
    let mut rates = Vec::new();
    for processes in [1usize, 2, 4] {
        let node = node_config(shm.path(), &format!("reads-{processes}"));
        let samplers: Vec<Sampler> = (0..processes)
            .map(|_| start(options(dir.path(), None, None), node.clone()))
            .collect();
        assert_eq!(role(&samplers[0]), Role::Owner);
        assert!(samplers[1..].iter().all(|s| role(s) == Role::Follower));
        let reads = |ss: &[Sampler]| -> u64 {
            ss.iter()
                .map(|s| s.status().iter().map(|st| st.reads).sum::<u64>())
                .sum()
        };
        // Every process marks regions for a while (the owner reads every update then).
        let (r0, t0) = (reads(&samplers), now_ns());
        let mut open: Vec<u64> = samplers.iter().map(|s| s.begin()).collect();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(50));
            for (s, id) in samplers.iter().zip(open.iter_mut()) {
                s.end(*id);
                *id = s.begin();
            }
        }
        let (r1, t1) = (reads(&samplers), now_ns());
        for (s, id) in samplers.iter().zip(&open) {
            s.end(*id);
        }
        let per_s = (r1 - r0) as f64 / ((t1 - t0) as f64 * 1e-9);
        rates.push((processes, per_s));
        // Followers read nothing; every read on the node is the owner's.
        for f in &samplers[1..] {
            assert!(f.status().iter().all(|st| st.reads == 0));
        }
        let owner_reads: u64 = samplers[0].status().iter().map(|st| st.reads).sum();
        let node_reads: u64 = samplers[0].node_status().unwrap().node_reads.iter().sum();
        assert!(owner_reads > 0);
        // The segment's count lags the owner's own by up to one refresh.
        assert!(node_reads > 0 && node_reads <= owner_reads);
        // Every process's regions resolved.
        for s in &samplers {
            assert!(s.wait_until_resolved(now_ns(), WAIT));
            assert_eq!(s.drain().len(), 11);
        }
    }
    eprintln!("counter reads per second on the node by processes: {rates:?}");
}

/// Kills the child when dropped (a failing test leaves no process behind).
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kid {
    /// This test binary again, as a process of the node running `node_child`; returns once it
    /// says which role it has.
    fn spawn(sim_root: &Path, node: &NodeConfig) -> (Kid, String) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "node_child", "--nocapture", "--test-threads=1"])
            .env("CARBONCTX_NODE_CHILD", "1")
            .env("NODE_SIM_ROOT", sim_root)
            .env("NODE_DIR", &node.dir)
            .env("NODE_KEY", &node.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the test binary as a child");
        let out = child.stdout.take().unwrap();
        let mut kid = Kid(child);
        for line in BufReader::new(out).lines() {
            let line = line.expect("the child's output");
            // The harness may have started the line ("test node_child ... ").
            if let Some(at) = line.find("ROLE ") {
                return (kid, line[at + 5..].trim().to_string());
            }
        }
        let status = kid.0.wait();
        panic!("the child ended without saying its role: {status:?}");
    }

    fn kill_9(&mut self) {
        // SAFETY: kill with a pid of our own child, which has not been waited for.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Run by `Kid::spawn` (does nothing in a normal test run): joins the node and waits to be
/// killed.
#[test]
fn node_child() {
    if std::env::var_os("CARBONCTX_NODE_CHILD").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let node = NodeConfig::new(var("NODE_KEY")).in_dir(var("NODE_DIR"));
    let s = start(options(Path::new(&var("NODE_SIM_ROOT")), None, None), node);
    // Straight to the process's stdout: the test harness may capture `println!`.
    let mut out = std::io::stdout();
    writeln!(out, "ROLE {}", role(&s).as_str()).unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = now_ns() + WAIT.as_nanos() as u64;
    while !ok() {
        assert!(now_ns() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn followers_take_over_from_an_owner_killed_with_sigkill_and_record_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let sim = node_sim(dir.path(), 0);
    let node = node_config(shm.path(), "job-kill");
    let (mut kid, kid_role) = Kid::spawn(dir.path(), &node);
    assert_eq!(kid_role, "owner");
    let followers: Vec<Sampler> = (0..2)
        .map(|_| start(options(dir.path(), None, None), node.clone()))
        .collect();
    for f in &followers {
        let st = f.node_status().unwrap();
        assert_eq!((st.role, st.owner_pid), (Role::Follower, kid.0.id() as i32));
    }
    let pkg = 0; // powercap:intel-rapl:0
    assert_eq!(followers[0].sources()[pkg].id, "powercap:intel-rapl:0");

    // Before the kill; across it; after the takeover.
    let t_a = now_ns();
    let across: Vec<u64> = followers.iter().map(|f| f.begin()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let t_b = now_ns();
    // Killed once both followers have the owner's points past `t_b` (however slow the
    // machine), so that the region before the kill is whole.
    wait_for("the owner published past t_b", || {
        followers.iter().all(|f| f.stats().frontier_ns > t_b)
    });
    let t_kill = now_ns();
    kid.kill_9();
    wait_for("a follower took over", || {
        followers.iter().any(|f| role(f) == Role::Owner)
    });
    let new_owner = followers
        .iter()
        .position(|f| role(f) == Role::Owner)
        .unwrap();
    for f in &followers {
        let st = f.node_status().unwrap();
        wait_for("everyone sees the new owner", || {
            f.node_status().unwrap().generation == 2
        });
        let _ = st;
    }
    let st = followers[new_owner].node_status().unwrap();
    assert_eq!(st.owner_pid, std::process::id() as i32);
    assert_eq!(st.takeovers, 1);
    std::thread::sleep(Duration::from_millis(300));
    let t_c = now_ns();
    std::thread::sleep(Duration::from_millis(700));
    let t_d = now_ns();
    for (f, id) in followers.iter().zip(&across) {
        f.end(*id);
    }
    // The region across the gap says so: no joules invented for it.
    for (f, id) in followers.iter().zip(&across) {
        let mut rows = Vec::new();
        wait_for("the region across the kill resolved", || {
            f.wait_until_resolved(now_ns(), WAIT);
            rows.extend(f.drain());
            rows.iter().any(|r| r.id == *id)
        });
        let r = rows.iter().find(|r| r.id == *id).unwrap();
        assert!(r.joules.iter().all(|j| j.is_nan()), "{r:?}");
    }
    for f in &followers {
        let before = region_with_uncertainty(f, t_a, t_b);
        let after = region_with_uncertainty(f, t_c, t_d);
        for (k, info) in f.sources().iter().enumerate() {
            for ((j, u), (a, b)) in [
                ((before.0[k], before.1[k]), (t_a, t_b)),
                ((after.0[k], after.1[k]), (t_c, t_d)),
            ] {
                let want = truth(&sim, &info.id, a, b);
                assert!(
                    close(j, want, 0.01, u, 0.5 * 120.0 * 0.001),
                    "{}: {j} J (± {u}) over [{a}, {b}], truth {want} J",
                    info.id
                );
            }
        }
        // The gap: from the dead owner's last read to the new owner's first, in every source.
        for st in f.status() {
            assert_eq!(st.gaps.len(), 1, "{:?}", st.gaps);
            let (g0, g1) = st.gaps[0];
            assert!(
                g0 <= t_kill && g1 >= t_kill,
                "gap {g0}..{g1}, kill at {t_kill}"
            );
        }
    }
    // Counter reads: the new owner's only.
    let readers = followers
        .iter()
        .filter(|f| f.status().iter().any(|st| st.reads > 0))
        .count();
    assert_eq!(readers, 1);
}

#[test]
fn a_killed_job_blocks_nobody_and_its_segment_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let _sim = node_sim(dir.path(), 0);
    let old = node_config(shm.path(), "job-old");
    let (mut kid, kid_role) = Kid::spawn(dir.path(), &old);
    assert_eq!(kid_role, "owner");
    kid.kill_9();
    assert!(old.segment_path().exists() && old.lock_path().exists());

    // The same key again (a new job with the same key): the segment starts over.
    let again = start(options(dir.path(), None, None), old.clone());
    let st = again.node_status().unwrap();
    assert_eq!((st.role, st.generation), (Role::Owner, 1));
    assert_eq!(st.owner_pid, std::process::id() as i32);
    drop(again);

    // Another job killed, then a new one: not blocked, and what the killed one left is removed.
    let killed = node_config(shm.path(), "job-killed");
    let (mut kid, _) = Kid::spawn(dir.path(), &killed);
    kid.kill_9();
    let new = NodeConfig {
        reclaim_grace: Duration::ZERO,
        ..node_config(shm.path(), "job-new")
    };
    let s = start(options(dir.path(), None, None), new);
    let st = s.node_status().unwrap();
    assert_eq!(st.role, Role::Owner);
    assert!(
        st.reclaimed.contains(&killed.segment_path()),
        "{:?}",
        st.reclaimed
    );
    assert!(st.reclaimed.contains(&killed.lock_path()));
    assert!(!killed.segment_path().exists() && !killed.lock_path().exists());
    // The segment of "job-old" (its owner stopped, in a process that lives on) goes too.
    assert!(
        st.reclaimed.contains(&old.segment_path()),
        "{:?}",
        st.reclaimed
    );
    let id = s.begin();
    let t = s.end(id);
    assert!(s.wait_until_resolved(t, WAIT));
}

#[test]
fn an_owner_that_stops_hands_over_to_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let sim = node_sim(dir.path(), 0);
    let node = node_config(shm.path(), "job-handover");
    let owner = start(options(dir.path(), None, None), node.clone());
    let follower = start(options(dir.path(), None, None), node.clone());
    assert_eq!(role(&follower), Role::Follower);
    drop(owner);
    wait_for("the follower took over", || role(&follower) == Role::Owner);
    let st = follower.node_status().unwrap();
    assert_eq!((st.generation, st.takeovers), (2, 1));
    std::thread::sleep(Duration::from_millis(100));
    let t0 = now_ns();
    std::thread::sleep(Duration::from_millis(500));
    let t1 = now_ns();
    let (joules, unc) = region_with_uncertainty(&follower, t0, t1);
    for ((info, j), u) in follower.sources().iter().zip(&joules).zip(&unc) {
        let want = truth(&sim, &info.id, t0, t1);
        assert!(
            close(*j, want, 0.01, *u, 0.5 * 120.0 * 0.001),
            "{}: {j} J (± {u}), truth {want} J",
            info.id
        );
    }
    // A late process of the job finds the new owner.
    let late = start(options(dir.path(), None, None), node);
    let st = late.node_status().unwrap();
    assert_eq!(
        (st.role, st.generation, st.owner_pid),
        (Role::Follower, 2, std::process::id() as i32)
    );
}

#[test]
fn a_follower_that_falls_a_ring_behind_records_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let _sim = node_sim(dir.path(), 0);
    // A ring of 4 points: a follower that copies every 20 ms while the owner publishes a point
    // every millisecond misses most of them.
    let node = NodeConfig {
        ring_points: 4,
        ..node_config(shm.path(), "job-behind")
    };
    let owner = start(options(dir.path(), None, None), node.clone());
    let quiet = Config {
        fast_hold: Duration::from_millis(10),
        ..Config::default()
    };
    let (follower, _) =
        Sampler::start_on_node(options(dir.path(), None, None), quiet, node).unwrap();
    assert_eq!(role(&follower), Role::Follower);
    let t0 = now_ns();
    wait_for("a gap recorded by the follower", || {
        // The owner marks regions: it reads every update.
        let id = owner.begin();
        std::thread::sleep(Duration::from_millis(5));
        owner.end(id);
        follower.status()[0].gaps.iter().any(|g| g.0 >= t0)
    });
    let (g0, g1) = follower.status()[0].gaps[0];
    assert!(g0 < g1);
    // Nothing invented: a region across the gap has no figure for the source.
    let (joules, _) = region_with_uncertainty(&follower, g0.saturating_sub(1), g1 + 1);
    assert!(joules[0].is_nan(), "{joules:?}");
    assert!(owner.status()[0].gaps.is_empty());
}

#[test]
fn a_counter_reset_is_a_gap_for_the_owner_and_every_follower_not_a_wraparound() {
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let sim = node_sim(dir.path(), 0);
    let node = node_config(shm.path(), "job-reset");
    let owner = start(options(dir.path(), None, None), node.clone());
    let follower = start(options(dir.path(), None, None), node);
    assert_eq!(role(&follower), Role::Follower);
    std::thread::sleep(Duration::from_millis(50));
    let t0 = now_ns();
    std::thread::sleep(Duration::from_millis(20));
    // The package counter starts again from zero (1000 J in, of its 262,143 J range).
    sim.reset_counter(Domain::Package, 0).unwrap();
    wait_for("the reset seen by the owner", || {
        owner.status()[0].resets == 1
    });
    std::thread::sleep(Duration::from_millis(20));
    let t1 = now_ns();
    for s in [&owner, &follower] {
        wait_for("the gap published", || {
            s.status()[0].gaps.iter().any(|g| g.1 >= t0)
        });
        let (joules, _) = region_with_uncertainty(s, t0, t1);
        // No energy invented for the package across the reset; DRAM is unaffected.
        assert!(joules[0].is_nan(), "{joules:?}");
        assert!(joules[1] > 0.0 && joules[1] < 5.0, "{joules:?}");
        assert_eq!(s.status()[0].wraps, 0);
    }
    assert!(owner.status()[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("stepped back")));
    // Regions after the reset are measured again.
    std::thread::sleep(Duration::from_millis(20));
    let t2 = now_ns();
    std::thread::sleep(Duration::from_millis(200));
    let t3 = now_ns();
    for s in [&owner, &follower] {
        let (joules, unc) = region_with_uncertainty(s, t2, t3);
        let want = truth(&sim, "powercap:intel-rapl:0", t2, t3);
        assert!(
            close(joules[0], want, 0.02, unc[0], 0.5 * 120.0 * 0.001),
            "{} J, truth {want} J",
            joules[0]
        );
    }
}

#[test]
fn a_follower_states_a_power_only_gpus_uncertainty_as_its_owner_does() {
    // A GPU without an energy counter: its power is read at random instants, and the owner's
    // uncertainty of its integral (the readings' spread, and the bound of a device that holds
    // its reading) comes with the points to every follower.
    let dir = tempfile::tempdir().unwrap();
    let shm = tempfile::tempdir().unwrap();
    let spec = SimSpec::new(dir.path(), 1).with_zone(SimZone::new(Domain::Package, 0, WAVE));
    let mut spec = spec;
    let mut gpu = SimGpu::new(GPU_WAVES[0]);
    gpu.energy_counter = false;
    spec.gpus = vec![gpu];
    let mut sim = SimMachine::new(spec).expect("simulate a node");
    sim.start().expect("start the writer");
    let fake = FakeNvml::for_sim(&sim, "gpu0.has_energy=0\n");
    let node = node_config(shm.path(), "job-power-only");
    let owner = start(options(dir.path(), Some(&fake), None), node.clone());
    let follower = start(options(dir.path(), Some(&fake), None), node);
    assert_eq!(role(&follower), Role::Follower);
    let ids_live: Vec<u64> = [&owner, &follower].iter().map(|s| s.begin()).collect();
    let t0 = now_ns();
    std::thread::sleep(Duration::from_millis(1500));
    let t1 = now_ns();
    for (s, id) in [&owner, &follower].iter().zip(&ids_live) {
        s.end(*id);
    }
    let gpu = ids(&owner).iter().position(|id| id == "nvml:0").unwrap();
    assert_eq!(ids(&follower)[gpu], "nvml:0");
    let (j_o, u_o) = region_with_uncertainty(&owner, t0, t1);
    let (j_f, u_f) = region_with_uncertainty(&follower, t0, t1);
    assert!(u_o[gpu] > 0.0, "owner: ± {} J", u_o[gpu]);
    assert!(
        (u_f[gpu] - u_o[gpu]).abs() <= 0.05 * u_o[gpu] + 1e-6,
        "follower ± {} J, owner ± {} J",
        u_f[gpu],
        u_o[gpu]
    );
    assert!((j_f[gpu] - j_o[gpu]).abs() <= 1e-6 * j_o[gpu].abs() + 1e-9);
}

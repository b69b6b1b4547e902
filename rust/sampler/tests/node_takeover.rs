//! One sampler per node, changing hands: the owner killed with SIGKILL (in a child process: this
//! test binary run again with `CARBONCTX_NODE_CHILD` set) and the followers taking over with the
//! gap recorded, what killed jobs leave behind, and an owner that stops handing over.
//!
//! Tolerances come from the simulator's truth and every wait has a generous timeout: nothing
//! here depends on how fast the machine is.

#[allow(dead_code)]
mod common_fs;
mod common_node;
// For common_node's options(); these tests use no GPU, so the stand-in is never built here.
mod common_nvml;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carbonctx_sampler::{now_ns, NodeConfig, Role, Sampler};
use common_node::{
    close, node_config, node_sim, options, region_with_uncertainty, role, start, truth, wait_for,
    WAIT,
};

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

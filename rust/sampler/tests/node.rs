//! One sampler per node, as its followers see it: owner and followers on one simulated node
//! resolve the same joules and pick their own GPUs, counter reads do not grow with the
//! followers, a follower a ring behind and a counter reset are gaps (not a wraparound), and a
//! power-only GPU's uncertainty is stated alike by owner and follower. Ownership changing hands
//! is in `node_takeover.rs`.
//!
//! Tolerances come from the simulator's truth and every wait has a generous timeout: nothing
//! here depends on how fast the machine is.

#[allow(dead_code)]
mod common_fs;
mod common_node;
mod common_nvml;

use std::time::Duration;

use carbonctx_sampler::{now_ns, Config, Domain, NodeConfig, Role, Sampler};
use carbonctx_sim::{SimGpu, SimMachine, SimSpec, SimZone};
use common_node::{
    close, ids, node_config, node_sim, options, region_with_uncertainty, role, start, truth,
    wait_for, GPU_WAVES, WAIT, WAVE,
};
use common_nvml::FakeNvml;

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

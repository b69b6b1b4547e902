//! GPUs asleep (runtime-suspended): no paired die, measured through hwmon; an AMD SMI GPU that
//! falls asleep is read as asleep, not as failed; a counter asleep in a region bounds its sleep,
//! for the node's owner and followers alike.

use std::fs;
use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::{now_ns, Method, Reading};

use super::{built, ids, Machine};
use crate::common_nvml::{ms_since, reasons, sim_with_gpus, TRACE};

/// A GPU AMD SMI reads as 0 while its PCI device is runtime-suspended (`power/runtime_status`
/// `suspended`) is asleep, not a die reporting on a partner: AMD SMI's entry says so, and its
/// amdgpu hwmon directory keeps it measured, as asleep (0 W) until it wakes. The awake die
/// beside it with the same name is not labelled as covering it.
#[test]
fn a_gpu_asleep_is_no_paired_die_and_hwmon_measures_it() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let extra = "gpu0.name=AMD Radeon PRO W7900\ngpu0.bdf=0000:29:00.0\n\
                 gpu1.name=AMD Radeon PRO W7900\ngpu1.bdf=0000:2c:00.0\ngpu1.zero=1\n";
    let m = Machine::for_sim(&sim, &[0, 0], extra);
    let hw = m.hwmon(5, "0000:2c:00.0", Some(("power1_input", 5_000_000)));
    fs::create_dir_all(hw.join("device/power")).unwrap();
    fs::write(hw.join("device/power/runtime_status"), "suspended\n").unwrap();
    let mut found = m.discover(None, None);
    assert_eq!(
        ids(&found),
        ["amdsmi:0", "hwmon:amdgpu:0000:2c:00.0:power1"],
        "{}",
        reasons(&found)
    );
    let entry = found
        .unavailable
        .iter()
        .find(|u| u.what.contains("0000:2c:00.0"))
        .expect("AMD SMI's view of the sleeping GPU is explained");
    assert!(
        entry.reason.contains("not as a paired die"),
        "{}",
        entry.reason
    );
    assert!(entry.reason.contains("asleep"), "{}", entry.reason);
    assert!(!reasons(&found).contains("partner"), "{}", reasons(&found));
    let awake = found.sources.iter().find(|s| s.info().index == 0).unwrap();
    assert!(
        !awake.info().label.contains("paired die"),
        "{}",
        awake.info().label
    );
    let asleep = found
        .sources
        .iter_mut()
        .find(|s| s.info().index == 1)
        .unwrap();
    assert!(asleep.info().label.contains("asleep at discovery"));
    assert_eq!(asleep.read().unwrap(), Reading::Power(0.0));
    fs::write(hw.join("device/power/runtime_status"), "active\n").unwrap();
    assert_eq!(asleep.read().unwrap(), Reading::Power(5.0));
}

/// A GPU AMD SMI measures that falls asleep (runtime-suspended) during the run: AMD SMI is no
/// longer asked (its reads go through the driver, which on kernels since late 2024 refuses them
/// for a GPU that is not active, `NO_PERM` here, and on older ones wakes the GPU to answer).
/// The counter stands where it was and power reads 0 W, as through hwmon; the label states
/// the bias of that (up to 3 W low); an error while it is awake is still an error.
#[test]
fn an_amd_smi_gpu_that_falls_asleep_is_read_as_asleep_not_as_failed() {
    // The stand-in first (compiled once per run): the errors below start 150 ms from now.
    built();
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 20);
    let after = ms_since(sim.t0_ns(), now_ns()) + 150.0;
    let extra = format!(
        "gpu0.bdf=0000:29:00.0\ngpu0.energy_error=10\ngpu0.energy_error_after_ms={after}\n\
         gpu1.bdf=0000:2c:00.0\ngpu1.has_energy=0\ngpu1.power_field=current\n\
         gpu1.power_error=10\ngpu1.power_error_after_ms={after}\n"
    );
    let m = Machine::for_sim(&sim, &[0, 1], &extra);
    let status = |bdf: &str, text: &str| {
        let dir = m.sys().join("bus/pci/devices").join(bdf).join("power");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("runtime_status"), text).unwrap();
    };
    status("0000:29:00.0", "active\n");
    status("0000:2c:00.0", "active\n");
    let mut found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0", "amdsmi:1"], "{}", reasons(&found));
    assert_eq!(found.sources[0].info().method, Method::Counter);
    assert_eq!(found.sources[1].info().method, Method::IntegratedPower);
    for s in &found.sources {
        let label = &s.info().label;
        assert!(
            label.contains("runtime-suspended") && label.contains("up to 3 W"),
            "{label}"
        );
    }
    let Reading::Counter(count) = found.sources[0].read().unwrap() else {
        panic!("a counter source reads a counter");
    };
    assert!(matches!(found.sources[1].read().unwrap(), Reading::Power(w) if w > 0.0));
    status("0000:29:00.0", "suspended\n");
    status("0000:2c:00.0", "suspending\n");
    sleep(Duration::from_millis(200));
    for _ in 0..3 {
        assert_eq!(found.sources[0].read().unwrap(), Reading::Counter(count));
        assert_eq!(found.sources[1].read().unwrap(), Reading::Power(0.0));
    }
    // Awake again, the library's refusal is an error as before.
    status("0000:29:00.0", "active\n");
    let err = found.sources[0].read().unwrap_err().to_string();
    assert!(err.contains("amdsmi_get_energy_count failed"), "{err}");
}

/// An AMD SMI energy counter whose GPU sleeps inside a region (runtime-suspended, so AMD SMI is
/// not asked and the counter stands): the region's energy is what the counter says (it does not
/// move: the stand-in without a trace holds it), and its uncertainty holds up to 3 W for the time
/// the GPU slept, though the counter gave no new point then; for the node's sampler (the owner)
/// and for a process that follows it alike.
#[test]
fn an_amd_smi_counter_asleep_in_a_region_bounds_its_sleep_for_owner_and_follower() {
    use carbonctx_sampler::{Config, NodeConfig, Role, Sampler};

    let m = Machine::new("devices=1\ngpu0.bdf=0000:29:00.0\n");
    let status = |text: &str| {
        let dir = m.sys().join("bus/pci/devices/0000:29:00.0/power");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("runtime_status"), text).unwrap();
    };
    status("active\n");
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    assert_eq!(found.sources[0].info().method, Method::Counter);
    let shm = tempfile::tempdir().unwrap();
    let node = NodeConfig::new("job-amd-asleep alice boot-x").in_dir(shm.path());
    let start = || {
        let (s, unavailable) =
            Sampler::start_on_node(m.options(), Config::default(), node.clone()).expect("start");
        assert!(unavailable.is_empty(), "{unavailable:?}");
        assert_eq!(s.sources().len(), 1);
        s
    };
    let owner = start();
    let follower = start();
    assert_eq!(follower.node_status().unwrap().role, Role::Follower);
    let both = [&owner, &follower];
    let region = |f: &dyn Fn()| {
        let ids: Vec<u64> = both.iter().map(|s| s.begin()).collect();
        f();
        both.iter()
            .zip(ids)
            .map(|(s, id)| {
                let t = s.end(id);
                assert!(s.wait_until_resolved(t, Duration::from_secs(30)));
                s.drain().remove(0)
            })
            .collect::<Vec<_>>()
    };
    sleep(Duration::from_millis(100));
    // Read asleep from its first read after `asleep.0` until its first read after `asleep.1`.
    let asleep = std::cell::Cell::new((0, 0));
    let rows = region(&|| {
        sleep(Duration::from_millis(150));
        status("suspended\n");
        let t = now_ns();
        sleep(Duration::from_millis(300));
        asleep.set((t, now_ns()));
        status("active\n");
        sleep(Duration::from_millis(150));
    });
    let (t_asleep, t_wake) = asleep.get();
    let asleep_s = (t_wake - t_asleep) as f64 * 1e-9;
    for r in &rows {
        assert_eq!(r.joules[0], 0.0, "{r:?}");
        assert!(
            r.uncertainty[0] >= 3.0 * asleep_s - 1e-9,
            "± {} J for {asleep_s} s asleep",
            r.uncertainty[0]
        );
    }
    // A region after it woke: no bound left from the sleep.
    let rows = region(&|| sleep(Duration::from_millis(100)));
    for r in &rows {
        assert_eq!((r.joules[0], r.uncertainty[0]), (0.0, 0.0), "{r:?}");
    }
    follower.stop();
    owner.stop();
}

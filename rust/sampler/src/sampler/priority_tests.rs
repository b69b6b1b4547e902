//! The real-time budget check, on fake `/proc` and cgroup trees laid out as the kernel does.

use super::*;

/// A fake root: the system's budget, and the thread's `cgroup` and `mountinfo` files.
fn tree(system: Option<(i64, i64)>, cgroup: &str, mountinfo: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("proc/sys/kernel");
    std::fs::create_dir_all(&sys).unwrap();
    if let Some((r, p)) = system {
        std::fs::write(sys.join("sched_rt_runtime_us"), format!("{r}\n")).unwrap();
        std::fs::write(sys.join("sched_rt_period_us"), format!("{p}\n")).unwrap();
    }
    let task = dir.path().join("proc/self/task/7");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(task.join("cgroup"), cgroup).unwrap();
    std::fs::write(task.join("mountinfo"), mountinfo).unwrap();
    dir
}

fn group(root: &Path, dir: &str, runtime_us: i64, period_us: i64) {
    let d = root.join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("cpu.rt_runtime_us"), format!("{runtime_us}\n")).unwrap();
    std::fs::write(d.join("cpu.rt_period_us"), format!("{period_us}\n")).unwrap();
}

/// cgroup v1 with `cpu` and `cpuacct` mounted together (as systemd and Docker do).
const V1_CGROUP: &str = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
const V1_MOUNTS: &str = "\
22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/cpuacct\\040x rw - cgroup cgroup rw,cpuacct
";

#[test]
fn a_cgroup_with_a_small_real_time_budget_is_found() {
    let t = tree(Some((950_000, 1_000_000)), V1_CGROUP, V1_MOUNTS);
    let base = "sys/fs/cgroup/cpu,cpuacct";
    group(t.path(), base, 950_000, 1_000_000);
    group(t.path(), &format!("{base}/docker"), 900_000, 1_000_000);
    group(t.path(), &format!("{base}/docker/abc"), 2_000, 1_000_000);
    assert_eq!(
        rt_budget(t.path(), 7),
        Some(RtBudget {
            runtime_us: 2_000,
            period_us: 1_000_000,
            cgroup: true
        })
    );
    // Enough in the thread's group, too little in an ancestor's: the ancestor throttles it.
    group(t.path(), &format!("{base}/docker/abc"), 500_000, 1_000_000);
    group(t.path(), &format!("{base}/docker"), 0, 1_000_000);
    assert_eq!(rt_budget(t.path(), 7).map(|b| b.runtime_us), Some(0));
    // Enough everywhere (and -1, no limit).
    group(t.path(), &format!("{base}/docker"), -1, 1_000_000);
    assert_eq!(rt_budget(t.path(), 7), None);
    // A short period: a tenth of it, but under 10 ms.
    group(t.path(), &format!("{base}/docker/abc"), 5_000, 10_000);
    assert_eq!(rt_budget(t.path(), 7).map(|b| b.runtime_us), Some(5_000));
}

#[test]
fn a_namespaced_mount_and_the_system_budget() {
    // Inside a cgroup namespace the mount's root and the thread's path are both "/".
    let mounts = "40 31 0:40 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
    let t = tree(Some((-1, 1_000_000)), "3:cpu:/\n", mounts);
    group(t.path(), "sys/fs/cgroup/cpu", 20_000, 1_000_000);
    assert_eq!(rt_budget(t.path(), 7).map(|b| b.runtime_us), Some(20_000));
    group(t.path(), "sys/fs/cgroup/cpu", 950_000, 1_000_000);
    assert_eq!(rt_budget(t.path(), 7), None);
    // The system's budget, small: reported as the system's.
    let t = tree(Some((5_000, 1_000_000)), "3:cpu:/\n", mounts);
    assert_eq!(
        rt_budget(t.path(), 7),
        Some(RtBudget {
            runtime_us: 5_000,
            period_us: 1_000_000,
            cgroup: false
        })
    );
}

#[test]
fn cgroup_v2_or_nothing_readable_is_no_limit() {
    let v2 = "30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    let t = tree(Some((950_000, 1_000_000)), "0::/user.slice/x.scope\n", v2);
    assert_eq!(rt_budget(t.path(), 7), None);
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(rt_budget(empty.path(), 7), None);
    // A cgroup outside the mount's root (another namespace's) is not guessed at.
    let mounts = "40 31 0:40 /docker/other /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
    let t = tree(None, "3:cpu:/docker/abc\n", mounts);
    assert_eq!(rt_budget(t.path(), 7), None);
}

#[test]
fn mountinfo_escapes() {
    assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
    assert_eq!(unescape("/x\\04"), "/x\\04");
}

#[test]
fn the_budget_is_said() {
    let s = Scheduling::Normal {
        nice: -10,
        raised: 10,
        permitted: true,
        realtime_refused: false,
        rt_budget: Some(RtBudget {
            runtime_us: 2_000,
            period_us: 1_000_000,
            cgroup: true,
        }),
    };
    assert_eq!(
        s.to_string(),
        "nice -10 (real-time not used: its cgroup's real-time budget, 2000 of every 1000000 µs \
         (cpu.rt_runtime_us), could stall it for most of each period; at least 10 % and 10 ms \
         are needed)"
    );
}

/// The policy of the calling thread, the reset-on-fork flag apart, and the flag.
fn policy_now() -> (i32, bool) {
    // SAFETY: 0 names the calling thread.
    let p = unsafe { libc::sched_getscheduler(0) };
    (
        p & !libc::SCHED_RESET_ON_FORK,
        p & libc::SCHED_RESET_ON_FORK != 0,
    )
}

#[test]
fn a_long_step_runs_in_the_normal_class_and_the_thread_goes_back() {
    std::thread::spawn(|| {
        let said = std::sync::Mutex::new(Scheduling::Pending);
        // Not real-time: run as is.
        assert_eq!(normal_while(&said, policy_now), (libc::SCHED_OTHER, false));
        let got = raise_priority(true);
        if !got.is_realtime() {
            eprintln!("SCHED_FIFO is not permitted here: checked the normal class only");
            return;
        }
        *said.lock().unwrap() = got;
        let inside = normal_while(&said, || {
            // A thread started in the step does not inherit the real-time class either.
            let child = std::thread::spawn(policy_now).join().unwrap();
            (policy_now(), child)
        });
        assert_eq!(
            inside.0 .0,
            libc::SCHED_OTHER,
            "in the normal class during the step"
        );
        assert_eq!(inside.1 .0, libc::SCHED_OTHER);
        assert_eq!(
            policy_now(),
            (libc::SCHED_FIFO, true),
            "back in SCHED_FIFO after"
        );
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: 0 names the calling thread; the parameter is a local.
        assert_eq!(unsafe { libc::sched_getparam(0, &mut param) }, 0);
        assert_eq!(param.sched_priority, 1);
        assert!(said.lock().unwrap().is_realtime(), "and says so");
    })
    .join()
    .unwrap();
}

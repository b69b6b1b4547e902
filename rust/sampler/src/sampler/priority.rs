//! The sampler thread's scheduling, set by the thread itself when it starts (before its first
//! reads) and kept for [`super::Sampler::scheduling`] to report.
//!
//! With every core busy (data-loader workers, builds), a thread of the normal class wakes
//! milliseconds late however high its priority, and its reads then merge several counter
//! updates: the worst single short regions grow several-fold. So, with
//! [`super::Config::realtime`] (the default) and where the process may (root, CAP_SYS_NICE, or
//! an RLIMIT_RTPRIO of at least 1), the sampler thread runs in the real-time class at its
//! lowest priority, SCHED_FIFO 1, with SCHED_RESET_ON_FORK (a process or thread it might start,
//! a vendor library's included, does not inherit it; nor, in the normal class, a raised nice). Only this thread: the user's threads, the resolver's and the BMC reader's keep
//! their scheduling. Failing that (no permission, a cgroup with no real-time time) or with
//! `realtime` off, a higher normal priority: nice 10 below the thread's own (at most -20), where
//! RLIMIT_NICE allows; failing both, nothing changes.
//!
//! A real-time thread whose group has spent its real-time budget is not run at all until the
//! group's period ends, however idle the cores (Documentation/scheduler/sched-rt-group.rst):
//! in a cgroup (v1 `cpu` controller, kernels with RT group scheduling) given a small
//! `cpu.rt_runtime_us`, the thread would stall for most of each period, far worse than waking
//! late in the normal class. So the real-time class is asked for only where the thread's
//! cgroup and each of its ancestors, and the system as a whole
//! (`/proc/sys/kernel/sched_rt_runtime_us`), leave real-time threads at least
//! [`MIN_RT_SHARE`] of each period and [`MIN_RT_RUNTIME_US`] (see [`rt_budget`]). Under cgroup
//! v2 there is no such budget per cgroup (only the system's).
//!
//! Why this is safe at SCHED_FIFO: the thread sleeps between reads (a timed wait on a condition
//! variable) and a read of a counter file takes microseconds. Its only waits without sleeping
//! are a late read's wait just past an update (see `phase_late`), bounded at 200 µs of the
//! monotonic clock each, and nothing else spins (a counter file read half-written is read
//! again a bounded number of times, first after yielding, which at SCHED_FIFO gives way only
//! to other real-time threads, then after short sleeps). An expensive read (an NVML energy read can
//! take about 3 ms of CPU) also runs at SCHED_FIFO, within the share of a core that `costly`
//! and `power` give such reads; it holds one core that long, no more. Whatever happens, the
//! kernel's real-time throttling (`/proc/sys/kernel/sched_rt_runtime_us`, by default 0.95 s of
//! each second; -1 turns it off) leaves the normal class time on every core, so even a runaway
//! thread cannot take a core whole.

use std::fmt;
use std::path::{Path, PathBuf};

/// The least share of each period a real-time budget must leave real-time threads for the
/// sampler thread to join them (it takes a few per cent of a core at most; a budget it could
/// spend stalls it for the rest of the period).
pub const MIN_RT_SHARE: f64 = 0.1;
/// The least real-time budget per period, µs: an expensive read (about 3 ms of CPU for an
/// NVML energy read) must fit several times.
pub const MIN_RT_RUNTIME_US: i64 = 10_000;

/// A real-time budget too small for the sampler thread: where, and what it leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtBudget {
    /// `cpu.rt_runtime_us` (or the system's `sched_rt_runtime_us`).
    pub runtime_us: i64,
    /// `cpu.rt_period_us` (or the system's `sched_rt_period_us`).
    pub period_us: i64,
    /// A cgroup's (false: the system's).
    pub cgroup: bool,
}

/// How the sampler thread is scheduled, as it set itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// The thread has not set its scheduling yet.
    Pending,
    /// The real-time class: SCHED_FIFO (or SCHED_RR, if the thread started with it) at this
    /// priority.
    RealTime { fifo: bool, priority: i32 },
    /// The normal class at `nice`, `raised` below the nice the thread started with (0: not
    /// raised). `permitted`: the raise that was wanted was allowed (false: not permitted).
    /// `realtime_refused`: the real-time class was asked for and refused. `rt_budget`: it was
    /// not asked for, the real-time budget there being too small (see [`rt_budget`]).
    Normal {
        nice: i32,
        raised: i32,
        permitted: bool,
        realtime_refused: bool,
        rt_budget: Option<RtBudget>,
    },
}

impl Scheduling {
    /// Whether the thread runs in the real-time class.
    pub fn is_realtime(&self) -> bool {
        matches!(self, Scheduling::RealTime { .. })
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Scheduling::Pending => f.write_str("not set yet"),
            Scheduling::RealTime { fifo, priority } => {
                let policy = if fifo { "SCHED_FIFO" } else { "SCHED_RR" };
                write!(f, "real-time ({policy} {priority})")
            }
            Scheduling::Normal {
                nice,
                raised,
                permitted,
                realtime_refused,
                rt_budget,
            } => {
                if !permitted {
                    return f.write_str("default priority: not permitted");
                }
                write!(f, "nice {nice}")?;
                let mut notes = Vec::new();
                if raised == 0 {
                    notes.push("already the highest".to_string());
                } else if raised != 10 || nice != -10 {
                    notes.push(format!("{raised} below the process's"));
                }
                if realtime_refused {
                    notes.push("real-time not permitted".to_string());
                }
                if let Some(b) = rt_budget {
                    let (whose, file) = if b.cgroup {
                        ("its cgroup's", "cpu.rt_runtime_us")
                    } else {
                        ("the system's", "/proc/sys/kernel/sched_rt_runtime_us")
                    };
                    notes.push(format!(
                        "real-time not used: {whose} real-time budget, {} of every {} µs \
                         ({file}), could stall it for most of each period; at least {} % and {} ms \
                         are needed",
                        b.runtime_us,
                        b.period_us,
                        MIN_RT_SHARE * 100.0,
                        MIN_RT_RUNTIME_US / 1000
                    ));
                }
                if !notes.is_empty() {
                    write!(f, " ({})", notes.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

/// Set the calling thread's scheduling (the real-time class first when `realtime`, else or
/// failing that a higher normal priority) and say what it got.
pub(super) fn raise_priority(realtime: bool) -> Scheduling {
    // SAFETY: these calls take plain values and pointers to locals; `gettid` names the calling
    // thread only (on Linux a thread id selects that one thread for sched_setscheduler and for
    // PRIO_PROCESS, and 0 the calling thread for sched_getscheduler and sched_getparam).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let mut realtime_refused = false;
        let rt_budget = if realtime {
            rt_budget(Path::new("/"), tid)
        } else {
            None
        };
        if realtime && rt_budget.is_none() {
            let param = libc::sched_param { sched_priority: 1 };
            let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
            if libc::sched_setscheduler(tid, policy, &param) == 0 {
                return Scheduling::RealTime {
                    fifo: true,
                    priority: 1,
                };
            }
            realtime_refused = true;
        }
        // A thread already in the real-time class (started by one that was) stays there.
        if let Some(rt) = realtime_now() {
            return rt;
        }
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if *libc::__errno_location() != 0 {
            return Scheduling::Normal {
                nice: 0,
                raised: 0,
                permitted: false,
                realtime_refused,
                rt_budget,
            };
        }
        // As in the real-time class, what this thread starts (a vendor library's threads, a
        // meter's reader) does not inherit its raised priority: its children start at nice 0
        // (the flag may be set without privilege; the policy and nice are kept).
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(tid, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &param);
        let want = (nice - 10).max(-20);
        let permitted =
            want >= nice || libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, want) == 0;
        let now = if permitted && want < nice { want } else { nice };
        Scheduling::Normal {
            nice: now,
            raised: nice - now,
            permitted,
            realtime_refused,
            rt_budget,
        }
    }
}

/// Run `f` (a long start-up step: a follower taking the node over discovers and opens its
/// sources, vendor libraries' initialisation included, which may take a core for a second)
/// with the calling thread in the normal class, then put it back in the real-time class it was
/// in. Where it cannot go back, `said` is made to say what it has now.
pub(super) fn normal_while<T>(said: &std::sync::Mutex<Scheduling>, f: impl FnOnce() -> T) -> T {
    let Some(Scheduling::RealTime { fifo, priority }) = realtime_now() else {
        return f();
    };
    let policy = if fifo {
        libc::SCHED_FIFO
    } else {
        libc::SCHED_RR
    };
    // SAFETY: 0 names the calling thread; the parameters are locals.
    let lowered = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &param) == 0
    };
    let out = f();
    if lowered {
        // SAFETY: as above.
        let back = unsafe {
            let param = libc::sched_param {
                sched_priority: priority,
            };
            libc::sched_setscheduler(0, policy | libc::SCHED_RESET_ON_FORK, &param) == 0
        };
        if !back {
            *super::lock(said) = raise_priority(false);
        }
    }
    out
}

/// The calling thread's real-time class and priority, if it is in that class.
fn realtime_now() -> Option<Scheduling> {
    // SAFETY: 0 names the calling thread; the parameter is a local.
    unsafe {
        let policy = libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK;
        let mut param = libc::sched_param { sched_priority: 0 };
        ((policy == libc::SCHED_FIFO || policy == libc::SCHED_RR)
            && libc::sched_getparam(0, &mut param) == 0)
            .then_some(Scheduling::RealTime {
                fifo: policy == libc::SCHED_FIFO,
                priority: param.sched_priority,
            })
    }
}

/// The real-time budget that would keep thread `tid` from running for most of a period, if
/// any: the system's (`/proc/sys/kernel/sched_rt_runtime_us` of `sched_rt_period_us`; -1: no
/// limit) or, under a cgroup v1 `cpu` controller with RT group scheduling, that of the
/// thread's cgroup or of one of its ancestors (`cpu.rt_runtime_us` of `cpu.rt_period_us`), a
/// group's threads being throttled when any group above them has spent its budget. Too small:
/// under [`MIN_RT_SHARE`] of the period or [`MIN_RT_RUNTIME_US`]. What cannot be read is no
/// limit (cgroup v2 has no such files; the kernel then refuses what it must). `root`: where
/// `/proc` and the cgroup mounts are (`/`; a fake tree in tests).
pub fn rt_budget(root: &Path, tid: libc::pid_t) -> Option<RtBudget> {
    let read = |p: &Path| -> Option<i64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let small = |runtime_us: i64, period_us: i64, cgroup: bool| {
        (runtime_us >= 0
            && period_us > 0
            && (runtime_us < MIN_RT_RUNTIME_US
                || (runtime_us as f64) < MIN_RT_SHARE * period_us as f64))
            .then_some(RtBudget {
                runtime_us,
                period_us,
                cgroup,
            })
    };
    let sys = root.join("proc/sys/kernel");
    if let (Some(r), Some(p)) = (
        read(&sys.join("sched_rt_runtime_us")),
        read(&sys.join("sched_rt_period_us")),
    ) {
        if let Some(b) = small(r, p, false) {
            return Some(b);
        }
    }
    let task = root.join(format!("proc/self/task/{tid}"));
    let dir = cpu_cgroup_dir(
        root,
        &std::fs::read_to_string(task.join("cgroup")).ok()?,
        &std::fs::read_to_string(task.join("mountinfo")).ok()?,
    )?;
    // From the thread's cgroup up to the hierarchy's root (the mount point).
    let mut at = Some(dir.0.as_path());
    while let Some(d) = at {
        if let (Some(r), Some(p)) = (
            read(&d.join("cpu.rt_runtime_us")),
            read(&d.join("cpu.rt_period_us")),
        ) {
            if let Some(b) = small(r, p, true) {
                return Some(b);
            }
        }
        at = d.parent().filter(|_| d != dir.1);
    }
    None
}

/// The directory of the thread's cgroup in the v1 hierarchy that has the `cpu` controller,
/// and that hierarchy's mount point, from `/proc/self/task/<tid>/cgroup` and its `mountinfo`
/// (proc(5)); None where there is no such hierarchy mounted, or the cgroup lies outside the
/// mount (another namespace's).
fn cpu_cgroup_dir(root: &Path, cgroup: &str, mountinfo: &str) -> Option<(PathBuf, PathBuf)> {
    let has_cpu = |list: &str| list.split(',').any(|c| c == "cpu");
    let path = cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        has_cpu(controllers).then_some(path)
    })?;
    mountinfo.lines().find_map(|l| {
        let (mine, theirs) = l.split_once(" - ")?;
        let mut t = theirs.split(' ');
        let (fstype, _, options) = (t.next()?, t.next()?, t.next()?);
        if fstype != "cgroup" || !has_cpu(options) {
            return None;
        }
        let f: Vec<&str> = mine.split(' ').collect();
        let (mount_root, mount_point) = (unescape(f.get(3)?), unescape(f.get(4)?));
        let rel = Path::new(path).strip_prefix(&mount_root).ok()?;
        let point = root.join(mount_point.trim_start_matches('/'));
        Some((point.join(rel), point))
    })
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "priority_tests.rs"]
mod tests;

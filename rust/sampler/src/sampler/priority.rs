//! The sampler thread's scheduling, set by the thread itself when it starts (before its first
//! reads) and kept for [`super::Sampler::scheduling`] to report.
//!
//! With every core busy (data-loader workers, builds), a thread of the normal class wakes
//! milliseconds late however high its priority, and its reads then merge several counter
//! updates: the worst single short regions grow several-fold. So, with
//! [`super::Config::realtime`] (the default) and where the process may (root, CAP_SYS_NICE, or
//! an RLIMIT_RTPRIO of at least 1), the sampler thread runs in the real-time class at its
//! lowest priority, SCHED_FIFO 1, with SCHED_RESET_ON_FORK (a process or thread it might start,
//! a vendor library's included, does not inherit it). Only this thread: the user's threads, the resolver's and the BMC reader's keep
//! their scheduling. Failing that (no permission, a cgroup with no real-time time) or with
//! `realtime` off, a higher normal priority: nice 10 below the thread's own (at most -20), where
//! RLIMIT_NICE allows; failing both, nothing changes.
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
//! each second) leaves the normal class time on every core, so even a runaway thread cannot
//! take a core whole.

use std::fmt;

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
    /// `realtime_refused`: the real-time class was asked for and refused.
    Normal {
        nice: i32,
        raised: i32,
        permitted: bool,
        realtime_refused: bool,
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
        if realtime {
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
            };
        }
        let want = (nice - 10).max(-20);
        let permitted =
            want >= nice || libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, want) == 0;
        let now = if permitted && want < nice { want } else { nice };
        Scheduling::Normal {
            nice: now,
            raised: nice - now,
            permitted,
            realtime_refused,
        }
    }
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

//! The sampler thread's scheduling, as the kernel reports it for that thread
//! (`/proc/self/task/<tid>/stat`) and as the sampler says it set it.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use carbonctx_sampler::sampler::priority::rt_budget;
use carbonctx_sampler::sampler::{Config, Sampler, Scheduling};
use carbonctx_sampler::{CounterSpec, Domain, EnergySource, Error, Method, Reading, SourceInfo};

/// A counter that notes which thread reads it (the sampler thread).
struct Noting {
    info: SourceInfo,
    reader: Arc<AtomicI32>,
    uj: u64,
}

impl EnergySource for Noting {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn read(&mut self) -> Result<Reading, Error> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        if self.reader.load(Ordering::SeqCst) == 0 {
            // A thread started by the sampler thread (as a vendor library's may be): its
            // policy and nice.
            let child = std::thread::spawn(|| {
                // SAFETY: 0 names the calling thread.
                let policy = unsafe { libc::sched_getscheduler(0) };
                (policy, own_nice())
            })
            .join()
            .expect("the child thread");
            *CHILD.lock().unwrap() = Some(child);
        }
        self.reader.store(tid, Ordering::SeqCst);
        self.uj += 1000;
        Ok(Reading::Counter(self.uj))
    }
}

fn noting(reader: &Arc<AtomicI32>) -> Box<dyn EnergySource> {
    Box::new(Noting {
        info: SourceInfo {
            id: "noting".into(),
            backend: "powercap",
            domain: Domain::Package,
            index: 0,
            label: "noting".into(),
            method: Method::Counter,
            counter: Some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap: None,
            }),
            interval: Duration::from_millis(5),
            path: None,
            uuid: None,
        },
        reader: Arc::clone(reader),
        uj: 0,
    })
}

/// What a thread started by the latest sampler thread had: its policy and nice.
static CHILD: std::sync::Mutex<Option<(i32, i64)>> = std::sync::Mutex::new(None);

/// Fields of `/proc/self/task/<tid>/stat` by their number in proc(5) (1-based; the command
/// name, field 2, may hold spaces and parentheses, so fields are counted after its last ')').
fn stat_field(tid: i32, field: usize) -> i64 {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .expect("read the thread's stat");
    let rest = &text[text.rfind(')').expect("a command name") + 1..];
    rest.split_whitespace()
        .nth(field - 3)
        .expect("the field")
        .parse()
        .expect("a number")
}

const POLICY: usize = 41;
const RT_PRIORITY: usize = 40;
const NICE: usize = 19;

/// Start a sampler with `realtime` and return what it says and the policy, real-time priority
/// and nice its thread has.
fn started(realtime: bool) -> (Scheduling, i64, i64, i64) {
    started_in(realtime, || ())
}

/// As [`started`], the sampler being started from a thread that first runs `first` (which may
/// move it to another cgroup: the sampler thread starts in its starter's).
fn started_in(
    realtime: bool,
    first: impl FnOnce() + Send + 'static,
) -> (Scheduling, i64, i64, i64) {
    std::thread::spawn(move || {
        first();
        start_here(realtime)
    })
    .join()
    .expect("the starting thread")
}

/// Tests that look at [`CHILD`] one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start_here(realtime: bool) -> (Scheduling, i64, i64, i64) {
    let reader = Arc::new(AtomicI32::new(0));
    let config = Config {
        realtime,
        ..Config::default()
    };
    let (s, unavailable) = Sampler::start(vec![noting(&reader)], config).expect("start");
    assert!(unavailable.is_empty(), "{unavailable:?}");
    // The start handshake follows the first read, made on the sampler thread.
    let tid = reader.load(Ordering::SeqCst);
    assert!(tid > 0, "the source was read");
    let seen = (
        s.scheduling(),
        stat_field(tid, POLICY),
        stat_field(tid, RT_PRIORITY),
        stat_field(tid, NICE),
    );
    s.stop();
    seen
}

/// Whether this process may put a thread in SCHED_FIFO (tried on a scratch thread).
fn fifo_permitted() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: 0 names the calling (scratch) thread; the parameter is a local.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    })
    .join()
    .expect("the scratch thread")
}

fn own_nice() -> i64 {
    // SAFETY: plain values; 0 names the calling thread.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0) as i64
    }
}

#[test]
fn realtime_sampler_thread_is_sched_fifo_1_where_permitted() {
    let (said, policy, rt_priority, _) = started(true);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
    if let Some(budget) = rt_budget(std::path::Path::new("/"), tid) {
        // The real-time budget here (this thread's cgroup's, which the sampler thread shares,
        // or the system's) is too small: not used, and said.
        assert_eq!(policy, libc::SCHED_OTHER as i64);
        assert!(
            matches!(said, Scheduling::Normal { rt_budget: Some(b), .. } if b == budget),
            "{said:?}"
        );
        eprintln!("the real-time budget here is too small: checked the fallback only");
        return;
    }
    if !fifo_permitted() {
        // Not permitted here: the thread stays in the normal class and says why.
        assert_eq!(policy, libc::SCHED_OTHER as i64);
        assert!(
            matches!(
                said,
                Scheduling::Normal {
                    realtime_refused: true,
                    ..
                }
            ),
            "{said:?}"
        );
        eprintln!("SCHED_FIFO is not permitted here: checked the fallback only");
        return;
    }
    assert_eq!(
        policy,
        libc::SCHED_FIFO as i64,
        "the sampler thread's policy"
    );
    assert_eq!(rt_priority, 1, "its real-time priority");
    assert_eq!(
        said,
        Scheduling::RealTime {
            fifo: true,
            priority: 1
        }
    );
    assert_eq!(said.to_string(), "real-time (SCHED_FIFO 1)");
    // The test's own thread is left as it was.
    // SAFETY: 0 names the calling thread.
    let mine = unsafe { libc::sched_getscheduler(0) };
    assert_eq!(mine, libc::SCHED_OTHER);
}

#[test]
fn without_realtime_the_sampler_thread_stays_in_the_normal_class() {
    let before = own_nice();
    let (said, policy, rt_priority, nice) = started(false);
    assert_eq!(
        policy,
        libc::SCHED_OTHER as i64,
        "the sampler thread's policy"
    );
    assert_eq!(rt_priority, 0);
    let Scheduling::Normal {
        nice: said_nice,
        raised,
        permitted,
        realtime_refused,
        rt_budget,
    } = said
    else {
        panic!("the normal class, not {said:?}");
    };
    assert!(!realtime_refused, "real-time was not asked for");
    assert_eq!(rt_budget, None, "nor its budget looked at");
    assert_eq!(said_nice as i64, nice, "the nice it says is the thread's");
    if permitted && raised > 0 {
        assert_eq!(nice, (before - 10).max(-20), "10 below its starter's");
    } else {
        assert_eq!(nice, before);
    }
    if fifo_permitted() {
        // Permitted to go real-time, it is permitted a higher nice too.
        assert!(permitted);
        if before == 0 {
            assert_eq!(said.to_string(), "nice -10");
        }
    }
    assert_eq!(
        own_nice(),
        before,
        "the test's own thread is left as it was"
    );
}

#[test]
fn the_descriptions() {
    let nice = |nice, raised, permitted, realtime_refused| Scheduling::Normal {
        nice,
        raised,
        permitted,
        realtime_refused,
        rt_budget: None,
    };
    assert_eq!(nice(-10, 10, true, false).to_string(), "nice -10");
    assert_eq!(
        nice(-10, 10, true, true).to_string(),
        "nice -10 (real-time not permitted)"
    );
    assert_eq!(
        nice(-5, 10, true, false).to_string(),
        "nice -5 (10 below the process's)"
    );
    assert_eq!(
        nice(0, 0, false, true).to_string(),
        "default priority: not permitted"
    );
    assert_eq!(
        nice(0, 0, false, false).to_string(),
        "default priority: not permitted"
    );
    assert_eq!(
        Scheduling::RealTime {
            fifo: false,
            priority: 5
        }
        .to_string(),
        "real-time (SCHED_RR 5)"
    );
    assert_eq!(
        nice(-20, 0, true, false).to_string(),
        "nice -20 (already the highest)"
    );
    assert!(!nice(-10, 10, true, false).is_realtime());
}

/// This thread's directory in the cgroup v1 hierarchy of the `cpu` controller, where it has
/// real-time budgets (RT group scheduling) and this process may make groups (root).
fn own_cpu_cgroup() -> Option<std::path::PathBuf> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let cgroup = std::fs::read_to_string(format!("/proc/self/task/{tid}/cgroup")).ok()?;
    let path = cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, c, p) = (f.next()?, f.next()?, f.next()?);
        c.split(',').any(|c| c == "cpu").then(|| p.to_string())
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = mounts.lines().find_map(|l| {
        let (mine, theirs) = l.split_once(" - ")?;
        let mut t = theirs.split(' ');
        let (fstype, _, opts) = (t.next()?, t.next()?, t.next()?);
        let f: Vec<&str> = mine.split(' ').collect();
        (fstype == "cgroup" && opts.split(',').any(|c| c == "cpu") && f.get(3) == Some(&"/"))
            .then(|| f[4].to_string())
    })?;
    let dir = std::path::Path::new(&point).join(path.trim_start_matches('/'));
    (dir.join("cpu.rt_runtime_us").exists() && unsafe { libc::geteuid() } == 0).then_some(dir)
}

/// A cgroup made for a test, removed when dropped (its threads having ended).
struct Group(std::path::PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// In a cgroup whose real-time budget is tiny, a real-time thread is not run for most of each
/// period once the budget is spent, however idle the machine: the sampler thread stays in
/// the normal class there and says why. With no budget at all the kernel refuses: the same.
#[test]
fn a_cgroup_with_a_tiny_real_time_budget_keeps_the_sampler_in_the_normal_class() {
    let Some(parent) = own_cpu_cgroup() else {
        eprintln!("no cgroup v1 cpu controller with real-time budgets to make groups in here");
        return;
    };
    for runtime_us in [1_000i64, 0] {
        let dir = parent.join(format!(
            "carbonctx-rt-test-{}-{runtime_us}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).expect("make a cgroup");
        let group = Group(dir.clone());
        std::fs::write(dir.join("cpu.rt_runtime_us"), runtime_us.to_string())
            .expect("give it a real-time budget");
        let tasks = dir.join("tasks");
        let (said, policy, _, _) = started_in(true, move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            std::fs::write(&tasks, tid.to_string()).expect("move the starter into it");
        });
        drop(group);
        assert_eq!(
            policy,
            libc::SCHED_OTHER as i64,
            "{runtime_us} µs: {said:?}"
        );
        let Scheduling::Normal {
            rt_budget,
            realtime_refused,
            ..
        } = said
        else {
            panic!("the normal class, not {said:?}");
        };
        let budget = rt_budget.expect("the budget found too small");
        assert_eq!((budget.runtime_us, budget.cgroup), (runtime_us, true));
        assert!(!realtime_refused, "not asked for");
        assert!(said.to_string().contains("real-time not used"), "{said}");
    }
}

/// A thread the sampler thread starts (a vendor library's) inherits neither the real-time
/// class nor the raised nice: SCHED_RESET_ON_FORK in both.
#[test]
fn threads_the_sampler_thread_starts_keep_the_default_scheduling() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let before = own_nice();
    for realtime in [true, false] {
        let (said, ..) = started(realtime);
        let (policy, nice) = CHILD.lock().unwrap().take().expect("a child was started");
        assert_eq!(policy, libc::SCHED_OTHER, "{said}: the child's policy");
        // A negative nice is reset to 0 in the child; another is inherited.
        let sampler_nice = match said {
            Scheduling::Normal { nice, .. } => nice as i64,
            _ => before,
        };
        assert_eq!(nice, sampler_nice.max(0), "{said}: the child's nice");
    }
}

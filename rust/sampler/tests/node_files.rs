//! The node sampler's files in a directory other users may write (`/dev/shm`): what another
//! user, or a crashed job, may have left under the names it uses. Planted links are never
//! followed (the file they point at is left as it was), files of another user are refused
//! (simulated with `chown`, so those cases need root), a damaged or hostile segment is refused
//! before anything is read from it, or read only within its mapping, and a lock nobody
//! releases delays a process's start by the stated bound at most.

#[allow(dead_code)]
mod common_fs;

use std::os::unix::fs::{symlink, FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::shared::{reclaim, Copied, LockFile, Published, Segment};
use carbonctx_sampler::{Config, CounterSpec, Domain, Method, NodeConfig, Sampler, SourceInfo};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Discovery in an empty tree: no source, nothing read from this machine.
fn options(empty: &Path) -> Options {
    Options {
        roots: common_fs::roots_at(empty),
        cpu_backends: vec!["powercap".into()],
        nvml: false,
        amd: false,
        tdp_model: TdpModelUse::Never,
        ..Options::default()
    }
}

fn node(dir: &Path, key: &str) -> NodeConfig {
    NodeConfig {
        wait_for_owner: Duration::from_millis(300),
        ..NodeConfig::new(key).in_dir(dir)
    }
}

fn start(dir: &Path, empty: &Path, key: &str) -> Result<Sampler, String> {
    Sampler::start_on_node(options(empty), Config::default(), node(dir, key))
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

fn one_source() -> Vec<Published> {
    vec![Published {
        info: SourceInfo {
            id: "nvml:0".into(),
            backend: "nvml",
            domain: Domain::Gpu,
            index: 0,
            label: "GPU 0".into(),
            method: Method::Counter,
            counter: Some(CounterSpec {
                joules_per_unit: 1e-3,
                wrap: None,
            }),
            interval: Duration::from_millis(20),
            path: None,
            uuid: None,
        },
        settle_ns: 0,
    }]
}

fn victim(dir: &Path) -> std::path::PathBuf {
    let v = dir.join("victim.txt");
    std::fs::write(&v, b"the user's own file").unwrap();
    v
}

fn untouched(v: &Path) {
    assert_eq!(std::fs::read(v).unwrap(), b"the user's own file");
}

#[test]
fn names_carry_the_user_id() {
    let cfg = NodeConfig::new("job");
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for p in [cfg.lock_path(), cfg.segment_path()] {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("carbonctx-{uid}-job-")), "{name}");
    }
}

#[test]
fn a_link_planted_as_the_lock_file_is_refused_and_its_target_left_alone() {
    let (dir, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let v = victim(empty.path());
    symlink(&v, node(dir.path(), "job").lock_path()).unwrap();
    let e = start(dir.path(), empty.path(), "job")
        .err()
        .expect("refused");
    assert!(e.contains("symbolic link"), "{e}");
    untouched(&v);
    // A dangling link: its target is not created either.
    let ghost = empty.path().join("ghost");
    symlink(&ghost, node(dir.path(), "job2").lock_path()).unwrap();
    assert!(start(dir.path(), empty.path(), "job2").is_err());
    assert!(!ghost.exists());
}

#[test]
fn a_link_planted_as_the_segment_is_replaced_not_written_through() {
    let (dir, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let v = victim(empty.path());
    let cfg = node(dir.path(), "job");
    symlink(&v, cfg.segment_path()).unwrap();
    let s = start(dir.path(), empty.path(), "job").expect("the owner starts");
    let st = s.node_status().unwrap();
    assert_eq!(st.segment, cfg.segment_path());
    let meta = std::fs::symlink_metadata(cfg.segment_path()).unwrap();
    assert!(meta.file_type().is_file() && meta.mode() & 0o777 == 0o600);
    assert_eq!(
        std::fs::metadata(cfg.lock_path()).unwrap().mode() & 0o777,
        0o600
    );
    untouched(&v);
    // A reader never opens the segment through a link either.
    let link = dir.path().join("alias.seg");
    symlink(cfg.segment_path(), &link).unwrap();
    assert!(Segment::open(&link).is_err());
}

#[test]
fn another_users_lock_file_or_segment_is_refused_at_once() {
    if !root() {
        eprintln!("skipped: making a file of another user needs root");
        return;
    }
    let (dir, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = node(dir.path(), "job");
    std::fs::write(cfg.lock_path(), b"").unwrap();
    std::os::unix::fs::chown(cfg.lock_path(), Some(4242), Some(4242)).unwrap();
    let t = Instant::now();
    let e = start(dir.path(), empty.path(), "job")
        .err()
        .expect("refused");
    assert!(e.contains("belongs to user 4242"), "{e}");
    // Where the file system itself gives the process's files to another user (root squashed
    // on a network file system), the error says what to do about that too.
    assert!(
        e.contains("squashes root") && e.contains("local directory"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // A complete segment, but another user's: not followed.
    let other = node(dir.path(), "job-b");
    drop(Segment::create(&other.segment_path(), "job-b", &one_source(), 4, 1).unwrap());
    std::os::unix::fs::chown(other.segment_path(), Some(4242), Some(4242)).unwrap();
    let e = Segment::open(&other.segment_path()).err().expect("refused");
    assert!(e.to_string().contains("belongs to user 4242"), "{e}");
}

/// A segment of one source, ring of 4 points, then `damage` done to its file.
fn damaged(dir: &Path, damage: impl FnOnce(&std::fs::File)) -> Result<Segment, String> {
    let path = dir.join("carbonctx-damaged.seg");
    let _ = std::fs::remove_file(&path);
    drop(Segment::create(&path, "k", &one_source(), 4, 1).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    damage(&f);
    Segment::open(&path).map_err(|e| e.to_string())
}

type Damage = dyn FnOnce(&std::fs::File);

const HEADER: u64 = 4096;
const DESC: u64 = 1024;

#[test]
fn a_damaged_or_hostile_segment_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let put = |f: &std::fs::File, off: u64, v: u64| f.write_all_at(&v.to_le_bytes(), off).unwrap();
    let cases: Vec<(&str, Box<Damage>)> = vec![
        ("truncated header", Box::new(|f| f.set_len(100).unwrap())),
        (
            "truncated rings",
            Box::new(|f| f.set_len(HEADER + DESC).unwrap()),
        ),
        ("wrong magic", Box::new(move |f| put(f, 0, 0x1234))),
        ("another version", Box::new(move |f| put(f, 8, 99))),
        ("too many sources", Box::new(move |f| put(f, 16, 1 << 40))),
        (
            "a ring longer than the file",
            Box::new(move |f| put(f, 24, 5)),
        ),
        (
            // 16 × (2⁶⁰ + 4) wraps to 64: the same length as a ring of 4, if sizes wrapped.
            "a ring whose size wraps around",
            Box::new(move |f| {
                put(f, 24, (1 << 60) + 4);
                put(f, HEADER, 1 << 62);
            }),
        ),
        ("a zero ring", Box::new(move |f| put(f, 24, 0))),
    ];
    for (what, damage) in cases {
        let got = damaged(dir.path(), damage);
        assert!(got.is_err(), "{what}: accepted");
    }
    // Not a segment at all, and empty.
    let junk = dir.path().join("junk.seg");
    std::fs::write(&junk, vec![0xffu8; 8192]).unwrap();
    assert!(Segment::open(&junk).is_err());
    std::fs::write(&junk, b"").unwrap();
    assert!(Segment::open(&junk).is_err());
}

#[test]
fn garbage_in_a_well_shaped_segment_is_read_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let seg = damaged(dir.path(), |f| {
        let d = HEADER;
        // A sequence number far ahead, NaN joules, flags everywhere, lengths past their fields,
        // a domain and method that do not exist.
        f.write_all_at(&(u64::MAX - 1).to_le_bytes(), d).unwrap();
        f.write_all_at(&[200, 200, 1], d + 64).unwrap();
        f.write_all_at(&u16::MAX.to_le_bytes(), d + 128).unwrap();
        f.write_all_at(&u16::MAX.to_le_bytes(), HEADER - 8).unwrap();
        f.write_all_at(&u16::MAX.to_le_bytes(), 72).unwrap();
        let rings = HEADER + DESC;
        for k in 0..4 {
            f.write_all_at(&u64::MAX.to_le_bytes(), rings + 16 * k)
                .unwrap();
            f.write_all_at(&f64::NAN.to_bits().to_le_bytes(), rings + 16 * k + 8)
                .unwrap();
        }
    })
    .expect("the shape is right");
    let sources = seg.sources();
    assert_eq!(sources.len(), 1);
    assert!(sources[0].info.id.len() <= 126);
    let _ = seg.key();
    let mut c = Copied::default();
    let next = seg.copy_since(0, 0, &mut c);
    // At most one ring's worth is copied, whatever the sequence number claims.
    assert!(c.entries.len() <= 4, "{}", c.entries.len());
    let mut c2 = Copied::default();
    let _ = seg.copy_since(0, next, &mut c2);
    assert!(c2.entries.len() <= 4);
}

#[test]
fn a_lock_nobody_releases_delays_a_start_by_the_stated_bound_at_most() {
    let (dir, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = node(dir.path(), "job");
    let mut held = LockFile::open(&cfg.lock_path()).unwrap();
    assert!(held.try_lock().unwrap());
    // No segment, then a damaged one under the name: nothing to follow, and an error once
    // `wait_for_owner` (300 ms here) has passed, not a wait for ever.
    for plant in [false, true] {
        if plant {
            std::fs::write(cfg.segment_path(), vec![7u8; 8192]).unwrap();
        }
        let t = Instant::now();
        let e = start(dir.path(), empty.path(), "job")
            .err()
            .expect("no owner");
        assert!(e.contains("published no segment"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    }
}

#[test]
fn a_directory_that_cannot_hold_the_files_is_an_error_not_a_wait() {
    let (dir, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let e = start(&file.join("shm"), empty.path(), "job")
        .err()
        .expect("refused");
    assert!(e.contains("a-file"), "{e}");
}

#[test]
fn the_clean_up_leaves_other_users_files_and_planted_links_alone() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let v = victim(elsewhere.path());
    // Links with the names of a stale segment and lock file, pointing at the user's file.
    symlink(&v, dir.path().join("carbonctx-0-x-0000000000000000.seg")).unwrap();
    symlink(&v, dir.path().join("carbonctx-0-y-0000000000000000.lock")).unwrap();
    symlink(&v, dir.path().join("carbonctx-0-z.tmp1")).unwrap();
    let mut theirs = Vec::new();
    if root() {
        // A stale job of another user: its files stay (the clean-up is the user's own).
        let cfg = NodeConfig::new("theirs").in_dir(dir.path());
        drop(Segment::create(&cfg.segment_path(), "theirs", &one_source(), 4, 1).unwrap());
        std::fs::write(cfg.lock_path(), b"").unwrap();
        for p in [cfg.segment_path(), cfg.lock_path()] {
            std::os::unix::fs::chown(&p, Some(4242), Some(4242)).unwrap();
            theirs.push(p);
        }
    }
    let removed = reclaim(dir.path(), "mine", Duration::ZERO, Duration::ZERO);
    assert!(removed.is_empty(), "{removed:?}");
    for p in &theirs {
        assert!(p.exists(), "{}", p.display());
    }
    untouched(&v);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3 + theirs.len()
    );
}

/// A small tmpfs mounted for a test (None where mounting is not allowed), unmounted on drop.
struct SmallTmpfs(tempfile::TempDir);

impl SmallTmpfs {
    fn mount(size: &str) -> Option<SmallTmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallTmpfs(dir))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_directory_is_an_error_at_creation_not_a_sigbus_later() {
    // A tmpfs that cannot hold the segment (someone filled /dev/shm): the space is reserved
    // when the segment is created, so that is where it fails. A segment only sized would take
    // its pages as the rings are first written, and the first write past the space would be a
    // SIGBUS, killing this test (and a user's program).
    let Some(fs) = SmallTmpfs::mount("256k") else {
        eprintln!("skipped: mounting a tmpfs needs privileges this test does not have");
        return;
    };
    let path = fs.0.path().join("carbonctx-full.seg");
    let ring = 1 << 16;
    match Segment::create(&path, "k", &one_source(), ring, 1) {
        Err(e) => assert!(e.to_string().contains("No space left"), "{e}"),
        Ok(seg) => {
            for t in 1..=ring as u64 {
                let p = carbonctx_sampler::timeline::Point {
                    t_ns: t,
                    joules: 1.0,
                };
                seg.publish(0, p, false);
            }
            panic!("a segment larger than its file system was created");
        }
    }
    // Nothing left behind under a temporary name.
    assert_eq!(std::fs::read_dir(fs.0.path()).unwrap().count(), 0);
    // The node's sampler in a directory filled up: an error at start, not a wait.
    let filler = vec![0u8; 4096];
    let mut f = std::fs::File::create(fs.0.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut f, &filler).is_ok() {}
    let empty = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let e = start(fs.0.path(), empty.path(), "job")
        .err()
        .expect("no room");
    assert!(e.contains("No space left"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_damaged_segment_left_under_the_name_is_replaced_by_the_next_owner() {
    let (dir, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = node(dir.path(), "job");
    std::fs::write(cfg.segment_path(), vec![0xa5u8; 3 * 4096]).unwrap();
    let s = start(dir.path(), empty.path(), "job").expect("the owner starts");
    let st = s.node_status().unwrap();
    assert_eq!(st.generation, 1);
    let seg = Segment::open(&cfg.segment_path()).expect("a segment of its own");
    assert_eq!(seg.owner_pid(), std::process::id() as i32);
    assert_eq!(seg.key(), "job");
}

/// Run `f` on a thread of its own whose `fallocate` calls fail with `errno`, as where a sandbox's
/// filter of system calls refuses them or a file system cannot reserve space (a seccomp filter
/// of that thread alone, which the threads it starts inherit). None where no filter can be set.
fn without_fallocate<T: Send + 'static>(
    errno: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let mut filter = [
            // The system call's number (of this architecture's table), then: fallocate fails
            // with `errno`, anything else runs.
            op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            op(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                0,
                1,
                libc::SYS_fallocate as u32,
            ),
            op(
                libc::BPF_RET | libc::BPF_K,
                0,
                0,
                libc::SECCOMP_RET_ERRNO | errno as u32,
            ),
            op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: prctl with the documented arguments; `prog` and `filter` outlive the call
        // (the kernel copies the program).
        let set = unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) == 0
                && libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                ) == 0
        };
        set.then(f)
    })
    .join()
    .unwrap()
}

#[test]
fn where_space_cannot_be_reserved_the_segment_is_only_sized_and_the_node_sampler_works() {
    // ENOSYS and EPERM: a sandbox's filter; EOPNOTSUPP: a file system without fallocate (the C
    // library may write the blocks itself instead, or not).
    for errno in [libc::ENOSYS, libc::EPERM, libc::EOPNOTSUPP] {
        let dir = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let (d, e) = (dir.path().to_path_buf(), empty.path().to_path_buf());
        let Some(got) = without_fallocate(errno, move || {
            let refused = {
                let f = std::fs::File::create(d.join("probe")).unwrap();
                let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
                // SAFETY: fallocate on an open file of this thread's (the filter holds?).
                unsafe { libc::fallocate(fd, 0, 0, 4096) != 0 }
            };
            let path = d.join("carbonctx-x.seg");
            let seg = Segment::create(&path, "k", &one_source(), 64, 1)
                .map(drop)
                .map_err(|e| e.to_string());
            let len = std::fs::metadata(&path).map(|m| m.len());
            let s = start(&d, &e, "job");
            let role = s.as_ref().map(|s| s.node_status().map(|st| st.generation));
            if let Ok(s) = &s {
                s.stop();
            }
            (refused, seg, len.ok(), role.map_err(String::clone))
        }) else {
            eprintln!("skipped: no system-call filter can be set here");
            return;
        };
        let (refused, seg, len, role) = got;
        assert!(refused, "the filter refuses fallocate ({errno})");
        seg.unwrap_or_else(|e| panic!("errno {errno}: {e}"));
        assert_eq!(len, Some(4096 + 1024 + 64 * 16), "errno {errno}");
        assert_eq!(
            role,
            Ok(Some(1)),
            "errno {errno}: the owner runs the node's sampler"
        );
        // The segment opens as a follower opens it.
        let seg = Segment::open(&dir.path().join("carbonctx-x.seg")).unwrap();
        assert_eq!(seg.key(), "k");
    }
}

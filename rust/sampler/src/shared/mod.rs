//! The node's timelines in shared memory: one writer (the process that runs the node's sampler),
//! any number of readers (the other processes of the job on the node).
//!
//! # Files
//!
//! Under a directory (`/dev/shm` by default), named from the job key the caller gives (the
//! Python side derives it from the job id, the user and the boot id):
//!
//! - `carbonctx-<uid>-<key>-<hash>.lock`: the election. The process holding an exclusive `flock` on it
//!   runs the sampler; the kernel releases the lock when that process dies, SIGKILL included.
//! - `carbonctx-<uid>-<key>-<hash>.seg`: the segment, of a size fixed when it is created.
//!
//! The directory is shared with other users (`/dev/shm`: world-writable, sticky): a file is
//! never opened through a symbolic link, a file of another user's (or not a regular file) is
//! refused, files are created 0600 (a segment under a new temporary name, `O_EXCL`, renamed
//! into place once complete), and a segment whose header does not match its length is refused
//! before anything is read from it (`files`, [`Segment::open`]). A refused file is an error of
//! the node's sampler, which the caller turns into a sampler of the process's own.
//!
//! # Segment layout (all integers little-endian, as the machine writes them)
//!
//! ```text
//! 0      header (4096 bytes)
//!          0 magic "CBNCTXS1"   8 version        16 number of sources   24 ring points
//!         32 owner pid*       40 generation*   48 heartbeat ns*       56 created ns
//!         64 demand ns*       72 key length    80.. key (up to 256 bytes)
//! 4096   per source, 1024 bytes each:
//!          0 seq*  8 last poll ns*  16 failed since ns* (0: not failed)  24 reads*
//!         64 domain u8  65 method u8  66 has counter u8  68 index u32
//!         72 joules per unit f64  80 wrap u64 (u64::MAX: none)  88 interval ns  96 settle ns
//!        128 id  256 backend  288 label  672 uuid  768 path   (each: length u16, then bytes)
//! then   per source, a ring of `ring points` entries of 16 bytes:
//!          0 t ns (bit 63: the interval from this instant to the next entry is a gap;
//!            bit 62: a point placed by power samples; bit 61 or 60: not a point but the
//!            cumulative variance (J²) or bound (J) of a power integral at t)
//!          8 cumulative joules (f64 bits; J² or J with bit 61 or 60)
//! ```
//!
//! Fields marked * change while the segment is in use and are only ever accessed as atomics;
//! the others are written before the file is given its name and never change.
//!
//! # The seqlock of a ring
//!
//! `seq` counts twice the entries written: the writer makes it odd, stores the entry, and makes
//! it even again (`2 × count`). A reader loads `seq` (acquire), copies the entries below
//! `seq / 2` it has not seen, loads `seq` again after an acquire fence, and keeps only the
//! entries the writer cannot have overwritten meanwhile (those within one ring of the second
//! value). A changed number thus costs the reader only the entries actually overwritten; an
//! odd one means an entry is being written, which the reader leaves for next time. Entries
//! lost that way, or because the reader fell a whole ring behind, are a gap: nothing is
//! invented for them. No lock and no system call on either side.
//!
//! # Modules, in the order of the data flow
//!
//! - `files`: opening and creating the files safely in a shared directory;
//! - `segment`: the layout, mapping, creation and opening of a segment;
//! - `sources`: the table of sources a segment describes ([`Published`]);
//! - `ring`: the seqlock rings: the writer's side (publish, heartbeat, takeover) and the
//!   readers' ([`Segment::copy_since`]);
//! - `lock`: the election's lock file ([`LockFile`]) and the clean-up of what killed jobs left
//!   ([`reclaim`]).

use std::path::PathBuf;
use std::time::Duration;

mod files;
mod lock;
mod ring;
mod segment;
mod sources;

pub(crate) use files::io_err;
pub use lock::{reclaim, LockFile};
pub use ring::{Copied, Entry};
pub use segment::Segment;
pub use sources::Published;

#[cfg(test)]
use crate::sensors::{CounterSpec, Domain, Method, SourceInfo};
#[cfg(test)]
use crate::timeline::Point;

/// Where and how the processes of one job on one node share a sampler.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The directory of the segment and lock files (`/dev/shm` by default).
    pub dir: PathBuf,
    /// Names the job on this node: every process of the job gives the same key, and no other
    /// job does (e.g. a hash of job id, user and boot id).
    pub key: String,
    /// Points kept per source in the segment (fixed when the segment is created).
    pub ring_points: usize,
    /// How often a follower tries to take the lock (and so notices that the owner died).
    pub takeover_poll: Duration,
    /// How long a process that lost the election waits for the owner's segment to appear.
    pub wait_for_owner: Duration,
    /// A segment whose lock nobody holds and whose owner has given no sign of life for this
    /// long is stale once its owner process is gone ...
    pub reclaim_grace: Duration,
    /// ... and after this long in any case (its owner's pid may have been reused).
    pub stale_after: Duration,
}

impl NodeConfig {
    /// The defaults, in `/dev/shm`.
    pub fn new(key: impl Into<String>) -> Self {
        NodeConfig {
            dir: PathBuf::from("/dev/shm"),
            key: key.into(),
            ring_points: 1 << 16,
            takeover_poll: Duration::from_millis(200),
            wait_for_owner: Duration::from_secs(30),
            reclaim_grace: Duration::from_secs(10),
            stale_after: Duration::from_secs(600),
        }
    }

    /// The same in another directory.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    fn stem(&self) -> String {
        stem_for(&self.key)
    }

    /// The lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.stem()))
    }

    /// The segment file.
    pub fn segment_path(&self) -> PathBuf {
        self.dir.join(format!("{}.seg", self.stem()))
    }
}

const PREFIX: &str = "carbonctx-";

fn stem_for(key: &str) -> String {
    // FNV-1a: keys that differ only in characters replaced below still get distinct names.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let safe: String = key
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // The user's id in the name: users never share (or fight over) a name, and a glance at the
    // directory says whose files are whose.
    format!("{PREFIX}{}-{safe}-{h:016x}", files::euid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> Published {
        Published {
            info: SourceInfo {
                id: id.into(),
                backend: "nvml",
                domain: Domain::Gpu,
                index: 3,
                label: "GPU é".into(),
                method: Method::Counter,
                counter: Some(CounterSpec {
                    joules_per_unit: 1e-3,
                    wrap: None,
                }),
                interval: Duration::from_millis(20),
                path: Some("/x/libnvidia-ml.so.1".into()),
                uuid: Some("GPU-abcd".into()),
            },
            settle_ns: 200_000_000,
        }
    }

    #[test]
    fn descriptions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::new("job/1 user").in_dir(dir.path());
        let a = Segment::create(&cfg.segment_path(), &cfg.key, &[info("nvml:3")], 8, 7).unwrap();
        let b = Segment::open(&cfg.segment_path()).unwrap();
        assert_eq!(b.sources(), vec![info("nvml:3")]);
        assert_eq!(b.key(), "job/1 user");
        assert_eq!(b.owner_pid(), 7);
        assert_eq!(b.generation(), 1);
        assert!(a.is_current() && b.is_current());
    }

    #[test]
    fn a_reader_copies_what_is_written_and_counts_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        let w = Segment::create(&path, "k", &[info("a")], 4, 1).unwrap();
        let r = Segment::open(&path).unwrap();
        let p = |t: u64| Point {
            t_ns: t,
            joules: t as f64,
        };
        for t in 1..=2 {
            w.publish(0, p(t), t == 2);
        }
        w.publish_placed(0, p(3));
        let mut c = Copied::default();
        let next = r.copy_since(0, 0, &mut c);
        assert_eq!(next, 3);
        assert_eq!(c.lost, 0);
        assert_eq!(
            c.entries.iter().map(|e| e.point.t_ns).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(c.entries[1].gap_after && !c.entries[0].gap_after);
        // A placed point (an estimate between measured ones) says so, and only it.
        assert!(c.entries[2].placed && !c.entries[2].gap_after);
        assert!(!c.entries[0].placed && !c.entries[1].placed);
        assert!(c.entries.iter().all(|e| !e.var && !e.bound));
        for t in 4..=10 {
            w.publish(0, p(t), false);
        }
        let mut c = Copied::default();
        let next = r.copy_since(0, next, &mut c);
        assert_eq!(next, 10);
        // A ring of 4: entries 4, 5 and 6 were overwritten before this copy.
        assert_eq!(c.lost, 3);
        assert_eq!(
            c.entries.iter().map(|e| e.point.t_ns).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
    }

    #[test]
    fn concurrent_copies_never_see_a_torn_or_invented_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.seg");
        let w = Segment::create(&path, "k", &[info("a")], 64, 1).unwrap();
        let r = Segment::open(&path).unwrap();
        let n = 200_000u64;
        std::thread::scope(|s| {
            s.spawn(|| {
                for t in 1..=n {
                    w.publish(
                        0,
                        Point {
                            t_ns: t,
                            joules: t as f64 * 0.5,
                        },
                        false,
                    );
                }
            });
            let mut next = 0;
            let mut seen = 0u64;
            let mut last = 0u64;
            while next < n {
                let mut c = Copied::default();
                next = r.copy_since(0, next, &mut c);
                for e in &c.entries {
                    assert_eq!(e.point.joules, e.point.t_ns as f64 * 0.5, "torn entry");
                    assert!(e.point.t_ns > last, "out of order");
                    last = e.point.t_ns;
                }
                seen += c.entries.len() as u64 + c.lost;
            }
            assert_eq!(seen, n);
        });
    }

    #[test]
    fn a_forked_child_does_not_keep_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let mut a = LockFile::open(&path).unwrap();
        assert!(a.try_lock().unwrap());
        let mut ready = [0i32; 2];
        // SAFETY: a valid array of two descriptors for pipe to fill.
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
        // SAFETY: the child makes only async-signal-safe calls (write, nanosleep, _exit).
        let child = unsafe { libc::fork() };
        if child == 0 {
            let ts = libc::timespec {
                tv_sec: 30,
                tv_nsec: 0,
            };
            // SAFETY: as above; the child never returns into the test harness. The fork
            // handlers have run once fork returns here: say so.
            unsafe {
                libc::write(ready[1], b"x".as_ptr().cast(), 1);
                libc::nanosleep(&ts, std::ptr::null_mut());
                libc::_exit(0);
            }
        }
        assert!(child > 0);
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local from our end of the pipe.
        unsafe {
            libc::read(ready[0], (&mut byte as *mut u8).cast(), 1);
            libc::close(ready[0]);
            libc::close(ready[1]);
        }
        drop(a);
        // The child lives on; the lock went with the parent's file.
        let mut b = LockFile::open(&path).unwrap();
        let taken = b.try_lock().unwrap();
        // SAFETY: our own child, not yet waited for.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(taken, "a forked child kept the lock");
    }

    #[test]
    fn the_lock_elects_one_open_file_and_reclaim_spares_held_locks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig::new("job").in_dir(dir.path());
        let mut a = LockFile::open(&cfg.lock_path()).unwrap();
        let mut b = LockFile::open(&cfg.lock_path()).unwrap();
        assert!(a.try_lock().unwrap());
        assert!(!b.try_lock().unwrap());
        let seg = Segment::create(&cfg.segment_path(), &cfg.key, &[info("a")], 4, 1).unwrap();
        // Held: never reclaimed, however old.
        assert!(reclaim(dir.path(), "other", Duration::ZERO, Duration::ZERO).is_empty());
        drop(a);
        // Released, and the owner has been quiet (the pid given, 1, may be alive: then
        // `stale_after` decides).
        seg.heartbeat(0);
        let removed = reclaim(dir.path(), "other", Duration::ZERO, Duration::ZERO);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!cfg.segment_path().exists() && !cfg.lock_path().exists());
        // `b` opened the lock file before it was removed: taking the lock opens it anew.
        assert!(b.try_lock().unwrap());
        assert!(cfg.lock_path().exists());
    }
}

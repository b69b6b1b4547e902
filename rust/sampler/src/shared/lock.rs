//! The election's lock file, and the clean-up of segments and lock files that killed jobs
//! left behind.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;
use std::time::Duration;

use super::files::{self, io_err};
use super::segment::Segment;
use super::{stem_for, PREFIX};
use crate::error::Result;

/// An open lock file, perhaps locked.
///
/// A `flock` belongs to the open file, which a forked child shares: a DataLoader worker forked
/// from the owner would keep the node's lock after the owner died, and nobody would take over.
/// So a fork handler points the child's copy of every lock file's descriptor at `/dev/null`
/// (the number stays valid for whatever closes it later; the lock stays with the parent).
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Descriptors of the lock files open in this process (-1: a free slot), for the fork handler.
static LOCK_FDS: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];
static AT_FORK: Once = Once::new();

extern "C" fn forget_locks_in_child() {
    for slot in &LOCK_FDS {
        let fd = slot.load(Ordering::Relaxed);
        if fd < 0 {
            continue;
        }
        // SAFETY: open, dup2 and close are async-signal-safe, as a fork handler needs; `fd` was
        // open in the parent at the fork, so it is open here, and dup2 only replaces what it
        // refers to.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup2(null, fd);
                libc::close(null);
            }
        }
    }
}

impl LockFile {
    /// Open (creating, private) the lock file: a regular file of this user's, never through a
    /// symbolic link (see `files`). A lock file of another user's is refused: its owner could
    /// hold the lock for ever, or make this process follow a segment of its own.
    pub fn open(path: &Path) -> Result<LockFile> {
        AT_FORK.call_once(|| {
            // SAFETY: registers a handler that only makes async-signal-safe calls; it is never
            // unregistered, and the static it reads lives for the whole process.
            unsafe {
                libc::pthread_atfork(None, None, Some(forget_locks_in_child));
            }
        });
        let file = files::open_own(path, true)?;
        let fd = file.as_raw_fd();
        // No free slot (64 lock files open at once): the child keeps this one; rare enough.
        let _ = LOCK_FDS.iter().find(|s| {
            s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        Ok(LockFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Try to take the exclusive lock without waiting. True when this open file now holds it
    /// and the path still names the file (a lock on a file already removed would elect a
    /// second owner: then the file is opened again and tried once more).
    pub fn try_lock(&mut self) -> Result<bool> {
        for _ in 0..4 {
            if !try_flock(&self.file).map_err(|e| io_err(&self.path, e))? {
                return Ok(false);
            }
            let same = match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if same {
                return Ok(true);
            }
            let path = self.path.clone();
            *self = LockFile::open(&path)?;
        }
        Ok(false)
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let fd = self.file.as_raw_fd();
        for slot in &LOCK_FDS {
            if slot
                .compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: true when taken, false when another open file holds it.
fn try_flock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Remove what killed jobs left in `dir`: segments (and their lock files) whose lock nobody
/// holds and whose owner has shown no sign of life for `grace` and is gone (or for
/// `stale_after` whatever the pid says), and temporary files as old. The job `keep` (the
/// caller's) is left alone, and so is anything but this user's regular files (another user's
/// files, links, whatever was planted). Returns the files removed. Best effort: errors skip a file.
pub fn reclaim(dir: &Path, keep: &str, grace: Duration, stale_after: Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    let keep = stem_for(keep);
    let now = crate::now_ns();
    let grace_ns = grace.as_nanos() as u64;
    let stale_ns = stale_after.as_nanos() as u64;
    let mut remove = |p: PathBuf| {
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    };
    let me = files::euid();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(PREFIX) || name.starts_with(&keep) {
            continue;
        }
        // Only this user's regular files (the entry's own metadata: a link is not followed);
        // another user's files, and anything planted, are left alone.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if !meta.file_type().is_file() || meta.uid() != me {
            continue;
        }
        let old_file = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= grace);
        if name.contains(".tmp") {
            if old_file {
                remove(path);
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".lock") else {
            if name.ends_with(".seg") && !present(&path.with_extension("lock")) {
                // A segment without a lock file: judge it by its header alone.
                if stale_segment(&path, now, grace_ns, stale_ns).unwrap_or(old_file) {
                    remove(path);
                }
            }
            continue;
        };
        let Ok(mut lock) = LockFile::open(&path) else {
            continue;
        };
        if !lock.try_lock().unwrap_or(false) {
            continue;
        }
        let seg = dir.join(format!("{stem}.seg"));
        let stale = if present(&seg) {
            stale_segment(&seg, now, grace_ns, stale_ns).unwrap_or(old_file)
        } else {
            old_file
        };
        if stale {
            // Removed while holding the lock: a process that opened the lock file before is
            // told by `try_lock` that its file is gone.
            if present(&seg) {
                remove(seg);
            }
            remove(path);
        }
        drop(lock);
    }
    removed
}

/// Whether anything (a link included, not followed) has the name `path`.
fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Whether the segment at `path` is stale (None: its header could not be read).
fn stale_segment(path: &Path, now: u64, grace_ns: u64, stale_ns: u64) -> Option<bool> {
    let seg = Segment::open(path).ok()?;
    let quiet_for = now.saturating_sub(seg.heartbeat_ns());
    Some(quiet_for >= grace_ns && (!pid_alive(seg.owner_pid()) || quiet_for >= stale_ns))
}

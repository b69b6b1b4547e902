//! Opening the node's files in a directory other users may write (`/dev/shm` is world-writable,
//! with the sticky bit): another user, or a stale job, may have put anything under the names
//! this process computes.
//!
//! - Never through a symbolic link (`O_NOFOLLOW`): a link planted under a lock or segment name
//!   would otherwise have this process truncate, size and write whatever file it points at.
//! - A file created here is new (`O_EXCL` for a segment's temporary name) and private (0600,
//!   whatever the umask lets through: the mode is set on the descriptor).
//! - A file opened here is a regular file owned by this process's effective user (`fstat` after
//!   the open, so the check and the use are of the same file); anything else is refused with an
//!   error that names the file, its owner and what to do.
//! - The open never waits: a FIFO under the name is opened non-blocking and refused.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// This process's effective user, whose files alone are used.
pub(super) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

const HINT: &str = "the node's shared sampler needs a directory this user may write (/dev/shm, \
                    or the one set by node_dir)";

/// An error of the node's files: a permission refused says what to do; any other (no such
/// directory, a file where a directory should be, a full or read-only file system) says it too.
pub(crate) fn io_err(path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        return Error::io(path, e, HINT);
    }
    Error::Invalid(format!("{}: {e}; {HINT}", path.display()))
}

/// A file refused: `why` says what it is, and the error what to do.
fn refuse(path: &Path, why: String) -> Error {
    Error::Permission {
        path: path.to_path_buf(),
        hint: format!(
            "{why}: the node's shared sampler does not use it (someone may have put it there); \
             remove it, or set node_dir to a directory of your own"
        ),
    }
}

fn options(create: bool, exclusive: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC);
    if exclusive {
        o.create_new(true);
    } else if create {
        o.create(true);
    }
    o
}

/// Open the file at `path` read-write (creating it, private, when `create` and missing), after
/// checking that it is this user's regular file.
pub(super) fn open_own(path: &Path, create: bool) -> Result<File> {
    let file = options(create, false)
        .open(path)
        .map_err(|e| refused(path, e))?;
    check_own(&file, path)?;
    Ok(file)
}

/// Create a new private file at `path` (an error if anything is there, a link included).
pub(super) fn create_new(path: &Path) -> io::Result<File> {
    let file = options(true, true).open(path)?;
    // The umask cannot widen 0600, but a default ACL on the directory can: set it again.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn refused(path: &Path, e: io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return refuse(path, "It is a symbolic link, never followed here".into());
    }
    io_err(path, e)
}

/// Refuse `file` (opened from `path`) unless it is a regular file owned by this user.
pub(super) fn check_own(file: &File, path: &Path) -> Result<()> {
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.file_type().is_file() {
        return Err(refuse(path, "It is not a regular file".into()));
    }
    let me = euid();
    if meta.uid() != me {
        let theirs = meta.uid();
        return Err(refuse(
            path,
            format!(
                "It belongs to user {theirs}, not to this process's user ({me}) (if this \
                 process made it, the directory gives its files to another user, as a network \
                 file system that squashes root does: set node_dir to a local directory)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn nothing_is_created_or_opened_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = dir.path().join("carbonctx-x.tmp1");
        symlink(&victim, &link).unwrap();
        let e = create_new(&link).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let e = open_own(&link, true).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // A dangling link: not followed to create its target either.
        let dangling = dir.path().join("carbonctx-y.lock");
        symlink(dir.path().join("made-through-the-link"), &dangling).unwrap();
        assert!(open_own(&dangling, true).is_err());
        assert!(create_new(&dangling).is_err());
        assert!(!dir.path().join("made-through-the-link").exists());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn files_are_private_and_only_regular_files_of_this_user_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let made = create_new(&dir.path().join("new")).unwrap();
        let opened = open_own(&dir.path().join("lock"), true).unwrap();
        assert_eq!(made.metadata().unwrap().mode() & 0o777, 0o600);
        assert_eq!(opened.metadata().unwrap().mode() & 0o777, 0o600);
        // A FIFO under the name: refused at once (the open does not wait for a writer).
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_own(&fifo, false).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // Another user's file (only root can make one to test with).
        if euid() == 0 {
            let theirs = dir.path().join("theirs");
            std::fs::write(&theirs, b"").unwrap();
            std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
            let e = open_own(&theirs, true).unwrap_err().to_string();
            assert!(e.contains("belongs to user 4242"), "{e}");
        }
    }
}

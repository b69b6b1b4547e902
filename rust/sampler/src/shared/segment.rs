//! A segment: its layout (offsets of the header and of each source's description), the
//! mapping, creation under a temporary name, opening, and the fixed fields.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::files::{self, io_err};
use super::sources::Published;
use crate::error::{Error, Result};

pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"CBNCTXS1");
pub(super) const VERSION: u64 = 3;
pub(super) const HEADER: usize = 4096;
pub(super) const DESC: usize = 1024;
pub(super) const ENTRY: usize = 16;
/// The most sources and ring points a segment may have: a header that claims more (a damaged
/// or hostile file) is refused, so that no reader sizes a copy from it.
pub(super) const MAX_SOURCES: usize = 4096;
pub(super) const MAX_RING: usize = 1 << 20;
pub(super) const GAP_BIT: u64 = 1 << 63;
/// Marks an entry placed between two measured points (see `Timeline::push_placed`).
pub(super) const PLACED_BIT: u64 = 1 << 62;
/// Marks an entry that holds the cumulative variance (J²) of a power integral at its instant,
/// or its bound (J), instead of a point (see `History::push_spread`).
pub(super) const VAR_BIT: u64 = 1 << 61;
pub(super) const BOUND_BIT: u64 = 1 << 60;
/// Every flag an entry's instant may carry.
pub(super) const FLAGS: u64 = GAP_BIT | PLACED_BIT | VAR_BIT | BOUND_BIT;

// Header offsets.
pub(super) const H_MAGIC: usize = 0;
pub(super) const H_VERSION: usize = 8;
pub(super) const H_SOURCES: usize = 16;
pub(super) const H_RING: usize = 24;
pub(super) const H_OWNER: usize = 32;
pub(super) const H_GENERATION: usize = 40;
pub(super) const H_HEARTBEAT: usize = 48;
pub(super) const H_CREATED: usize = 56;
pub(super) const H_DEMAND: usize = 64;
pub(super) const H_KEY: usize = 72;
pub(super) const KEY_CAP: usize = 256;

// Per-source offsets.
pub(super) const S_SEQ: usize = 0;
pub(super) const S_LAST_POLL: usize = 8;
pub(super) const S_FAILED: usize = 16;
pub(super) const S_READS: usize = 24;
pub(super) const S_DOMAIN: usize = 64;
pub(super) const S_METHOD: usize = 65;
pub(super) const S_HAS_COUNTER: usize = 66;
pub(super) const S_INDEX: usize = 68;
pub(super) const S_JPU: usize = 72;
pub(super) const S_WRAP: usize = 80;
pub(super) const S_INTERVAL: usize = 88;
pub(super) const S_SETTLE: usize = 96;
pub(super) const S_ID: (usize, usize) = (128, 128);
pub(super) const S_BACKEND: (usize, usize) = (256, 32);
pub(super) const S_LABEL: (usize, usize) = (288, 384);
pub(super) const S_UUID: (usize, usize) = (672, 96);
pub(super) const S_PATH: (usize, usize) = (768, 256);

/// A mapped segment.
pub struct Segment {
    pub(super) base: *mut u8,
    pub(super) len: usize,
    pub(super) n: usize,
    pub(super) ring: usize,
    /// The file, to tell whether the path still names it.
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) path: PathBuf,
}

// SAFETY: the mapping is shared memory that lives as long as the `Segment`; every word that
// changes after creation is accessed only through atomics, and the rest is read-only once the
// segment has its name. Moving the pointer between threads changes none of that.
unsafe impl Send for Segment {}
// SAFETY: as above: all shared mutation goes through atomics.
unsafe impl Sync for Segment {}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `map`, unmapped once here; no
        // reference into it outlives `self` (all accessors borrow `self`).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// The size of a segment of `n` sources of `ring` points (None: beyond what a `usize` holds).
fn size_for(n: usize, ring: usize) -> Option<usize> {
    let rings = n.checked_mul(ring)?.checked_mul(ENTRY)?;
    (HEADER + n.checked_mul(DESC)?).checked_add(rings)
}

/// A new private file next to `path`, under a name nobody has used (`O_EXCL`: whatever is
/// there, a planted link included, is left alone and another name tried).
fn create_temporary(path: &Path) -> Result<(File, PathBuf)> {
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..16u64 {
        let salt = crate::now_ns().wrapping_add(attempt) & 0xffff_ffff;
        let tmp = path.with_extension(format!("tmp{pid}.{salt:08x}"));
        match files::create_new(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            Err(e) => return Err(io_err(&tmp, e)),
        }
    }
    let (tmp, e) = last.expect("at least one attempt");
    Err(io_err(&tmp, e))
}

/// Give the new file its `size` bytes, reserved now: a file only sized (sparse) takes memory
/// as its pages are first written, and in a full tmpfs (filled by anyone) that first write to
/// the mapping is a SIGBUS that kills the process. Reserved, a full directory is an error here.
///
/// Where the space cannot be reserved at all (a file system without `fallocate`, where the C
/// library does not write the blocks instead; a sandbox whose system-call filter refuses it)
/// the file is only sized, as segments were before reservation: the node's sampler stays
/// usable there.
fn reserve(file: &File, size: usize) -> io::Result<()> {
    let len =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    loop {
        // SAFETY: posix_fallocate on a descriptor we own; no memory is passed. It returns the
        // error number instead of setting errno.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
            0 => return Ok(()),
            libc::EINTR => continue,
            // Unsupported (EINVAL: how older kernels and C libraries say so; `len` is
            // positive here). EPERM, for a file just created, comes only from such a filter.
            libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::EPERM => {
                return file.set_len(size as u64);
            }
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl Segment {
    fn map(file: &File, path: &Path) -> Result<Segment> {
        let meta = file.metadata().map_err(|e| io_err(path, e))?;
        let len = meta.len() as usize;
        if len < HEADER {
            return Err(Error::Invalid(format!(
                "{}: too short for a carbonctx segment",
                path.display()
            )));
        }
        // SAFETY: a shared read-write mapping of a regular file we opened read-write, of its
        // current length; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io_err(path, io::Error::last_os_error()));
        }
        let mut seg = Segment {
            base: base.cast(),
            len,
            n: 0,
            ring: 0,
            dev: meta.dev(),
            ino: meta.ino(),
            path: path.to_path_buf(),
        };
        if seg.word(H_MAGIC).load(Ordering::Acquire) == MAGIC {
            seg.check_shape()?;
        }
        Ok(seg)
    }

    fn check_shape(&mut self) -> Result<()> {
        let n = self.word(H_SOURCES).load(Ordering::Relaxed) as usize;
        let ring = self.word(H_RING).load(Ordering::Relaxed) as usize;
        let version = self.word(H_VERSION).load(Ordering::Relaxed);
        if version != VERSION
            || n > MAX_SOURCES
            || !(2..=MAX_RING).contains(&ring)
            || size_for(n, ring) != Some(self.len)
        {
            return Err(Error::Invalid(format!(
                "{}: a carbonctx segment of another version or shape (version {version}, {n} \
                 sources, {ring} points, {} bytes)",
                self.path.display(),
                self.len
            )));
        }
        self.n = n;
        self.ring = ring;
        Ok(())
    }

    /// Open an existing, complete segment: a regular file of this user's (never through a
    /// symbolic link), with the magic, version and a shape that matches its length.
    pub fn open(path: &Path) -> Result<Segment> {
        let file = files::open_own(path, false)?;
        let seg = Segment::map(&file, path)?;
        if seg.word(H_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err(Error::Invalid(format!(
                "{}: not a carbonctx segment",
                path.display()
            )));
        }
        Ok(seg)
    }

    /// Create a segment for `sources` and give it the name `path` (replacing any file there:
    /// readers of an old one notice that the name moved on). The caller holds the lock.
    pub fn create(
        path: &Path,
        key: &str,
        sources: &[Published],
        ring: usize,
        owner_pid: i32,
    ) -> Result<Segment> {
        let ring = ring.clamp(2, MAX_RING);
        if sources.len() > MAX_SOURCES {
            return Err(Error::Invalid(format!(
                "{} sources: a node segment holds at most {MAX_SOURCES}",
                sources.len()
            )));
        }
        let size = size_for(sources.len(), ring).unwrap_or(usize::MAX);
        let (file, tmp) = create_temporary(path)?;
        let result = (|| {
            reserve(&file, size).map_err(|e| io_err(&tmp, e))?;
            let mut seg = Segment::map(&file, &tmp)?;
            seg.n = sources.len();
            seg.ring = ring;
            seg.word(H_VERSION).store(VERSION, Ordering::Relaxed);
            seg.word(H_SOURCES)
                .store(sources.len() as u64, Ordering::Relaxed);
            seg.word(H_RING).store(ring as u64, Ordering::Relaxed);
            seg.word(H_OWNER).store(owner_pid as u64, Ordering::Relaxed);
            seg.word(H_GENERATION).store(1, Ordering::Relaxed);
            let now = crate::now_ns();
            seg.word(H_HEARTBEAT).store(now, Ordering::Relaxed);
            seg.word(H_CREATED).store(now, Ordering::Relaxed);
            seg.put_text(H_KEY, KEY_CAP, key);
            for (i, p) in sources.iter().enumerate() {
                seg.describe(i, p);
            }
            // The magic last: a segment is complete once it has one.
            seg.word(H_MAGIC).store(MAGIC, Ordering::Release);
            std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
            seg.path = path.to_path_buf();
            Ok(seg)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The atomic word at byte `off`.
    pub(super) fn word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len,
            "offset {off} outside the segment"
        );
        // SAFETY: `off` is 8-aligned (the mapping is page-aligned) and inside the mapping, which
        // lives as long as `&self`; AtomicU64 has the size and alignment of u64, and every
        // process accesses words that change only through atomics.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    pub(super) fn desc(&self, i: usize) -> usize {
        assert!(i < self.n, "source {i} of {}", self.n);
        HEADER + i * DESC
    }

    pub(super) fn slot(&self, i: usize, pos: u64) -> usize {
        HEADER + self.n * DESC + (i * self.ring + (pos % self.ring as u64) as usize) * ENTRY
    }

    /// Bytes `[off, off + len)`, copied out. Only for the fields fixed at creation.
    pub(super) fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut out = vec![0u8; len];
        // SAFETY: the range lies inside the mapping; these bytes were written before the
        // segment got its name and are never written again, so nothing races this copy.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), out.as_mut_ptr(), len) };
        out
    }

    pub(super) fn put_bytes(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: the range lies inside the mapping of a file nobody else has opened yet (it is
        // still under its temporary name), and `&mut self` excludes other users here.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len());
        }
    }

    pub(super) fn put_text(&mut self, off: usize, cap: usize, text: &str) {
        let mut end = text.len().min(cap - 2);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.put_bytes(off, &(end as u16).to_le_bytes());
        self.put_bytes(off + 2, &text.as_bytes()[..end]);
    }

    pub(super) fn text(&self, off: usize, cap: usize) -> String {
        let b = self.bytes(off, cap);
        let len = (u16::from_le_bytes([b[0], b[1]]) as usize).min(cap - 2);
        String::from_utf8_lossy(&b[2..2 + len]).into_owned()
    }

    /// The number of sources.
    pub fn source_count(&self) -> usize {
        self.n
    }

    pub fn ring_points(&self) -> usize {
        self.ring
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still names this segment's file (it is replaced when a new job with the
    /// same key starts over, and removed when reclaimed).
    pub fn is_current(&self) -> bool {
        // Not through a link: a link planted under the name is not this segment.
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    pub fn key(&self) -> String {
        self.text(H_KEY, KEY_CAP)
    }
}

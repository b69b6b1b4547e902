//! The node's timelines in shared memory: one writer (the process that runs the node's sampler),
//! any number of readers (the other processes of the job on the node).
//!
//! # Files
//!
//! Under a directory (`/dev/shm` by default), named from the job key the caller gives (the
//! Python side derives it from the job id, the user and the boot id):
//!
//! - `carbonctx-<key>-<hash>.lock`: the election. The process holding an exclusive `flock` on it
//!   runs the sampler; the kernel releases the lock when that process dies, SIGKILL included.
//! - `carbonctx-<key>-<hash>.seg`: the segment, of a size fixed when it is created.
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
//!          0 t ns (bit 63: the interval from this instant to the next entry is a gap)
//!          8 cumulative joules (f64 bits)
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

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicI32, AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sensors::{CounterSpec, Domain, Method, SourceInfo};
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
    format!("{PREFIX}{safe}-{h:016x}")
}

const MAGIC: u64 = u64::from_le_bytes(*b"CBNCTXS1");
const VERSION: u64 = 1;
const HEADER: usize = 4096;
const DESC: usize = 1024;
const ENTRY: usize = 16;
const GAP_BIT: u64 = 1 << 63;

// Header offsets.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_SOURCES: usize = 16;
const H_RING: usize = 24;
const H_OWNER: usize = 32;
const H_GENERATION: usize = 40;
const H_HEARTBEAT: usize = 48;
const H_CREATED: usize = 56;
const H_DEMAND: usize = 64;
const H_KEY: usize = 72;
const KEY_CAP: usize = 256;

// Per-source offsets.
const S_SEQ: usize = 0;
const S_LAST_POLL: usize = 8;
const S_FAILED: usize = 16;
const S_READS: usize = 24;
const S_DOMAIN: usize = 64;
const S_METHOD: usize = 65;
const S_HAS_COUNTER: usize = 66;
const S_INDEX: usize = 68;
const S_JPU: usize = 72;
const S_WRAP: usize = 80;
const S_INTERVAL: usize = 88;
const S_SETTLE: usize = 96;
const S_ID: (usize, usize) = (128, 128);
const S_BACKEND: (usize, usize) = (256, 32);
const S_LABEL: (usize, usize) = (288, 384);
const S_UUID: (usize, usize) = (672, 96);
const S_PATH: (usize, usize) = (768, 256);

/// One source as the segment describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub info: SourceInfo,
    /// How long the owner waits for an idle counter before taking it as settled, ns.
    pub settle_ns: u64,
}

/// One entry of a ring: a timeline point, and whether the interval after it is a gap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub point: Point,
    pub gap_after: bool,
}

/// What one read of a ring gave.
#[derive(Debug, Default)]
pub struct Copied {
    pub entries: Vec<Entry>,
    /// Entries that were overwritten before they could be copied.
    pub lost: u64,
}

/// A mapped segment.
pub struct Segment {
    base: *mut u8,
    len: usize,
    n: usize,
    ring: usize,
    /// The file, to tell whether the path still names it.
    dev: u64,
    ino: u64,
    path: PathBuf,
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

fn size_for(n: usize, ring: usize) -> usize {
    HEADER + n * DESC + n * ring * ENTRY
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::io(
        path,
        e,
        "the node's shared sampler needs a writable directory (/dev/shm or the one configured)",
    )
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
        if version != VERSION || n > 4096 || ring < 2 || size_for(n, ring) != self.len {
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

    /// Open an existing, complete segment.
    pub fn open(path: &Path) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
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
        let ring = ring.max(2);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        let result = (|| {
            file.set_len(size_for(sources.len(), ring) as u64)
                .map_err(|e| io_err(&tmp, e))?;
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
    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off % 8 == 0 && off + 8 <= self.len,
            "offset {off} outside the segment"
        );
        // SAFETY: `off` is 8-aligned (the mapping is page-aligned) and inside the mapping, which
        // lives as long as `&self`; AtomicU64 has the size and alignment of u64, and every
        // process accesses words that change only through atomics.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn desc(&self, i: usize) -> usize {
        assert!(i < self.n, "source {i} of {}", self.n);
        HEADER + i * DESC
    }

    fn slot(&self, i: usize, pos: u64) -> usize {
        HEADER + self.n * DESC + (i * self.ring + (pos % self.ring as u64) as usize) * ENTRY
    }

    /// Bytes `[off, off + len)`, copied out. Only for the fields fixed at creation.
    fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut out = vec![0u8; len];
        // SAFETY: the range lies inside the mapping; these bytes were written before the
        // segment got its name and are never written again, so nothing races this copy.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), out.as_mut_ptr(), len) };
        out
    }

    fn put_bytes(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len);
        // SAFETY: the range lies inside the mapping of a file nobody else has opened yet (it is
        // still under its temporary name), and `&mut self` excludes other users here.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off), data.len());
        }
    }

    fn put_text(&mut self, off: usize, cap: usize, text: &str) {
        let mut end = text.len().min(cap - 2);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.put_bytes(off, &(end as u16).to_le_bytes());
        self.put_bytes(off + 2, &text.as_bytes()[..end]);
    }

    fn text(&self, off: usize, cap: usize) -> String {
        let b = self.bytes(off, cap);
        let len = (u16::from_le_bytes([b[0], b[1]]) as usize).min(cap - 2);
        String::from_utf8_lossy(&b[2..2 + len]).into_owned()
    }

    fn describe(&mut self, i: usize, p: &Published) {
        let d = self.desc(i);
        let info = &p.info;
        let domain = DOMAINS.iter().position(|x| *x == info.domain).unwrap_or(0) as u8;
        let method = METHODS.iter().position(|x| *x == info.method).unwrap_or(0) as u8;
        self.put_bytes(
            d + S_DOMAIN,
            &[domain, method, u8::from(info.counter.is_some())],
        );
        self.put_bytes(d + S_INDEX, &info.index.to_le_bytes());
        let spec = info.counter.unwrap_or(CounterSpec {
            joules_per_unit: 0.0,
            wrap: None,
        });
        self.put_bytes(d + S_JPU, &spec.joules_per_unit.to_le_bytes());
        self.put_bytes(d + S_WRAP, &spec.wrap.unwrap_or(u64::MAX).to_le_bytes());
        self.put_bytes(
            d + S_INTERVAL,
            &(info.interval.as_nanos() as u64).to_le_bytes(),
        );
        self.put_bytes(d + S_SETTLE, &p.settle_ns.to_le_bytes());
        self.put_text(d + S_ID.0, S_ID.1, &info.id);
        self.put_text(d + S_BACKEND.0, S_BACKEND.1, info.backend);
        self.put_text(d + S_LABEL.0, S_LABEL.1, &info.label);
        self.put_text(d + S_UUID.0, S_UUID.1, info.uuid.as_deref().unwrap_or(""));
        let path = info
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.put_text(d + S_PATH.0, S_PATH.1, &path);
    }

    /// The sources the segment describes, in its order.
    pub fn sources(&self) -> Vec<Published> {
        (0..self.n).map(|i| self.source(i)).collect()
    }

    fn source(&self, i: usize) -> Published {
        let d = self.desc(i);
        let b = self.bytes(d + S_DOMAIN, 48);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let index = u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4]));
        let jpu = f64::from_bits(u64_at(S_JPU - S_DOMAIN));
        let wrap = u64_at(S_WRAP - S_DOMAIN);
        let counter = (b[S_HAS_COUNTER - S_DOMAIN] != 0).then_some(CounterSpec {
            joules_per_unit: jpu,
            wrap: (wrap != u64::MAX).then_some(wrap),
        });
        let uuid = self.text(d + S_UUID.0, S_UUID.1);
        let path = self.text(d + S_PATH.0, S_PATH.1);
        Published {
            info: SourceInfo {
                id: self.text(d + S_ID.0, S_ID.1),
                backend: static_backend(&self.text(d + S_BACKEND.0, S_BACKEND.1)),
                domain: DOMAINS[(b[0] as usize).min(DOMAINS.len() - 1)],
                index,
                label: self.text(d + S_LABEL.0, S_LABEL.1),
                method: METHODS[(b[S_METHOD - S_DOMAIN] as usize).min(METHODS.len() - 1)],
                counter,
                interval: Duration::from_nanos(u64_at(S_INTERVAL - S_DOMAIN)),
                path: (!path.is_empty()).then(|| PathBuf::from(path)),
                uuid: (!uuid.is_empty()).then_some(uuid),
            },
            settle_ns: u64_at(S_SETTLE - S_DOMAIN),
        }
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
        std::fs::metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    pub fn key(&self) -> String {
        self.text(H_KEY, KEY_CAP)
    }

    // ---- the writer (the owner; one at a time, which the lock ensures) ----

    /// Append a point to source `i`'s ring. A few atomic stores.
    #[inline]
    pub fn publish(&self, i: usize, p: Point, gap_after: bool) {
        let seq = self.word(self.desc(i) + S_SEQ);
        // A writer that died mid-write left the number odd: that entry is written again.
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        let pos = odd / 2;
        let s = self.slot(i, pos);
        let t = p.t_ns & !GAP_BIT | if gap_after { GAP_BIT } else { 0 };
        self.word(s).store(t, Ordering::Relaxed);
        self.word(s + 8)
            .store(p.joules.to_bits(), Ordering::Relaxed);
        seq.store(odd + 1, Ordering::Release);
    }

    /// Source `i` was read at `t_ns` (after any point that read gave was published).
    #[inline]
    pub fn polled(&self, i: usize, t_ns: u64) {
        let d = self.desc(i);
        self.word(d + S_READS).fetch_add(1, Ordering::Relaxed);
        self.word(d + S_LAST_POLL).store(t_ns, Ordering::Release);
    }

    /// Source `i` has failed since `t_ns` (`None`: it works).
    pub fn set_failed(&self, i: usize, since: Option<u64>) {
        self.word(self.desc(i) + S_FAILED)
            .store(since.map_or(0, |t| t.max(1)), Ordering::Release);
    }

    pub fn heartbeat(&self, now_ns: u64) {
        self.word(H_HEARTBEAT).store(now_ns, Ordering::Release);
    }

    /// Make this process the owner: a new generation. Returns it.
    pub fn take_over(&self, pid: i32) -> u64 {
        self.word(H_OWNER).store(pid as u64, Ordering::Release);
        self.heartbeat(crate::now_ns());
        self.word(H_GENERATION).fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The owner stops (its process goes on, or exits normally): the segment names no owner,
    /// so that once nobody takes it over it can be reclaimed without waiting for `stale_after`.
    pub fn release(&self) {
        self.word(H_OWNER).store(0, Ordering::Release);
    }

    // ---- readers ----

    pub fn owner_pid(&self) -> i32 {
        self.word(H_OWNER).load(Ordering::Acquire) as i32
    }

    pub fn generation(&self) -> u64 {
        self.word(H_GENERATION).load(Ordering::Acquire)
    }

    pub fn heartbeat_ns(&self) -> u64 {
        self.word(H_HEARTBEAT).load(Ordering::Acquire)
    }

    /// A reader has regions to resolve until `until_ns`: the owner reads every update until
    /// then instead of sparsely.
    pub fn demand(&self, until_ns: u64) {
        self.word(H_DEMAND).fetch_max(until_ns, Ordering::AcqRel);
    }

    pub fn demanded_until(&self) -> u64 {
        self.word(H_DEMAND).load(Ordering::Acquire)
    }

    /// When the owner last read source `i` (everything it published from that read is visible
    /// to a copy made after this load).
    pub fn last_poll_ns(&self, i: usize) -> u64 {
        self.word(self.desc(i) + S_LAST_POLL)
            .load(Ordering::Acquire)
    }

    pub fn failed_since(&self, i: usize) -> Option<u64> {
        let t = self.word(self.desc(i) + S_FAILED).load(Ordering::Acquire);
        (t != 0).then_some(t)
    }

    /// Counter reads the owners made of source `i` over the segment's life.
    pub fn reads(&self, i: usize) -> u64 {
        self.word(self.desc(i) + S_READS).load(Ordering::Relaxed)
    }

    /// Entries written to source `i`'s ring so far.
    pub fn written(&self, i: usize) -> u64 {
        self.word(self.desc(i) + S_SEQ).load(Ordering::Acquire) / 2
    }

    /// Copy source `i`'s entries from position `next` on. Returns the position to continue
    /// from. No lock, no system call.
    pub fn copy_since(&self, i: usize, next: u64, out: &mut Copied) -> u64 {
        let seq = self.word(self.desc(i) + S_SEQ);
        let s1 = seq.load(Ordering::Acquire);
        let end = s1 / 2;
        let ring = self.ring as u64;
        let from = next.max(end.saturating_sub(ring));
        out.lost += from.saturating_sub(next);
        let start = out.entries.len();
        for pos in from..end {
            let s = self.slot(i, pos);
            let t = self.word(s).load(Ordering::Relaxed);
            let j = self.word(s + 8).load(Ordering::Relaxed);
            out.entries.push(Entry {
                point: Point {
                    t_ns: t & !GAP_BIT,
                    joules: f64::from_bits(j),
                },
                gap_after: t & GAP_BIT != 0,
            });
        }
        fence(Ordering::Acquire);
        let s2 = seq.load(Ordering::Relaxed);
        // Entries below this may have been overwritten while they were copied.
        let valid_from = s2.div_ceil(2).saturating_sub(ring);
        if valid_from > from {
            let drop = ((valid_from - from) as usize).min(out.entries.len() - start);
            out.entries.drain(start..start + drop);
            out.lost += drop as u64;
        }
        end.max(next)
    }
}

const DOMAINS: [Domain; 9] = [
    Domain::Package,
    Domain::Core,
    Domain::Uncore,
    Domain::Dram,
    Domain::Psys,
    Domain::Gpu,
    Domain::Module,
    Domain::Rail,
    Domain::Node,
];
const METHODS: [Method; 3] = [Method::Counter, Method::IntegratedPower, Method::Estimate];

fn static_backend(name: &str) -> &'static str {
    match name {
        "powercap" => "powercap",
        "msr" => "msr",
        "perf" => "perf",
        "nvml" => "nvml",
        "amdsmi" => "amdsmi",
        "hwmon" => "hwmon",
        "redfish" => "redfish",
        "estimate" => "estimate",
        _ => "other",
    }
}

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
    /// Open (creating) the lock file.
    pub fn open(path: &Path) -> Result<LockFile> {
        AT_FORK.call_once(|| {
            // SAFETY: registers a handler that only makes async-signal-safe calls; it is never
            // unregistered, and the static it reads lives for the whole process.
            unsafe {
                libc::pthread_atfork(None, None, Some(forget_locks_in_child));
            }
        });
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err(path, e))?;
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
            let same = match (self.file.metadata(), std::fs::metadata(&self.path)) {
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
/// caller's) is left alone. Returns the files removed. Best effort: errors skip a file.
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
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(PREFIX) || name.starts_with(&keep) {
            continue;
        }
        let old_file = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= grace);
        if name.contains(".tmp") {
            if old_file {
                remove(path);
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(".lock") else {
            if name.ends_with(".seg") && !path.with_extension("lock").exists() {
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
        let stale = if seg.exists() {
            stale_segment(&seg, now, grace_ns, stale_ns).unwrap_or(old_file)
        } else {
            old_file
        };
        if stale {
            // Removed while holding the lock: a process that opened the lock file before is
            // told by `try_lock` that its file is gone.
            if seg.exists() {
                remove(seg);
            }
            remove(path);
        }
        drop(lock);
    }
    removed
}

/// Whether the segment at `path` is stale (None: its header could not be read).
fn stale_segment(path: &Path, now: u64, grace_ns: u64, stale_ns: u64) -> Option<bool> {
    let seg = Segment::open(path).ok()?;
    let quiet_for = now.saturating_sub(seg.heartbeat_ns());
    Some(quiet_for >= grace_ns && (!pid_alive(seg.owner_pid()) || quiet_for >= stale_ns))
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
        for t in 1..=3 {
            w.publish(0, p(t), t == 2);
        }
        let mut c = Copied::default();
        let next = r.copy_since(0, 0, &mut c);
        assert_eq!(next, 3);
        assert_eq!(c.lost, 0);
        assert_eq!(
            c.entries.iter().map(|e| e.point.t_ns).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(c.entries[1].gap_after && !c.entries[0].gap_after);
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

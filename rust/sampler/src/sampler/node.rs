//! One sampler per node: the processes of a job on one machine share one sampler thread.
//!
//! The first process of the job on the node takes an exclusive `flock` on the job's lock file
//! and becomes the *owner*: it discovers every source of the node (every GPU, whatever its own
//! `CUDA_VISIBLE_DEVICES` says), polls them as [`Sampler::start`] does, and publishes every
//! timeline point into the node's segment ([`crate::shared`]). The others are *followers*: a
//! light thread copies new points from the segment into the process's own timelines, and the
//! process's regions resolve against them exactly as against its own reads (CLOCK_MONOTONIC is
//! the same clock in every process). A follower reads no counter.
//!
//! - Resolution in a follower waits as the owner's would: a source answers up to its last point,
//!   or up to the owner's last read of it less the settling time, as published; a failed source
//!   is left out of the frontier, as the owner leaves it out.
//! - A follower's marks ask the owner, through the segment, to read every update (as its own
//!   marks would); a quiet owner looks at least every quiet interval.
//! - Followers try the lock every [`NodeConfig::takeover_poll`]. When the owner dies the kernel
//!   releases its lock, one follower gets it, discovers and opens the sources (with the
//!   discovery options it was started with), and goes on publishing into the same segment (a
//!   new generation). Each source's joules go on from the last published value; the interval
//!   between the dead owner's last read and the new owner's first is a gap, published and
//!   recorded in every process ([`SourceStatus::gaps`]; a region across it resolves to NaN for
//!   that source), never interpolated across.
//! - A segment whose file name moved on (a new job with the same key started over, or the
//!   segment was reclaimed) is followed to its successor, with a gap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::config::Config;
use super::handle::{Sampler, Shared, SourceStatus};
use super::lock;
use super::schedule::{
    append, guarded, poll_loop, resolve, start_sources, Cover, Handshake, Polled, COARSE_POINTS,
    COARSE_STEP_NS,
};
use crate::error::{Error, Result};
use crate::regions::OpenRegions;
use crate::sensors::discover::{self, Options};
use crate::sensors::{amd, nvml, EnergySource, Reading, SourceInfo, Unavailable};
use crate::shared::{self, Copied, LockFile, NodeConfig, Published, Segment};
use crate::timeline::{History, Point};

/// What this process does for its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It reads the node's counters and publishes them.
    Owner,
    /// It copies what the owner publishes.
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Follower => "follower",
        }
    }
}

/// Where a process stands in its node's shared sampler.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    pub role: Role,
    /// The process that reads the node's counters (this one when `role` is `Owner`).
    pub owner_pid: i32,
    /// How many owners the segment has had (1 until the first takeover).
    pub generation: u64,
    /// Times this process took over from a dead owner.
    pub takeovers: u64,
    /// The segment file.
    pub segment: PathBuf,
    /// Every source of the node, in the segment's order (a process's own
    /// [`Sampler::sources`] are some of these).
    pub node_sources: Vec<SourceInfo>,
    /// Counter reads the node's owners made of each of `node_sources`, over the segment's life
    /// (refreshed every takeover poll).
    pub node_reads: Vec<u64>,
    /// Files of stale segments this process removed when it started.
    pub reclaimed: Vec<PathBuf>,
}

impl Sampler {
    /// Start this process's part of its node's shared sampler: the owner if no other process
    /// of the job `node.key` on this node runs it (then the node's sources are discovered with
    /// `options`, every GPU included, and read here), a follower otherwise (then no counter is
    /// read here). Either way [`Sampler::sources`] are the node's sources this process reports:
    /// every CPU source, and the GPUs `options.cuda_visible_devices` makes visible (by index or
    /// UUID, as CUDA reads it); marks, results, waiting and status work as with
    /// [`Sampler::start`]. [`Sampler::node_status`] says which role this process has.
    ///
    /// Stale segments of other jobs in `node.dir` are removed first (see
    /// [`crate::shared::reclaim`]).
    pub fn start_on_node(
        options: Options,
        config: Config,
        node: NodeConfig,
    ) -> Result<(Sampler, Vec<Unavailable>)> {
        std::fs::create_dir_all(&node.dir).map_err(|e| {
            Error::io(
                &node.dir,
                e,
                "the node's shared sampler needs a writable directory",
            )
        })?;
        let reclaimed = shared::reclaim(&node.dir, &node.key, node.reclaim_grace, node.stale_after);
        let mut lockf = LockFile::open(&node.lock_path())?;
        match elect(&node, &mut lockf)? {
            None => {
                let (sources, unavailable) = discover_node(&options);
                Sampler::spawn(move |shared, tx| {
                    let ctx = Ctx {
                        options,
                        config,
                        node,
                        reclaimed,
                    };
                    owner_thread(&shared, sources, unavailable, &ctx, lockf, tx)
                })
            }
            Some(seg) => Sampler::spawn(move |shared, tx| {
                let ctx = Ctx {
                    options,
                    config,
                    node,
                    reclaimed,
                };
                follower_thread(&shared, seg, &ctx, lockf, tx)
            }),
        }
    }
}

/// What the thread keeps from its start.
struct Ctx {
    options: Options,
    config: Config,
    node: NodeConfig,
    reclaimed: Vec<PathBuf>,
}

/// Take the lock (None: this process is the owner) or find the owner's segment.
fn elect(node: &NodeConfig, lockf: &mut LockFile) -> Result<Option<Segment>> {
    let deadline = crate::now_ns() + node.wait_for_owner.as_nanos() as u64;
    // An owner beats at least every 100 ms; one silent for this long is not there.
    let grace = node.reclaim_grace.max(Duration::from_secs(2)).as_nanos() as u64;
    loop {
        if lockf.try_lock()? {
            return Ok(None);
        }
        if let Ok(seg) = Segment::open(&node.segment_path()) {
            // A segment left by an earlier job with the same key is not the one to follow:
            // its owner is gone; the new owner is about to replace it.
            let fresh = crate::now_ns().saturating_sub(seg.heartbeat_ns()) < grace;
            if fresh && seg.is_current() && shared_owner_alive(seg.owner_pid()) {
                return Ok(Some(seg));
            }
        }
        if crate::now_ns() > deadline {
            return Err(Error::Invalid(format!(
                "another process holds {} but published no segment at {} within {:?}",
                node.lock_path().display(),
                node.segment_path().display(),
                node.wait_for_owner
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn shared_owner_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
}

/// Every source of the node: `options` with every GPU visible.
fn discover_node(options: &Options) -> (Vec<Box<dyn EnergySource>>, Vec<Unavailable>) {
    let mut o = options.clone();
    o.cuda_visible_devices = None;
    o.rocr_visible_devices = None;
    o.hip_visible_devices = None;
    let d = discover::discover(&o);
    (d.chosen, d.unavailable)
}

/// The sources this process reports among the node's: every non-GPU source, the NVIDIA GPUs
/// its `CUDA_VISIBLE_DEVICES` makes visible and the AMD GPUs its ROCm variables make visible
/// (each read as discovery reads it).
pub fn visible_view(
    node_sources: &[SourceInfo],
    options: &Options,
) -> (Vec<usize>, Vec<Unavailable>) {
    let gpus: Vec<(u32, Option<String>)> = node_sources
        .iter()
        .filter(|s| s.backend == "nvml")
        .map(|s| (s.index, s.uuid.clone()))
        .collect();
    let (visible, mut unavailable) = if options.nvml {
        nvml::visible_among(&gpus, options.cuda_visible_devices.as_deref())
    } else {
        (Vec::new(), Vec::new())
    };
    let amd_gpus: Vec<(u32, Option<String>)> = node_sources
        .iter()
        .filter(|s| amd::is_amd_gpu(s))
        .map(|s| (s.index, s.uuid.clone()))
        .collect();
    let (amd_visible, amd_unavailable) = if options.amd {
        amd::visible_among(
            &amd_gpus,
            options.rocr_visible_devices.as_deref(),
            options.hip_visible_devices.as_deref(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    unavailable.extend(amd_unavailable);
    let view = node_sources
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            if s.backend == "nvml" {
                visible.contains(&s.index)
            } else if amd::is_amd_gpu(s) {
                amd_visible.contains(&s.index)
            } else {
                true
            }
        })
        .map(|(i, _)| i)
        .collect();
    (view, unavailable)
}

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn set_status(shared: &Shared, seg: &Segment, role: Role, takeovers: u64, ctx: &Ctx) {
    let node_sources: Vec<SourceInfo> = seg.sources().into_iter().map(|p| p.info).collect();
    let node_reads = (0..seg.source_count()).map(|i| seg.reads(i)).collect();
    *lock(&shared.node) = Some(NodeStatus {
        role,
        owner_pid: seg.owner_pid(),
        generation: seg.generation(),
        takeovers,
        segment: seg.path().to_path_buf(),
        node_sources,
        node_reads,
        reclaimed: ctx.reclaimed.clone(),
    });
}

fn answer(
    tx: mpsc::Sender<Handshake>,
    infos: &[SourceInfo],
    view: &[usize],
    unavailable: Vec<Unavailable>,
) {
    let mine = view.iter().map(|&i| infos[i].clone()).collect();
    // The receiver only disappears if `start_on_node` itself is gone; nothing to tell then.
    let _ = tx.send((mine, view.to_vec(), unavailable));
}

fn owner_thread(
    shared: &Arc<Shared>,
    sources: Vec<Box<dyn EnergySource>>,
    found_unavailable: Vec<Unavailable>,
    ctx: &Ctx,
    lockf: LockFile,
    tx: mpsc::Sender<Handshake>,
) {
    guarded(shared, || {
        let (polled, first_reads) = start_sources(shared, sources, &ctx.config);
        let published: Vec<Published> = polled
            .iter()
            .map(|p| Published {
                info: p.source.info().clone(),
                settle_ns: p.settle_ns,
            })
            .collect();
        let seg = match Segment::create(
            &ctx.node.segment_path(),
            &ctx.node.key,
            &published,
            ctx.node.ring_points,
            pid(),
        ) {
            Ok(seg) => seg,
            Err(e) => {
                *lock(&shared.start_error) = Some(e);
                return;
            }
        };
        {
            let timelines = lock(&shared.timelines);
            for (i, (tl, p)) in timelines.iter().zip(polled.iter()).enumerate() {
                if let Some(pt) = tl.last() {
                    seg.publish(i, pt, false);
                }
                seg.polled(i, p.last_poll_ns);
                if p.failed_since.is_some() {
                    seg.set_failed(i, p.failed_since);
                }
            }
        }
        let infos: Vec<SourceInfo> = published.into_iter().map(|p| p.info).collect();
        let (view, view_unavailable) = visible_view(&infos, &ctx.options);
        let mut unavailable = found_unavailable;
        unavailable.extend(first_reads);
        unavailable.extend(view_unavailable);
        set_status(shared, &seg, Role::Owner, 0, ctx);
        answer(tx, &infos, &view, unavailable);
        poll_loop(
            shared,
            polled,
            &ctx.config,
            Some(&seg),
            &mut OpenRegions::new(),
            Some(&view),
        );
        // The lock is held for as long as this thread polls.
        seg.release();
        drop(lockf);
    });
}

/// A follower's state for one source of the segment.
struct Mirror {
    /// The ring position to copy from.
    next: u64,
    /// The next point starts after a gap that began here.
    pending_gap: Option<u64>,
    /// Local joules less the segment's (non-zero after following a segment that replaced
    /// another).
    offset_j: f64,
    /// Set `offset_j` at the next entry (a new segment starts from zero).
    rebase: bool,
    settle_ns: u64,
}

fn follower_thread(
    shared: &Arc<Shared>,
    seg: Segment,
    ctx: &Ctx,
    lockf: LockFile,
    tx: mpsc::Sender<Handshake>,
) {
    guarded(shared, || {
        let published = seg.sources();
        let infos: Vec<SourceInfo> = published.iter().map(|p| p.info.clone()).collect();
        *lock(&shared.timelines) = published
            .iter()
            .map(|_| History::new(ctx.config.timeline_capacity, COARSE_POINTS, COARSE_STEP_NS))
            .collect();
        *lock(&shared.status) = published
            .iter()
            .map(|p| SourceStatus {
                interval_ns: p.info.interval.as_nanos() as u64,
                ..SourceStatus::default()
            })
            .collect();
        let mut mirrors: Vec<Mirror> = published
            .iter()
            .map(|p| Mirror {
                next: 0,
                pending_gap: None,
                offset_j: 0.0,
                rebase: false,
                settle_ns: p.settle_ns,
            })
            .collect();
        let (view, unavailable) = visible_view(&infos, &ctx.options);
        copy_all(shared, &seg, &mut mirrors);
        set_status(shared, &seg, Role::Follower, 0, ctx);
        answer(tx, &infos, &view, unavailable);
        let mut open = OpenRegions::new();
        if let Some((polled, seg, lockf)) =
            follow(shared, seg, &mut mirrors, ctx, lockf, &mut open, &view)
        {
            poll_loop(
                shared,
                polled,
                &ctx.config,
                Some(&seg),
                &mut open,
                Some(&view),
            );
            seg.release();
            drop(lockf);
        }
    });
}

/// Copy what the segment has that this process has not seen; the cover of each source.
fn copy_all(shared: &Shared, seg: &Segment, mirrors: &mut [Mirror]) -> Vec<Cover> {
    let mut timelines = lock(&shared.timelines);
    let mut status = lock(&shared.status);
    let mut covers = Vec::with_capacity(mirrors.len());
    for (i, m) in mirrors.iter_mut().enumerate() {
        let (Some(tl), Some(st)) = (timelines.get_mut(i), status.get_mut(i)) else {
            continue;
        };
        // Before the copy: every point published from the reads up to `last_poll` is copied.
        let last_poll_ns = seg.last_poll_ns(i);
        let failed_since = seg.failed_since(i);
        let mut c = Copied::default();
        m.next = seg.copy_since(i, m.next, &mut c);
        if c.lost > 0 {
            // Overwritten before they could be copied: nothing is invented for them.
            if let Some(last) = tl.last() {
                m.pending_gap.get_or_insert(last.t_ns);
            }
        }
        for e in c.entries {
            if m.rebase {
                m.offset_j = tl.last().map_or(0.0, |l| l.joules - e.point.joules);
                m.rebase = false;
            }
            let pt = Point {
                t_ns: e.point.t_ns,
                joules: e.point.joules + m.offset_j,
            };
            if e.gap_after {
                m.pending_gap = Some(m.pending_gap.map_or(pt.t_ns, |g| g.min(pt.t_ns)));
                continue;
            }
            let gap = m.pending_gap.take();
            append(i, tl, st, None, 0.0, pt, gap);
        }
        st.joules = tl.last().map_or(0.0, |l| l.joules);
        st.failed = failed_since.is_some();
        covers.push(Cover {
            last_poll_ns,
            settle_ns: m.settle_ns,
            failed_since,
        });
    }
    covers
}

/// How often a follower copies while regions are being marked.
const FOLLOW_FAST: Duration = Duration::from_millis(1);

/// The follower's loop: copy, resolve, and now and then try the lock. Returns the sources to
/// poll (and the segment and lock) when this process took over, `None` when stopped.
fn follow(
    shared: &Shared,
    mut seg: Segment,
    mirrors: &mut [Mirror],
    ctx: &Ctx,
    mut lockf: LockFile,
    open: &mut OpenRegions,
    view: &[usize],
) -> Option<(Vec<Polled>, Segment, LockFile)> {
    let config = &ctx.config;
    let hold_ns = config.fast_hold.as_nanos() as u64;
    let quiet_ns = (config.quiet_interval.as_nanos() as u64).max(1_000_000);
    let try_ns = ctx.node.takeover_poll.as_nanos() as u64;
    let mut fast_until = crate::now_ns() + hold_ns;
    let mut fast = true;
    let mut next_try = crate::now_ns() + try_ns;
    seg.demand(fast_until);
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let now = crate::now_ns();
        if !fast && !shared.quiet.load(Ordering::Acquire) {
            fast = true;
            fast_until = now + hold_ns;
            seg.demand(fast_until);
        }
        let covers = copy_all(shared, &seg, mirrors);
        shared.loops.fetch_add(1, Ordering::Relaxed);
        let marks = resolve(shared, &covers, view, open, stopping, config.max_resolved);
        if stopping {
            return None;
        }
        let now = crate::now_ns();
        if marks > 0 {
            fast_until = now + hold_ns;
            seg.demand(fast_until);
        }
        if now >= next_try {
            next_try = now + try_ns;
            match lockf.try_lock() {
                Ok(true) => {
                    let polled = take_over(shared, &mut seg, mirrors, ctx);
                    set_status(shared, &seg, Role::Owner, 1, ctx);
                    return Some((polled, seg, lockf));
                }
                _ => {
                    if !seg.is_current() {
                        follow_successor(&mut seg, mirrors, &ctx.node);
                    }
                    set_status(shared, &seg, Role::Follower, 0, ctx);
                }
            }
        }
        if fast && now > fast_until {
            fast = false;
            shared.quiet.store(true, Ordering::Release);
        }
        let sleep_ns = if fast {
            FOLLOW_FAST.as_nanos() as u64
        } else {
            quiet_ns
        }
        .min(next_try.saturating_sub(now).max(1));
        let g = lock(&shared.sleep);
        let woken = !fast && !shared.quiet.load(Ordering::Acquire);
        if !shared.stop.load(Ordering::SeqCst) && !woken {
            let _ = shared.wake.wait_timeout(g, Duration::from_nanos(sleep_ns));
        }
    }
}

/// The segment's name now names another file (a new job with the same key started over): map
/// that one, with a gap for every source.
fn follow_successor(seg: &mut Segment, mirrors: &mut [Mirror], node: &NodeConfig) {
    let Ok(next) = Segment::open(&node.segment_path()) else {
        return;
    };
    let old: Vec<String> = seg.sources().into_iter().map(|p| p.info.id).collect();
    let new: Vec<String> = next.sources().into_iter().map(|p| p.info.id).collect();
    if old != new {
        // Other sources: this process's columns cannot follow them; it keeps what it has.
        return;
    }
    for (i, m) in mirrors.iter_mut().enumerate() {
        m.next = 0;
        m.rebase = true;
        m.pending_gap = Some(seg.last_poll_ns(i));
    }
    *seg = next;
}

/// A source the new owner's discovery did not find: it reads as failed.
struct Missing(SourceInfo);

impl EnergySource for Missing {
    fn info(&self) -> &SourceInfo {
        &self.0
    }
    fn read(&mut self) -> Result<Reading> {
        Err(Error::Invalid(format!(
            "{}: the process that took over the node's sampler could not find this source",
            self.0.id
        )))
    }
}

/// This follower got the lock: discover and open the node's sources, and go on publishing
/// into the segment from where the dead owner stopped, with a gap between.
fn take_over(shared: &Shared, seg: &mut Segment, mirrors: &mut [Mirror], ctx: &Ctx) -> Vec<Polled> {
    // What the dead owner published last.
    let _ = copy_all(shared, seg, mirrors);
    let published = seg.sources();
    if !seg.is_current() {
        // Removed or replaced while nobody held the lock: start a segment of our own.
        if let Ok(new) = Segment::create(
            &ctx.node.segment_path(),
            &ctx.node.key,
            &published,
            ctx.node.ring_points,
            pid(),
        ) {
            *seg = new;
            for m in mirrors.iter_mut() {
                m.offset_j = 0.0;
            }
        }
    }
    let (sources, _) = discover_node(&ctx.options);
    let mut by_id: HashMap<String, Box<dyn EnergySource>> = sources
        .into_iter()
        .map(|s| (s.info().id.clone(), s))
        .collect();
    let mut timelines = lock(&shared.timelines);
    let mut status = lock(&shared.status);
    let mut polled = Vec::with_capacity(published.len());
    for (i, p) in published.iter().enumerate() {
        let (tl, st, m) = (&mut timelines[i], &mut status[i], &mut mirrors[i]);
        let last = tl.last();
        let base_j = last.map_or(0.0, |l| l.joules);
        let mut from = last.map_or(0, |l| l.t_ns).max(seg.last_poll_ns(i));
        if let Some(g) = m.pending_gap.take() {
            from = from.min(g);
        }
        let source = by_id.remove(&p.info.id);
        let t = crate::now_ns();
        let read = source.map(|mut s| {
            let r = s.read();
            (s, r)
        });
        let mut one = match read {
            Some((s, Ok(reading))) => {
                let (mut one, first, fresh) = Polled::new(s, reading, t, base_j, &ctx.config);
                one.offset_j = m.offset_j;
                append(i, tl, st, Some(seg), one.offset_j, first, Some(from));
                seg.polled(i, t);
                seg.set_failed(i, None);
                st.reads += fresh.reads;
                st.interval_ns = fresh.interval_ns;
                st.failed = false;
                one
            }
            Some((s, Err(e))) => {
                st.last_error = Some(e.to_string());
                Polled::failed(s, from, base_j, &ctx.config)
            }
            None => Polled::failed(Box::new(Missing(p.info.clone())), from, base_j, &ctx.config),
        };
        if one.failed_since.is_some() {
            st.failed = true;
            seg.set_failed(i, one.failed_since);
        }
        one.offset_j = m.offset_j;
        polled.push(one);
    }
    seg.take_over(pid());
    polled
}

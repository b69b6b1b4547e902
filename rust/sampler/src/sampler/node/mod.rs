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
//!
//! Modules: `owner` (the thread of the process that reads the counters), `follower` (the
//! thread of the others), `mirror` (a follower's copy of the segment into its timelines),
//! `takeover` (a follower becoming the owner).

mod follower;
mod mirror;
mod owner;
mod takeover;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use super::config::Config;
use super::handle::{Sampler, Shared};
use super::lock;
use super::schedule::Handshake;
use crate::error::{Error, Result};
use crate::sensors::discover::{self, Options};
use crate::sensors::{amd, nvml, EnergySource, SourceInfo, Unavailable};
use crate::shared::{self, LockFile, NodeConfig, Segment};
use follower::follower_thread;
use owner::owner_thread;

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
        std::fs::create_dir_all(&node.dir).map_err(|e| shared::io_err(&node.dir, e))?;
        let reclaimed = shared::reclaim(&node.dir, &node.key, node.reclaim_grace, node.stale_after);
        let mut lockf = LockFile::open(&node.lock_path())?;
        match elect(&node, &mut lockf)? {
            None => {
                let (sources, unavailable) = discover_node(&options);
                Sampler::spawn(config.realtime, move |shared, tx| {
                    let ctx = Ctx {
                        options,
                        config,
                        node,
                        reclaimed,
                    };
                    owner_thread(&shared, sources, unavailable, &ctx, lockf, tx)
                })
            }
            Some(seg) => Sampler::spawn(config.realtime, move |shared, tx| {
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

//! The owner's thread: read the node's sources, publish every point into the segment.

use std::sync::{mpsc, Arc};

use super::super::handle::Shared;
use super::super::lock;
use super::super::schedule::{guarded, poll_loop, start_sources, Handshake};
use super::{answer, pid, set_status, visible_view, Ctx, Role};
use crate::regions::OpenRegions;
use crate::sensors::{EnergySource, SourceInfo, Unavailable};
use crate::shared::{LockFile, Published, Segment};
use crate::timeline::Point;

pub(super) fn owner_thread(
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
                    // Unmeasured before its first point (a fed source's first read waited).
                    if let Some((from, _)) = tl.gaps().next() {
                        seg.publish(i, Point { t_ns: from, ..pt }, true);
                    }
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

//! A follower that got the lock becomes the owner: it discovers and opens the node's
//! sources and goes on publishing into the segment, with a gap since the dead owner's last read.

use std::collections::HashMap;

use super::super::handle::Shared;
use super::super::lock;
use super::super::poll::{append, Polled};
use super::super::priority::normal_while;
use super::mirror::{copy_all, Mirror};
use super::{discover_node, pid, Ctx};
use crate::error::{Error, Result};
use crate::sensors::{EnergySource, Reading, SourceInfo};
use crate::shared::Segment;

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
pub(super) fn take_over(
    shared: &Shared,
    seg: &mut Segment,
    mirrors: &mut [Mirror],
    ctx: &Ctx,
) -> Vec<Polled> {
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
    // Discovery (vendor libraries' initialisation) may take a core for a second: not in the
    // real-time class.
    let (sources, _) = normal_while(&shared.scheduling, || discover_node(&ctx.options));
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
            (s, r, crate::now_ns())
        });
        let mut one = match read {
            Some((s, Ok(reading), t_after)) => {
                let (mut one, first, fresh) =
                    Polled::new(s, reading, (t, t_after), base_j, &ctx.config);
                one.offset_j = m.offset_j;
                append(i, tl, st, Some(seg), one.offset_j, first, Some(from));
                seg.polled(i, t);
                seg.set_failed(i, None);
                st.reads += fresh.reads;
                st.interval_ns = fresh.interval_ns;
                st.failed = false;
                one
            }
            Some((s, Err(e), _)) => {
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

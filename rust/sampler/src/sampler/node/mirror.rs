//! A follower's copy of the segment into this process's timelines.

use super::super::handle::Shared;
use super::super::lock;
use super::super::poll::{append, Cover};
use crate::shared::{Copied, Segment};
use crate::timeline::Point;

/// A follower's state for one source of the segment.
pub(super) struct Mirror {
    /// The ring position to copy from.
    pub(super) next: u64,
    /// The next point starts after a gap that began here.
    pub(super) pending_gap: Option<u64>,
    /// Local joules less the segment's (non-zero after following a segment that replaced
    /// another).
    pub(super) offset_j: f64,
    /// Set `offset_j` at the next entry (a new segment starts from zero).
    pub(super) rebase: bool,
    pub(super) settle_ns: u64,
    /// The owner's latest cumulative variance (J²) of a power integral, until its bound
    /// (published next) comes.
    pub(super) var_j2: f64,
}

/// Copy what the segment has that this process has not seen; the cover of each source.
pub(super) fn copy_all(shared: &Shared, seg: &Segment, mirrors: &mut [Mirror]) -> Vec<Cover> {
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
            if e.var {
                m.var_j2 = e.point.joules;
                continue;
            }
            if e.bound {
                // The owner's uncertainty of a power integral, stated here as there.
                let u = crate::timeline::Uncertain {
                    var_j2: m.var_j2,
                    bound_j: e.point.joules,
                };
                tl.push_spread(e.point.t_ns, u);
                continue;
            }
            if m.rebase {
                m.offset_j = tl.last().map_or(0.0, |l| l.joules - e.point.joules);
                m.rebase = false;
            }
            let pt = Point {
                t_ns: e.point.t_ns,
                joules: e.point.joules + m.offset_j,
            };
            if e.placed {
                // An estimate between measured points: never across a gap.
                if m.pending_gap.is_none() {
                    tl.push_placed(pt);
                }
                continue;
            }
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

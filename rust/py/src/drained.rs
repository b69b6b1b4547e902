//! Resolved regions taken from the sampler all at once and handed to Python in slices.
//!
//! The resolver thread takes a few hundred regions at a time (it gives up the GIL between
//! slices). Taking them one slice at a time from the sampler would move every row behind the
//! slice each time (a quadratic cost in the backlog); here the whole backlog is taken in one
//! move and the slices are copied out from the front. The rows kept here count as undrained.

use std::sync::{Mutex, MutexGuard};

use carbonctx_sampler::sampler::{self, Packed};

/// Rows taken from the sampler and not yet handed out (`rows` from index `at`).
#[derive(Default)]
pub(crate) struct Drained {
    rows: Mutex<(Packed, usize)>,
}

/// Up to `max` rows in columns: ids, tags, t0_ns, t1_ns, joules and uncertainty (`width` per
/// row: as many as the sampler has sources).
pub(crate) struct Slice<'a> {
    pub(crate) ids: &'a [u64],
    pub(crate) tags: &'a [u32],
    pub(crate) t0_ns: &'a [u64],
    pub(crate) t1_ns: &'a [u64],
    pub(crate) joules: &'a [f64],
    pub(crate) uncertainty: &'a [f64],
}

impl Drained {
    fn lock(&self) -> MutexGuard<'_, (Packed, usize)> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` of the oldest `max` resolved rows: those kept here first, then the sampler's. A slice
    /// shorter than `max` means that nothing more is resolved (callers stop draining there): when
    /// fewer than `max` rows are kept here, the sampler's are put behind them first. `f`
    /// returns whether it took the slice (false: an error building it; the rows stay).
    pub(crate) fn take<R>(
        &self,
        inner: &sampler::Sampler,
        max: usize,
        f: impl FnOnce(Slice<'_>) -> (R, bool),
    ) -> R {
        let mut g = self.lock();
        let (rows, at) = &mut *g;
        if rows.len() - *at < max {
            let more = inner.drain_packed(usize::MAX);
            if *at >= rows.len() {
                *rows = more;
                *at = 0;
            } else if !more.is_empty() {
                // Fewer than `max` kept: moved to the front (a copy of fewer than `max` rows),
                // the sampler's behind them.
                let (w, a) = (rows.joules.len() / rows.len(), *at);
                rows.take_front(a, w);
                rows.extend(&more);
                *at = 0;
            }
        }
        let n = max.min(rows.len() - *at);
        let w = if rows.is_empty() {
            0
        } else {
            rows.joules.len() / rows.len()
        };
        let (a, b) = (*at, *at + n);
        let (out, taken) = f(Slice {
            ids: &rows.ids[a..b],
            tags: &rows.tags[a..b],
            t0_ns: &rows.t0_ns[a..b],
            t1_ns: &rows.t1_ns[a..b],
            joules: &rows.joules[a * w..b * w],
            uncertainty: &rows.uncertainty[a * w..b * w],
        });
        if taken {
            *at = b;
            if *at >= rows.len() {
                // All handed out: let go of a burst's rows now, not at the next take.
                *rows = Packed::default();
                *at = 0;
            }
        }
        out
    }

    /// Rows kept here, not yet handed out.
    pub(crate) fn kept(&self) -> usize {
        let g = self.lock();
        g.0.len().saturating_sub(g.1)
    }
}

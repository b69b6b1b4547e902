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

/// Up to `max` rows in columns: (ids, tags, t0_ns, t1_ns, joules, uncertainty), joules and
/// uncertainties `width` per row.
pub(crate) type Slice = (Vec<u64>, Vec<u32>, Vec<u64>, Vec<u64>, Vec<f64>, Vec<f64>);

impl Drained {
    fn lock(&self) -> MutexGuard<'_, (Packed, usize)> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest `max` resolved rows: those kept here first, then the sampler's.
    pub(crate) fn take(&self, inner: &sampler::Sampler, max: usize) -> Slice {
        let mut g = self.lock();
        let (rows, at) = &mut *g;
        if *at >= rows.len() {
            *rows = inner.drain_packed(usize::MAX);
            *at = 0;
        }
        let n = max.min(rows.len() - *at);
        if *at == 0 && n == rows.len() {
            let p = std::mem::take(rows);
            return (p.ids, p.tags, p.t0_ns, p.t1_ns, p.joules, p.uncertainty);
        }
        let w = if rows.is_empty() { 0 } else { rows.joules.len() / rows.len() };
        let (a, b) = (*at, *at + n);
        *at = b;
        (
            rows.ids[a..b].to_vec(),
            rows.tags[a..b].to_vec(),
            rows.t0_ns[a..b].to_vec(),
            rows.t1_ns[a..b].to_vec(),
            rows.joules[a * w..b * w].to_vec(),
            rows.uncertainty[a * w..b * w].to_vec(),
        )
    }

    /// Rows kept here, not yet handed out.
    pub(crate) fn kept(&self) -> usize {
        let g = self.lock();
        g.0.len().saturating_sub(g.1)
    }
}

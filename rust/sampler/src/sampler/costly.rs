//! Expensive counters while regions are marked: read one update in several as a pair (see
//! `phase::pair`) so that their reads take at most [`SHARE`] of a core.
//!
//! Reading a counter at every update costs its read's CPU time once a period (and a look
//! before one update in eight). Where that is more than the share (an NVML energy read costs
//! about 3 ms of CPU on an H100, its counter moves every 100 ms: 3.4 % of a core per GPU), and
//! the source's power samples place each update's energy in time (so the energy between two
//! read updates is still placed where it went), one update in `k` is bracketed by a look before
//! it and a read after it, `k` as small as the share allows. A counter without such samples
//! keeps every update: between reads `k` updates apart its energy would be spread evenly, and
//! a 20 ms region's share of it with it.

use super::marks;
use super::phase::pair_stride;
use super::poll::Polled;

/// Share of one core the reads of one such counter may take while regions are marked.
pub(super) const SHARE: f64 = 0.01;

/// Every how many updates `p` is to be read as a pair now; None to read every update.
pub(super) fn stride(p: &Polled) -> Option<u32> {
    let ph = p.phase.as_ref().filter(|ph| ph.is_locked())?;
    if !p.placed || p.failed_since.is_some() || marks::fine(p) {
        return None;
    }
    pair_stride(p.read_cost_ns as f64, ph.period_ns()?, SHARE)
}

/// While regions are marked: pair each expensive counter (or go on pairing it at a new stride),
/// and read every update of the others again.
pub(super) fn while_marked(polled: &mut [Polled], now: u64) {
    for p in polled.iter_mut() {
        let k = stride(p);
        let Some(ph) = p.phase.as_mut() else {
            continue;
        };
        match k {
            Some(k) if ph.paired() => ph.pair_with(k, now),
            Some(k) => {
                ph.pair_with(k, now);
                if ph.paired() {
                    p.due_ns = ph.due(now).max(now + 1);
                }
            }
            None if ph.paired() => {
                ph.unpair(now);
                p.due_ns = p.due_ns.min(ph.due(now).max(now + 1));
            }
            None => {}
        }
    }
}

/// Quiet, or read another way (at marks, around predicted marks): no pairs.
pub(super) fn unpair_all(polled: &mut [Polled], now: u64) {
    for p in polled.iter_mut() {
        if let Some(ph) = p.phase.as_mut().filter(|ph| ph.paired()) {
            ph.unpair(now);
            p.due_ns = p.due_ns.min(ph.due(now).max(now + 1));
        }
    }
}

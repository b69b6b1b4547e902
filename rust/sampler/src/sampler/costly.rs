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

/// A counter's reads slower than this (wall time, smoothed) have their CPU time measured too.
pub(super) const CPU_TIMED_NS: u64 = 100_000;

/// Whether `p`'s next read is to have its CPU time measured (two more clock reads).
pub(super) fn cpu_timed(p: &Polled) -> bool {
    p.phase.is_some() && p.read_cost_ns > CPU_TIMED_NS
}

/// The calling thread's CPU time, ns.
pub(super) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Every how many updates `p` is to be read as a pair now; None to read every update. The
/// budget is of CPU: a read's CPU time where measured (a busy machine stretches its wall
/// time, and with it the stride, for no saving).
pub(super) fn stride(p: &Polled) -> Option<u32> {
    let ph = p.phase.as_ref().filter(|ph| ph.is_locked())?;
    if !p.placed || p.failed_since.is_some() || marks::fine(p) {
        return None;
    }
    let cost = if p.read_cpu_ns > 0 {
        p.read_cpu_ns
    } else {
        p.read_cost_ns
    };
    pair_stride(cost as f64, ph.period_ns()?, SHARE)
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

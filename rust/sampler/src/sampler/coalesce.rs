//! One wake-up for counters that update together. RAPL's package, core and DRAM zones update at
//! the same instants, but each zone's phase lock learns them on its own: reading every update,
//! their predictions walk apart by up to a guard (50 µs); coasting between sparse reads (quiet),
//! by tens to hundreds of µs, and each may count its reads from a different update. Woken
//! separately, each zone costs a timer wake-up (about 18 µs of CPU on a VM, more than the read
//! itself). So a counter whose predicted update is past is read with another's wake-up when it
//! is due soon (see [`early`]: never before the update it is stamped at could have come), and a
//! sparse read waits for the others due within [`WINDOW_NS`] (a read every few updates is
//! stamped at its predicted update, wherever after it the read comes). Reading every update,
//! reads are not delayed: there the read's lateness bounds how early a drifting prediction may
//! stamp an update.

use super::poll::Polled;

/// Sparse reads due this close together share one wake-up (at most a quarter of a period).
const WINDOW_NS: f64 = 250_000.0;
/// A sparse read due within this many updates may be made early, with another's wake-up.
const EARLY_UPDATES: f64 = 2.0;
/// A read at every update due this soon may be made early, once its predicted update is past.
const EARLY_NS: u64 = 60_000;

/// When the thread should wake next (after `now`): the earliest due read, or, when every read
/// due within [`WINDOW_NS`] of it is a sparse one, the latest of those.
pub(super) fn wake_at(polled: &[Polled], now: u64) -> Option<u64> {
    let first = polled.iter().map(|p| p.due_ns).min()?;
    if first <= now {
        return Some(first);
    }
    let mut at = first;
    for p in polled
        .iter()
        .filter(|p| p.due_ns <= first + WINDOW_NS as u64)
    {
        match sparse(p) {
            Some((_, period)) if p.due_ns <= first + WINDOW_NS.min(period / 4.0) as u64 => {
                at = at.max(p.due_ns);
            }
            _ => return Some(first),
        }
    }
    Some(at)
}

/// Whether `p`, a counter not yet due, may be read at `now` with a wake-up made for another
/// source. Read every update: its predicted update is past and its read due within
/// [`EARLY_NS`] (counters that update together then see their update at once; one that does
/// not sees nothing yet, and the read just after brackets its update closely). Read every few
/// updates: its read is due within [`EARLY_UPDATES`] updates, and the latest of its predicted
/// updates before `now` is new since its last read and as far past as a due read would be (its
/// guard), so the read sees it; its reads then count from that update.
pub(super) fn early(p: &Polled, now: u64) -> bool {
    let Some(ph) = p.phase.as_ref().filter(|_| p.failed_since.is_none()) else {
        return false;
    };
    let (Some(next), Some(period)) = (ph.aimed_after(), ph.period_ns()) else {
        return false;
    };
    let now_f = now as f64;
    if ph.stride() == 1 {
        return now_f >= next && p.due_ns <= now + EARLY_NS;
    }
    let guard = p.due_ns as f64 - next;
    let k = ((now_f - next) / period).floor();
    let last = next + k * period;
    k >= -EARLY_UPDATES && now_f - last >= guard && last > p.last_poll_ns as f64
}

/// A live counter read every few updates whose next read is aimed just after an update (not
/// a look before one): that update, and its period.
fn sparse(p: &Polled) -> Option<(f64, f64)> {
    let ph = (p.phase.as_ref()).filter(|ph| ph.stride() > 1 && p.failed_since.is_none())?;
    Some((ph.aimed_after()?, ph.period_ns()?))
}

//! One wake-up for counters that update together, while they are read every few updates
//! (quiet). RAPL's package, core and DRAM zones update at the same instants, but each zone's
//! phase lock learns them on its own, and coasting between sparse reads their predictions drift
//! apart by tens to hundreds of µs; each may also count its reads from a different update.
//! Woken separately, each zone costs a timer wake-up (about 18 µs of CPU on a VM, more than the
//! read itself). So a sparse read waits for the others due within [`WINDOW_NS`] (a read every
//! few updates is stamped at its predicted update, wherever after it the read comes), and a
//! sparse counter due within an update or two is read with another's wake-up when its latest
//! predicted update is a guard past (never sooner: a read before the update it is stamped at
//! would see the one before). Reading every update, reads are not delayed: there the read's
//! lateness bounds how early a drifting prediction may stamp an update.

use super::poll::Polled;

/// Sparse reads due this close together share one wake-up (at most a quarter of a period).
const WINDOW_NS: f64 = 250_000.0;
/// A sparse read due within this many updates may be made early, with another's wake-up.
const EARLY_UPDATES: f64 = 2.0;

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

/// Whether `p`, a sparse counter not yet due, may be read at `now` with a wake-up made for
/// another source: its read is due within [`EARLY_UPDATES`] updates, and the latest of its
/// predicted updates before `now` is new since its last read and as far past as a due read
/// would be (its guard), so the read sees it. Its reads then count from that update.
pub(super) fn early(p: &Polled, now: u64) -> bool {
    let Some((next, period)) = sparse(p) else {
        return false;
    };
    let guard = p.due_ns as f64 - next;
    let now = now as f64;
    let k = ((now - next) / period).floor();
    let last = next + k * period;
    k >= -EARLY_UPDATES && now - last >= guard && last > p.last_poll_ns as f64
}

/// A live counter read every few updates whose next read is aimed just after an update (not
/// a look before one): that update, and its period.
fn sparse(p: &Polled) -> Option<(f64, f64)> {
    let ph = (p.phase.as_ref()).filter(|ph| ph.stride() > 1 && p.failed_since.is_none())?;
    Some((ph.aimed_after()?, ph.period_ns()?))
}

//! How often a power-only source is read: at its interval while quiet, and while regions are
//! marked or open as often as [`Config::power_interval`] asks, within a budget of CPU time
//! ([`Config::power_share`] of a core).
//!
//! A power-only source (a GPU without an energy counter, a hwmon meter sampled at the read) is
//! integrated with the trapezoid rule over reads at random instants (see [`super::dither`]).
//! The integral is unbiased for a load of any period, and its spread under a load with sharp
//! edges is set by the read spacing `h` (whatever the sequence of read instants: the error's
//! spectrum cannot be lowered at every frequency above one per slot at once): each harmonic of
//! the load keeps `1 - sinc²(π n h / P)` of the error of independent instants. Over 5 s under a
//! 50/250 W square wave that is, one standard deviation, ±1.9 % (20 ms period) and ±1.2 %
//! (50 ms) read every 8 ms, ±0.49 % and ±0.31 % every 2 ms, ±0.32 % and ±0.20 % every 1.3 ms:
//! within 1 % in every run at periods from 20 ms needs reads about every 1.3 ms. Each source
//! also keeps the variance of its integral, estimated from its
//! readings (see [`crate::timeline::Accumulator::variance_j2`]): a region's uncertainty adds
//! two standard deviations of it.
//!
//! A device that holds its reading (NVML's board power moves every 20-100 ms) samples the load
//! on its own fixed grid, and those samples alias with a load of a commensurate period (4-14 %
//! over 5 s under 34 and 50 ms loads on a 20 ms grid), at any read rate: reading more often
//! than the device moves buys nothing there. The accumulator learns the hold from the reads,
//! places each reading on the device's sample, and states the bound the device's sampling
//! leaves, summed as it is (see [`crate::timeline::held`]).
//!
//! A read costs the read itself (an NVML power read: 3-5 µs) and, when nothing else wakes the
//! thread then, a wake-up ([`WAKE_NS`]). A power source's read instant is random anyway, so it
//! rides on a wake-up for another source (CPU counters read every millisecond while regions
//! are marked) that comes within [`RIDE_NS`] before it. Reads take at most
//! [`Config::power_share`] of a core (0.3 % unless set): the slot is never shorter than the
//! smoothed cost of a read (wake-up included as often as reads do not ride) divided by that
//! share. Riding on the CPU counters' wake-ups, that is about 1.3 ms; paying its own
//! wake-ups (a GPU alone, or the counters read sparsely in a long region without marks) about
//! 8 ms, which leaves 2-3 % errors in some runs under 20-60 ms loads: 1 % in every run then
//! takes a share of about 2-3 % of a core.

use super::config::Config;
use super::marks::WAKE_NS;
use super::poll::Polled;
use crate::error::Error;
use crate::sensors::external::is_fed;
use crate::sensors::{check, Reading, SourceInfo};

/// How early a read may ride on a wake-up for another source, at most (ns).
pub(super) const RIDE_NS: u64 = 1_000_000;
/// A read of power sampled at the read that takes longer than this (and than four times its
/// usual cost) is made again (see [`read_timed`]), ns.
pub(super) const SLOW_READ_NS: u64 = 200_000;
/// The same for a phase-locked counter: a guard of a RAPL zone (its changes are put at
/// updates as close as that to the read).
pub(super) const SLOW_COUNTER_READ_NS: u64 = 50_000;

/// Read `p`'s source: the result, and the instants just before and just after the read.
///
/// A power sampled at the read is taken at an unknown instant between the two, and stamped in
/// the middle. When the read took far longer than usual (the thread was preempted during it:
/// tens of milliseconds at times on a busy machine), the stamp can be that far from the
/// sample's instant, an error no spread accounts for (up to 2 % over 5 s under a 20 ms load,
/// measured): such a read is made again at once, and the second one counts (slow too, it is
/// taken as it is). So is a phase-locked counter's: the update its change is put at is the
/// latest before the read's middle, and a read preempted for milliseconds between its value
/// and its end saw an update one or more periods before that (a 20 ms region 5-10 % off at
/// that edge, measured on a busy machine).
pub(super) fn read_timed(p: &mut Polled) -> (Result<Reading, Error>, u64, u64) {
    let locked = p.phase.is_some();
    let floor = if locked {
        SLOW_COUNTER_READ_NS
    } else {
        SLOW_READ_NS
    };
    let slow = floor.max(4 * p.read_cost_ns);
    let t_before = crate::now_ns();
    let result = p.source.read();
    let t_after = crate::now_ns();
    // (No usual cost before the first read: nothing to be four times.)
    let unknown = p.read_cost_ns == 0;
    if !(p.instant || locked) || result.is_err() || unknown || t_after - t_before <= slow {
        return (result, t_before, t_after);
    }
    let t_again = crate::now_ns();
    match p.source.read() {
        Ok(again) => (Ok(again), t_again, crate::now_ns()),
        // The second read failed: the first one's reading stands, with its own instants.
        Err(_) => (result, t_before, t_after),
    }
}

/// The instant `reading` is handed to the accumulator at, for a read stamped `t_read` that
/// ended at `t_after`. A power that says how long ago it stood ([`Reading::PowerAt`]) counts
/// back from the source's own clock, read somewhere within the read (late in it, or after a
/// wait for a fed source's first reading at the sampler's start): counted back from the
/// read's end, it is placed no earlier than it stood (later by the rest of the read, a few
/// µs), never on instants before it, which the first reading after a gap would otherwise
/// claim (counted back from the read's middle, it was placed half of any stall of the thread
/// within the read too early). Any other reading is stamped `t_read`.
pub(super) fn reading_instant(reading: &Reading, t_read: u64, t_after: u64) -> u64 {
    match reading {
        Reading::PowerAt { .. } => t_after,
        _ => t_read,
    }
}

/// Whether the source's power is sampled at the read: read more often, it tells more. (A
/// meter's average over its own window, a model's estimate or a value fed from elsewhere would
/// only repeat itself.)
pub(super) fn samples_at_read(info: &SourceInfo) -> bool {
    info.counter.is_none() && !is_fed(info) && check::reading_kind(info) == "instantaneous"
}

/// The earliest instant a read due at `due_ns` in slots of `slot_ns` may ride on another
/// wake-up: up to one slot before (at most [`RIDE_NS`]), so that a read whose slot is longer
/// than the CPU counters' wake-ups (about 1 ms apart) always finds one of them (a window of
/// half a slot missed a third of them at 1.3 ms slots, and each miss costs a wake-up).
pub(super) fn ride_from(due_ns: u64, slot_ns: u64) -> u64 {
    due_ns.saturating_sub(RIDE_NS.min(slot_ns))
}

/// The slot length for `p` while regions are open: the configured power interval, or longer
/// when the reads would cost more than [`Config::power_share`] of a core; never longer than its
/// interval.
pub(super) fn fast_slot(p: &Polled, config: &Config) -> u64 {
    let want = config.power_interval.as_nanos() as u64;
    if want == 0 || !p.instant {
        return p.interval_ns;
    }
    let cost = p.read_cost_ns.max(1_000) as f64 + (1.0 - p.rode) * WAKE_NS as f64;
    let floor = (cost / config.power_share.clamp(1e-6, 1.0)) as u64;
    want.max(floor).min(p.interval_ns)
}

/// Set each power source's slot length for the sampler's state (`fast`: regions are marked or
/// open).
/// A source whose slots got shorter is read within one of the new slots.
pub(super) fn set_slots(polled: &mut [Polled], fast: bool, now: u64, config: &Config) {
    for p in polled.iter_mut() {
        if p.dither.is_none() || p.failed_since.is_some() {
            continue;
        }
        let slot = if fast {
            fast_slot(p, config)
        } else {
            p.interval_ns
        };
        // Going fast, the next read comes within one short slot; other changes (the cost's
        // smoothing, going quiet) take effect from the next read.
        let shorter = slot < p.slot_ns && p.slot_ns == p.interval_ns;
        // Going fast or quiet (the slot's length follows the smoothed cost of a read too, by
        // a little at a time): the gaps between readings change on purpose.
        if slot > 2 * p.slot_ns || 2 * slot < p.slot_ns {
            p.new_spacing();
        }
        p.slot_ns = slot;
        if shorter {
            if let Some(d) = p.dither.as_mut() {
                d.restart(now);
                p.due_ns = p.due_ns.min(d.next(now, slot));
                p.ride_ns = ride_from(p.due_ns, slot).max(now + 1);
            }
        }
    }
}

/// After a wake-up that read the sources in `read` (by index): note, for each power source
/// read, whether the wake-up was made for another kind of source (`anchor`: one due then that
/// is not a power source). Power sources sharing a wake-up only among themselves do not count:
/// none of them would be paying for it.
pub(super) fn note_rides(polled: &mut [Polled], read: &[usize], anchor: bool) {
    for &i in read {
        let p = &mut polled[i];
        if p.dither.is_some() {
            p.rode = p.rode * 0.9 + if anchor { 0.1 } else { 0.0 };
        }
    }
}

#[cfg(test)]
#[path = "power_tests.rs"]
mod tests;

//! The phase lock when reads wake late (a busy machine keeps the sampler thread off its core
//! for a fraction of a millisecond to tens of milliseconds now and then), reading every
//! update: changes are put at the estimate of the update they saw (not at the aim of the
//! reads, which walks early on purpose), and a read that cannot tell which of two updates it
//! sees waits until it can.

use super::PhaseLock;

/// The longest wait before a late read near an update (see [`PhaseLock::unclear_until`]): four
/// guards of a RAPL zone (the thread waits without sleeping: a sleep on a busy machine would
/// wake it late again).
const HOLD_MAX_NS: f64 = 200_000.0;

impl PhaseLock {
    /// A change seen by a read at `tf` (the previous at `prevf`), the phase known closely and
    /// every update read: the instant to put it at, or None when no estimated update explains
    /// it (a miss). The change is put at the estimate of the latest update at or before the
    /// read, or, when that one was seen already, of the one after it (it came a little early).
    /// A read that came late sees every update since the last one seen; put at the aim, its
    /// change would land as far early as the reads walked since the last bracket (hundreds of
    /// µs after a few updates read late), or a whole period late when the read fell between
    /// the aim and the update (the change it saw was the update before).
    pub(super) fn put_at_estimate(&mut self, prevf: f64, tf: f64, p: f64) -> Option<u64> {
        let g = self.guard as f64;
        let est = self.next + self.lead;
        let mut e = est + ((tf - est) / p).floor() * p;
        if e <= self.last_seen + p / 2.0 {
            e += p;
        }
        if e + g <= prevf || e - self.lead > tf + g {
            return None;
        }
        self.mismatches = 0;
        let lead = self.lead + self.drift;
        self.aim_after(e, p, lead);
        self.probe_if_unchecked();
        Some(e.clamp(prevf + 1.0, tf) as u64)
    }

    /// The update estimated at `est` was seen: aim the next read after the one that follows,
    /// `lead` before its estimate (reading every update: `lead` grows by the drift at each
    /// read that brackets nothing; reading every few updates, the aim is the estimate).
    pub(super) fn aim_after(&mut self, est: f64, p: f64, lead: f64) {
        self.last_seen = est;
        if self.stride == 1 {
            // (A bracket restarts the walk: one drift.)
            let lead = if lead > 0.0 { lead } else { self.drift };
            self.next = est + p - lead;
            self.lead = lead;
        } else {
            self.next = est + self.ahead(p);
            self.lead = 0.0;
        }
    }

    /// A read that wakes late (a busy machine) near an estimated update, with the update
    /// before that one not yet seen, cannot tell which of the two it sees: the instant to read
    /// at instead, just past where the update can be, so that its change is put at the right
    /// one. None: read now. Only reading every update (while regions are marked) with the phase
    /// known closely, for a read a period or more after the last update seen and late past the
    /// update it was aimed at (never for a counter that stood through a period: idle); the wait is
    /// three guards at most (150 µs for a RAPL zone), and never over [`HOLD_MAX_NS`].
    pub fn unclear_until(&self, now: u64) -> Option<u64> {
        let p = self.period.filter(|&p| self.locked && p > 0.0)?;
        if self.stride != 1 || self.pair.is_some() || !self.precise {
            return None;
        }
        // How far an update may be from its estimate: half the widest close bracket (three
        // guards wide).
        let sigma = 1.5 * self.guard as f64;
        let est = self.next + self.lead;
        let now = now as f64;
        let k = ((now - est) / p).round();
        let e = est + k * p;
        // Only a read late past the update it was aimed at (k ≥ 1), with the counter changing
        // at every update lately: one that stood through a whole period (idle, read once a
        // period, see `due`) left its updates unseen because they counted nothing, not because
        // the reads came late.
        let unseen_before = k >= 1.0 && self.idle == 0 && e - p > self.last_seen + p / 2.0;
        let until = e + sigma;
        ((now - e).abs() < sigma && unseen_before && until - now <= HOLD_MAX_NS)
            .then_some(until as u64)
    }
}

//! Learning a counter's period and phase, at the start and whenever the lock is lost: reads
//! come at a quarter, half or a twentieth of the poll interval (see `learning_step`) until a
//! dozen changes are seen; the span of those changes spread over the updates it counts gives the
//! period to a fraction of one bracket, and the lock then searches for the phase. A counter that
//! changes more often than it is polled is learned at the reads' own cadence (`read_cadence`).

use super::PhaseLock;

/// Changes seen while learning before the period is taken from them.
pub(super) const ACQUIRE_CHANGES: usize = 12;
/// Learning at a twentieth of the interval, changes closer together than this share of it
/// show a counter finer than its poll.
const FINE_LEARNING_GAP: f64 = 0.6;
/// Reads at a twentieth of the interval while learning, at most (a hundred intervals: a
/// 100 ms counter polled every 20 ms locks after about 65 of them).
const FINE_LEARNING_READS: u32 = 2_000;

impl PhaseLock {
    /// Count a read made while learning at a twentieth of the interval (see
    /// [`FINE_LEARNING_READS`]).
    pub(super) fn count_learning_read(&mut self) {
        if !self.locked && !self.read_cadence && self.learning_step() < self.interval / 2 {
            // Learning from close reads is bounded (a counter that never changes, or changes
            // irregularly, is not read every twentieth of its interval for ever).
            self.fine_reads += 1;
            if self.fine_reads > FINE_LEARNING_READS {
                self.read_cadence = true;
            }
        }
    }

    /// A change seen while learning, in a bracket whose middle is `mid`; the instant to stamp
    /// it with. Locks once [`ACQUIRE_CHANGES`] changes give the period.
    pub(super) fn learn(&mut self, mid: f64) -> Option<u64> {
        // Learning: polls come at a quarter or half the interval (see `learning_step`), so
        // each update is seen on its own.
        if let Some(last) = self.last_change_mid {
            if !self.read_cadence && (mid - last) < FINE_LEARNING_GAP * self.interval as f64 {
                // Changes closer together than the poll interval: a counter finer than it
                // is polled, learned at the reads' own cadence (half the interval), as
                // reads at marks expect of it (`marks::fine`); start over at that cadence.
                self.read_cadence = true;
                self.first_change_mid = None;
                self.last_change_mid = None;
                self.diffs.clear();
                return Some(mid as u64);
            }
            self.diffs.push(mid - last);
        }
        if self.first_change_mid.is_none() {
            self.first_change_mid = Some(mid);
        }
        self.last_change_mid = Some(mid);
        if self.diffs.len() >= ACQUIRE_CHANGES {
            let mut d = self.diffs.clone();
            d.sort_by(|a, b| a.total_cmp(b));
            let rough = d[d.len() / 2];
            // Count updates (a late poll may have merged two) and spread the whole span
            // over them: the period to a fraction of one bracket.
            let updates: f64 = self
                .diffs
                .iter()
                .map(|x| (x / rough).round().max(1.0))
                .sum();
            let span = mid - self.first_change_mid.unwrap_or(mid);
            let p = if updates > 0.0 && span > 0.0 {
                span / updates
            } else {
                rough
            };
            if p > 0.0 {
                self.period = Some(p);
                self.guard = ((p / 50.0) as u64).max(50_000);
                self.next = mid + p;
                self.lead = 0.0;
                self.last_seen = mid;
                self.precise = false;
                // Search quickly for the phase until the first close bracket.
                self.drift = p / 16.0;
                self.locked = true;
                self.mismatches = 0;
            }
        }
        Some(mid as u64)
    }

    /// Lost: learn the period and phase again, as at the start.
    pub(super) fn unlock(&mut self) {
        self.locked = false;
        self.first_change_mid = None;
        self.last_change_mid = None;
        self.diffs.clear();
        self.base = None;
        self.early_looks = 0;
        self.relocks += 1;
    }

    /// How far apart reads are while the period is learned: half the interval, and a quarter
    /// for counters polled every 2 ms or faster (cheap reads). At half the interval, brackets'
    /// midpoints are off by up to a quarter of the period each way, so a gap between two seen
    /// changes can be near one and a half periods, and the update count (and with it the
    /// period) comes out wrong by a twelfth: that happens when the reads sit on the update edge,
    /// as when the counter updates on the poll's own cadence, and leaves a lock that predicts
    /// updates where there are none. At a quarter no gap is ambiguous. A counter polled
    /// more slowly whose reads cost little (eight of them within a twentieth of the interval)
    /// is read every twentieth of the interval while learning (1 ms for a GPU polled every
    /// 20 ms): its changes are stamped, and its period learned, twenty times more closely, for
    /// about twelve updates' worth of extra reads once. One that changes more often than it is
    /// polled is learned at half the interval all the same (see `read_cadence`).
    pub(super) fn learning_step(&self) -> u64 {
        if self.interval <= 2_000_000 {
            self.interval / 4
        } else if !self.read_cadence
            && self.read_cost > 0
            && self.read_cost.saturating_mul(8) <= self.interval / 20
        {
            self.interval / 20
        } else {
            self.interval / 2
        }
    }
}

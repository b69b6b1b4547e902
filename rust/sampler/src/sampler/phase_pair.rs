//! Paired reads of an expensive counter: one update in every `stride` is bracketed by a look
//! just before it and a read just after it, and the lock is checked at every one of them.
//!
//! A counter whose read costs milliseconds of CPU (an NVML energy read on an H100 costs about
//! 3 ms, its counter moves every 100 ms) cannot be read at every update within a small budget.
//! Read every few updates with no look before one, the lock coasts on its learned period and its
//! stamps walk off the updates. Here each visit is a pair:
//!
//! - the look, a whole read (its cost and a margin) before the predicted update: it takes the
//!   updates since the last visit (stamped at their predicted instants) and makes sure that a
//!   change seen by the read after it is the predicted update's;
//! - the read after, its middle at the predicted instant: a change says the update came at or
//!   before it, none says after. The prediction steps toward what it saw; the step halves when
//!   the answer turns and doubles from the fourth same answer in a row (a stochastic search
//!   that settles on the update and follows a drifting period or a phase jump in a few visits).
//!
//! A look that wakes too late to be sure it came before the update is stamped at its own read
//! (its energy spread evenly up to it), never at a predicted update it may not have seen.
//!
//! Two reads per visit, and a third and a fourth in one visit of [`CHECK_EVERY`] (no chases: a
//! read after that sees nothing leaves the update to the next look, and its energy to the next
//! point). The period follows the steps slowly. A search that moves half a period one way
//! without turning, or that finds the update in under a fifth of its visits or moves more than a
//! period back and forth over 64 of them (the period changed: the update crosses the reads only
//! now and then), has lost the update. So has one whose checks see updates between two
//! predicted ones, or none at the next predicted one: a period that halved (or fell to a third:
//! a driver or clock change) keeps every other update where the old ones were, and one that
//! doubled keeps every other old update instant, which a visit every even number of updates
//! always falls on; either way the look (which sees the updates since the last visit whatever
//! the period) and the read after answer as before. Only a look before the update that follows
//! the one the read after saw, which must see nothing, finds the extra updates, and a read just
//! after that update, which must see it, the missing ones (see `Pair::check` and
//! `Pair::check_after`). Lost, the lock learns the period and phase again (reading every
//! update), and pairs resume once it knows them closely. The stride is the caller's (see
//! `sampler::costly`).
//! (Also here: how far apart reads every few updates come, and when the period is known well
//! enough for them.)

use super::PhaseLock;

/// The search's smallest step, ns.
const MIN_STEP_NS: f64 = 10_000.0;
/// The period follows each step divided by this many of its updates.
const PERIOD_GAIN: f64 = 16.0;
/// Visits that saw a change counted at a time, and the fewest of them whose read after must
/// have seen the update (see `Pair::found`).
const WINDOW_VISITS: u32 = 64;
const MIN_FOUND: u32 = 13;
/// How far (in periods) the search's steps may move the prediction over those visits, back
/// and forth: a search on its update moves it by a few tens of milliseconds at most (a phase
/// jump, a wandering phase, late wake-ups), one that chases an update whose period changed
/// by a tenth or more moves it by more than a period.
const WINDOW_TRAVEL: f64 = 1.0;
/// One visit in this many whose read after saw its update is followed by checks (see
/// `Pair::check` and `Pair::check_after`): two reads more in 32 visits, within the tenth of the
/// share that [`pair_stride`] keeps.
const CHECK_EVERY: u32 = 16;
/// The check ends at least this share of a period before the next predicted update (a phase
/// that is off by less is not taken for an update between two predicted ones).
const CHECK_CLEAR: f64 = 0.25;
/// Checks in a row that saw an update between two predicted ones (or none at the next predicted
/// one) before the pair is lost (a check that saw one is followed by another at the next
/// visit).
const EARLY_CHECKS: u32 = 2;

/// The state of paired reads (see the module's documentation).
#[derive(Clone, Debug)]
pub(super) struct Pair {
    /// Predicted instant of the update the current visit brackets (ns).
    at: f64,
    step: f64,
    stride: u32,
    /// The visit's look: its read's middle and whether it saw a change.
    look: Option<(f64, bool)>,
    /// The last step's direction (1 later, -1 earlier, 0 none yet), and how far the steps
    /// in that direction have moved the prediction since it last turned (ns).
    dir: i8,
    run: f64,
    /// Answers in a row the same as the last.
    same: u32,
    /// How late the reads after come against their aim, smoothed (ns): the update is stamped
    /// where they land, not where they were aimed.
    late: f64,
    /// The latest reads' worst lateness, decaying (ns): the look keeps that much more margin.
    late_peak: f64,
    /// Of the latest visits that saw a change (up to [`WINDOW_VISITS`]), how many, and in how
    /// many the read after saw the update. A search on its update finds it about half the
    /// time (it settles where the read after sees it half the time; a run of answers one way
    /// doubles its steps from the fourth). A period that changed by a percent or more (the
    /// device's clocks) moves the update by more than a step a visit: the search turns only
    /// when the update crosses its reads, now and then, and would chase it tens of
    /// milliseconds off for ever, every run of steps shorter than the half period that counts
    /// as lost. Found in fewer than [`MIN_FOUND`] of [`WINDOW_VISITS`], it is lost.
    visits: u32,
    found: u32,
    /// How far the steps moved the prediction over those visits, ns (see [`WINDOW_TRAVEL`]).
    travel: f64,
    /// The next read is a check: when it is to end, and the latest end at which it counts
    /// (ns). After a read after that saw its update (at `u`), the check is a look before the
    /// next one (`u + p`): it ends a look's margin, a read and a guard before it (at least
    /// [`CHECK_CLEAR`] of the period), and is made only where its read then lies wholly past
    /// `u + p / 2`. It sees a change only if the counter updated between two predicted
    /// updates: its period fell by about a quarter or more (halved, to a third: a driver or
    /// clock change), which the look and the read after do not show. [`EARLY_CHECKS`] such
    /// checks in a row and the pair is lost. A check follows [`CHECK_EVERY`] visits whose read
    /// after saw the update (a search far from its update is caught by the other rules). One
    /// that ends later than the margin and a read before `u + p` (a late wake-up) tells
    /// nothing.
    check: Option<(f64, f64)>,
    /// After the check, a read that starts a look's margin after that next update (`u + p`, and
    /// a period after the read after's end): when it is to start, the predicted update, and the
    /// latest end at which a change it saw is that update's (ns). It
    /// sees no change only if the counter did not update there: its period grew (doubled: every
    /// other old update instant is still an update, and a visit every even number of updates
    /// falls on one every time, so the look and the read after answer as before, and so does
    /// the check). [`EARLY_CHECKS`] such in a row and the pair is lost. Made only where it ends
    /// before the next visit's look; dropped after a check that ended too late (it may have
    /// taken the update).
    check_after: Option<(f64, f64, f64)>,
    /// Visits whose read after saw the update since the last check, checks in a row that saw
    /// an update between two predicted ones, and reads after the next predicted update in a row
    /// that saw none.
    since_check: u32,
    early_checks: u32,
    missed_checks: u32,
}

impl PhaseLock {
    /// How many updates apart reads should be for them to be at least `interval_ns` apart.
    /// Reading every second or third update saves little and lets the phase drift, so below
    /// four updates apart this is 1.
    pub fn stride_for(&self, interval_ns: u64) -> u32 {
        match self.period {
            Some(p) if self.locked && p > 0.0 => {
                let k = (interval_ns as f64 / p).round() as u32;
                if k >= 4 {
                    k
                } else {
                    1
                }
            }
            _ => 1,
        }
    }

    /// Whether the period is known well enough to read every few updates: locked, with close
    /// brackets at least 256 periods apart (the period then to within a few thousandths of a
    /// bracket's width), or a period of 5 ms or more (such counters are not read sparsely).
    pub fn settled(&self) -> bool {
        let Some(p) = self.period.filter(|&p| self.locked && p > 0.0) else {
            return false;
        };
        p >= 5_000_000.0
            || self
                .base
                .is_some_and(|(u0, _)| self.anchors >= 3 && (self.last_anchor - u0) / p >= 256.0)
    }

    /// Read one update in `stride` as a pair (a look before it, a read after it) from the next
    /// that can be looked at after `now`. Starts only on a lock whose latest read closed a
    /// bracket (the phase known to a guard) and whose period is known closely; already paired,
    /// only the stride changes.
    pub fn pair_with(&mut self, stride: u32, now: u64) {
        let stride = stride.max(1);
        if let Some(pr) = self.pair.as_mut() {
            pr.stride = stride;
            return;
        }
        let Some(p) = self.period.filter(|&p| self.locked && p > 0.0) else {
            return;
        };
        // The period known to an eighth of a close bracket's width over a visit, at worst a
        // sixty-fourth of it a period: close brackets at least 8 visits and 64 periods apart (a
        // period learned from the first dozen updates may be a percent off, a millisecond or
        // more a visit).
        let known = self.base.is_some_and(|(u0, _)| {
            let spanned = (self.last_anchor - u0) / p;
            self.anchors >= 3 && spanned >= 64.0 && spanned >= 8.0 * f64::from(stride)
        });
        if !known || self.since_anchor != 0 || self.probe {
            return;
        }
        // Reading every update, the prediction runs early by up to a guard.
        let g = self.guard as f64;
        let mut pr = Pair {
            at: self.next + g / 2.0,
            step: g / 2.0,
            stride,
            look: None,
            dir: 0,
            run: 0.0,
            same: 0,
            late: 0.0,
            late_peak: 0.0,
            visits: 0,
            found: 0,
            travel: 0.0,
            check: None,
            check_after: None,
            since_check: 0,
            early_checks: 0,
            missed_checks: 0,
        };
        pr.at += p * ((now as f64 - pr.at) / p).ceil().max(0.0);
        self.pair = Some(pr);
        self.skip_to_lookable(now as f64);
        self.stride = 1;
    }

    /// Whether one update in several is read as a pair.
    pub fn paired(&self) -> bool {
        self.pair.is_some()
    }

    /// Times a pair lost its update (the lock went back to reading every update).
    pub fn pair_losses(&self) -> u64 {
        self.pair_lost
    }

    /// Back to reading every update from `now`, looking just before the next predicted one.
    pub fn unpair(&mut self, now: u64) {
        let Some(pr) = self.pair.take() else {
            return;
        };
        self.next = pr.at - self.guard as f64 / 2.0;
        // Pairs resume after the next close bracket, not before.
        self.since_anchor = self.since_anchor.max(1);
        self.resync(now);
    }

    /// The margin between the look's end and the predicted update: four steps, at least a
    /// guard; a read's cost (where in its read the counter is taken is not known, and the
    /// prediction settles where the read after sees the update half the time); and the whole
    /// of a run of steps later (were the update in fact earlier than the look, every read
    /// after would see nothing and the steps go on later: the look stays where it was before
    /// the run began, so such a run turns).
    fn look_margin(&self, pr: &Pair) -> f64 {
        let run = if pr.dir > 0 { pr.run } else { 0.0 };
        let p = self.period.unwrap_or(f64::MAX);
        let c = self.read_cost as f64;
        ((4.0 * pr.step).max(self.guard as f64) + c + run + 2.0 * pr.late_peak).min(p / 2.0)
    }

    /// When the pair's next read is due (`t`: the last read's end).
    pub(super) fn pair_due(&self, t: u64) -> u64 {
        let Some(pr) = self.pair.as_ref() else {
            return t;
        };
        let c = self.read_cost as f64;
        let start = match (pr.check, pr.check_after, pr.look) {
            (Some((end, _)), _, _) => end - c,
            (None, Some((start, _, _)), _) => start,
            (None, None, None) => pr.at - self.look_margin(pr) - c,
            (None, None, Some(_)) => pr.at - c / 2.0,
        };
        (start.max(0.0) as u64).max(t + 1)
    }

    /// Move the target to the first update whose look can still start after `t`.
    fn skip_to_lookable(&mut self, t: f64) {
        let (Some(p), c) = (self.period, self.read_cost as f64) else {
            return;
        };
        let margin = match self.pair.as_ref() {
            Some(pr) if pr.look.is_none() => self.look_margin(pr),
            _ => return,
        };
        if let Some(pr) = self.pair.as_mut() {
            while pr.at - margin - c < t {
                pr.at += p;
            }
        }
    }

    /// One read of a pair (`prev`, `t`: the previous read's middle and this one's); the instant
    /// to stamp a change with.
    pub(super) fn pair_observe(&mut self, prev: u64, t: u64, changed: bool) -> Option<u64> {
        let p = self.period?;
        let (prevf, tf) = (prev as f64, t as f64);
        let mut pr = self.pair.take()?;
        if let Some((_, limit)) = pr.check.take() {
            return self.pair_check(pr, limit, tf, changed);
        }
        if let Some((_, at, limit)) = pr.check_after.take() {
            return self.pair_check_after(pr, (at, limit), prevf, tf, changed);
        }
        let stamp = match pr.look {
            None => {
                // The look: the updates since the last read, the latest at its predicted instant.
                let c = self.read_cost as f64;
                let aimed = pr.at - self.look_margin(&pr) - c / 2.0;
                pr.late_peak = (tf - aimed).max(0.0).max(pr.late_peak * 0.9).min(p / 8.0);
                let expected = pr.at + pr.late;
                let g = self.guard as f64;
                let mut stamp = expected + p * ((tf - expected) / p).floor();
                pr.look = Some((tf, changed));
                if tf + c / 2.0 > expected - (g + c) / 2.0 {
                    // It came too late to be sure it ended before the update (a late wake-up):
                    // this visit tells nothing, and the change is stamped at the read itself
                    // (its energy then spread evenly up to it, never a period's worth placed
                    // a period off).
                    pr.look = None;
                    pr.at += p * f64::from(pr.stride);
                    stamp = tf;
                }
                self.pair = Some(pr);
                self.skip_to_lookable(tf);
                if stamp <= prevf {
                    stamp = prevf + (tf - prevf) / 2.0;
                }
                return changed.then_some(stamp.min(tf) as u64);
            }
            Some((t_look, look_changed)) => {
                // A read after that may have seen the update after the one it brackets (the
                // thread descheduled for a period) tells the search nothing, and is stamped at
                // the latest update it surely saw, or at itself where that is in doubt.
                let expected = pr.at + pr.late;
                let reach = (self.read_cost as f64 + self.guard as f64) / 2.0;
                let maybe = ((tf + reach - expected) / p).floor();
                let sure = ((tf - reach - expected) / p).floor();
                let past = maybe >= 1.0;
                let dir: i8 = if past {
                    0
                } else if changed {
                    -1
                } else if look_changed {
                    1
                } else {
                    0 // an idle counter: neither read saw a change
                };
                let at = match (past, sure == maybe) {
                    (false, _) => expected,
                    (true, true) => expected + sure * p,
                    (true, false) => tf,
                };
                let stamp = changed.then(|| at.clamp(t_look + 1.0, tf) as u64);
                if !past {
                    let late = (tf - pr.at).clamp(0.0, p / 8.0);
                    pr.late += (late - pr.late) / 8.0;
                    pr.late_peak = pr.late_peak.max(late - pr.late);
                }
                if !past && (changed || look_changed) {
                    pr.visits += 1;
                    pr.found += u32::from(changed);
                }
                if !past && changed {
                    pr.since_check += 1;
                    let c = self.read_cost as f64;
                    let before = self.look_margin(&pr) + c;
                    // A guard before the latest end at which it counts (aimed at that end, it
                    // would count only if it came with no lateness at all: never).
                    let g = self.guard as f64;
                    let end = expected + p - (before + g).max(CHECK_CLEAR * p);
                    // Its read wholly past the middle of the period (where a halved period's
                    // update comes).
                    let seen_half = end - c > expected + p / 2.0;
                    let due = pr.since_check >= CHECK_EVERY
                        || pr.early_checks > 0
                        || pr.missed_checks > 0;
                    if due && pr.stride > 1 && seen_half {
                        pr.since_check = 0;
                        pr.check = Some((end, expected + p - before));
                        // Past the update the read after saw (it ended by `tf + c / 2`), a
                        // period and a look's margin on; ending before the next visit's look.
                        let start = (tf + c / 2.0).max(expected) + p + (before - c);
                        let next_look = pr.at + p * f64::from(pr.stride) - before;
                        if start + c <= next_look {
                            let limit = expected + 2.0 * p - before;
                            pr.check_after = Some((start, expected + p, limit));
                        }
                    }
                }
                if dir != 0 {
                    if pr.dir == dir {
                        // Noisy answers repeat by chance (the read's sampling instant and the
                        // update's own jitter): the step grows only from the fourth in a row.
                        pr.same += 1;
                        if pr.same >= 3 {
                            pr.step = (pr.step * 2.0).min(p / 8.0);
                        }
                    } else {
                        pr.same = 0;
                        pr.step = (pr.step / 2.0).max(MIN_STEP_NS);
                        pr.run = 0.0;
                    }
                    pr.dir = dir;
                    let moved = f64::from(dir) * pr.step;
                    pr.at += moved;
                    pr.travel += pr.step;
                    pr.run += pr.step;
                    // The period follows small steps only: a large one is a search after a
                    // jump of the phase, not a period that was off.
                    if pr.step < (self.read_cost as f64 / 4.0).max(4.0 * MIN_STEP_NS) {
                        let per = p + moved / (f64::from(pr.stride) * PERIOD_GAIN);
                        self.period = Some(per);
                    }
                }
                stamp
            }
        };
        let per = self.period.unwrap_or(p);
        pr.look = None;
        pr.at += per * f64::from(pr.stride);
        let unfound =
            pr.visits >= WINDOW_VISITS && (pr.found < MIN_FOUND || pr.travel > WINDOW_TRAVEL * per);
        if pr.visits >= WINDOW_VISITS {
            (pr.visits, pr.found, pr.travel) = (0, 0, 0.0);
        }
        if pr.run > per / 2.0 || unfound {
            // Lost (the prediction may be anywhere, or the period changed): learn the period
            // and phase again, reading every update, as at the start.
            self.pair_lost += 1;
            self.stride = 1;
            self.unlock();
            return stamp;
        }
        self.pair = Some(pr);
        self.skip_to_lookable(tf);
        stamp
    }

    /// The check (see `Pair::check`): this read, its middle at `t`, is to see no change. One
    /// that ended after `limit` (a late wake-up) may have seen the next predicted update and
    /// tells nothing. A change it saw is stamped at the read itself (its energy spread evenly
    /// up to it: where the updates came is not known).
    fn pair_check(&mut self, mut pr: Pair, limit: f64, t: f64, changed: bool) -> Option<u64> {
        let c = self.read_cost as f64;
        let in_time = t + c / 2.0 <= limit;
        if in_time {
            pr.early_checks = if changed { pr.early_checks + 1 } else { 0 };
        } else {
            // It may have taken the next predicted update: the read after it would see none.
            pr.check_after = None;
        }
        // Updates between the predicted ones: the period fell (halved, or less).
        let lost = pr.early_checks >= EARLY_CHECKS;
        self.keep_pair_or_relearn(pr, lost, t);
        changed.then_some(t as u64)
    }

    /// After a check (this read's middle at `t`): where the pair is `lost` (its period changed),
    /// learn the period again, reading every update, as at the start; else keep `pr` and skip
    /// to the next read worth making.
    fn keep_pair_or_relearn(&mut self, pr: Pair, lost: bool, t: f64) {
        if lost {
            self.pair_lost += 1;
            self.stride = 1;
            self.unlock();
        } else {
            self.pair = Some(pr);
            self.skip_to_lookable(t);
        }
    }

    /// The read after the next predicted update (see `Pair::check_after`, `at`: that update),
    /// this one's middle at `t` (`prev`: the previous read's): it is to see a change. It started
    /// after that update however late it came, and so tells whether the counter updated there
    /// whenever it came. A change it saw is stamped at that update, or at the read itself where
    /// it ended after `limit` (it may have seen the update after that too).
    fn pair_check_after(
        &mut self,
        mut pr: Pair,
        (at, limit): (f64, f64),
        prev: f64,
        t: f64,
        changed: bool,
    ) -> Option<u64> {
        pr.missed_checks = if changed { 0 } else { pr.missed_checks + 1 };
        // No update where one was predicted: the period grew (doubled, or more).
        let lost = pr.missed_checks >= EARLY_CHECKS;
        self.keep_pair_or_relearn(pr, lost, t);
        let c = self.read_cost as f64;
        let stamp = if t + c / 2.0 <= limit {
            at.clamp(prev + 1.0, t)
        } else {
            t
        };
        changed.then_some(stamp as u64)
    }
}

/// Every how many updates a counter is read for its reads to take at most `share` of a core:
/// None when reading every update already does (a read each update, a look before one in eight
/// of them), else as many updates apart as two reads a visit need, at least three (pairs every
/// other update would cost as much as reading every one). A tenth of the share is kept for the
/// reads of a pair that lost its update (read every update until the lock finds it again).
pub(crate) fn pair_stride(read_cost_ns: f64, period_ns: f64, share: f64) -> Option<u32> {
    if !(period_ns > 0.0 && share > 0.0) || read_cost_ns * 1.125 <= share * period_ns {
        return None;
    }
    let k = (2.2 * read_cost_ns / (share * period_ns)).ceil();
    Some(k.clamp(3.0, 1e6) as u32)
}

#[cfg(test)]
#[path = "phase_pair_tests.rs"]
mod tests;

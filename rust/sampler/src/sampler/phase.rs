//! Phase-locked polling: learn when a counter updates and read it just after each update.
//!
//! RAPL counters update about every millisecond and NVML energy counters every 10 to 100 ms, at
//! a steady cadence. Polling at the update rate with no regard to phase stamps each change to
//! within half a poll interval. Once the period and phase are learned, one poll just after each
//! predicted update both sees the change and knows when it happened. The prediction is kept
//! honest by letting it drift a little earlier every update: sooner or later a poll lands before
//! the update, sees nothing, and the quick re-polls that follow bracket the update to within a
//! few tens of microseconds, which re-anchors the phase. The cost stays close to one read per
//! update; the precision is that of a read every `guard` nanoseconds.
//!
//! Learning the period and phase (at the start, and after the lock is lost) is in `learn`;
//! refining the period from close brackets in `refine`; paired reads of an expensive counter,
//! one update in several, in `pair`.

/// Phase and period of one counter's updates, and when to read it next.
#[derive(Clone, Debug)]
pub struct PhaseLock {
    interval: u64,
    guard: u64,
    /// What a read costs, ns (0 until told, see [`Self::fit_guard`]).
    read_cost: u64,
    /// The counter changed at reads closer together than its poll interval, or learning at a
    /// twentieth of it went on too long: it is learned at half the interval (see
    /// `learning_step`).
    read_cadence: bool,
    /// Reads made while learning at a twentieth of the interval.
    fine_reads: u32,
    period: Option<f64>,
    /// Predicted next update instant (ns), when locked.
    next: f64,
    locked: bool,
    drift: f64,
    first_change_mid: Option<f64>,
    last_change_mid: Option<f64>,
    diffs: Vec<f64>,
    /// The first close bracket's middle since the lock was learned (ns), and the period then.
    base: Option<(f64, f64)>,
    /// What refining the period from close brackets knows (see `refine`).
    refining: refine::Refine,
    prev_unchanged: bool,
    chases: u32,
    /// Predicted updates in a row that did not come (an idle counter is read once a period).
    idle: u32,
    mismatches: u32,
    /// Read every `stride`-th update (1: every one). Above 1 the phase coasts on the learned
    /// period (re-anchored now and then with `check_sparse`).
    stride: u32,
    /// After coasting: read just before the next predicted update, to re-anchor at once.
    probe: bool,
    /// Reading every few updates, a look just before the predicted update saw the updates
    /// since the last read: the next read, just after it, brackets it.
    probe_seen: bool,
    /// The latest close bracket's middle (ns).
    last_anchor: f64,
    /// Reading every few updates: close brackets in a row far from the predicted update.
    sparse_misses: u32,
    /// Reading every few updates, look just before a predicted update now and then to keep
    /// the phase (reads at region marks rely on it); off, the phase coasts until reads come at
    /// every update again.
    pub check_sparse: bool,
    /// Updates whose time was bracketed closely (re-anchors of the phase).
    pub anchors: u64,
    /// Times the lock was lost and the period learned again.
    pub relocks: u64,
    /// Updates bracketed only coarsely after a miss (the phase re-centred on the bracket).
    pub coarse: u64,
    /// Reads taken (see [`Self::observe`]).
    pub observed: u64,
    /// Updates read since the last bracket (fine or coarse).
    since_anchor: u32,
    /// One update in several read as a pair (see [`pair`]), and times a pair lost its update.
    pair: Option<pair::Pair>,
    pair_lost: u64,
    /// Looks just before a predicted update in a row that saw a change already (reading every
    /// update): see [`EARLY_LOOKS`].
    early_looks: u32,
    /// How far `next` is aimed before the best estimate of that update (ns): the drift the
    /// reads walk early by since the last bracket (reading every update). Stamps are placed
    /// at the estimate, not at the aim.
    lead: f64,
    /// The estimate (ns) of the latest update a change was put at (see [`Self::unclear_until`]).
    last_seen: f64,
    /// The phase is known to a close bracket (since the last one, no coarse bracket, miss or
    /// new lock): changes are put at the estimate, and late reads near an update wait.
    precise: bool,
}

/// Reads after each update land late when the period is overestimated by more than the drift
/// (or the phase slipped under load): stamps would walk away from the updates unseen. After this
/// many updates without a bracket, the next read is made just before the predicted update.
const PROBE_EVERY: u32 = 8;
/// Reading every update, a look just before the predicted update that sees a change says the
/// update came before the prediction. A period learned too long (one gap of two updates counted
/// as one while learning: 12/11 of the period) keeps every read after its update and every
/// look too, so no look ever brackets an update and the period is never corrected; after this
/// many such looks in a row the period is learned again. (A period learned too short is found
/// by the looks that see nothing: the reads then come before the updates.)
const EARLY_LOOKS: u32 = 3;
impl PhaseLock {
    /// `interval_ns`: the configured poll interval (used while learning, and as the guess of
    /// the update period).
    pub fn new(interval_ns: u64) -> Self {
        PhaseLock {
            interval: interval_ns.max(1),
            guard: 50_000,
            read_cost: 0,
            read_cadence: false,
            fine_reads: 0,
            period: None,
            next: 0.0,
            locked: false,
            drift: 0.0,
            first_change_mid: None,
            last_change_mid: None,
            diffs: Vec::with_capacity(learn::ACQUIRE_CHANGES),
            base: None,
            refining: refine::Refine::default(),
            prev_unchanged: false,
            chases: 0,
            idle: 0,
            mismatches: 0,
            check_sparse: false,
            anchors: 0,
            relocks: 0,
            coarse: 0,
            observed: 0,
            since_anchor: 0,
            early_looks: 0,
            lead: 0.0,
            last_seen: f64::NEG_INFINITY,
            precise: false,
            stride: 1,
            probe: false,
            probe_seen: false,
            last_anchor: 0.0,
            sparse_misses: 0,
            pair: None,
            pair_lost: 0,
        }
    }

    /// Every how many updates it reads.
    pub fn stride(&self) -> u32 {
        self.stride
    }

    /// Read every `k`-th update from now on (at least 1).
    pub fn set_stride(&mut self, k: u32) {
        self.stride = k.max(1);
    }

    /// Re-aim at the first predicted update at or after `now` (after reading sparsely, to
    /// read the next update again).
    pub fn resync(&mut self, now: u64) {
        let Some(p) = self.period.filter(|_| self.locked) else {
            return;
        };
        let now = now as f64;
        let k = ((now - self.next) / p).ceil();
        self.next += k * p;
        self.chases = 0;
        self.early_looks = 0;
        // The phase may have drifted while coasting: look just before the next update, so that
        // the quick re-reads that follow bracket it closely.
        self.probe = true;
    }

    /// The latest predicted update at or before `t` (where a read at `t` that saw a change
    /// stamps it), without changing the lock; None while not locked.
    pub fn last_update(&self, t: u64) -> Option<u64> {
        let p = self.period.filter(|&p| self.locked && p > 0.0)?;
        let k = ((t as f64 - self.next) / p).floor();
        let cand = self.next + k * p;
        // Predictions run early by up to a guard (see `observe`).
        Some((cand + self.guard as f64 / 2.0).min(t as f64).max(0.0) as u64)
    }

    /// Aim the next read just after the first predicted update at or after `t` (a read at a
    /// region mark: the next update brackets the mark), chasing it if it comes late, then go
    /// on every `stride` updates.
    pub fn aim(&mut self, t: u64) {
        let Some(p) = self.period.filter(|&p| self.locked && p > 0.0) else {
            return;
        };
        let k = ((t as f64 - self.next) / p).ceil();
        self.next += k * p;
        self.chases = 0;
    }

    /// Fit the guard to what a read costs (`read_cost_ns`, the source's recent average). The
    /// guard (how far apart the looks that bracket an update are, and so how closely it is
    /// stamped) is a fiftieth of the period: 2 ms for a counter that moves every 100 ms, whose
    /// reads may cost milliseconds of CPU (an NVML energy read on an H100). A counter whose
    /// read costs little is bracketed as closely as eight reads' cost allow, but no closer
    /// than 1/400 of its period (a bracket must stay wider than a late wake-up; a RAPL zone's
    /// 50 µs is the least): a 100 ms counter read in 20 µs gets a 250 µs guard, is looked at
    /// just before every update (see `probe_every`) and stamped to within about 0.1 ms instead
    /// of 1 ms, which is most of a 20 ms region's error next to an update. A read that costs
    /// more than 3 % of the period (3 ms on a counter that moves every 50 ms) widens the guard
    /// to two thirds of its cost (at most an eighth of the period): a look and the read a guard
    /// after it have their middles a read's cost and a guard apart, and a close bracket is
    /// three guards wide at most, so a narrower guard never brackets an update closely (the
    /// phase known only coarsely, and such a counter never read in pairs, see `pair`).
    pub fn fit_guard(&mut self, read_cost_ns: u64) {
        self.read_cost = read_cost_ns;
        let Some(p) = self.period.filter(|&p| self.locked && p > 0.0) else {
            return;
        };
        self.guard = ((p / 50.0) as u64)
            .min(read_cost_ns.saturating_mul(8))
            .max(((p / 400.0) as u64).max(50_000))
            .max((read_cost_ns.saturating_mul(2) / 3).min((p / 8.0) as u64));
    }

    /// How far apart the looks that bracket an update are (ns; see [`Self::fit_guard`]).
    pub fn guard_ns(&self) -> u64 {
        self.guard
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The predicted update the next read is aimed just after (locked, not looking before one).
    pub fn aimed_after(&self) -> Option<f64> {
        (self.locked && !self.probe && self.pair.is_none()).then_some(self.next)
    }

    /// How far the predictions run early (ns): see `lead`.
    #[cfg(test)]
    pub(crate) fn lead_ns(&self) -> f64 {
        self.lead
    }

    /// The learned update period, ns.
    pub fn period_ns(&self) -> Option<f64> {
        self.period
    }

    /// Take one poll: the previous poll's read time, this one's, and whether the counter had
    /// changed. Returns the instant to stamp the change with (within `(prev, t]`).
    pub fn observe(&mut self, prev: u64, t: u64, changed: bool) -> Option<u64> {
        let (prevf, tf) = (prev as f64, t as f64);
        self.observed += 1;
        self.count_learning_read();
        if self.pair.is_some() {
            // (Pairs aim at their own instants: no walk to undo.)
            self.precise = false;
            return self.pair_observe(prev, t, changed);
        }
        if !changed {
            self.prev_unchanged = true;
            // A look before the update saw nothing: the reads that follow bracket it.
            if self.probe {
                self.early_looks = 0;
            }
            self.probe = false;
            if self.locked {
                let p = self.period.unwrap_or(self.interval as f64);
                if tf > self.next + self.guard as f64 {
                    self.chases += 1;
                }
                // The update did not come where predicted: look again at growing spacing (see
                // `due`) until it does. Giving up after a few close looks would leave a lock
                // whose phase is off by more than those looks span predicting updates where
                // there are none, and stamping changes there. Only a whole period without a
                // change is an idle counter (or a missed update): then expect the next one.
                if tf > self.next + 0.75 * p {
                    while self.next + self.guard as f64 <= tf {
                        self.next += p;
                    }
                    self.chases = 0;
                    self.idle = self.idle.saturating_add(1);
                }
            }
            return None;
        }
        let width = tf - prevf;
        let mid = prevf + width / 2.0;
        let was_unchanged = std::mem::replace(&mut self.prev_unchanged, false);
        // Reading every update, any change ends a look before the update; reading every few,
        // only the look itself (just before the predicted update) does.
        let probing = self.probe;
        if self.stride == 1 || !self.locked {
            self.probe = false;
        }
        // The previous read came just before the update this one sees.
        let was_before = was_unchanged || std::mem::replace(&mut self.probe_seen, false);
        self.chases = 0;
        self.idle = 0;
        if !self.locked {
            return self.learn(mid);
        }
        let p = self.period.unwrap_or(self.interval as f64);
        let g = self.guard as f64;
        if was_before && width <= 3.0 * g {
            // A poll just before the update saw nothing and this one, shortly after, saw it.
            self.probe = false;
            if self.stride > 1 && (mid - self.next).abs() > p / 4.0 {
                // Reading every few updates, the update came far from where it was predicted:
                // the period (or the phase) is wrong; learn them again after a second time.
                self.sparse_misses += 1;
                if self.sparse_misses > 1 {
                    self.sparse_misses = 0;
                    self.unlock();
                    return Some(mid as u64);
                }
                self.aim_after(mid, p, 0.0);
                self.precise = false;
                return Some(mid as u64);
            }
            self.sparse_misses = 0;
            self.last_anchor = mid;
            self.anchors += 1;
            self.since_anchor = 0;
            let perr = self.refine(mid, width);
            let p = self.period.unwrap_or(p);
            // Drift faster than the period may be wrong, so that polls keep landing early.
            self.drift = min_drift(g, p).max(2.0 * perr);
            self.aim_after(mid, p, 0.0);
            self.precise = true;
            self.mismatches = 0;
            return Some(mid as u64);
        }
        if was_before && width <= p / 2.0 {
            // A coarse bracket (the look after a miss came late: a busy machine): the update
            // lies in it, whatever was predicted. Re-centre the phase on it, and let the reads
            // walk early quickly so that a close bracket follows soon.
            self.probe = false;
            self.coarse += 1;
            self.since_anchor = 0;
            self.drift = min_drift(g, p).max(width / 4.0).min(p / 4.0);
            self.aim_after(mid, p, 0.0);
            self.precise = false;
            self.mismatches = 0;
            return Some(mid as u64);
        }
        // (Only a look one update after the read before: the read just after a resync from
        // sparse reading sees the updates skipped, whatever the period.)
        if probing && self.stride == 1 && tf + g < self.next && width < p {
            // A look just before the predicted update saw a change: the update came earlier.
            self.early_looks += 1;
            if self.early_looks >= EARLY_LOOKS {
                self.early_looks = 0;
                self.unlock();
                return Some(mid as u64);
            }
        }
        // The latest predicted update at or before t.
        let k = ((tf - self.next) / p).floor();
        let cand = self.next + k * p;
        if probing && self.stride > 1 && tf < self.next && self.next - tf <= 3.0 * g && cand > prevf
        {
            // Reading every few updates, the look just before the predicted update saw those
            // since the last read: keep the prediction, read again just after it to bracket it.
            self.probe = false;
            self.probe_seen = true;
            return Some((cand + g / 2.0).min(tf) as u64);
        }
        if self.stride == 1 && self.precise {
            if let Some(stamp) = self.put_at_estimate(prevf, tf, p) {
                return Some(stamp);
            }
        } else if cand > prevf && cand <= tf {
            self.mismatches = 0;
            self.next = cand + self.ahead(p);
            self.lead += self.drift;
            self.last_seen = cand + self.lead;
            self.probe_if_unchecked();
            // The prediction runs early by up to a guard; the update lies in [cand, cand + g].
            let stamp = (cand + g / 2.0).min(tf);
            return Some(stamp as u64);
        }
        self.probe_if_unchecked();
        self.mismatches += 1;
        if self.mismatches > 3 {
            self.unlock();
        } else {
            self.next = mid + p;
            self.lead = 0.0;
            self.last_seen = mid;
            self.precise = false;
        }
        Some(mid as u64)
    }

    /// Count an update read without a bracket; after [`PROBE_EVERY`] of them, read just before
    /// the next predicted one.
    pub(super) fn probe_if_unchecked(&mut self) {
        self.since_anchor = self.since_anchor.saturating_add(1);
        if (self.stride == 1 || self.check_sparse) && self.since_anchor >= self.probe_every() {
            self.probe = true;
        }
    }

    /// Reads between looks before the predicted update: [`PROBE_EVERY`] reading every update;
    /// reading every few, as many as keep the drift of the known period under a tenth of a
    /// guard between looks (the period is known to a bracket's width over the periods spanned
    /// by the close brackets so far), from [`PROBE_EVERY`] to 64.
    fn probe_every(&self) -> u32 {
        let Some(p) = self.period.filter(|&p| p > 0.0) else {
            return PROBE_EVERY;
        };
        if self.stride == 1 {
            // A slow counter read cheaply (its guard narrowed well below a fiftieth of the
            // period, see `fit_guard`): look before every update, so that each is bracketed
            // closely and the period stays exact, for a read or two more per update. So is one
            // whose period is not yet known closely enough to count the updates between close
            // brackets that far apart (see `refine`).
            return if (self.guard as f64) < p / 100.0 || self.refine_unsure(PROBE_EVERY) {
                1
            } else {
                PROBE_EVERY
            };
        }
        let Some((u0, _)) = self.base else {
            return PROBE_EVERY;
        };
        let spanned = ((self.last_anchor - u0) / p).max(0.0);
        // Drift per period: 3 guards / spanned; a look every R reads spans R·stride periods.
        let reads = spanned / (30.0 * f64::from(self.stride));
        (reads as u32).clamp(PROBE_EVERY, 64)
    }

    /// From one read update to the next to read: `stride` periods, less the drift that keeps
    /// reads landing early when every update is read.
    fn ahead(&self, p: f64) -> f64 {
        if self.stride == 1 {
            p - self.drift
        } else {
            f64::from(self.stride) * p
        }
    }

    /// When to read next, given that the last read completed at `t` (half the interval while
    /// the period is being learned).
    pub fn due(&self, t: u64) -> u64 {
        if self.pair.is_some() {
            return self.pair_due(t);
        }
        if !self.locked {
            return t + self.learning_step();
        }
        if self.probe {
            let early = (self.next - 2.0 * self.guard as f64) as u64;
            return if early > t { early } else { t + self.guard };
        }
        let target = self.next + self.guard as f64;
        if target <= t as f64 && self.idle < 2 {
            // Past the predicted update without seeing it: look again shortly, then at growing
            // spacing (a guard, two, four, eight), so that a phase far off is found in a few
            // reads and a near one is bracketed closely.
            t + self.guard * (1u64 << self.chases.saturating_sub(1).min(3))
        } else if target <= t as f64 {
            (target + self.period.unwrap_or(self.interval as f64)) as u64
        } else {
            target as u64
        }
    }
}

/// How much earlier than the learned period each read after an update comes (reading every
/// update), at least: an eighth of a guard, and never under 1/400 of the period (an eighth of
/// the guard of a fiftieth of it). A period learned a little long would otherwise carry the
/// reads past the updates faster than they walk back when the guard is narrowed for a cheap
/// read ([`PhaseLock::fit_guard`]).
fn min_drift(guard: f64, period: f64) -> f64 {
    (guard / 8.0).max(period / 400.0)
}

#[path = "phase_late.rs"]
mod late;
#[path = "phase_learn.rs"]
mod learn;
#[path = "phase_pair.rs"]
mod pair;
#[path = "phase_refine.rs"]
mod refine;
pub(crate) use pair::pair_stride;

#[cfg(test)]
#[path = "phase_late_tests.rs"]
mod late_tests;
#[cfg(test)]
#[path = "phase_tests.rs"]
mod tests;

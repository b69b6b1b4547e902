//! One source as the sampler thread polls it: its state ([`Polled`]), one read and what it
//! gives (a point stamped at the counter's change, a gap, a failure), and the appending of
//! points to the source's timeline and the node's segment.

use super::config::{interval_for, Config};
use super::dither::Dither;
use super::handle::SourceStatus;
use super::phase::PhaseLock;
use crate::sensors::{EnergySource, Reading, SourceInfo};
use crate::shared::Segment;
use crate::timeline::{Accumulator, History, Point, Step, Uncertain};

/// One source as the thread polls it: the source, its accumulator, and when it is due.
pub(super) struct Polled {
    pub(super) source: Box<dyn EnergySource>,
    acc: Accumulator,
    pub(super) interval_ns: u64,
    pub(super) settle_ns: u64,
    pub(super) due_ns: u64,
    consecutive_errors: u32,
    first_error_ns: u64,
    pub(super) last_poll_ns: u64,
    pub(super) failed_since: Option<u64>,
    /// Phase-locked polling, for counters (see [`super::phase`]).
    pub(super) phase: Option<PhaseLock>,
    /// How long a read takes, smoothed (ns).
    pub(super) read_cost_ns: u64,
    /// CPU time a read takes, smoothed (ns; measured only for reads slower than
    /// [`super::costly::CPU_TIMED_NS`], 0 for others): a busy machine stretches a read's wall
    /// time, not its CPU.
    pub(super) read_cpu_ns: u64,
    /// Its latest counter update was placed in time by the source's power samples (an
    /// expensive counter is then read in pairs while regions are marked: see `costly`).
    pub(super) placed: bool,
    /// The next point starts after a gap that began at this instant (another process's
    /// sampler died and this one took over).
    pub(super) pending_gap: Option<u64>,
    /// Local joules less those published: the node's segment counts from its own start.
    pub(super) offset_j: f64,
    /// Power sources only: read at a random instant in each slot (see [`Dither`]).
    pub(super) dither: Option<Dither>,
    /// Power sources only: the slot length now (the interval, or shorter while regions are
    /// marked: see [`super::power`]), ns.
    pub(super) slot_ns: u64,
    /// A wake-up for other sources at or after this instant takes this source's read with it
    /// (a power source's read is due at a random instant anyway); `u64::MAX`: none.
    pub(super) ride_ns: u64,
    /// Whether the source's power is sampled at the read (read more often while regions are
    /// marked, see [`super::power`]).
    pub(super) instant: bool,
    /// Share of recent reads that shared a wake-up with other sources (smoothed).
    pub(super) rode: f64,
    /// When it was last read at a mark (see [`super::marks`]).
    pub(super) last_mark_ns: u64,
    /// Its uncertainty has points in its timeline (the first is placed at the read before).
    spread_kept: bool,
}

impl Polled {
    /// A source whose first read, begun at `t` and ended at `t_after`, gave `reading`, with
    /// its timeline and status (the first point is at `t`, or where the reading says it
    /// stood: see [`super::power::reading_instant`]).
    pub(super) fn new(
        source: Box<dyn EnergySource>,
        reading: Reading,
        (t, t_after): (u64, u64),
        base_j: f64,
        config: &Config,
    ) -> (Polled, Point, SourceStatus) {
        let mut polled = Polled::fresh(source, t, base_j, config);
        polled.due_ns = t + polled.interval_ns;
        polled.acc.unread(t, polled.source.unread_low_w());
        let at = super::power::reading_instant(&reading, t, t_after);
        let first = match polled.acc.push(at, reading) {
            Step::First(p) => p,
            _ => Point {
                t_ns: t,
                joules: base_j,
            },
        };
        let status = SourceStatus {
            reads: 1,
            interval_ns: polled.interval_ns,
            joules: first.joules,
            ..SourceStatus::default()
        };
        (polled, first, status)
    }

    /// A source that cannot be read from `since` on (retried like any failed source; a
    /// counter is locked on its updates once it reads again, as any that starts readable).
    pub(super) fn failed(
        source: Box<dyn EnergySource>,
        since: u64,
        base_j: f64,
        config: &Config,
    ) -> Polled {
        Polled {
            failed_since: Some(since),
            ..Polled::fresh(source, since, base_j, config)
        }
    }

    /// A source as it stands at `t` before any reading: its accumulator continuing from
    /// `base_j`, due at once.
    fn fresh(source: Box<dyn EnergySource>, t: u64, base_j: f64, config: &Config) -> Polled {
        let info = source.info().clone();
        let interval_ns = interval_for(&info, config).as_nanos() as u64;
        Polled {
            acc: accumulator(&info, interval_ns, base_j),
            interval_ns,
            settle_ns: settle_for(&info, config, interval_ns)
                .saturating_add(source.lag().as_nanos().min(u128::from(u64::MAX)) as u64),
            due_ns: t,
            consecutive_errors: 0,
            first_error_ns: 0,
            last_poll_ns: t,
            failed_since: None,
            phase: (config.phase_lock && info.counter.is_some())
                .then(|| PhaseLock::new(interval_ns)),
            read_cost_ns: 0,
            read_cpu_ns: 0,
            placed: false,
            pending_gap: None,
            offset_j: 0.0,
            dither: info
                .counter
                .is_none()
                .then(|| Dither::new(t, t ^ (interval_ns << 17))),
            slot_ns: interval_ns,
            ride_ns: u64::MAX,
            instant: super::power::samples_at_read(&info),
            rode: 0.0,
            last_mark_ns: 0,
            spread_kept: false,
            source,
        }
    }

    /// The source is read at a new spacing from now on (see [`Accumulator::new_spacing`]).
    pub(super) fn new_spacing(&mut self) {
        self.acc.new_spacing();
    }

    pub(super) fn cover(&self) -> Cover {
        Cover {
            last_poll_ns: self.last_poll_ns,
            settle_ns: self.settle_ns,
            failed_since: self.failed_since,
        }
    }
}

/// A source's accumulator; one whose power is sampled at the read keeps the variance of its
/// integral (its reads fall at random instants); a fed one holds each reading from its
/// instant until the next one's.
fn accumulator(info: &SourceInfo, interval_ns: u64, base_j: f64) -> Accumulator {
    let acc = Accumulator::new(info.counter, interval_ns).continue_from(base_j);
    if super::power::samples_at_read(info) {
        acc.with_spread()
    } else if crate::sensors::external::is_fed(info) {
        acc.held()
    } else {
        acc
    }
}

/// Record the source's cumulative uncertainty `u` at `t_ns` in its timeline and the node's
/// segment.
fn push_uncertain(i: usize, tl: &mut History, seg: Option<&Segment>, t_ns: u64, u: Uncertain) {
    tl.push_spread(t_ns, u);
    if let Some(seg) = seg {
        seg.publish_spread(i, t_ns, u.var_j2, u.bound_j);
    }
}

/// How far a source's timeline can answer: its last read, how long an unchanged counter takes
/// to count as idle, and since when it has failed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cover {
    pub(super) last_poll_ns: u64,
    pub(super) settle_ns: u64,
    pub(super) failed_since: Option<u64>,
}

pub(super) fn settle_ns(config: &Config, interval_ns: u64) -> u64 {
    (config.settle.as_nanos() as u64).max(10 * interval_ns)
}

/// The settling time of a source polled every `interval_ns`. A power source's last reading can
/// stand well before its last poll (an averaging meter's reading is placed in the middle of
/// its window, up to four of the source's own intervals back, and read by its own thread once
/// per such interval): polled faster than that (an `intervals` setting), its settling time
/// still covers its own interval, or regions would be resolved past its last reading as if the
/// power had been zero since.
fn settle_for(info: &SourceInfo, config: &Config, interval_ns: u64) -> u64 {
    let own = if info.counter.is_none() {
        info.interval.as_nanos().min(u128::from(u64::MAX)) as u64
    } else {
        0
    };
    settle_ns(config, interval_ns.max(own))
}

/// Append `pt` to source `i`'s timeline (after a gap from `gap_from`, if any) and publish it.
pub(super) fn append(
    i: usize,
    tl: &mut History,
    st: &mut SourceStatus,
    seg: Option<&Segment>,
    offset_j: f64,
    pt: Point,
    gap_from: Option<u64>,
) {
    if let Some(from) = gap_from {
        let last = tl.last();
        // Never before the last point (a first reading that stood earlier, as an averaging
        // meter's or a fed one's after a takeover, is moved to it): the instants the timeline
        // measured keep their count of gaps.
        let from = match last {
            Some(l) => from.max(l.t_ns).min(pt.t_ns.max(l.t_ns)),
            None => from.min(pt.t_ns),
        };
        tl.push_gap(from, pt.t_ns.max(from));
        push_gap(st, from, pt.t_ns.max(from));
        if let Some(seg) = seg {
            let j = last.map_or(pt.joules, |l| l.joules);
            seg.publish(
                i,
                Point {
                    t_ns: from,
                    joules: j - offset_j,
                },
                true,
            );
        }
    }
    tl.push(pt);
    if let (Some(seg), Some(mut last)) = (seg, tl.last()) {
        last.joules -= offset_j;
        seg.publish(i, last, false);
    }
}

/// What a counter reset leaves in its source's status (and, through it, in the results).
const RESET_REASON: &str = "its counter stepped back (or leapt) more than a wraparound or any \
plausible power explains: a driver reload or device reset; the interval across it is missing, \
no energy was counted for it";

/// Why a source is read: its poll came due, or a region mark woke the thread (see
/// [`super::marks`]: the read is extra, its point stamped without teaching the phase lock,
/// and the source's schedule is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Why {
    Due,
    Mark,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn poll_one(
    p: &mut Polled,
    i: usize,
    tl: &mut History,
    st: &mut SourceStatus,
    now: u64,
    config: &Config,
    retry_ns: u64,
    seg: Option<&Segment>,
    why: Why,
) {
    // Set again below for a power source whose next read is dithered (a failed one is retried
    // at its own pace, not at every wake-up).
    p.ride_ns = u64::MAX;
    if why == Why::Due {
        let late = now.saturating_sub(p.due_ns);
        if late > p.interval_ns {
            st.late_polls += 1;
            st.skipped_polls += late / p.interval_ns;
        }
        st.max_late_ns = st.max_late_ns.max(late);
    } else {
        st.mark_reads += 1;
        p.last_mark_ns = now;
    }
    if why == Why::Due {
        // A late read near an update whose predecessor is unseen waits just past it (150 µs
        // at most for a RAPL zone), so that its change is put at the right update.
        if let Some(until) = p
            .phase
            .as_ref()
            .and_then(|ph| ph.unclear_until(crate::now_ns()))
        {
            while crate::now_ns() < until {
                std::hint::spin_loop();
            }
        }
    }
    let cpu_before = super::costly::cpu_timed(p).then(super::costly::thread_cpu_ns);
    let (result, t_before, t_after) = super::power::read_timed(p);
    // From the first read's cost (from zero, an expensive source's first reads look slow).
    let cost = t_after - t_before;
    p.read_cost_ns = match p.read_cost_ns {
        0 => cost,
        usual => (usual * 7 + cost) / 8,
    };
    if let Some(c0) = cpu_before {
        let cpu = super::costly::thread_cpu_ns().saturating_sub(c0);
        p.read_cpu_ns = (p.read_cpu_ns * 7 + cpu) / 8;
    }
    if let Some(ph) = p.phase.as_mut() {
        ph.fit_guard(p.read_cost_ns);
    }
    // The read happened somewhere in [t_before, t_after].
    let t_read = t_before + (t_after - t_before) / 2;
    match result {
        Ok(reading) => {
            st.reads += 1;
            p.consecutive_errors = 0;
            let mut gap_from = p.pending_gap.take();
            if let Some(since) = p.failed_since.take() {
                st.failed = false;
                gap_from = Some(gap_from.map_or(since, |g| g.min(since)));
                p.acc.rebaseline();
                if let Some(seg) = seg {
                    seg.set_failed(i, None);
                }
            }
            let prev_read = p.last_poll_ns;
            // The uncertainty before this read, for the first point of its own timeline.
            let before = (!p.spread_kept).then(|| p.acc.uncertain());
            let unread_grew = p.acc.unread(t_read, p.source.unread_low_w());
            let at = super::power::reading_instant(&reading, t_read, t_after);
            let step = p.acc.push(at, reading);
            let changed = matches!(step, Step::Changed(_));
            let interval_ns = p.interval_ns;
            // A counter that updates more finely than it is polled changed within one of its
            // updates before the read: stamped at the read (the lock's predictions are of the
            // reads' own cadence, not of its updates).
            let fine = super::marks::fine(p);
            let stamp = match (&mut p.phase, &step) {
                (Some(ph), Step::Changed(_) | Step::Unchanged) if why == Why::Due => {
                    let s = ph.observe(prev_read, t_read, changed);
                    if fine {
                        Some(t_read)
                    } else {
                        s
                    }
                }
                (Some(ph), Step::Changed(_)) => {
                    super::marks::stamp(ph, interval_ns, prev_read, t_read)
                }
                _ => None,
            };
            let point = match step {
                Step::First(pt) => Some(pt),
                Step::Changed(mut pt) => {
                    if let Some(s) = stamp {
                        pt.t_ns = s.clamp(prev_read + 1, t_read);
                    }
                    // The update's energy placed in time by the source's power samples.
                    if config.power_samples && stamp.is_some() && gap_from.is_none() {
                        let period = p.phase.as_ref().and_then(PhaseLock::period_ns);
                        let to = (i, &mut *tl, seg, p.offset_j);
                        let placed = super::shape::place(p.source.as_mut(), to, pt, period);
                        st.shaped_updates += u64::from(placed);
                        p.placed = placed;
                    }
                    Some(pt)
                }
                Step::Reset(pt) => {
                    gap_from = Some(gap_from.map_or(p.last_poll_ns, |g| g.min(p.last_poll_ns)));
                    st.last_error = Some(RESET_REASON.to_string());
                    Some(pt)
                }
                Step::Unchanged => None,
            };
            // The uncertainty at each point of a power sampled at the read, and at each read
            // while a device is counted without being read (its counter may stand meanwhile);
            // it starts at the read before the first (where the integral stood at `before`).
            let spread_at = match point {
                Some(pt) if p.instant || p.acc.bounds_unread() => Some(pt.t_ns),
                None if unread_grew => Some(t_read),
                _ => None,
            };
            if let Some(t) = spread_at {
                if let Some(u) = before {
                    push_uncertain(i, tl, seg, prev_read, u);
                }
                p.spread_kept = true;
                push_uncertain(i, tl, seg, t, p.acc.uncertain());
            }
            match point {
                Some(pt) => append(i, tl, st, seg, p.offset_j, pt, gap_from),
                // Nothing to publish yet: the gap closes at the next point.
                None => p.pending_gap = gap_from,
            }
            p.last_poll_ns = t_read;
            if let Some(seg) = seg {
                seg.polled(i, t_read);
            }
            if let Some(ph) = &p.phase {
                st.update_period_ns = ph.period_ns().unwrap_or(0.0);
                st.phase_anchors = ph.anchors;
            }
            st.joules = p.acc.joules();
            st.wraps = p.acc.wraps;
            st.resets = p.acc.resets;
        }
        Err(e) => {
            st.errors += 1;
            st.last_error = Some(e.to_string());
            if p.consecutive_errors == 0 {
                p.first_error_ns = t_after;
            }
            p.consecutive_errors += 1;
            if p.consecutive_errors >= config.fail_after
                && t_after - p.first_error_ns >= config.fail_time.as_nanos() as u64
                && p.failed_since.is_none()
            {
                p.failed_since = Some(p.last_poll_ns);
                st.failed = true;
                if let Some(seg) = seg {
                    seg.set_failed(i, p.failed_since);
                }
            }
        }
    }
    if p.failed_since.is_some() {
        p.due_ns = t_after + retry_ns;
        return;
    }
    if why == Why::Mark {
        // A counter read every few updates: read again just after its next update, so that
        // the mark lies between two points stamped at the updates around it.
        // (Chased if it comes late, as when every update is read.)
        if !super::marks::fine(p) {
            if let Some(ph) = p.phase.as_mut().filter(|ph| ph.is_locked()) {
                ph.aim(t_after);
                p.due_ns = p.due_ns.min(ph.due(t_after).max(t_after + 1));
            }
        }
        return;
    }
    if let Some(ph) = p.phase.as_ref() {
        p.due_ns = ph.due(t_after).max(t_after + 1);
        return;
    }
    if let Some(d) = p.dither.as_mut() {
        p.due_ns = d.next(t_after, p.slot_ns);
        p.ride_ns = super::power::ride_from(p.due_ns, p.slot_ns).max(t_after + 1);
        return;
    }
    p.due_ns += p.interval_ns;
    if p.due_ns <= t_after {
        p.due_ns = t_after + p.interval_ns;
    }
}

pub(super) fn push_gap(st: &mut SourceStatus, from: u64, to: u64) {
    if st.gaps.len() >= 32 {
        st.gaps.remove(0);
    }
    st.gaps.push((from, to));
}

#[cfg(test)]
mod tests {
    /// A point after a gap that says it stood before the timeline's last point (a takeover's
    /// first reading of an averaging meter, placed half its window back): the gap starts at
    /// the last point, so that the instants measured before it are not set apart from each
    /// other (a region among them lost its figure), and one across it has none.
    #[test]
    fn a_gap_before_a_point_placed_earlier_than_the_last_starts_at_the_last() {
        use super::{append, History, Point, SourceStatus};
        let mut tl = History::new(16, 16, 1_000);
        let mut st = SourceStatus::default();
        for (t_ns, joules) in [(0, 0.0), (100, 10.0)] {
            tl.push(Point { t_ns, joules });
        }
        let first = Point {
            t_ns: 50,
            joules: 10.0,
        };
        append(0, &mut tl, &mut st, None, 0.0, first, Some(100));
        tl.push(Point {
            t_ns: 200,
            joules: 20.0,
        });
        let (a, b, c) = (tl.at(25).unwrap(), tl.at(75).unwrap(), tl.at(150).unwrap());
        assert_eq!((a.gaps, b.gaps, c.gaps), (0, 0, 1));
        assert_eq!((b.joules - a.joules), 5.0);
        assert_eq!(st.gaps, vec![(100, 100)]);
    }

    /// A counter kept after a failed first read (a process taking its node's sampler over, a
    /// fed source) is phase-locked once it reads again, like a counter read at once.
    #[test]
    fn a_counter_that_starts_failed_is_phase_locked_when_it_reads() {
        use super::{Config, Polled};
        use crate::sampler::fake_source::package;
        use crate::sensors::CounterSpec;

        let spec = CounterSpec {
            joules_per_unit: 1e-6,
            wrap: None,
        };
        let config = Config::default();
        let counter = Polled::failed(package(Some(spec)), 10, 0.0, &config);
        assert!(counter.phase.is_some() && counter.failed_since == Some(10));
        let power = Polled::failed(package(None), 10, 0.0, &config);
        assert!(power.phase.is_none());
        let unlocked = Config {
            phase_lock: false,
            ..Config::default()
        };
        let plain = Polled::failed(package(Some(spec)), 10, 0.0, &unlocked);
        assert!(plain.phase.is_none());
    }
}

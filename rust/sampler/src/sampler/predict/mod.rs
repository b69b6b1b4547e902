//! Reads around predicted region marks. Training steps are periodic: the marks of one step come
//! at the same offsets as those of the last (a single region per step, or several: nested or
//! interleaved regions give a pattern of intervals that repeats every few marks). Once the
//! pattern is steady, a phase-locked counter is read every few updates as while quiet, and at
//! every update only in a short window around each predicted mark: from the update before the
//! window opens (so the point before the mark is one update away, however late the thread wakes
//! after the mark) until the update after the mark. A 20 ms step then costs a few wake-ups
//! instead of one per update.
//!
//! The edges come from the marks and spans waiting to be resolved ([`Edges::take`], at each
//! wake-up) and from those resolved ([`super::resolve`]). A mark outside every window (the
//! pattern broke) wakes the thread as any read at a mark does (see `marks`), and breaks the
//! pattern: reads go back to every update until it is steady again. Marks with no steady
//! pattern (several threads stepping at their own pace, data-dependent steps) are read as
//! before. Points are stamped by reads as ever: the brackets stay what they were measured to
//! be.

mod edges;

pub(in crate::sampler) use edges::Edges;
use edges::Window;

use super::poll::Polled;
use crate::timeline::History;

/// A late wake-up opens windows earlier for about this long (ns; see [`Predict::woke`]).
const LATE_FADE_NS: f64 = 1e9;
/// Timer wake-ups after a sleep this long (ns) come later than after a short one (a look
/// opening a window comes about 19 ms after the last window; the reads in a window a fraction
/// of an update apart): their lateness is counted apart.
const LONG_SLEEP_NS: u64 = 1_000_000;
/// A wake-up counts in the usual lateness as at most this late (ns): one very late wake-up
/// does not move the looks and reads of the windows after it.
const USUAL_CAP_NS: u64 = 250_000;

/// A counter's part in the current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Read every few updates; not yet at the window.
    Sparse,
    /// Read every few updates, the next reads aimed around the update before the window (a
    /// mark before it is still read at the mark).
    Aimed,
    /// Read every update, from the one before the window.
    In,
    /// Read past the window's marks: every few updates again.
    Done,
}

/// Reads around predicted marks for the sampler loop: the edges, the window being read, and
/// each counter's part in it.
pub(super) struct Predict {
    pub(super) edges: Edges,
    window: Option<Window>,
    /// Windows are read through this instant.
    done_ns: u64,
    parts: Vec<Part>,
    /// How late timer wake-ups came lately (a decaying maximum, ns).
    late_ns: u64,
    late_at_ns: u64,
    /// How late timer wake-ups usually come (a running mean, ns): after a short sleep, after a
    /// long one (see [`LONG_SLEEP_NS`]); None until one came.
    usual_ns: [Option<f64>; 2],
    /// When the thread last asked to wake (0: woken by a mark, or not asked), and when it
    /// went to sleep.
    planned_ns: u64,
    slept_at_ns: u64,
    active: bool,
}

impl Predict {
    pub(super) fn new(sources: usize) -> Predict {
        Predict {
            edges: Edges::default(),
            window: None,
            done_ns: 0,
            parts: vec![Part::Sparse; sources],
            late_ns: 0,
            late_at_ns: 0,
            usual_ns: [None; 2],
            planned_ns: 0,
            slept_at_ns: 0,
            active: false,
        }
    }

    /// The thread is to sleep from `now` until `next`.
    pub(super) fn sleeping_until(&mut self, now: u64, next: u64) {
        self.planned_ns = next;
        self.slept_at_ns = now;
    }

    /// The thread woke at `now`: how late, if a timer woke it.
    pub(super) fn woke(&mut self, now: u64) {
        if self.planned_ns > 0 && now >= self.planned_ns {
            // The largest lateness lately: it fades by a tenth of its size every 100 ms.
            let dt = now.saturating_sub(self.late_at_ns) as f64;
            let faded = self.late_ns as f64 * (1.0 - dt / LATE_FADE_NS).max(0.0);
            let late = now - self.planned_ns;
            self.late_ns = late.max(faded as u64);
            self.late_at_ns = now;
            let long = self.planned_ns.saturating_sub(self.slept_at_ns) >= LONG_SLEEP_NS;
            let late = late.min(USUAL_CAP_NS) as f64;
            let usual = &mut self.usual_ns[usize::from(long)];
            *usual = Some(usual.map_or(late, |u| u + (late - u) / 8.0));
        }
        self.planned_ns = 0;
    }

    /// Whether counters are read around predicted marks (not at every update).
    pub(super) fn active(&self) -> bool {
        self.active
    }

    /// Read every few updates (`quiet_ns` apart) and at every update around the next predicted
    /// marks. Returns false (and does nothing) without a steady pattern or a counter to read
    /// so: the caller reads every update.
    pub(super) fn plan(
        &mut self,
        polled: &mut [Polled],
        timelines: &[History],
        now: u64,
        quiet_ns: u64,
    ) -> bool {
        if self.parts.len() != polled.len() {
            self.parts = vec![Part::Sparse; polled.len()];
        }
        // Wake-ups lately later than half a quiet interval: every update.
        if self.late_ns > quiet_ns / 2 {
            return false;
        }
        // Windows open as much earlier as the look that opens them usually comes late (not
        // by the latest very late wake-up: each window would read an update more for a
        // second after it; the look is asked early for its own lateness, see `step`, and a
        // read in the window that comes late still stamps its update).
        let lead = self.usual_ns[1].unwrap_or(0.0) as u64;
        for _ in 0..2 {
            let Some(w) = self
                .window
                .or_else(|| self.edges.window(self.done_ns.max(now), now, lead))
            else {
                return false;
            };
            self.window = Some(w);
            let (seen, latest) = self.edges.seen(&w);
            // Read past the latest predicted edge once it has come, else past the window.
            let end = if seen >= w.edges { latest } else { w.hi };
            let (mut any, mut open) = (false, false);
            for (i, p) in polled.iter_mut().enumerate() {
                let last_point = timelines.get(i).and_then(History::last_measured);
                if let Some(still) = self.step(
                    i,
                    p,
                    w,
                    end,
                    last_point.map_or(0, |pt| pt.t_ns),
                    now,
                    quiet_ns,
                ) {
                    any = true;
                    open |= still;
                }
            }
            if !any {
                return false;
            }
            self.active = true;
            if open {
                return true;
            }
            // Every counter read past this window: on to the next.
            self.done_ns = end.max(w.lo);
            self.window = None;
            self.parts.fill(Part::Sparse);
        }
        true
    }

    /// One counter's step in window `w` (read through `end`): None when it does not take
    /// part (not settled, or not read sparsely), else whether it still reads the window.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        i: usize,
        p: &mut Polled,
        w: Window,
        end: u64,
        last_point: u64,
        now: u64,
        quiet_ns: u64,
    ) -> Option<bool> {
        if p.failed_since.is_some() {
            return None;
        }
        let ph = p.phase.as_mut().filter(|ph| ph.settled())?;
        let per = ph.period_ns()?;
        let k = ph.stride_for(quiet_ns);
        if k <= 1 {
            // Read at every update anyway (a counter updating every 20 ms).
            return None;
        }
        ph.check_sparse = true;
        let start = w.lo.saturating_sub(per as u64);
        // The look and the read after it are asked for as early as wake-ups usually come late
        // (within a quarter period): asked for at their aims, they would land that much past
        // them, and each bracket's middle, which re-anchors the phase, would move the
        // predictions later window after window until a look lands past its update. The look
        // comes after a long sleep, the read a guard or two after it: each is asked early by
        // the lateness of its kind of wake-up. (Asked early by more, the read lands before its
        // update and sees nothing: a read more, and the bracket too wide to re-anchor the
        // phase closely.)
        let quarter = per / 4.0;
        let [early_read, early_look] = self.usual_ns.map(|u| u.unwrap_or(0.0).min(quarter) as u64);
        if self.parts[i] == Part::Sparse {
            ph.set_stride(k);
            if p.due_ns < start && now < start {
                // The next sparse read comes first.
                return Some(true);
            }
            // A look just before the update before the window and a read just after it: a
            // close bracket, whatever the updates read sparsely showed (one written late is
            // not taken for on time), and the phase re-anchored.
            ph.resync(start.max(now));
            // Half a guard later than the lock looks (two guards before the predicted update):
            // its close brackets are three guards wide at most, and a read after the look
            // landing later than asked by more than the look did would leave one wider (the
            // phase then known only coarsely, reads walk early fast and land before their
            // updates). The predictions run early by up to a guard: the look still comes
            // before the update.
            let later = ph.guard_ns() / 2;
            p.due_ns = (ph.due(now) + later)
                .saturating_sub(early_look)
                .max(now + 1);
            self.parts[i] = Part::Aimed;
        }
        if self.parts[i] == Part::Aimed {
            if p.last_poll_ns < start {
                return Some(true);
            }
            // Read: every update from here, from the first after the latest one seen (the
            // look's, or one a period before it): planning comes after the look's read, often
            // past the update it was aimed before, and aiming past `now` would skip the read
            // that brackets it.
            ph.set_stride(1);
            let seen = last_point.max(p.last_poll_ns.saturating_sub(per as u64));
            ph.aim(seen + (per / 2.0) as u64);
            p.due_ns = ph.due(now).saturating_sub(early_read).max(now + 1);
            self.parts[i] = Part::In;
        }
        match self.parts[i] {
            Part::Sparse | Part::Aimed => Some(true),
            Part::In => {
                // A point past the edge (an update read after it), or reads well past it
                // (a counter that did not move).
                let past = (last_point > end && now > end) || p.last_poll_ns > end + 2 * per as u64;
                if !past {
                    return Some(true);
                }
                // Every k-th update again, counted from the last one read.
                ph.set_stride(k);
                ph.aim(p.last_poll_ns + ((f64::from(k) - 0.5) * per) as u64);
                p.due_ns = ph.due(now).max(now + 1);
                self.parts[i] = Part::Done;
                Some(false)
            }
            Part::Done => {
                ph.set_stride(k);
                Some(false)
            }
        }
    }

    /// Stop reading around predictions: counters read sparsely go back to every update, from
    /// now (the caller reads every update: no steady pattern, a late machine, a node's other
    /// process marking).
    pub(super) fn release(&mut self, polled: &mut [Polled], now: u64) {
        if !self.active {
            return;
        }
        self.reset();
        super::schedule::read_every_update(polled, now);
    }

    /// Forget the window (the sampler went quiet and sets its own strides).
    pub(super) fn reset(&mut self) {
        self.active = false;
        self.window = None;
        self.parts.fill(Part::Sparse);
    }
}

#[cfg(test)]
mod tests;

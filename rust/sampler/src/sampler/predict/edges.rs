//! Recent region edges and the pattern they repeat: one edge per step, or a cycle of several
//! (nested or interleaved regions); the next edges predicted from it, in windows as wide as
//! the jitter seen.

use std::collections::VecDeque;

use crate::sampler::handle::Shared;

/// Edges closer than this are one event (a region's exit and the next one's enter).
const MERGE_NS: u64 = 100_000;
/// Edge instants kept.
const KEEP: usize = 32;
/// Longest cycle of intervals looked for (distinct edges per step).
const MAX_CYCLE: usize = 8;
/// Two intervals match within a tenth of either, or this.
const TOLERANCE_FLOOR_NS: u64 = 200_000;
/// Added to the jitter seen on each side of a predicted edge.
const SLACK_NS: u64 = 50_000;
/// Predicted edges whose windows come this close are read in one window.
const JOIN_NS: u64 = 2_000_000;
/// Marks and spans looked at per wake-up (the newest).
const PEEK: usize = 64;

/// A repeating pattern of intervals between recent edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::sampler) struct Pattern {
    /// Intervals per repetition (1: one edge per step).
    pub(in crate::sampler) cycle: usize,
    /// The largest difference between an interval and the one a cycle before it (ns).
    pub(in crate::sampler) jitter_ns: u64,
    /// One repetition (ns).
    pub(in crate::sampler) span_ns: u64,
}

/// Where reads go to every update: `[lo, hi]`, for `edges` predicted edges after the latest
/// one seen, at `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::sampler) struct Window {
    pub(in crate::sampler) lo: u64,
    pub(in crate::sampler) hi: u64,
    pub(in crate::sampler) edges: usize,
    pub(in crate::sampler) since: u64,
}

/// Recent region edges, in time order.
#[derive(Default, Debug)]
pub(in crate::sampler) struct Edges {
    t: VecDeque<u64>,
    /// The newest edge taken from the waiting marks.
    peeked_ns: u64,
    pattern: Option<Option<Pattern>>,
}

impl Edges {
    /// Take note of an edge at `t` (late ones, such as a span's start seen at its end, go in
    /// their place). Returns whether it was new.
    pub(in crate::sampler) fn note(&mut self, t: u64) -> bool {
        if self.t.len() >= KEEP && self.t.front().is_some_and(|&f| t < f) {
            return false;
        }
        let i = self.t.partition_point(|&x| x < t);
        let near = |j: usize| self.t.get(j).is_some_and(|&x| x.abs_diff(t) < MERGE_NS);
        if near(i) || (i > 0 && near(i - 1)) {
            return false;
        }
        self.t.insert(i, t);
        if self.t.len() > KEEP {
            self.t.pop_front();
        }
        self.pattern = None;
        true
    }

    /// Take note of the edges of the newest marks and spans waiting to be resolved (copied
    /// under the lock, those not newer than the newest seen so left out: marking threads
    /// wait no longer than a copy).
    pub(in crate::sampler) fn take(&mut self, shared: &Shared) {
        let mut got = [0u64; 2 * PEEK];
        let mut n = 0;
        {
            let r = shared.regions();
            let marks = r.pending.iter().rev().map(|m| (m.t_ns, m.t_ns));
            let spans = r.spans.iter().rev().map(|s| (s.t0_ns, s.t1_ns()));
            for (a, b) in marks.take(PEEK / 2).chain(spans.take(PEEK / 4)) {
                if b > self.peeked_ns {
                    got[n] = a;
                    got[n + 1] = b;
                    n += 2;
                }
            }
        }
        for &t in &got[..n] {
            self.peeked_ns = self.peeked_ns.max(t);
            self.note(t);
        }
    }

    /// The shortest cycle of intervals that repeated over the last two repetitions (at least
    /// four intervals compared), each interval within a tenth of the one a cycle before.
    pub(in crate::sampler) fn pattern(&mut self) -> Option<Pattern> {
        if let Some(p) = self.pattern {
            return p;
        }
        let t: Vec<u64> = self.t.iter().copied().collect();
        let d: Vec<u64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        let mut found = None;
        for cycle in 1..=MAX_CYCLE {
            let compared = (2 * cycle).max(4);
            if d.len() < cycle + compared {
                break;
            }
            let mut jitter_ns = 0;
            let steady = (d.len() - compared..d.len()).all(|i| {
                let diff = d[i].abs_diff(d[i - cycle]);
                jitter_ns = jitter_ns.max(diff);
                diff <= (d[i].max(d[i - cycle]) / 10).max(TOLERANCE_FLOOR_NS)
            });
            if steady {
                let span_ns = d[d.len() - cycle..].iter().sum();
                found = Some(Pattern {
                    cycle,
                    jitter_ns,
                    span_ns,
                });
                break;
            }
        }
        self.pattern = Some(found);
        found
    }

    /// The first window of predicted edges that ends after `after`, opened `lead` earlier than
    /// the jitter asks (how late the thread wakes): None without a steady pattern, or once the
    /// marks have stopped for two repetitions.
    pub(in crate::sampler) fn window(&mut self, after: u64, now: u64, lead: u64) -> Option<Window> {
        let pat = self.pattern()?;
        let last = *self.t.back()?;
        if now > last + 2 * pat.span_ns + pat.jitter_ns {
            return None;
        }
        let n = self.t.len();
        // Each interval of the cycle: the median of its last three repetitions (one stretched
        // by a late mark does not move the predictions after it).
        let d = |i: usize| self.t[i + 1] - self.t[i];
        let cyc: Vec<u64> = (n - 1 - pat.cycle..n - 1)
            .map(|i| {
                let mut r: Vec<u64> = (0..3)
                    .filter_map(|m| i.checked_sub(m * pat.cycle))
                    .map(d)
                    .collect();
                r.sort_unstable();
                r[r.len() / 2]
            })
            .collect();
        let margin = pat.jitter_ns + SLACK_NS;
        let mut x = last;
        let mut win: Option<Window> = None;
        for k in 0..3 * pat.cycle {
            x += cyc[k % pat.cycle];
            let (lo, hi) = (x.saturating_sub(margin + lead), x + margin);
            match win.as_mut() {
                None if hi > after => {
                    win = Some(Window {
                        lo,
                        hi,
                        edges: 1,
                        since: last,
                    });
                }
                None => {}
                Some(w) if lo <= w.hi + JOIN_NS => {
                    w.hi = hi;
                    w.edges += 1;
                }
                Some(_) => break,
            }
        }
        win
    }

    /// How many noted edges of window `w` have come (those in it after the one it was
    /// predicted from), and the latest of them.
    pub(in crate::sampler) fn seen(&self, w: &Window) -> (usize, u64) {
        self.t
            .iter()
            .filter(|&&x| x >= w.lo && x <= w.hi && x > w.since)
            .fold((0, 0), |(n, _), &x| (n + 1, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn edges(times: impl IntoIterator<Item = u64>) -> Edges {
        let mut e = Edges::default();
        for t in times {
            e.note(t);
        }
        e
    }

    /// One region after another every 20 ms (an exit and the next enter a microsecond apart
    /// are one edge): a cycle of one, and a window around the next edge.
    #[test]
    fn back_to_back_regions_predict_the_next_edge() {
        let mut e = Edges::default();
        for k in 0..10u64 {
            e.note(k * 20 * MS + 13);
            e.note(k * 20 * MS + 1_013);
        }
        let p = e.pattern().expect("periodic");
        assert_eq!((p.cycle, p.span_ns), (1, 20 * MS));
        let w = e
            .window(9 * 20 * MS, 9 * 20 * MS + MS, 0)
            .expect("a window");
        let next = 10 * 20 * MS + 13;
        assert!(w.lo < next && next < w.hi && w.hi - w.lo < MS, "{w:?}");
        assert_eq!(w.edges, 1);
    }

    /// Nested regions (a step with a 5 ms and a 12 ms inner region) repeat every three
    /// intervals; each edge of the next step is predicted.
    #[test]
    fn nested_regions_repeat_with_a_longer_cycle() {
        let step = |k: u64| [k * 30 * MS, k * 30 * MS + 5 * MS, k * 30 * MS + 17 * MS];
        let mut e = edges((0..8).flat_map(step));
        let p = e.pattern().expect("periodic");
        assert_eq!((p.cycle, p.span_ns), (3, 30 * MS));
        let mut after = 7 * 30 * MS + 17 * MS;
        for want in step(8) {
            let w = e.window(after, after, 0).expect("a window");
            assert!(w.lo <= want && want <= w.hi, "{want} not in {w:?}");
            after = w.hi;
        }
    }

    /// Steps of random length have no pattern; marks that stopped two cycles ago predict
    /// nothing.
    #[test]
    fn aperiodic_or_stopped_marks_predict_nothing() {
        let mut t = 0u64;
        let mut seed = 12345u64;
        let mut e = Edges::default();
        for _ in 0..30 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += 10 * MS + (seed >> 33) % (20 * MS);
            e.note(t);
        }
        assert_eq!(e.pattern(), None);
        assert_eq!(e.window(t, t, 0), None);
        let mut e = edges((0..10).map(|k| k * 20 * MS));
        assert!(e.window(0, 185 * MS, 0).is_some());
        assert_eq!(e.window(0, 9 * 20 * MS + 41 * MS, 0), None);
    }

    /// A span's start is seen only at its end: it goes in its place, and the pattern holds.
    #[test]
    fn late_edges_go_in_their_place() {
        let mut e = Edges::default();
        for k in 0..10u64 {
            e.note(k * 20 * MS + 18 * MS);
            e.note(k * 20 * MS + 2 * MS);
        }
        let p = e.pattern().expect("periodic");
        assert_eq!((p.cycle, p.span_ns), (2, 20 * MS));
        assert!(
            !e.note(9 * 20 * MS + 2 * MS + 40_000),
            "merged with its neighbour"
        );
    }

    /// A late mark stretches one interval: the next edge is still predicted a step after it.
    #[test]
    fn one_stretched_interval_does_not_move_the_prediction() {
        let mut e = edges((0..10).map(|k| k * 20 * MS));
        e.note(9 * 20 * MS + 21_500_000);
        let last = 9 * 20 * MS + 21_500_000;
        let w = e.window(last, last, 0).expect("a window");
        assert!(w.lo <= last + 20 * MS && last + 20 * MS <= w.hi, "{w:?}");
        assert!(w.lo > last + 18 * MS, "{w:?}");
    }

    /// Jittered steps: the window widens by the jitter seen; a wake-up lead opens it earlier.
    #[test]
    fn the_window_covers_the_jitter_and_the_lead() {
        let jit = [
            0, 300_000, 100_000, 500_000, 200_000, 0, 400_000, 100_000, 300_000, 0,
        ];
        let mut e = edges(jit.iter().enumerate().map(|(k, j)| k as u64 * 20 * MS + j));
        let p = e.pattern().expect("periodic within a tenth");
        // The last four intervals against those before them: 0.6, 0.7, 0.5, 0.5 ms apart.
        assert_eq!((p.cycle, p.jitter_ns), (1, 700_000));
        let last = 9 * 20 * MS;
        let w = e.window(last, last, 0).expect("a window");
        let w2 = e.window(last, last, 2 * MS).expect("a window");
        assert!(w.hi - w.lo >= 2 * p.jitter_ns);
        assert_eq!((w.lo - w2.lo, w.hi), (2 * MS, w2.hi));
    }
}

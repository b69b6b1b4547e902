//! Tests of reads around predicted marks, driven against a simulated counter and simulated
//! read times (no wall clock).

use super::Predict;
use crate::sampler::config::Config;
use crate::sampler::fake_source::package;
use crate::sampler::poll::Polled;
use crate::sensors::CounterSpec;
use crate::timeline::{History, Point};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;

/// A RAPL-like package counter, 1 ms apart.
fn counter() -> Polled {
    let spec = CounterSpec {
        joules_per_unit: 1e-6,
        wrap: None,
    };
    let mut p = Polled::failed(package(Some(spec)), 0, 0.0, &Config::default());
    p.failed_since = None;
    p
}

/// One window of predicted marks, as the sampler read it.
#[derive(Debug)]
struct Seen {
    /// The read that opened it (the look before the update before the mark), or, opened
    /// without a look, the instant it was planned.
    look_ns: u64,
    /// Whether it opened with a look.
    looked: bool,
    /// The lock's lead then (ns).
    lead_ns: f64,
    /// The first read after the update that follows the look (without a look, the first
    /// update after the window's start), less that update (ns).
    bracket_ns: u64,
    /// That update.
    after_ns: u64,
    /// Reads from the look until the next window's look, those that saw no change (the looks
    /// aside), and the looks (the window's and the lock's own, see `probe_if_unchecked`).
    reads: u32,
    unchanged: u32,
    looks: u32,
}

impl Seen {
    /// Whether its first read after the update before the mark came just after it: within
    /// three guards of a RAPL zone after a look (a close bracket); without one, within a
    /// quarter period (that read is aimed two guards past the update's estimate, which may
    /// be off by half a close bracket; a read a whole update later is what must not come).
    fn close(&self) -> bool {
        self.bracket_ns < if self.looked { 150 * US } else { MS / 4 }
    }
}

/// The sampler loop, simulated: a counter updating every `period` ns from `phase`, a mark
/// every 20 ms from `mark0`; each wake-up comes `wake(slept, at)` ns after the instant `at`
/// it was asked for, `slept` ns after the thread went to sleep; a read takes `read` ns
/// (stamped at its middle) and the planning after it is done `plan` ns after the read.
/// Returns each window's reads and the stamp errors (ns, a change's stamp less the latest true
/// update its read saw) past the first `warm` ns.
fn drive(
    period: u64,
    phase: u64,
    mark0: u64,
    end: u64,
    warm: u64,
    wake: impl Fn(u64, u64) -> u64,
) -> (Vec<Seen>, Vec<i64>) {
    let (read, plan) = (20 * US, 40 * US);
    let update = |k: u64| phase + k * period;
    let count_at = |t: u64| {
        if t < phase {
            0
        } else {
            (t - phase) / period + 1
        }
    };
    let mut p = [counter()];
    let mut pr = Predict::new(1);
    let mut tl = [History::new(4096, 16, MS)];
    let (mut seen, mut next_mark, mut asleep_until) = (0u64, mark0, 0u64);
    let mut windows: Vec<Seen> = Vec::new();
    let mut open: Option<Seen> = None;
    let mut errors = Vec::new();
    let mut t = 0u64;
    while t < end {
        let at = asleep_until.max(p[0].due_ns);
        t = at + wake(at - asleep_until, at);
        pr.woke(t);
        while next_mark <= t {
            pr.edges.note(next_mark);
            next_mark += 20 * MS;
        }
        let q = &mut p[0];
        if q.due_ns <= t {
            // (A late read near an update whose predecessor is unseen waits just past it.)
            let at = q
                .phase
                .as_ref()
                .and_then(|ph| ph.unclear_until(t))
                .map_or(t, |u| u.max(t));
            let t_read = at + read / 2;
            let count = count_at(t_read);
            let changed = count != seen;
            let ph = q.phase.as_mut().expect("a counter");
            // (A look just before a predicted update, the window's or the lock's own.)
            let looked = ph.aimed_after().is_none();
            ph.fit_guard(read);
            let stamp = ph.observe(q.last_poll_ns, t_read, changed);
            if changed {
                if let Some(s) = stamp {
                    tl[0].push(Point {
                        t_ns: s,
                        joules: count as f64,
                    });
                    if t_read > warm {
                        if (s as i64 - update(count - 1) as i64).abs() > (MS / 2) as i64 {
                            eprintln!(
                                "SLIP at {} stamp {} true {}",
                                t_read / 1000,
                                s / 1000,
                                update(count - 1) / 1000
                            );
                        }
                        errors.push(s as i64 - update(count - 1) as i64);
                    }
                }
                seen = count;
            }
            q.last_poll_ns = t_read;
            q.due_ns = ph.due(t_read + read / 2).max(t_read + read / 2 + 1);
            if let Some(w) = open.as_mut() {
                w.reads += 1;
                w.unchanged += u32::from(!changed && !looked);
                w.looks += u32::from(looked);
                if w.bracket_ns == 0 && t_read > w.after_ns {
                    w.bracket_ns = t_read - w.after_ns;
                }
            }
            t = t_read + read / 2;
        }
        let now = t + plan;
        let (before, before_w) = (pr.parts[0], pr.window.map(|w| w.lo));
        let settled = p[0].phase.as_ref().is_some_and(|ph| ph.settled());
        if !(settled && pr.plan(&mut p, &tl, now, 20 * MS)) {
            pr.release(&mut p, now);
        }
        let new_window = before != super::Part::In || pr.window.map(|w| w.lo) != before_w;
        if new_window && pr.parts[0] == super::Part::In {
            let ph = p[0].phase.as_ref().expect("a counter");
            if let Some(w) = open.take() {
                windows.push(w);
            }
            let looked = before == super::Part::Aimed;
            let look_ns = if looked { p[0].last_poll_ns } else { now };
            // (Without a look, the update nearest to the first read's aim.)
            let after_ns = if looked {
                update(count_at(look_ns))
            } else {
                let due = p[0].due_ns.max(phase);
                update((due - phase + period / 2) / period)
            };
            open = Some(Seen {
                look_ns,
                looked,
                after_ns,
                lead_ns: ph.lead_ns(),
                bracket_ns: 0,
                reads: 0,
                unchanged: 0,
                looks: 0,
            });
        }
        asleep_until = now;
        pr.sleeping_until(now, p[0].due_ns.max(now));
        t = now;
    }
    windows.extend(open.filter(|w| w.bracket_ns > 0));
    (windows, errors)
}

/// Steps of 20 ms on a 1 ms counter, read around the predicted marks: the look that opens
/// each window is followed by a read just after the next update (a close bracket), so the
/// phase stays known closely, the reads' early walk does not build up from window to window,
/// and no change is put at the update after the one its read saw.
#[test]
fn each_window_brackets_the_update_after_its_look() {
    for (phase, mark0) in [
        (370 * US, 5 * MS + 700 * US),
        (910 * US, 7 * MS + 20 * US),
        (370 * US, 5 * MS + 450 * US),
    ] {
        let (windows, errors) = drive(MS, phase, mark0, 2_000 * MS, 800 * MS, |_, _| 70 * US);
        let late: Vec<_> = windows.iter().filter(|w| w.look_ns > 800 * MS).collect();
        eprintln!(
            "DBG1 n {} looks {} reads {} maxlead {}",
            late.len(),
            late.iter().filter(|w| w.looked).count(),
            late.iter().map(|w| w.reads).sum::<u32>(),
            late.iter().map(|w| w.lead_ns).fold(0.0, f64::max)
        );
        assert!(late.len() > 40, "{} windows read around marks", late.len());
        for w in &late {
            // A read just after the update (within three guards: the widest close bracket),
            // not one a whole update later.
            assert!(
                w.close(),
                "phase {phase}, marks from {mark0}: no close bracket: {w:?}"
            );
        }
        // The lead (how far the predictions run early) goes up and down with the brackets, but
        // does not build up: no more in the second half of the windows than in the first, and
        // never three guards.
        let most = |ws: &[&Seen]| ws.iter().map(|w| w.lead_ns).fold(0.0, f64::max);
        let (early, later) = late.split_at(late.len() / 2);
        assert!(
            most(later) <= most(early) && most(later) < 150_000.0,
            "phase {phase}, marks from {mark0}: lead grew from {} to {} ns",
            most(early),
            most(later)
        );
        // (Nor one put at the update before: reads land just after their updates.)
        let slips = errors.iter().filter(|e| e.abs() > (MS / 2) as i64).count();
        assert_eq!(
            slips, 0,
            "phase {phase}, marks from {mark0}: changes put an update off: {slips}"
        );
    }
}

/// The thread wakes later after a long sleep (the look that opens a window, 19 ms after the
/// last window) than after a short one (the reads in a window), and now and then very late (a
/// busy machine). Each window still costs a look, the read that brackets the update after it
/// and the reads through the mark: no read asked for so early that it lands before its update
/// and sees nothing, and the brackets stay close.
#[test]
fn windows_read_no_update_twice_when_long_sleeps_wake_later() {
    for (phase, mark0) in [(370 * US, 5 * MS + 700 * US), (910 * US, 7 * MS + 20 * US)] {
        let spike = std::cell::Cell::new(300 * MS);
        let wake = |slept: u64, at: u64| {
            if at >= spike.get() {
                spike.set(spike.get() + 700 * MS);
                return 1_200 * US;
            }
            if slept >= MS {
                60 * US
            } else {
                20 * US
            }
        };
        let (windows, errors) = drive(MS, phase, mark0, 3_000 * MS, 800 * MS, wake);
        let late: Vec<_> = windows.iter().filter(|w| w.look_ns > 800 * MS).collect();
        assert!(late.len() > 80, "{} windows read around marks", late.len());
        let n = late.len() as u32;
        eprintln!(
            "DBG n {} looks {} reads {} unchanged {}",
            n,
            late.iter().filter(|w| w.looked).count(),
            late.iter().map(|w| w.reads).sum::<u32>(),
            late.iter().map(|w| w.unchanged).sum::<u32>()
        );
        for w in &late {
            if !w.close() {
                eprintln!("WIDE {:?}", w);
            }
        }
        let reads: u32 = late.iter().map(|w| w.reads).sum();
        let unchanged: u32 = late.iter().map(|w| w.unchanged).sum();
        // A look, the update before the mark and the one after it, one before those when the
        // mark is predicted within the margin after an update (the second case: 110 µs), and
        // now and then a read that lands before its update.
        assert!(
            reads <= 4 * n && unchanged <= n / 4,
            "phase {phase}, marks from {mark0}: {reads} reads in {n} windows, \
             {unchanged} before their updates"
        );
        let wide = late.iter().filter(|w| !w.close()).count();
        assert!(
            wide <= 4,
            "phase {phase}, marks from {mark0}: {wide} wide brackets"
        );
        let slips = errors.iter().filter(|e| e.abs() > (MS / 2) as i64).count();
        assert_eq!(slips, 0, "phase {phase}, marks from {mark0}: {slips} slips");
    }
}

/// Once the phase is known to a close bracket, a window opens without a look: the read just
/// after the update before the mark is aimed at that update's estimate, and the lock's own
/// look every few updates (or a read of its walk landing before its update) keeps the phase.
/// About 2.3 wake-ups a window instead of 3 or more (a look, the update before the mark, the
/// one after it), and no change put an update off. Wake-ups prompt (70 µs late), or long
/// sleeps later than short ones (60 and 20 µs). With a very late wake-up now and then (1.2 ms
/// every 700 ms), the windows keep their look.
#[test]
fn windows_skip_their_look_while_the_phase_is_known() {
    for (phase, mark0) in [
        (370 * US, 5 * MS + 700 * US),
        (150 * US, 6 * MS + 400 * US),
        (620 * US, 9 * MS + 900 * US),
    ] {
        for (kind, spikes) in [("prompt", false), ("uneven", false), ("spiky", true)] {
            let spike = std::cell::Cell::new(300 * MS);
            let wake = |slept: u64, at: u64| {
                if kind == "prompt" {
                    return 70 * US;
                }
                if spikes && at >= spike.get() {
                    spike.set(spike.get() + 700 * MS);
                    return 1_200 * US;
                }
                if slept >= MS {
                    60 * US
                } else {
                    20 * US
                }
            };
            let (windows, errors) = drive(MS, phase, mark0, 3_000 * MS, 800 * MS, wake);
            let late: Vec<_> = windows.iter().filter(|w| w.look_ns > 800 * MS).collect();
            let n = late.len() as u32;
            let reads: u32 = late.iter().map(|w| w.reads).sum();
            let looks: u32 = late.iter().map(|w| w.looks).sum();
            let opened = late.iter().filter(|w| w.looked).count();
            assert!(n > 80, "{n} windows read around marks");
            let slips = errors.iter().filter(|e| e.abs() > (MS / 2) as i64).count();
            assert_eq!(slips, 0, "phase {phase}, {kind}: {slips} slips");
            if spikes {
                // (Late wake-ups lately: the look stays.)
                assert!(
                    opened > late.len() / 2,
                    "phase {phase}, {kind}: {opened} of {n} windows opened with a look"
                );
                continue;
            }
            // (Before: 3.1-3.2 reads a window, a look in every one.)
            assert!(
                reads <= 5 * n / 2 && opened <= late.len() / 4,
                "phase {phase}, {kind}: {reads} reads ({looks} looks) in {n} windows, \
                 {opened} opened with a look"
            );
            // Every change put at its update, within two guards and a read's cost (within
            // 81 µs with a look in every window).
            let worst = errors.iter().map(|e| e.unsigned_abs()).max().unwrap_or(0);
            assert!(
                worst <= 120 * US,
                "phase {phase}, {kind}: a change put {worst} ns off its update"
            );
        }
    }
}

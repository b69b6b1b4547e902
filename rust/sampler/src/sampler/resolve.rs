//! The resolution pass: what the sources' timelines can answer (the frontier), and the
//! energy of each region edge the frontier has passed.

use std::sync::atomic::Ordering;

use super::handle::Shared;
use super::lock;
use super::poll::Cover;
use super::predict::Edges;
use crate::regions::{resolve_into_columns, OpenRegions};
use crate::timeline::{EnergyAt, History};

/// The instant up to which a source can answer: its last measured point (placed points after
/// it are bracketed only once the measured point that ends their update is there: a follower
/// may have copied them without it), or, when its counter has not moved for the settling time,
/// its last poll less that time.
fn covered_until(c: &Cover, tl: &History) -> u64 {
    let last_point = tl.last_measured().map_or(0, |pt| pt.t_ns);
    last_point.max(c.last_poll_ns.saturating_sub(c.settle_ns))
}

/// Resolve what the frontier has passed, for the sources in `view` (indices into `covers` and
/// the timelines). The regions lock is held only to take the work and to hand the results
/// over, never while computing energies; a thread marking a region never waits for it (it
/// hands its marks over through the inbox, moved in when the lock is taken).
pub(super) fn resolve(
    shared: &Shared,
    covers: &[Cover],
    view: &[usize],
    open: &mut OpenRegions,
    stopping: bool,
    max_resolved: usize,
    edges: Option<&mut Edges>,
) -> usize {
    let timelines = lock(&shared.timelines);
    let frontier = if stopping {
        u64::MAX
    } else {
        view.iter()
            .filter_map(|&i| Some((covers.get(i)?, timelines.get(i)?)))
            .filter(|(c, _)| c.failed_since.is_none())
            .map(|(c, tl)| covered_until(c, tl))
            .min()
            .unwrap_or_else(crate::now_ns)
    };
    // 1. Take the work.
    let work = shared.regions().take_ready(frontier, stopping);
    let marks = work.marks;
    if let Some(e) = edges {
        // Edges the predictions learn from (those taken at a wake-up may have missed some).
        for m in &work.ready {
            e.note(m.t_ns);
        }
        for s in &work.spans {
            e.note(s.t0_ns);
            e.note(s.t1_ns());
        }
    }
    // 2. Compute energies, without the lock.
    let width = view.len();
    let at = |t: u64| -> Vec<EnergyAt> {
        view.iter()
            .map(|&i| match (covers.get(i), timelines.get(i)) {
                (Some(c), Some(tl)) => energy_at(c, tl, t),
                _ => EnergyAt::exact(f64::NAN),
            })
            .collect()
    };
    let out = resolve_into_columns(work, open, at);
    drop(timelines);
    // 3. Hand the results over.
    let mut r = shared.regions();
    r.hand_over(
        out,
        width,
        max_resolved,
        frontier,
        crate::now_ns(),
        stopping,
    );
    if stopping || shared.waiters.load(Ordering::Acquire) > 0 {
        shared.resolved.notify_all();
    }
    marks
}

/// The energy of a source at `t_ns`: NaN where it is not covered or the source had failed.
fn energy_at(c: &Cover, tl: &History, t_ns: u64) -> EnergyAt {
    let Some(e) = tl.at(t_ns) else {
        return EnergyAt::exact(f64::NAN);
    };
    if e.high.is_infinite() {
        // After the last point: either the source is idle (settled) or it has failed.
        if c.failed_since.is_some_and(|since| since < t_ns) {
            return EnergyAt::exact(f64::NAN);
        }
        // Its uncertainty stays: it has its own points (a device counted without being read
        // bounds each read while its counter stands, see `timeline::spread::Unread`).
        return EnergyAt {
            gaps: e.gaps,
            var_j2: e.var_j2,
            bound_j: e.bound_j,
            ..EnergyAt::exact(e.joules)
        };
    }
    e
}

#[cfg(test)]
mod tests {
    use super::super::config::Config;
    use super::super::poll::{poll_one, Polled, Why};
    use super::energy_at;
    use crate::error::Error;
    use crate::sensors::{CounterSpec, Domain, EnergySource, Method, Reading, SourceInfo};
    use crate::timeline::History;
    use std::time::Duration;

    /// A RAPL-like counter (1 µJ units, wrapping at 2³²) that reads as scripted.
    struct Script(SourceInfo, Vec<u64>);

    impl EnergySource for Script {
        fn info(&self) -> &SourceInfo {
            &self.0
        }
        fn read(&mut self) -> Result<Reading, Error> {
            Ok(Reading::Counter(if self.1.is_empty() {
                0
            } else {
                self.1.remove(0)
            }))
        }
    }

    /// A counter's uncertainty is its edges' brackets alone, as before sources kept their own
    /// uncertainty points: none in its first read interval, between its updates, across a
    /// reset, or after its last point (as at a shutdown).
    #[test]
    fn a_counter_keeps_no_uncertainty_of_its_own_first_interval_to_after_its_last_point() {
        let info = SourceInfo {
            id: "powercap:intel-rapl:0".into(),
            backend: "powercap",
            domain: Domain::Package,
            index: 0,
            label: "package-0".into(),
            method: Method::Counter,
            counter: Some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap: Some(1 << 32),
            }),
            interval: Duration::from_millis(1),
            path: None,
            uuid: None,
        };
        // Unchanged, moving, wrapping, and a reset (back by far more than a wrap explains).
        let script = [
            5,
            5,
            900,
            900,
            2_000,
            (1 << 32) - 10,
            300,
            300,
            50,
            400,
            400,
            400,
        ];
        let source = Script(info, script.to_vec());
        let config = Config::default();
        let t0 = crate::now_ns();
        let (mut p, first, mut st) = Polled::new(
            Box::new(source),
            Reading::Counter(0),
            (t0, t0),
            0.0,
            &config,
        );
        let mut tl = History::new(64, 16, 1_000_000);
        tl.push(first);
        for _ in script {
            std::thread::sleep(Duration::from_millis(1));
            let now = crate::now_ns();
            poll_one(
                &mut p,
                0,
                &mut tl,
                &mut st,
                now,
                &config,
                1_000_000,
                None,
                Why::Due,
            );
        }
        assert!(st.resets >= 1 && st.wraps >= 1, "{st:?}");
        let c = p.cover();
        let t_last = c.last_poll_ns + 5_000_000;
        let mut edges = 0;
        for t in (t0 - 1_000_000..t_last).step_by(97_000) {
            let e = energy_at(&c, &tl, t);
            assert_eq!((e.var_j2, e.bound_j), (0.0, 0.0), "at {} ns", t - t0);
            edges += 1;
        }
        assert!(edges > 100);
    }
}

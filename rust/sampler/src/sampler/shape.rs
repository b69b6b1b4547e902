//! A counter update's energy placed in time by the source's finer power samples.
//!
//! When a counter read gives a new point (`next`) after the timeline's last one (`prev`), the
//! source may say where inside `(prev, next]` the energy went ([`EnergySource::shape`]). The
//! points it yields lie strictly between the two, with joules `prev + f · (next − prev)`: both
//! counter points stay exactly as read, so the energy of any span between counter points (and
//! the sum of back-to-back regions) is unchanged; only its placement inside each update moves.

use crate::sensors::EnergySource;
use crate::shared::Segment;
use crate::timeline::{History, Point};

/// Places the energy of the counter update that gives `next` (a change stamped at its update
/// instant by the phase lock, whose period is `period_ns` once learned) between the timeline's
/// last point and `next`, as placed points pushed before `next` itself; whether it did. Only
/// between update instants (whole periods apart once the period is known, never from the
/// first read): the first read, like a change stamped at its read, holds energy from before
/// its point. Placed points are published to the node's segment too, marked as placed (less
/// `offset_j`, as every point there), so every process resolves against the same points.
pub(super) fn place(
    source: &mut dyn EnergySource,
    (i, tl, seg, offset_j): (usize, &mut History, Option<&Segment>, f64),
    next: Point,
    period_ns: Option<f64>,
) -> bool {
    let Some(last) = tl.last() else {
        return false;
    };
    let updates = match period_ns {
        Some(_) => whole_updates(next.t_ns.saturating_sub(last.t_ns), period_ns),
        None => tl.len() > 1,
    };
    if !updates {
        return false;
    }
    let inside = interior(source, last, next);
    for q in &inside {
        tl.push_placed(*q);
        if let Some(seg) = seg {
            let mut p = *q;
            p.joules -= offset_j;
            seg.publish_placed(i, p);
        }
    }
    !inside.is_empty()
}

/// Whether `span_ns` is whole update periods (to a twentieth of one): the span between two
/// points stamped at update instants. A span that is not (one end is the first read, or a read
/// that saw a change without knowing when it came) holds energy from outside it, and is not
/// placed.
pub(super) fn whole_updates(span_ns: u64, period_ns: Option<f64>) -> bool {
    let Some(period) = period_ns.filter(|p| p.is_finite() && *p > 0.0) else {
        return false;
    };
    let n = (span_ns as f64 / period).round();
    n >= 1.0 && (span_ns as f64 - n * period).abs() <= 0.05 * period
}

/// The timeline points inside `(prev, next)` that `source`'s power samples give; none (the
/// energy spread evenly, as without samples) when it has none or they are not usable.
pub(super) fn interior(source: &mut dyn EnergySource, prev: Point, next: Point) -> Vec<Point> {
    let rises = next
        .joules
        .partial_cmp(&prev.joules)
        .is_some_and(|o| o.is_ge());
    if next.t_ns <= prev.t_ns + 1 || !rises {
        return Vec::new();
    }
    match source.shape(prev.t_ns, next.t_ns) {
        Some(f) => points(prev, next, &f),
        None => Vec::new(),
    }
}

/// `prev + f · (next − prev)` at each instant of `shape`; nothing unless every instant lies
/// strictly inside `(prev, next)` in increasing order and every fraction lies in [0, 1] without
/// decreasing (a source that says otherwise is not trusted for this update).
pub(super) fn points(prev: Point, next: Point, shape: &[(u64, f64)]) -> Vec<Point> {
    let mut out = Vec::with_capacity(shape.len());
    let (mut t_last, mut f_last) = (prev.t_ns, 0.0);
    for &(t, f) in shape {
        if t <= t_last || t >= next.t_ns || !(f_last..=1.0).contains(&f) {
            return Vec::new();
        }
        out.push(Point {
            t_ns: t,
            joules: prev.joules + f * (next.joules - prev.joules),
        });
        (t_last, f_last) = (t, f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t_ns: u64, joules: f64) -> Point {
        Point { t_ns, joules }
    }

    #[test]
    fn interior_points_split_the_update_and_keep_its_ends() {
        let got = points(pt(100, 10.0), pt(200, 30.0), &[(120, 0.5), (150, 0.75)]);
        assert_eq!(got, vec![pt(120, 20.0), pt(150, 25.0)]);
    }

    #[test]
    fn only_spans_of_whole_updates_are_placed() {
        let p = Some(100.0e6);
        assert!(whole_updates(100_000_000, p));
        assert!(whole_updates(101_000_000, p) && whole_updates(199_000_000, p));
        assert!(!whole_updates(65_000_000, p) && !whole_updates(150_000_000, p));
        assert!(!whole_updates(10_000_000, p));
        assert!(!whole_updates(100_000_000, None) && !whole_updates(100_000_000, Some(0.0)));
    }

    #[test]
    fn a_shape_that_breaks_the_rules_is_dropped_whole() {
        let (a, b) = (pt(100, 10.0), pt(200, 30.0));
        for bad in [
            vec![(100, 0.5)],             // at the start
            vec![(200, 0.5)],             // at the end
            vec![(150, 0.5), (140, 0.6)], // backwards in time
            vec![(140, 0.6), (150, 0.5)], // energy going down
            vec![(150, f64::NAN)],        // not a number
            vec![(150, -0.1)],            // before the start's energy
            vec![(150, 1.5)],             // past the end's energy
        ] {
            assert!(points(a, b, &bad).is_empty(), "{bad:?}");
        }
        assert_eq!(points(a, b, &[(150, 0.0), (160, 1.0)]).len(), 2);
    }
}

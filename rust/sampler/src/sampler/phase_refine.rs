//! Refining the learned period from the close brackets of a lock.

use super::PhaseLock;

impl PhaseLock {
    /// Re-estimate the period from the first close bracket and this one (`u`, of `width`);
    /// returns how far off the period may still be.
    pub(super) fn refine(&mut self, u: f64, width: f64) -> f64 {
        let Some(p) = self.period else { return 0.0 };
        match self.base {
            None => {
                self.base = Some((u, p));
                p / 32.0
            }
            Some((u0, _)) => {
                let n = ((u - u0) / p).round();
                if n < 1.0 {
                    return p / 32.0;
                }
                let refined = (u - u0) / n;
                if (refined - p).abs() < 0.1 * p {
                    self.period = Some(refined);
                }
                width / n
            }
        }
    }
}

//! The power traces the synthetic sources follow, as exact energies.

/// Energy (J) from `t0` to `t` of a square wave of `period` ns starting at `t0`: `high` W for
/// the first half of each period, `low` W for the second.
pub fn square_j(t0: u64, t: u64, low: f64, high: f64, period: u64) -> f64 {
    let dt = t.saturating_sub(t0);
    let full = (dt / period) as f64 * (low + high) * 0.5 * period as f64 * 1e-9;
    let rem = dt % period;
    let half = period / 2;
    let part = if rem < half {
        high * rem as f64 * 1e-9
    } else {
        high * half as f64 * 1e-9 + low * (rem - half) as f64 * 1e-9
    };
    full + part
}

//! The timeline of each source: cumulative joules against CLOCK_MONOTONIC time.
//!
//! [`accumulate`] turns readings into points (deltas, wraparound, resets, change-time stamps);
//! [`ring`] keeps them in a fixed-size ring and answers "how many joules at this instant, and
//! within what bracket" ([`EnergyAt`]); [`history`] holds a source's rings (fine and coarse), its
//! gaps and its power integral's uncertainty; [`spread`] keeps what a power integral is uncertain
//! by, and [`held`] learns whether a power source's device holds its reading.

pub mod accumulate;
pub mod held;
pub mod history;
pub mod ring;
pub mod spread;

#[cfg(test)]
mod power_tests;

pub use accumulate::{Accumulator, Step};
pub use history::{EnergyAt, History, Timeline};
pub use spread::Uncertain;

/// One point of a source's timeline: cumulative joules since the source was first read, and the
/// monotonic instant (ns) at which the energy had that value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub t_ns: u64,
    pub joules: f64,
}

//! carbonctx-sampler: energy counters read on a native thread and turned into joules.
//!
//! The crate never sees Python. Sensors (`powercap`, `msr`, `perf`, `nvml`, `estimate`) implement
//! [`source::EnergySource`]; [`discover`] finds them under a set of [`source::Roots`]; the
//! [`sampler::Sampler`] polls them on its own thread and answers "how many joules between these
//! two instants" through [`integrate`].

pub mod discover;
pub mod error;
pub mod estimate;
pub mod integrate;
pub mod msr;
pub mod nvml;
pub mod perf;
pub mod phase;
pub mod powercap;
pub mod sampler;
pub mod sim;
pub mod source;

pub use error::{Error, Result};
pub use source::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

/// Nanoseconds on CLOCK_MONOTONIC: the clock every timestamp in this crate is on
/// (Python's `time.monotonic_ns()` and `time.perf_counter_ns()` read the same clock on Linux).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

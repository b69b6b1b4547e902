//! carbonctx-sampler: energy counters read on a native thread and turned into joules.
//!
//! The crate never sees Python and reads no environment variable: everything it depends on comes
//! in through [`discover::Options`] and [`sampler::Config`]. Each folder owns one step of the
//! flow, and imports run one way (a step uses the ones before it, never those after):
//!
//! ```text
//!  hardware counters      sensors/               sampler/                timeline/
//!  (powercap, MSR,  ───►  EnergySource  ───►     a named thread:   ───►  cumulative joules per
//!   perf, NVML, AMD SMI,  + discover             poll loop, phase        source against time
//!   utilisation×TDP)      (one per domain)       lock, quiet/fast        (rings; energy at t)
//!                                                      │                         │
//!  region marks ──► regions.rs: marks & spans ─────────┴──► E(t_exit) − E(t_enter) per source,
//!  (a timestamp      wait until the sampler                 in columns, drained by the caller
//!   each: hot path)  has seen past them
//! ```
//!
//! - [`sensors`]: [`EnergySource`], [`Roots`], [`discover`], [`check`] (how good each source
//!   is), and the backends [`powercap`], [`msr`], [`perf`], [`nvml`], [`amd`], [`hwmon`],
//!   [`tdp_model`] and [`external`] (power the caller pushes in, such as the node's BMC
//!   reading);
//! - [`timeline`]: [`accumulate`](timeline::accumulate) (deltas, wraparound, change-time
//!   stamps) and [`history`](timeline::history) (rings, the energy at an instant);
//! - [`sampler`]: [`Sampler`], its [`Config`], the poll loop and phase-locked polling;
//! - [`regions`]: marks, spans and their resolution into [`Packed`] columns;
//! - [`shared`]: the node's timelines in shared memory (one writer, seqlock rings, the `flock`
//!   election, reclaim of stale segments), for [`Sampler::start_on_node`]: one sampler per
//!   node, shared by the processes of a job ([`sampler::node`]);
//! - [`error`]: the one [`Error`] enum, with a hint per variant.
//!
//! The simulated hardware tests point these sensors at lives in the `carbonctx-sim` crate.

pub mod error;
pub mod regions;
pub mod sampler;
pub mod sensors;
pub mod shared;
pub mod timeline;

pub use error::{Error, Result};
pub use regions::{Packed, Resolved};
pub use sampler::{Config, NodeStatus, Role, Sampler, Scheduling, SourceStatus, Stats};
pub use sensors::{amd, check, discover, external, hwmon, msr, nvml, perf, powercap, tdp_model};
pub use sensors::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};
pub use shared::NodeConfig;

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

//! The sampler: a named native thread that polls every source at its own rate, keeps a
//! timeline per source, and resolves region marks into joules once it has seen past them.
//!
//! - [`handle`]: the [`Sampler`] itself: the start handshake, marks, drain, wait, status, stop,
//!   `Drop`;
//! - [`config`]: how it runs ([`Config`]);
//! - `schedule`: the thread's body and poll loop (phase-locked counters read at every update
//!   while regions are marked and every few updates while quiet; with [`Config::fast_reads`]
//!   off, every few updates and at each region mark);
//! - `coalesce`: one wake-up for counters that update together;
//! - `poll`: one source as the loop polls it: a read, its point or gap, failure and retry;
//! - `shape`: a counter update's energy placed in time by the source's power samples;
//! - `dither`: read times of a power-only source (a random instant of each slot);
//! - `power`: how often a power-only source is read (faster while regions are marked, within
//!   a budget of CPU time);
//! - [`priority`]: the thread's scheduling (real-time where permitted; see
//!   [`Config::realtime`]);
//! - `inbox`: marks and spans handed over by marking threads without a lock, moved into the
//!   regions by whoever locks them next;
//! - `bell`: waking the sleeping thread without a lock;
//! - `resolve`: the resolution pass (the frontier, and the energy at each region edge);
//! - `marks`: reads at a region's mark, within a budget;
//! - `predict`: reads around predicted marks (periodic steps), every few updates between;
//! - [`phase`]: phase-locked polling (read each counter just after it updates);
//! - [`node`]: one sampler per node, shared by the processes of a job through
//!   [`crate::shared`] (owner, followers, takeover).

mod bell;
mod coalesce;
pub mod config;
mod costly;
mod dither;
#[cfg(test)]
mod fake_source;
pub mod handle;
mod inbox;
mod marks;
pub mod node;
pub mod phase;
mod poll;
mod power;
mod predict;
pub mod priority;
mod resolve;
mod schedule;
mod shape;

use std::sync::{Mutex, MutexGuard};

pub use crate::regions::{Packed, Resolved, BACKLOG_HIGH};
pub use config::Config;
pub use handle::{Sampler, SourceStatus, Stats};
pub use node::{NodeStatus, Role};
pub use priority::Scheduling;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these structures half-updated in a way that
    // matters more than losing the sampler, so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

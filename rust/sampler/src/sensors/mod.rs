//! Sensors: everything that reads hardware, behind one small interface.
//!
//! Each backend implements [`EnergySource`] and finds its sources under a set of [`Roots`] (the
//! seam through which tests point real code at simulated hardware); [`discover`] asks each
//! backend and keeps one source per measured device (domain, index, and a GPU's vendor);
//! [`check`] measures how good each source is (update period, read cost, wrap, the shortest
//! region it measures to about 1%).
//!
//! ```text
//! powercap (sysfs) ─┐
//! msr (/dev/cpu)   ─┤
//! perf (syscall)   ─┼─► discover ─► Vec<Box<dyn EnergySource>> ─► sampler
//! nvml (dlopen)    ─┤
//! amd (AMD SMI     ─┤   (dlopen; the amdgpu hwmon files where it is absent)
//!   or hwmon)       │
//! hwmon (sysfs)    ─┤   (Intel GPUs, amd_energy, ACPI power meters, INA3221 rails)
//! tdp_model        ─┤   (utilisation × TDP, where no CPU counter can be read)
//! external (feed)  ─┘   (power pushed by the caller: the node's BMC over Redfish)
//! ```

pub mod amd;
pub mod check;
pub mod discover;
pub mod external;
pub mod hwmon;
pub mod msr;
pub mod nvml;
pub mod perf;
pub mod powercap;
pub mod source;
pub mod tdp_model;

pub use source::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

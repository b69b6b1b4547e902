//! The one interface every energy source implements ([`EnergySource`]), the values it trades in,
//! and where sensors look ([`Roots`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// What part of the machine a source measures.
///
/// Totals never count a domain twice: `Core` and `Uncore` lie inside `Package`, and `Psys`
/// overlaps everything on client parts, so only `Package`, `Dram` and `Gpu` enter totals.
/// `Module` (a board or superchip module holding CPU and GPU, such as a Grace Hopper module),
/// `Rail` (one supply rail of a board, such as a Jetson's INA3221 channels) and `Node` (the
/// node's wall power, from a BMC or a platform power meter) contain or overlap the others: they
/// are shown beside the components, never added to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Package,
    Core,
    Uncore,
    Dram,
    Psys,
    Gpu,
    Module,
    Rail,
    Node,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Package => "package",
            Domain::Core => "core",
            Domain::Uncore => "uncore",
            Domain::Dram => "dram",
            Domain::Psys => "psys",
            Domain::Gpu => "gpu",
            Domain::Module => "module",
            Domain::Rail => "rail",
            Domain::Node => "node",
        }
    }
}

/// How a source's joules come about. Reports carry this label for every figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// A hardware energy counter (RAPL, NVML total energy).
    Counter,
    /// Power readings integrated over time (trapezoid).
    IntegratedPower,
    /// A model, not a measurement (utilisation times TDP).
    Estimate,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Counter => "counter",
            Method::IntegratedPower => "integrated-power",
            Method::Estimate => "estimate",
        }
    }
}

/// How to turn a raw counter value into joules, and where it wraps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterSpec {
    /// Joules per counter unit (1e-6 for powercap's µJ, 1e-3 for NVML's mJ, 2^-ESU for an MSR).
    pub joules_per_unit: f64,
    /// The counter counts 0..wrap and then starts again at 0. `None`: it never wraps in practice.
    pub wrap: Option<u64>,
}

/// Everything known about a source before it is read.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceInfo {
    /// Stable and unique within a process, e.g. `powercap:intel-rapl:0`, `msr:0:package`,
    /// `perf:energy-pkg:0`, `nvml:0`, `estimate:cpu`.
    pub id: String,
    /// `powercap`, `msr`, `perf`, `nvml` or `estimate`.
    pub backend: &'static str,
    pub domain: Domain,
    /// Physical package number, or GPU index as NVML numbers it.
    pub index: u32,
    /// For people: `package-0`, `dram (package 0)`, `NVIDIA H100 80GB HBM3 [GPU-1234…]`.
    pub label: String,
    pub method: Method,
    /// Present exactly when `method` is `Counter`.
    pub counter: Option<CounterSpec>,
    /// How often this source should be polled by default.
    pub interval: Duration,
    /// The file or library read, for messages.
    pub path: Option<PathBuf>,
    /// A GPU's UUID as NVML gives it (`GPU-…`), which `CUDA_VISIBLE_DEVICES` may name.
    pub uuid: Option<String>,
}

/// One read of a source.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// The raw counter value, in the units of `SourceInfo::counter`.
    Counter(u64),
    /// Instantaneous (or short-window average) power in watts.
    Power(f64),
    /// Power in watts that stood `ago_ns` before the read: a meter's average over a window
    /// (an ACPI meter's `power1_average`), given at the window's middle, so that integrating
    /// it adds no lag of half the window; a fed reading, at the instant it stands for. The
    /// source counts `ago_ns` back from its own clock, read during the read; the sampler
    /// counts it back from the read's end, so that the power is never placed earlier than it
    /// stood (a read stalled before the source took its clock places it later, not earlier).
    PowerAt { watts: f64, ago_ns: u64 },
}

/// A thing that can be read for energy. Implementations keep their files open and read them
/// with `pread`; `read` must be cheap and must not block for long.
pub trait EnergySource: Send {
    fn info(&self) -> &SourceInfo;
    fn read(&mut self) -> Result<Reading, Error>;
    /// A source whose first read may fail for a while (one fed from elsewhere that has no
    /// reading yet) is kept and retried like a failed source instead of being left out.
    fn retry_first_read(&self) -> bool {
        false
    }
    /// How far behind its reads a source's readings may be placed (one fed from elsewhere
    /// keeps its timeline that far back, see [`super::external`]): its settling time covers
    /// it, so that regions are resolved only once its timeline has passed them.
    fn lag(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// For a counter that updates coarsely but whose device also keeps finer timed power
    /// samples: where the energy of the update spanning `(from_ns, to_ns]` (CLOCK_MONOTONIC)
    /// went, as instants strictly inside it with the fraction of that energy spent by each
    /// (increasing, within [0, 1]). The counter's points stay as they are; these only place
    /// the energy between them. `None`: spread it evenly (no samples, or none usable).
    fn shape(&mut self, _from_ns: u64, _to_ns: u64) -> Option<Vec<(u64, f64)>> {
        None
    }
    /// How many watts the latest reading may be below the device's true draw because the
    /// device was not read but counted at a stated figure (an AMD GPU asleep: 0 W, and up to
    /// a few watts more); 0 for a reading of the device. The sampler adds this power times the
    /// time it held to the source's uncertainty (see `timeline::spread::Unread`).
    fn unread_low_w(&self) -> f64 {
        0.0
    }
}

/// A source that was looked for and could not be used, with what the user can do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// `powercap`, `msr`, `perf`, `nvml` or `estimate`.
    pub backend: &'static str,
    /// What was looked at, e.g. `/sys/class/powercap/intel-rapl:0/energy_uj`.
    pub what: String,
    /// Why it cannot be used, in one sentence.
    pub reason: String,
    /// What to do about it; empty when nothing can be done.
    pub hint: String,
}

/// What one backend found.
#[derive(Default)]
pub struct Found {
    pub sources: Vec<Box<dyn EnergySource>>,
    pub unavailable: Vec<Unavailable>,
}

/// Where the sensors look. Every path can be moved, which is how tests point the real code at
/// simulated hardware. The caller fills it (the Python settings map `CARBONCTX_SYSFS_ROOT`,
/// `CARBONCTX_DEV_ROOT`, `CARBONCTX_PROC_ROOT` and `CARBONCTX_NVML_LIBRARY` onto it); this crate
/// reads no environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    /// `/sys` by default.
    pub sys: PathBuf,
    /// `/dev` by default.
    pub dev: PathBuf,
    /// `/proc` by default.
    pub proc: PathBuf,
    /// The NVML library to load; `libnvidia-ml.so.1` through the loader's search path by
    /// default.
    pub nvml_library: Option<PathBuf>,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
            nvml_library: None,
        }
    }
}

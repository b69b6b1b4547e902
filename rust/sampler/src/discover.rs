//! Finds every energy source on the machine and chooses one per measured domain.

use crate::source::{Domain, EnergySource, Found, Roots, SourceInfo, Unavailable};

/// Whether to fall back to the utilisation × TDP estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EstimateMode {
    /// Only when no CPU package counter can be read.
    Auto,
    Never,
    Always,
}

/// What to look for.
#[derive(Clone, Debug)]
pub struct Options {
    pub roots: Roots,
    /// CPU counter backends in order of preference; backends not listed are not used.
    pub cpu_backends: Vec<String>,
    pub nvml: bool,
    pub estimate: EstimateMode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            roots: Roots::default(),
            cpu_backends: DEFAULT_CPU_BACKENDS.iter().map(|s| s.to_string()).collect(),
            nvml: true,
            estimate: EstimateMode::Auto,
        }
    }
}

/// The CPU backends in their default order: powercap is cheapest to read, perf works without
/// root where `perf_event_paranoid` allows, MSR needs root.
pub const DEFAULT_CPU_BACKENDS: [&str; 3] = ["powercap", "perf", "msr"];

/// Everything discovery found.
#[derive(Default)]
pub struct Discovered {
    /// One source per (domain, index): what the sampler should read.
    pub chosen: Vec<Box<dyn EnergySource>>,
    /// Sources that measure a domain already covered by a chosen one.
    pub alternatives: Vec<SourceInfo>,
    /// What was looked for and could not be used, with reasons and remedies.
    pub unavailable: Vec<Unavailable>,
}

fn rank(info: &SourceInfo, backends: &[String]) -> (usize, bool) {
    let pos = backends
        .iter()
        .position(|b| b == info.backend)
        .unwrap_or(usize::MAX);
    // intel-rapl-mmio duplicates intel-rapl's package counter; prefer the MSR-backed zone.
    (pos, info.id.contains("mmio"))
}

/// Look for sources and choose among them.
pub fn discover(opts: &Options) -> Discovered {
    let mut all: Vec<Box<dyn EnergySource>> = Vec::new();
    let mut out = Discovered::default();
    let mut take = |found: Found, all: &mut Vec<Box<dyn EnergySource>>| {
        all.extend(found.sources);
        out.unavailable.extend(found.unavailable);
    };
    for backend in &opts.cpu_backends {
        match backend.as_str() {
            "powercap" => take(crate::powercap::discover(&opts.roots), &mut all),
            "perf" => take(crate::perf::discover(&opts.roots), &mut all),
            "msr" => take(crate::msr::discover(&opts.roots), &mut all),
            _ => {}
        }
    }
    if opts.nvml {
        take(crate::nvml::discover(&opts.roots), &mut all);
    }
    all.sort_by_key(|s| rank(s.info(), &opts.cpu_backends));
    let mut covered: Vec<(Domain, u32)> = Vec::new();
    for s in all {
        let key = (s.info().domain, s.info().index);
        if covered.contains(&key) {
            out.alternatives.push(s.info().clone());
        } else {
            covered.push(key);
            out.chosen.push(s);
        }
    }
    let has_package = covered.iter().any(|(d, _)| *d == Domain::Package);
    let want_estimate = match opts.estimate {
        EstimateMode::Always => true,
        EstimateMode::Never => false,
        EstimateMode::Auto => !has_package,
    };
    if want_estimate {
        let found = crate::estimate::discover(&opts.roots);
        out.chosen.extend(found.sources);
        out.unavailable.extend(found.unavailable);
    }
    out.chosen.sort_by(|a, b| {
        let (a, b) = (a.info(), b.info());
        (a.domain, a.index, &a.id).cmp(&(b.domain, b.index, &b.id))
    });
    out
}

//! Finds every energy source on the machine and chooses one per measured domain.
//!
//! Everything discovery depends on comes in through [`Options`]: the roots, the backends, and the
//! values of the settings that used to be read from the environment here (`CUDA_VISIBLE_DEVICES`,
//! `CUDA_DEVICE_ORDER`, `CARBONCTX_CPU_TDP_W`, the AMD visible-device variables). This crate reads
//! no environment variable.
//!
//! Two sources measure the same thing when they have the same domain and index and, for GPUs,
//! the same vendor (an NVIDIA and an AMD GPU can both be GPU 0): see [`same_device`].

use std::path::PathBuf;

use crate::sensors::{Domain, EnergySource, Found, Roots, SourceInfo, Unavailable};

/// When to use the utilisation × TDP model ([`crate::sensors::tdp_model`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdpModelUse {
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
    /// Read GPUs at all: off, no NVIDIA, AMD or Intel GPU is read (whatever `nvml`, `amd`).
    pub gpu: bool,
    /// Read hwmon's energy and power channels (Intel GPUs, amd_energy, ACPI power meters,
    /// INA3221 rails).
    pub hwmon: bool,
    pub tdp_model: TdpModelUse,
    /// The value of `CUDA_VISIBLE_DEVICES` (`None`: unset): which GPUs this process sees.
    pub cuda_visible_devices: Option<String>,
    /// The value of `CUDA_DEVICE_ORDER` (`None`: unset).
    pub cuda_device_order: Option<String>,
    /// The TDP setting per package in watts, as text (`CARBONCTX_CPU_TDP_W`; `None` or empty:
    /// unset). A value that does not parse is reported as unavailable and ignored.
    pub cpu_tdp_w: Option<String>,
    /// AMD GPUs: AMD SMI, else the amdgpu hwmon files ([`crate::sensors::amd`]).
    pub amd: bool,
    /// The AMD SMI library (`None`: `libamd_smi.so` through the loader's search path).
    pub amdsmi_library: Option<PathBuf>,
    /// The value of `ROCR_VISIBLE_DEVICES` (`None`: unset).
    pub rocr_visible_devices: Option<String>,
    /// What HIP reads: `HIP_VISIBLE_DEVICES`, else `CUDA_VISIBLE_DEVICES`, else
    /// `GPU_DEVICE_ORDINAL` (`None`: all unset).
    pub hip_visible_devices: Option<String>,
    /// Sources the caller feeds (see [`super::external`]): always chosen, never deduplicated
    /// (their domains, such as the node's wall power, are shown beside the others).
    pub external: Vec<super::external::Feed>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            roots: Roots::default(),
            cpu_backends: DEFAULT_CPU_BACKENDS.iter().map(|s| s.to_string()).collect(),
            nvml: true,
            gpu: true,
            hwmon: true,
            tdp_model: TdpModelUse::Auto,
            cuda_visible_devices: None,
            cuda_device_order: None,
            cpu_tdp_w: None,
            amd: true,
            amdsmi_library: None,
            rocr_visible_devices: None,
            hip_visible_devices: None,
            external: Vec::new(),
        }
    }
}

/// The CPU backends in their default order: powercap is cheapest to read, perf works without
/// root where `perf_event_paranoid` allows, MSR needs root.
pub const DEFAULT_CPU_BACKENDS: [&str; 3] = ["powercap", "perf", "msr"];

/// Everything discovery found.
#[derive(Default)]
pub struct Discovered {
    /// One source per measured device (see [`same_device`]): what the sampler should read.
    pub chosen: Vec<Box<dyn EnergySource>>,
    /// Sources that measure a domain already covered by a chosen one.
    pub alternatives: Vec<SourceInfo>,
    /// What was looked for and could not be used, with reasons and remedies.
    pub unavailable: Vec<Unavailable>,
}

/// What a source measures: domain, index, and for a GPU its vendor.
pub type DeviceKey = (Domain, u32, String);

/// The device a source measures. GPUs of one vendor share a numbering (NVML's for `nvml`, the
/// ROCm runtime's for AMD SMI and amdgpu hwmon); other GPU sources share their backend's (the
/// Intel GPUs of hwmon, numbered after every other GPU, whose card and package channels are
/// two views of one GPU).
pub fn same_device(info: &SourceInfo) -> DeviceKey {
    // An AMD APU's socket source (domain module) is keyed as the AMD GPU it is.
    let vendor = if super::amd::is_amd_gpu(info) {
        "amd".into()
    } else if info.domain != Domain::Gpu {
        String::new()
    } else if info.backend == "nvml" {
        "nvidia".into()
    } else {
        info.backend.to_string()
    };
    (info.domain, info.index, vendor)
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
            "powercap" => take(super::powercap::discover(&opts.roots), &mut all),
            "perf" => take(super::perf::discover(&opts.roots), &mut all),
            "msr" => take(super::msr::discover(&opts.roots), &mut all),
            _ => {}
        }
    }
    if opts.nvml && opts.gpu {
        let nvml = super::nvml::discover(
            &opts.roots,
            opts.cuda_visible_devices.as_deref(),
            opts.cuda_device_order.as_deref(),
        );
        take(nvml, &mut all);
    }
    if opts.amd && opts.gpu {
        let amd = super::amd::AmdOptions {
            library: opts.amdsmi_library.as_deref(),
            rocr_visible_devices: opts.rocr_visible_devices.as_deref(),
            hip_visible_devices: opts.hip_visible_devices.as_deref(),
        };
        take(super::amd::discover(&opts.roots.sys, &amd), &mut all);
    }
    if opts.hwmon {
        // Intel GPUs are numbered after the GPUs found so far: never paired with one of them.
        let gpu_base = all
            .iter()
            .filter(|s| s.info().domain == Domain::Gpu || super::amd::is_amd_gpu(s.info()))
            .map(|s| s.info().index.saturating_add(1))
            .max()
            .unwrap_or(0);
        let hwmon = super::hwmon::discover_with(&opts.roots, gpu_base, opts.gpu);
        take(hwmon, &mut all);
    }
    // A stable sort: within a rank, the order found (AMD SMI before amdgpu hwmon).
    all.sort_by_key(|s| rank(s.info(), &opts.cpu_backends));
    // A source covers the same device (see `same_device`); one that measures a die (a package
    // whose RAPL counters are per die) covers that die only, and a whole-package source covers
    // every die of its package.
    let mut covered: Vec<(DeviceKey, Option<u32>)> = Vec::new();
    for s in all {
        let key = (
            same_device(s.info()),
            super::powercap::die_of(&s.info().label),
        );
        let taken = covered
            .iter()
            .any(|c| c.0 == key.0 && (c.1 == key.1 || c.1.is_none() || key.1.is_none()));
        if taken {
            out.alternatives.push(s.info().clone());
        } else {
            covered.push(key);
            out.chosen.push(s);
        }
    }
    let has_package = covered.iter().any(|c| c.0 .0 == Domain::Package);
    let want_model = match opts.tdp_model {
        TdpModelUse::Always => true,
        TdpModelUse::Never => false,
        TdpModelUse::Auto => !has_package,
    };
    if want_model {
        let found = super::tdp_model::discover(&opts.roots, opts.cpu_tdp_w.as_deref());
        out.chosen.extend(found.sources);
        out.unavailable.extend(found.unavailable);
    }
    out.chosen
        .extend(opts.external.iter().map(super::external::Feed::source));
    out.chosen.sort_by(|a, b| {
        let (a, b) = (a.info(), b.info());
        (a.domain, a.index, &a.id).cmp(&(b.domain, b.index, &b.id))
    });
    out
}

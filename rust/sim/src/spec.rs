//! What to simulate: CPU packages and their RAPL zones, and GPUs.

use std::path::PathBuf;

use carbonctx_sampler::{Domain, Error};

use crate::gpu::SimGpu;
use crate::wave::SquareWave;

/// The `max_energy_range_uj` of real RAPL package zones, used unless a zone says otherwise.
pub const DEFAULT_MAX_ENERGY_RANGE_UJ: u64 = 262_143_328_850;

/// One simulated RAPL zone.
#[derive(Clone, Debug, PartialEq)]
pub struct SimZone {
    /// `Package`, `Core`, `Uncore`, `Dram` or `Psys`.
    pub domain: Domain,
    /// The package it belongs to (for `Psys`, 0: there is one per machine).
    pub package: u32,
    /// Its power trace.
    pub wave: SquareWave,
    /// The powercap counter counts `0..=max_energy_range_uj` µJ, then restarts at 0. Use a
    /// small value to make it wrap quickly.
    pub max_energy_range_uj: u64,
    /// Energy already counted at `t0`, joules (counters do not start at 0 on real machines;
    /// a counter reading 0 would also make the MSR backend think the domain absent).
    pub offset_j: f64,
}

impl SimZone {
    /// A zone with the real-hardware wrap range and a 1000 J starting offset.
    pub fn new(domain: Domain, package: u32, wave: SquareWave) -> SimZone {
        SimZone {
            domain,
            package,
            wave,
            max_energy_range_uj: DEFAULT_MAX_ENERGY_RANGE_UJ,
            offset_j: 1000.0,
        }
    }

    /// The same zone with another wrap range.
    pub fn with_max_energy_range_uj(mut self, max_uj: u64) -> SimZone {
        self.max_energy_range_uj = max_uj;
        self
    }

    /// The same zone with another starting offset.
    pub fn with_offset_j(mut self, offset_j: f64) -> SimZone {
        self.offset_j = offset_j;
        self
    }
}

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSpec {
    /// Directory the tree is written under (created if missing).
    pub root: PathBuf,
    /// Number of physical packages.
    pub packages: u32,
    /// CPUs in each package (default 2).
    pub cpus_per_package: u32,
    /// The zones; at most one per (domain, package).
    pub zones: Vec<SimZone>,
    /// Time between counter updates, nanoseconds (default 1 ms, RAPL's update rate).
    pub update_period_ns: u64,
    /// Write the powercap tree (default true).
    pub powercap: bool,
    /// Write MSR device files (default true).
    pub msr: bool,
    /// Write the perf power PMU description (default true).
    pub perf: bool,
    /// `model name` in cpuinfo.
    pub model_name: String,
    /// Intel family-6 `model` in cpuinfo (default 0x6A, Ice Lake-X, whose DRAM counter uses
    /// the fixed 2^-16 J unit).
    pub cpu_model: u32,
    /// Energy status unit written into MSR 0x606: one unit is 2^-ESU J (default 14), 2^ESU µJ
    /// on the Silvermont and Airmont Atoms (`cpu_model` 0x37, 0x4A, 0x4C, 0x5A).
    pub energy_status_unit: u32,
    /// Simulated NVIDIA GPUs (default none), published in `<root>/nvml/` for the fake
    /// `libnvidia-ml` (see [`crate::gpu`]).
    pub gpus: Vec<SimGpu>,
    /// A GPU's energy counter changes only at multiples of this since `t0` (default 20 ms;
    /// 0: at every tick of [`crate::gpu::GPU_TICK_NS`]).
    pub gpu_energy_update_ns: u64,
    /// Likewise for the power a GPU reports (`nvmlDeviceGetPowerUsage`; default 20 ms).
    pub gpu_power_update_ns: u64,
}

impl SimSpec {
    /// A machine with `packages` packages, no zones yet, and the defaults above.
    pub fn new(root: impl Into<PathBuf>, packages: u32) -> SimSpec {
        SimSpec {
            root: root.into(),
            packages,
            cpus_per_package: 2,
            zones: Vec::new(),
            update_period_ns: 1_000_000,
            powercap: true,
            msr: true,
            perf: true,
            model_name: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz".to_string(),
            cpu_model: 0x6A,
            energy_status_unit: 14,
            gpus: Vec::new(),
            gpu_energy_update_ns: 20_000_000,
            gpu_power_update_ns: 20_000_000,
        }
    }

    /// Adds a zone.
    pub fn with_zone(mut self, zone: SimZone) -> SimSpec {
        self.zones.push(zone);
        self
    }

    /// A server: every package has a package zone and a dram zone with the given traces.
    pub fn server(
        root: impl Into<PathBuf>,
        packages: u32,
        package: SquareWave,
        dram: SquareWave,
    ) -> SimSpec {
        let mut spec = SimSpec::new(root, packages);
        for p in 0..packages {
            spec.zones.push(SimZone::new(Domain::Package, p, package));
            spec.zones.push(SimZone::new(Domain::Dram, p, dram));
        }
        spec
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.packages == 0 || self.cpus_per_package == 0 {
            return Err(Error::Invalid(
                "a simulated machine needs at least one package and one CPU per package".into(),
            ));
        }
        if self.update_period_ns == 0 {
            return Err(Error::Invalid(
                "the update period must be above 0 ns".into(),
            ));
        }
        if self.energy_status_unit > 31 {
            return Err(Error::Invalid(
                "the energy status unit must be 0..=31".into(),
            ));
        }
        if self.gpus.len() > crate::gpu::MAX_GPUS {
            return Err(Error::Invalid(format!(
                "at most {} simulated GPUs",
                crate::gpu::MAX_GPUS
            )));
        }
        for g in &self.gpus {
            g.wave.validate()?;
        }
        for (i, z) in self.zones.iter().enumerate() {
            z.wave.validate()?;
            if matches!(
                z.domain,
                Domain::Gpu | Domain::Module | Domain::Rail | Domain::Node
            ) {
                return Err(Error::Invalid(format!(
                    "a simulated CPU has no {} zone (RAPL zones: package, core, uncore, dram, psys)",
                    z.domain.as_str()
                )));
            }
            if z.package >= self.packages {
                return Err(Error::Invalid(format!(
                    "zone {} of package {} but the machine has {} packages",
                    z.domain.as_str(),
                    z.package,
                    self.packages
                )));
            }
            if z.domain == Domain::Psys && z.package != 0 {
                return Err(Error::Invalid("the psys zone belongs to package 0".into()));
            }
            if z.max_energy_range_uj == 0 || !z.offset_j.is_finite() || z.offset_j < 0.0 {
                return Err(Error::Invalid(format!(
                    "zone {} of package {}: the range must be above 0 and the offset finite and >= 0",
                    z.domain.as_str(),
                    z.package
                )));
            }
            if self.zones[..i]
                .iter()
                .any(|o| o.domain == z.domain && o.package == z.package)
            {
                return Err(Error::Invalid(format!(
                    "two {} zones for package {}",
                    z.domain.as_str(),
                    z.package
                )));
            }
        }
        Ok(())
    }
}

//! RAPL energy counters read straight from the model-specific registers (`/dev/cpu/N/msr`).
//!
//! This is the backend of last resort among the counters: it needs root (or `CAP_SYS_RAWIO`) and
//! the `msr` module. Each package is read through its first CPU (each die, on Intel parts whose
//! dies have their own registers: see [`super::rapl_cpus`]). Intel parts publish an energy
//! unit in `MSR_RAPL_POWER_UNIT` (0x606, bits 12:8: one unit is 2^-ESU joules; 2^ESU µJ on the
//! Silvermont and Airmont Atoms) and 32-bit counters for the package (0x611), DRAM (0x619),
//! cores (PP0, 0x639), the uncore or graphics (PP1, 0x641) and the platform (psys, 0x64D).
//! Some server parts count DRAM in a fixed unit of 2^-16 J (15.3 µJ) whatever 0x606 says, and
//! Sapphire and Emerald Rapids servers count the platform in whole joules. AMD (family 17h and
//! later) and Hygon use 0xC0010299 for the unit and 0xC001029B for the package counter.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rapl_cpus::{self, RaplCpu};
use crate::error::Error;
use crate::sensors::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

const BACKEND: &str = "msr";

/// Intel `MSR_RAPL_POWER_UNIT`.
pub const MSR_RAPL_POWER_UNIT: u64 = 0x606;
/// Intel `MSR_PKG_ENERGY_STATUS`.
pub const MSR_PKG_ENERGY_STATUS: u64 = 0x611;
/// Intel `MSR_DRAM_ENERGY_STATUS`.
pub const MSR_DRAM_ENERGY_STATUS: u64 = 0x619;
/// Intel `MSR_PP0_ENERGY_STATUS` (cores).
pub const MSR_PP0_ENERGY_STATUS: u64 = 0x639;
/// Intel `MSR_PP1_ENERGY_STATUS` (uncore / integrated graphics).
pub const MSR_PP1_ENERGY_STATUS: u64 = 0x641;
/// Intel `MSR_PLATFORM_ENERGY_STATUS` (psys).
pub const MSR_PLATFORM_ENERGY_STATUS: u64 = 0x64D;
/// AMD `MSR_AMD_RAPL_POWER_UNIT`.
pub const MSR_AMD_RAPL_POWER_UNIT: u64 = 0xC001_0299;
/// AMD `MSR_AMD_CORE_ENERGY_STATUS` (per core).
pub const MSR_AMD_CORE_ENERGY_STATUS: u64 = 0xC001_029A;
/// AMD `MSR_AMD_PKG_ENERGY_STATUS`.
pub const MSR_AMD_PKG_ENERGY_STATUS: u64 = 0xC001_029B;

/// Intel family-6 models whose DRAM counter uses the fixed 2^-16 J unit: Haswell-X, Broadwell-X,
/// Broadwell-D, Skylake-X, Ice Lake-X, Ice Lake-D, Xeon Phi Knights Landing and Knights Mill.
pub const INTEL_FIXED_DRAM_UNIT_MODELS: [u32; 8] = [0x3F, 0x4F, 0x56, 0x55, 0x6A, 0x6C, 0x57, 0x85];

/// The fixed DRAM energy unit of the models in [`INTEL_FIXED_DRAM_UNIT_MODELS`], in joules.
pub const FIXED_DRAM_UNIT_J: f64 = 1.0 / 65536.0;

/// Intel family-6 models whose platform (psys) counter counts whole joules whatever 0x606 says:
/// Sapphire Rapids and Emerald Rapids servers (the kernel's RAPL driver gives their platform
/// domain an energy unit of one joule, and its perf PMU the same unit).
pub const INTEL_JOULE_PSYS_UNIT_MODELS: [u32; 2] = [0x8F, 0xCF];

/// Intel family-6 Atom models whose unit register counts energy in 2^ESU µJ, not 2^-ESU J:
/// Silvermont (Bay Trail, 0x37), Silvermont-MID (Merrifield, 0x4A), Airmont (Cherry Trail,
/// 0x4C) and Airmont-MID (Moorefield, 0x5A); the kernel's RAPL driver reads their unit
/// register so (its Atom unit check), and its perf PMU does not serve them.
pub const INTEL_ATOM_UNIT_MODELS: [u32; 4] = [0x37, 0x4A, 0x4C, 0x5A];

/// Every counter register is 32 bits wide.
pub const COUNTER_WRAP: u64 = 1 << 32;

const PERMISSION_HINT: &str = "Reading MSRs needs root or CAP_SYS_RAWIO, and the msr module \
(`modprobe msr`). Prefer the powercap or perf sources, which need less privilege.";

const READ_HINT: &str = "The MSR device stopped answering (CPU offlined or msr module \
unloaded); restart the measurement once it is back.";

/// Intel counter registers with the domain each measures, in the order they are offered.
pub const INTEL_COUNTERS: [(Domain, u64); 5] = [
    (Domain::Package, MSR_PKG_ENERGY_STATUS),
    (Domain::Core, MSR_PP0_ENERGY_STATUS),
    (Domain::Uncore, MSR_PP1_ENERGY_STATUS),
    (Domain::Dram, MSR_DRAM_ENERGY_STATUS),
    (Domain::Psys, MSR_PLATFORM_ENERGY_STATUS),
];

/// Joules per unit given the value of a RAPL power-unit register (ESU in bits 12:8).
pub fn energy_unit_j(unit_register: u64) -> f64 {
    let esu = ((unit_register >> 8) & 0x1f) as i32;
    (2.0f64).powi(-esu)
}

/// Joules per unit on the Atom models of [`INTEL_ATOM_UNIT_MODELS`]: 2^ESU µJ, ESU in bits
/// 12:8 of the unit register.
pub fn atom_energy_unit_j(unit_register: u64) -> f64 {
    let esu = ((unit_register >> 8) & 0x1f) as i32;
    (2.0f64).powi(esu) * 1e-6
}

/// Whether an Intel family/model reads its unit register as the Atom parts do
/// ([`atom_energy_unit_j`]).
pub fn has_atom_energy_unit(family: u32, model: u32) -> bool {
    family == 6 && INTEL_ATOM_UNIT_MODELS.contains(&model)
}

/// Joules per count of an Intel family/model's `domain` counter, given its unit register
/// (0x606): the fixed DRAM and platform units where the model has them, else the Atom or the
/// common reading of the register.
pub fn intel_joules_per_unit(family: u32, model: u32, domain: Domain, unit_register: u64) -> f64 {
    match domain {
        Domain::Dram if has_fixed_dram_unit(family, model) => FIXED_DRAM_UNIT_J,
        Domain::Psys if has_joule_psys_unit(family, model) => 1.0,
        _ if has_atom_energy_unit(family, model) => atom_energy_unit_j(unit_register),
        _ => energy_unit_j(unit_register),
    }
}

/// Whether an Intel family/model counts DRAM energy in the fixed 2^-16 J unit.
pub fn has_fixed_dram_unit(family: u32, model: u32) -> bool {
    family == 6 && INTEL_FIXED_DRAM_UNIT_MODELS.contains(&model)
}

/// Whether an Intel family/model counts platform (psys) energy in whole joules.
pub fn has_joule_psys_unit(family: u32, model: u32) -> bool {
    family == 6 && INTEL_JOULE_PSYS_UNIT_MODELS.contains(&model)
}

/// The processor families this backend knows registers for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD` or `HygonGenuine`, family 17h or later.
    Amd,
}

/// An open MSR device and one counter register in it.
#[derive(Debug)]
pub struct MsrSource {
    info: SourceInfo,
    file: File,
    path: PathBuf,
    address: u64,
}

impl EnergySource for MsrSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        read_msr(&self.file, &self.path, self.address, READ_HINT)
            .map(|v| Reading::Counter(v & (COUNTER_WRAP - 1)))
    }
}

/// Reads the 8-byte little-endian register at `address` with `pread`.
fn read_msr(file: &File, path: &Path, address: u64, hint: &str) -> Result<u64, Error> {
    let mut buf = [0u8; 8];
    let n = file
        .read_at(&mut buf, address)
        .map_err(|e| Error::io(path, e, hint))?;
    if n != 8 {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of MSR {address:#x}: {n} of 8 bytes"),
            ),
        });
    }
    Ok(u64::from_le_bytes(buf))
}

/// The first CPU of each physical package, from
/// `<sys>/devices/system/cpu/cpuN/topology/physical_package_id`. Empty when the topology files
/// are missing.
pub fn first_cpu_per_package(sys: &Path) -> BTreeMap<u32, u32> {
    let mut map = BTreeMap::new();
    for (cpu, pkg, _) in rapl_cpus::all_cpus(sys) {
        map.entry(pkg)
            .and_modify(|c: &mut u32| *c = (*c).min(cpu))
            .or_insert(cpu);
    }
    map
}

/// The CPUs to read, one per counter ([`rapl_cpus`]): the first CPU of each die on Intel (whose
/// multi-die parts have per-die registers), of each package on AMD. CPU 0 for package 0 when
/// the topology files are missing.
pub fn counter_cpus(sys: &Path, vendor: Vendor) -> Vec<RaplCpu> {
    let (mut cpus, _) = rapl_cpus::choose(&rapl_cpus::all_cpus(sys), vendor == Vendor::Amd);
    if cpus.is_empty() {
        cpus.push(RaplCpu {
            cpu: 0,
            package: 0,
            die: None,
        });
    }
    cpus
}

fn unavailable(what: impl Into<String>, reason: impl Into<String>, hint: &str) -> Unavailable {
    Unavailable {
        backend: BACKEND,
        what: what.into(),
        reason: reason.into(),
        hint: hint.to_string(),
    }
}

/// Finds the RAPL registers readable through `<roots.dev>/cpu/N/msr`, one CPU per package.
///
/// A register that fails to read, or reads 0 (a domain the part does not implement), is not
/// offered. Permission problems and a missing msr device become one [`Unavailable`] entry.
pub fn discover(roots: &Roots) -> Found {
    let mut found = Found::default();
    let cpuinfo_path = roots.proc.join("cpuinfo");
    let cpuinfo = match std::fs::read_to_string(&cpuinfo_path) {
        Ok(t) => crate::sensors::tdp_model::parse_cpuinfo(&t),
        Err(e) => {
            found.unavailable.push(unavailable(
                cpuinfo_path.display().to_string(),
                format!("cannot read it to tell the processor vendor: {e}"),
                "The MSR backend needs /proc/cpuinfo to know which registers exist; use the \
                 powercap or perf sources, or check that /proc is mounted.",
            ));
            return found;
        }
    };
    let vendor = match (cpuinfo.vendor_id.as_deref(), cpuinfo.family) {
        (Some("GenuineIntel"), _) => Vendor::Intel,
        (Some("AuthenticAMD" | "HygonGenuine"), Some(f)) if f >= 0x17 => Vendor::Amd,
        (v, f) => {
            found.unavailable.push(unavailable(
                cpuinfo_path.display().to_string(),
                format!(
                    "no RAPL registers are known for vendor {} family {}",
                    v.unwrap_or("unknown"),
                    f.map_or("unknown".to_string(), |f| format!("{f:#x}"))
                ),
                "Nothing to do for this processor: its energy, if any, comes from powercap or \
                 perf where the kernel exposes them.",
            ));
            return found;
        }
    };
    let family = cpuinfo.family.unwrap_or(0);
    let model = cpuinfo.model.unwrap_or(0);

    for part in counter_cpus(&roots.sys, vendor) {
        let cpu = part.cpu;
        let path = roots.dev.join("cpu").join(cpu.to_string()).join("msr");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let (reason, hint) = match e.kind() {
                    io::ErrorKind::PermissionDenied => (
                        "permission denied opening the MSR device".to_string(),
                        PERMISSION_HINT,
                    ),
                    io::ErrorKind::NotFound => (
                        "the MSR device does not exist".to_string(),
                        "Load the msr module (`modprobe msr`, as root); prefer the powercap or \
                         perf sources where they exist.",
                    ),
                    _ => (
                        format!("cannot open the MSR device: {e}"),
                        "Check that the msr module is loaded (`modprobe msr`); prefer the powercap \
                         or perf sources where they exist.",
                    ),
                };
                found
                    .unavailable
                    .push(unavailable(path.display().to_string(), reason, hint));
                // The same cause applies to every package.
                return found;
            }
        };
        let (unit_reg, counters): (u64, Vec<(Domain, u64)>) = match vendor {
            Vendor::Intel => (MSR_RAPL_POWER_UNIT, INTEL_COUNTERS.to_vec()),
            Vendor::Amd => (
                MSR_AMD_RAPL_POWER_UNIT,
                vec![(Domain::Package, MSR_AMD_PKG_ENERGY_STATUS)],
            ),
        };
        let unit = match read_msr(&file, &path, unit_reg, PERMISSION_HINT) {
            Ok(v) => v,
            Err(e) => {
                found.unavailable.push(unavailable(
                    path.display().to_string(),
                    format!("cannot read the RAPL unit register {unit_reg:#x}: {e}"),
                    if matches!(e, Error::Permission { .. }) {
                        PERMISSION_HINT
                    } else {
                        "The processor may not implement RAPL (virtual machines usually do not); \
                         use the powercap or perf sources where they exist."
                    },
                ));
                continue;
            }
        };
        for (domain, address) in counters {
            match read_msr(&file, &path, address, READ_HINT) {
                Ok(v) if v & (COUNTER_WRAP - 1) != 0 => {}
                _ => continue,
            }
            let joules_per_unit = match vendor {
                Vendor::Intel => intel_joules_per_unit(family, model, domain, unit),
                Vendor::Amd => energy_unit_j(unit),
            };
            let label = match domain {
                Domain::Package => format!("{} (msr)", part.package_name()),
                d => format!("{} ({}, msr)", d.as_str(), part.scope()),
            };
            let file = match file.try_clone() {
                Ok(f) => f,
                Err(e) => {
                    found.unavailable.push(unavailable(
                        path.display().to_string(),
                        format!("cannot duplicate the MSR file descriptor: {e}"),
                        "The process may be out of file descriptors; raise `ulimit -n`.",
                    ));
                    continue;
                }
            };
            found.sources.push(Box::new(MsrSource {
                info: SourceInfo {
                    id: format!("msr:{}:{}", part.id(), domain.as_str()),
                    backend: BACKEND,
                    domain,
                    index: part.package,
                    label,
                    method: Method::Counter,
                    counter: Some(CounterSpec {
                        joules_per_unit,
                        wrap: Some(COUNTER_WRAP),
                    }),
                    interval: Duration::from_millis(1),
                    path: Some(path.clone()),
                    uuid: None,
                },
                file,
                path: path.clone(),
                address,
            }));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_energy_unit() {
        // A typical value: power unit 3, ESU 14, time unit 10.
        assert_eq!(energy_unit_j(0xA0E03), 1.0 / 16384.0);
        assert_eq!(energy_unit_j(0x1000), 1.0 / 65536.0);
        assert_eq!(energy_unit_j(0), 1.0);
    }

    #[test]
    fn decodes_the_atom_energy_unit() {
        // ESU 5: 32 µJ per count (the core parts' reading, 2^-5 J, is a thousand times more).
        assert_eq!(atom_energy_unit_j(0x505), 32e-6);
        assert_eq!(atom_energy_unit_j(0), 1e-6);
        assert!(has_atom_energy_unit(6, 0x37) && has_atom_energy_unit(6, 0x4C));
        assert!(
            !has_atom_energy_unit(6, 0x5C),
            "Goldmont reads the unit as the cores do"
        );
        assert!(!has_atom_energy_unit(0x17, 0x37));
    }

    #[test]
    fn knows_fixed_dram_models() {
        assert!(has_fixed_dram_unit(6, 0x55));
        assert!(has_fixed_dram_unit(6, 0x85));
        assert!(!has_fixed_dram_unit(6, 0x9E));
        assert!(!has_fixed_dram_unit(0x19, 0x55));
        assert!(
            !has_fixed_dram_unit(6, 0x8F),
            "Sapphire Rapids: DRAM in 0x606's unit"
        );
        assert!(has_joule_psys_unit(6, 0x8F) && has_joule_psys_unit(6, 0xCF));
        assert!(!has_joule_psys_unit(6, 0x97) && !has_joule_psys_unit(0x19, 0x8F));
    }
}

//! `amd_energy` (AMD Family 17h/19h; in Linux 5.8 to 5.12, and as AMD's out-of-tree module):
//! channels labelled `EcoreNNN` (the energy of the core that CPU NNN belongs to) and
//! `EsocketN` (the package energy, read on the first CPU of NUMA node N), in µJ, readable by
//! root only.
//!
//! - Each package is measured once, as [`Domain::Package`]. With more than one NUMA node per
//!   socket (NPS2, NPS4) the driver shows the same package counter once per node: only the
//!   first node of each package is read, the others are listed as duplicates.
//! - Core counters are summed per package into one [`Domain::Core`] source (the scope of the
//!   RAPL `core` zone, which it pairs with as an alternative), instead of one source per core.
//! - The counters are 32-bit registers shown as `raw × 10^6 / 2^ESU` µJ; the driver extends
//!   them to 64 bits only on some models. The wraparound is undone here over every range the
//!   driver can show ([`ranges`]), since ESU is not published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::chips::{channels, unavailable, Kind, Plan};
use super::read::read_text;
use super::{Chip, Unavailable};
use crate::sensors::Domain;

/// The µJ values an amd_energy counter can wrap at, ascending: a register read as it is wraps at
/// `2^32 × 10^6 / 2^ESU` µJ, one the driver accumulates into 64 bits overflows its
/// multiplication at `2^(64-ESU)` µJ; ESU (the energy status unit) lies in 8..=24.
pub fn ranges() -> Vec<u64> {
    let mut r: Vec<u64> = (8..=24u32)
        .flat_map(|esu| [15_625u64 << (38 - esu), 1u64 << (64 - esu)])
        .collect();
    r.sort_unstable();
    r.dedup();
    r
}

/// The first CPU of a cpulist (`0-15,64-79` → 0).
fn first_cpu(list: &str) -> Option<u32> {
    list.split([',', '-']).next()?.trim().parse().ok()
}

/// The physical package CPU `cpu` is on, from the kernel's topology files.
fn package_of_cpu(sys: &Path, cpu: u32) -> Option<u32> {
    let path = format!("devices/system/cpu/cpu{cpu}/topology/physical_package_id");
    read_text(&sys.join(path))?.parse().ok()
}

/// The physical package NUMA node `node` is on (that of its first CPU).
fn package_of_node(sys: &Path, node: u32) -> Option<u32> {
    let list = read_text(&sys.join(format!("devices/system/node/node{node}/cpulist")))?;
    package_of_cpu(sys, first_cpu(&list)?)
}

/// Plans the package and per-package core sources of an amd_energy chip; `sys` is the sysfs
/// root (for the CPU topology).
pub(super) fn plans(chip: &Chip, sys: &Path, out: &mut Vec<Plan>, un: &mut Vec<Unavailable>) {
    let found = channels(&chip.dir, "energy", "_input");
    if found.is_empty() {
        un.push(unavailable(
            &chip.dir,
            "amd_energy publishes no energy counter",
            "Check that the amd_energy module loaded without errors (dmesg).",
        ));
        return;
    }
    let mut sockets: Vec<(u32, PathBuf)> = Vec::new();
    let mut cores: Vec<(u32, PathBuf)> = Vec::new();
    for n in found {
        let label_path = chip.dir.join(format!("energy{n}_label"));
        let Some(label) = read_text(&label_path) else {
            un.push(unavailable(
                &label_path,
                "the channel has no readable label, so its scope (socket or core) is unknown",
                "Check that the amd_energy module is healthy (dmesg).",
            ));
            continue;
        };
        let path = chip.dir.join(format!("energy{n}_input"));
        let number = |prefix: &str| label.strip_prefix(prefix)?.parse::<u32>().ok();
        if let Some(node) = number("Esocket") {
            sockets.push((node, path));
        } else if let Some(cpu) = number("Ecore") {
            cores.push((cpu, path));
        }
    }

    // Without topology files, NUMA node N is taken to be package N (one node per socket).
    let mut packages: BTreeMap<u32, u32> = BTreeMap::new();
    for (node, path) in sockets {
        let package = package_of_node(sys, node).unwrap_or(node);
        if let Some(first) = packages.get(&package) {
            un.push(unavailable(
                &path,
                &format!(
                    "Esocket{node} repeats Esocket{first}: NUMA nodes {first} and {node} are on \
                     package {package}, whose counter the driver shows once per node"
                ),
                "Nothing to do: the package is measured once.",
            ));
            continue;
        }
        packages.insert(package, node);
        out.push(Plan {
            channel: format!("Esocket{node}"),
            domain: Domain::Package,
            index: Some(package),
            label: format!("package-{package} (amd_energy)"),
            kind: Kind::EnergySum {
                paths: vec![path],
                ranges: ranges(),
                max_watts: 2000.0,
            },
            interval: Duration::from_millis(1),
        });
    }

    let only = (packages.len() == 1).then(|| packages.keys().next().copied());
    let mut by_package: BTreeMap<u32, Vec<PathBuf>> = BTreeMap::new();
    let mut unplaced: Vec<u32> = Vec::new();
    for (cpu, path) in cores {
        match package_of_cpu(sys, cpu).or(only.flatten()) {
            Some(p) => by_package.entry(p).or_default().push(path),
            None => unplaced.push(cpu),
        }
    }
    if !unplaced.is_empty() {
        un.push(unavailable(
            &chip.dir,
            &format!(
                "cannot tell which package cores {unplaced:?} are on (no CPU topology under \
                 devices/system/cpu), so their energy is not summed"
            ),
            "The package counters are unaffected; expose /sys/devices/system/cpu to read the \
             cores' sums.",
        ));
    }
    for (package, paths) in by_package {
        let n = paths.len();
        out.push(Plan {
            channel: format!("cores-package{package}"),
            domain: Domain::Core,
            index: Some(package),
            label: format!("cores of package-{package} ({n} counters, amd_energy)"),
            kind: Kind::EnergySum {
                paths,
                ranges: ranges(),
                max_watts: 500.0,
            },
            interval: Duration::from_millis(100),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_include_the_usual_unit() {
        let r = ranges();
        // ESU 16 (15.3 µJ): the 32-bit register wraps at 65.536 kJ.
        assert!(r.contains(&65_536_000_000));
        assert!(r.contains(&(1u64 << 48)));
        assert!(r.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn reads_cpulists() {
        assert_eq!(first_cpu("0-15,64-79"), Some(0));
        assert_eq!(first_cpu("16-31"), Some(16));
        assert_eq!(first_cpu("7"), Some(7));
        assert_eq!(first_cpu(""), None);
    }
}

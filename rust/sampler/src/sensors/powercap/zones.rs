//! The powercap tree as the kernel lays it out, and what each zone's name says it measures.
//!
//! What this module relies on, from the kernel's powercap class (`powercap_sys.c`) and its RAPL
//! drivers (`intel_rapl_common.c`, `intel_rapl_msr.c`, `intel_rapl_tpmi.c`, and the processor
//! thermal device's MMIO interface):
//!
//! - A zone is a device named `<parent>:<id>`, the id in **hexadecimal** (`intel-rapl:a` is the
//!   eleventh top-level zone, `intel-rapl:0:1` the second child of `intel-rapl:0`); the parent is
//!   the control type (`intel-rapl`) or the parent zone. The devices live under
//!   `/sys/devices/virtual/powercap/<control type>/…`, nested as the zones nest, and
//!   `/sys/class/powercap` holds one symlink per control type and per zone.
//! - Ids are handed out in registration order, so a zone's number says nothing about which
//!   package it belongs to: its `name` does. Top-level zones are `package-N` (N the physical
//!   package id), `package-N-die-M` where the counters are per die and a package has several dies
//!   (Intel's multi-die Cascade Lake-AP; also AMD under the kernels that numbered each CCD as a
//!   die, where every such zone reads the one package counter), `psys` (the platform domain of
//!   the package with id 0) and `psys-N` (the platform domain of package N, on servers that have
//!   one per socket). Sub-zones of a package are `core`, `uncore` and `dram`.
//! - Control types: `intel-rapl` (the MSR interface, which also serves AMD and Hygon processors,
//!   and the TPMI interface of newer Xeons, whose zones are `package-N` with `dram` inside and
//!   `psys`/`psys-N` beside), `intel-rapl-tpmi` (the name Intel's out-of-tree and some
//!   distribution backports of the TPMI driver register instead, with the same zones), and
//!   `intel-rapl-mmio` (the same package and DRAM counters again, through the processor
//!   thermal device's MMIO window, as `package-0`). A zone of one control type that measures
//!   what a zone of another already measures is an alternative, not a second counter. Other
//!   control types (`dtpm`, Arm SCMI's) are power-limit controls, not RAPL energy counters.
//! - On AMD the `core` zone reads the core energy register of the package's first CPU: one core,
//!   not the package's cores.
//! - `energy_uj` is mode 0400 (root only) since the PLATYPUS mitigation; `enabled` reports
//!   whether the PL1 power limit is on (0 for a zone locked by the firmware), not whether the
//!   counter counts, so it is not consulted.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::sensors::Domain;

/// RAPL control types, in the order their zones are preferred and listed.
pub const RAPL_CONTROLS: [&str; 3] = ["intel-rapl", "intel-rapl-tpmi", "intel-rapl-mmio"];

/// A zone directory found in the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneDir {
    /// The control type, `intel-rapl`.
    pub control: String,
    /// The ids from the top-level zone down (`intel-rapl:0:a` → [0, 10]).
    pub ids: Vec<u32>,
    /// The directory name, `intel-rapl:0:a`.
    pub name: String,
    /// Where it was found (the class directory's link, or a directory nested in its parent).
    pub dir: PathBuf,
}

impl ZoneDir {
    /// Splits a directory name into control type and hexadecimal ids; `None` for a control type
    /// itself (no id) and for anything that is not a zone name.
    pub fn parse(name: &str, dir: PathBuf) -> Option<ZoneDir> {
        let mut parts = name.split(':');
        let control = parts.next()?.to_string();
        if control.is_empty() {
            return None;
        }
        let ids: Option<Vec<u32>> = parts
            .map(|p| {
                let hex = !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
                hex.then(|| u32::from_str_radix(p, 16).ok()).flatten()
            })
            .collect();
        let ids = ids?;
        (!ids.is_empty()).then(|| ZoneDir {
            control,
            ids,
            name: name.to_string(),
            dir,
        })
    }

    fn sort_key(&self) -> (usize, &str, &[u32]) {
        let rank = RAPL_CONTROLS
            .iter()
            .position(|c| *c == self.control)
            .unwrap_or(RAPL_CONTROLS.len());
        (rank, self.control.as_str(), self.ids.as_slice())
    }

    /// The name of the zone it sits in (`intel-rapl:0` for `intel-rapl:0:1`).
    pub fn parent_name(&self) -> Option<String> {
        (self.ids.len() > 1).then(|| {
            let cut = self.name.rfind(':').unwrap_or(self.name.len());
            self.name[..cut].to_string()
        })
    }
}

/// A class-directory link whose target cannot be seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dangling {
    pub name: String,
    /// Where the link points (as written in the link).
    pub target: PathBuf,
}

/// Everything under the class directory.
#[derive(Debug, Default)]
pub struct Tree {
    pub zones: Vec<ZoneDir>,
    pub dangling: Vec<Dangling>,
}

/// Lists the zones of every control type: the class directory's entries, the zones nested
/// inside them (how the device tree holds sub-zones), and the zones inside each control type's
/// directory (how `/sys/devices/virtual/powercap` holds top-level zones; the class directory
/// also links each zone, and its links are preferred), without duplicates, in a stable order
/// (RAPL control types first, then by id). Links whose target is missing are reported apart.
pub fn list(base: &Path) -> io::Result<Tree> {
    let mut tree = Tree::default();
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut stack = Vec::new();
    // Zones found only inside a control type's directory, visited after the class's links.
    let mut in_controls = Vec::new();
    for entry in fs::read_dir(base)? {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        let Some(zone) = ZoneDir::parse(&name, path.clone()) else {
            if !name.is_empty() && !name.contains(':') && path.is_dir() {
                in_controls.extend(top_level_zones(&name, &path));
            }
            continue;
        };
        let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && fs::metadata(&path).is_err() {
            let target = fs::read_link(&path).unwrap_or_default();
            tree.dangling.push(Dangling { name, target });
            continue;
        }
        stack.push(zone);
    }
    // Popped last to first: the class's links before the zones of the control types' dirs.
    in_controls.extend(stack);
    let mut stack = in_controls;
    while let Some(zone) = stack.pop() {
        if seen.insert(zone.name.clone(), ()).is_some() {
            continue;
        }
        if let Ok(entries) = fs::read_dir(&zone.dir) {
            for entry in entries.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Some(child) = ZoneDir::parse(&name, entry.path()) {
                    let nested = child.control == zone.control
                        && child.ids.len() == zone.ids.len() + 1
                        && child.ids.starts_with(&zone.ids);
                    if nested && entry.path().is_dir() {
                        stack.push(child);
                    }
                }
            }
        }
        tree.zones.push(zone);
    }
    tree.zones.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    tree.dangling.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tree)
}

/// The top-level zones (`<control>:N`) inside a control type's directory.
fn top_level_zones(control: &str, dir: &Path) -> Vec<ZoneDir> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let zone = ZoneDir::parse(&name, e.path())?;
            (zone.control == control && zone.ids.len() == 1 && e.path().is_dir()).then_some(zone)
        })
        .collect()
}

/// What a RAPL zone's `name` says it measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneKind {
    /// `package-N` or `package-N-die-M`.
    Package {
        package: u32,
        die: Option<u32>,
    },
    /// `core`, `uncore` or `dram`: a part of the package zone it sits in.
    Part(Domain),
    /// `psys` (package 0's platform domain) or `psys-N`.
    Psys(u32),
    Unknown,
}

/// Reads a zone name as the RAPL drivers write it.
pub fn kind_of_name(name: &str) -> ZoneKind {
    let name = name.trim();
    if let Some(rest) = name.strip_prefix("package-") {
        let (pkg, die) = match rest.split_once("-die-") {
            Some((p, d)) => (p, Some(d)),
            None => (rest, None),
        };
        let package = pkg.parse().ok();
        let die = die.map(|d| d.parse().ok());
        return match (package, die) {
            (Some(package), None) => ZoneKind::Package { package, die: None },
            (Some(package), Some(Some(d))) => ZoneKind::Package {
                package,
                die: Some(d),
            },
            _ => ZoneKind::Unknown,
        };
    }
    if name == "psys" {
        return ZoneKind::Psys(0);
    }
    if let Some(n) = name.strip_prefix("psys-") {
        return n.parse().map_or(ZoneKind::Unknown, ZoneKind::Psys);
    }
    match name {
        "core" => ZoneKind::Part(Domain::Core),
        "uncore" => ZoneKind::Part(Domain::Uncore),
        "dram" => ZoneKind::Part(Domain::Dram),
        _ => ZoneKind::Unknown,
    }
}

/// Whether the die zones of some package (two or more `package-N-die-M` zones of one control
/// type) read one counter, as AMD's per-CCD zones do: the same non-zero range, and values that
/// one counter read in turn gives (see [`one_counter`]); the first die zone is read again
/// after the others. Independent per-die counters (Intel's) never agree to the microjoule.
/// This tells the AMD layout apart where `/proc/cpuinfo` does not say the vendor (a tree
/// without it, or a `/proc` that is not the tree's machine's).
pub fn dies_share_counter(zones: &[&ZoneDir], names: &BTreeMap<&str, io::Result<String>>) -> bool {
    let mut by_package: BTreeMap<(&str, u32), Vec<&ZoneDir>> = BTreeMap::new();
    for z in zones {
        let Some(Ok(name)) = names.get(z.name.as_str()) else {
            continue;
        };
        if let ZoneKind::Package {
            package,
            die: Some(_),
        } = kind_of_name(name)
        {
            by_package
                .entry((z.control.as_str(), package))
                .or_default()
                .push(z);
        }
    }
    let number = |z: &ZoneDir, f: &str| {
        let text = fs::read(z.dir.join(f)).ok()?;
        super::parse_counter(&text)
    };
    by_package.values().any(|dies| {
        if dies.len() < 2 {
            return false;
        }
        let readings: Vec<Option<(u64, u64)>> = dies
            .iter()
            .map(|z| number(z, "energy_uj").zip(number(z, "max_energy_range_uj")))
            .collect();
        one_counter(&readings, number(dies[0], "energy_uj"))
    })
}

/// Whether `readings` ((energy, range) of die zones, read one after another) and `again` (the
/// first zone's energy read after them) are one counter read in turn: every range the same,
/// every value non-zero and no less than the one read before it, and none above `again`. A
/// live counter ticks between two reads (AMD's about every millisecond, and each zone's read
/// is a cross-CPU register read), so equal values are not required; a counter that wrapped
/// meanwhile, or one that reads 0, does not show as shared (it is then measured per die zone).
fn one_counter(readings: &[Option<(u64, u64)>], again: Option<u64>) -> bool {
    let (Some(Some((first, range))), Some(again)) = (readings.first(), again) else {
        return false;
    };
    let mut last = *first;
    last > 0
        && readings.iter().all(|r| match r {
            Some((e, r)) if r == range && *e >= last && *e <= again => {
                last = *e;
                true
            }
            _ => false,
        })
}

/// Whether `<proc>/cpuinfo` names an AMD or Hygon processor (whose RAPL counters are per
/// package, and whose `core` zone is one core's).
pub fn is_amd(proc_root: &Path) -> bool {
    let Ok(text) = fs::read_to_string(proc_root.join("cpuinfo")) else {
        return false;
    };
    text.lines()
        .find(|l| l.starts_with("vendor_id"))
        .and_then(|l| l.split(':').nth(1))
        .is_some_and(|v| matches!(v.trim(), "AuthenticAMD" | "HygonGenuine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids_are_hexadecimal() {
        let z = ZoneDir::parse("intel-rapl:a:1f", PathBuf::new()).unwrap();
        assert_eq!(
            (z.control.as_str(), z.ids.clone()),
            ("intel-rapl", vec![10, 31])
        );
        assert_eq!(z.parent_name().as_deref(), Some("intel-rapl:a"));
        assert_eq!(
            ZoneDir::parse("intel-rapl-mmio:0", PathBuf::new())
                .unwrap()
                .ids,
            vec![0]
        );
        assert_eq!(
            ZoneDir::parse("dtpm:0:1", PathBuf::new()).unwrap().ids,
            vec![0, 1]
        );
        for bad in [
            "intel-rapl",
            "intel-rapl:",
            "intel-rapl:x",
            ":0",
            "intel-rapl:-1",
        ] {
            assert_eq!(ZoneDir::parse(bad, PathBuf::new()), None, "{bad}");
        }
    }

    #[test]
    fn one_counter_read_in_turn_may_have_ticked_between_reads() {
        const R: u64 = 65_532_610_987;
        let r = |e: u64| Some((e, R));
        // A static copy of the tree: every die zone the same value.
        assert!(one_counter(&[r(500), r(500), r(500)], Some(500)));
        // A live AMD package counter read through its CCD zones, ticking meanwhile.
        let ccds = [
            r(7_000_100),
            r(7_000_100),
            r(7_000_161),
            r(7_000_161),
            r(7_000_230),
        ];
        assert!(one_counter(&ccds, Some(7_000_230)));
        assert!(one_counter(&ccds, Some(7_000_301)));
        // Independent per-die counters (Intel's): values far apart, or one behind another.
        assert!(!one_counter(&[r(7_000_100), r(9_123_456)], Some(7_000_160)));
        assert!(!one_counter(&[r(7_000_100), r(7_000_050)], Some(7_000_160)));
        // A value above the first zone's second reading is not the first zone's counter.
        assert!(!one_counter(&[r(7_000_100), r(7_000_400)], Some(7_000_160)));
        // Not measurable as one counter: a zero, another range, a zone that did not read, a
        // counter that wrapped between the two readings of the first zone.
        assert!(!one_counter(&[r(0), r(0)], Some(0)));
        assert!(!one_counter(&[r(500), Some((500, R - 1))], Some(500)));
        assert!(!one_counter(&[r(500), None], Some(500)));
        assert!(!one_counter(&[r(R - 5), r(R - 1)], Some(20)));
        assert!(!one_counter(&[r(500), r(500)], None));
    }

    #[test]
    fn names_as_the_drivers_write_them() {
        use ZoneKind::*;
        assert_eq!(
            kind_of_name("package-3\n"),
            Package {
                package: 3,
                die: None
            }
        );
        assert_eq!(
            kind_of_name("package-1-die-7"),
            Package {
                package: 1,
                die: Some(7)
            }
        );
        assert_eq!(kind_of_name("psys"), Psys(0));
        assert_eq!(kind_of_name("psys-1"), Psys(1));
        assert_eq!(kind_of_name("dram"), Part(Domain::Dram));
        assert_eq!(kind_of_name("uncore"), Part(Domain::Uncore));
        for bad in [
            "package-x",
            "package-1-die-",
            "psys-x",
            "mystery",
            "package",
        ] {
            assert_eq!(kind_of_name(bad), Unknown, "{bad}");
        }
    }
}

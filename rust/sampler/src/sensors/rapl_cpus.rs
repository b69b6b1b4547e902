//! Which CPU stands for each RAPL counter, for the backends that reach the counters through a
//! CPU (perf and MSR).
//!
//! RAPL counters are per package, except on Intel parts with several dies per package and
//! per-die counters (Cascade Lake-AP), where each die has its own package, DRAM and core
//! counters. The kernel's perf power PMU follows that: its scope is the die on Intel (its
//! `cpumask` names one CPU per die) and the package on AMD and Hygon, whose package counter is
//! one per package; the kernels that numbered AMD's CCDs as dies briefly gave that PMU one CPU
//! per CCD, each reading the same package counter. The rule here is the powercap backend's:
//! one counter per die on Intel, named with its die (`package-N-die-M`, `dram (package N die M)`)
//! where a package has more than one, and one per package on AMD. Dies come from
//! `<sys>/devices/system/cpu/cpuN/topology/die_id` (the die within its package, the number the
//! powercap zones use).

use std::collections::BTreeMap;
use std::path::Path;

/// A CPU through which a package's (or one die's) counters are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaplCpu {
    pub cpu: u32,
    /// Physical package id.
    pub package: u32,
    /// The die within the package, where the package has several dies with their own counters;
    /// `None` for a whole package.
    pub die: Option<u32>,
}

impl RaplCpu {
    /// `package-N` or `package-N-die-M`, as powercap names the zone.
    pub fn package_name(&self) -> String {
        match self.die {
            Some(d) => format!("package-{}-die-{d}", self.package),
            None => format!("package-{}", self.package),
        }
    }

    /// `package N` or `package N die M`, as the labels of the parts of a package say it.
    pub fn scope(&self) -> String {
        match self.die {
            Some(d) => format!("package {} die {d}", self.package),
            None => format!("package {}", self.package),
        }
    }

    /// The part of a source id after the backend's prefix: `N` or `N-die-M`.
    pub fn id(&self) -> String {
        match self.die {
            Some(d) => format!("{}-die-{d}", self.package),
            None => self.package.to_string(),
        }
    }
}

/// A topology number of a CPU (`physical_package_id`, `die_id`); `None` when the file is missing
/// or holds -1 (an offline CPU).
pub fn topology_number(sys: &Path, cpu: u32, file: &str) -> Option<u32> {
    let path = sys.join(format!("devices/system/cpu/cpu{cpu}/topology/{file}"));
    let n: i64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    u32::try_from(n).ok()
}

/// Chooses one CPU per counter among `candidates` (cpu, package, die; in any order): the lowest
/// CPU of each die on Intel (`amd` false), of each package on AMD. A die is named only where its
/// package has more than one. Also returns the candidates left out on AMD because another CPU
/// of their package already stands for it, each with that CPU.
pub fn choose(
    candidates: &[(u32, u32, Option<u32>)],
    amd: bool,
) -> (Vec<RaplCpu>, Vec<(RaplCpu, u32)>) {
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable();
    // Per package, its dies, each with its first CPU.
    let mut packages: BTreeMap<u32, BTreeMap<Option<u32>, u32>> = BTreeMap::new();
    for &(cpu, package, die) in &sorted {
        packages
            .entry(package)
            .or_default()
            .entry(die)
            .or_insert(cpu);
    }
    let mut chosen = Vec::new();
    let mut repeats = Vec::new();
    for (package, dies) in packages {
        let first = dies.values().copied().min().unwrap_or(0);
        if amd || dies.len() == 1 {
            chosen.push(RaplCpu {
                cpu: first,
                package,
                die: None,
            });
            for (&die, &cpu) in dies.iter().filter(|(_, &c)| c != first) {
                repeats.push((RaplCpu { cpu, package, die }, first));
            }
        } else {
            chosen.extend(
                dies.into_iter()
                    .map(|(die, cpu)| RaplCpu { cpu, package, die }),
            );
        }
    }
    chosen.sort_by_key(|c| (c.package, c.die));
    (chosen, repeats)
}

/// Whether CPU `cpu` is online. An offline CPU's registers cannot be read, nor can perf events
/// be opened on it; the kernel also drops its topology directory (some report its package as
/// -1). Its `cpuN/online` file says (0 or 1); a CPU without one cannot be taken offline (cpu0
/// often) and is online; where that file cannot be read, the kernel's list of online CPUs
/// (`devices/system/cpu/online`) says, and failing that the CPU is taken as online.
pub fn is_online(sys: &Path, cpu: u32) -> bool {
    let cpus = sys.join("devices/system/cpu");
    match std::fs::read_to_string(cpus.join(format!("cpu{cpu}/online"))) {
        Ok(t) if t.trim() == "0" => false,
        Ok(t) if t.trim() == "1" => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        _ => std::fs::read_to_string(cpus.join("online"))
            .ok()
            .and_then(|t| cpu_list_contains(&t, cpu))
            .unwrap_or(true),
    }
}

/// Whether a kernel CPU list (`0-3,8,10-11`) holds `cpu`; `None` where it is not such a list.
fn cpu_list_contains(list: &str, cpu: u32) -> Option<bool> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut found = false;
    for part in list.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.trim().parse::<u32>().ok()?;
                (n, n)
            }
        };
        found |= (lo..=hi).contains(&cpu);
    }
    Some(found)
}

/// Every online CPU listed under `<sys>/devices/system/cpu` with its package and die (CPUs
/// without a readable package id, and offline ones, are left out).
pub fn all_cpus(sys: &Path) -> Vec<(u32, u32, Option<u32>)> {
    let Ok(entries) = std::fs::read_dir(sys.join("devices/system/cpu")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let cpu = e.file_name().to_str()?.strip_prefix("cpu")?.parse().ok()?;
            if !is_online(sys, cpu) {
                return None;
            }
            let package = topology_number(sys, cpu, "physical_package_id")?;
            Some((cpu, package, topology_number(sys, cpu, "die_id")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_cpu_lists() {
        assert_eq!(cpu_list_contains("0-3,8,10-11\n", 2), Some(true));
        assert_eq!(cpu_list_contains("0-3,8,10-11", 8), Some(true));
        assert_eq!(cpu_list_contains("0-3,8,10-11", 9), Some(false));
        assert_eq!(cpu_list_contains("0", 1), Some(false));
        assert_eq!(cpu_list_contains("", 0), None);
        assert_eq!(cpu_list_contains("0-x", 0), None);
    }

    #[test]
    fn online_from_the_cpu_file_else_the_kernel_list() {
        let dir = tempfile::tempdir().unwrap();
        let cpus = dir.path().join("devices/system/cpu");
        for c in 0..4 {
            std::fs::create_dir_all(cpus.join(format!("cpu{c}"))).unwrap();
        }
        std::fs::write(cpus.join("online"), "0,2\n").unwrap();
        std::fs::write(cpus.join("cpu1/online"), "0\n").unwrap();
        std::fs::write(cpus.join("cpu2/online"), "1\n").unwrap();
        // cpu3's file cannot be read as a file: the kernel's list says it is offline.
        std::fs::create_dir(cpus.join("cpu3/online")).unwrap();
        // cpu0 has no file: it cannot be taken offline.
        let online: Vec<bool> = (0..4).map(|c| is_online(dir.path(), c)).collect();
        assert_eq!(online, [true, false, true, false]);
        // Without the list, a CPU whose file cannot be read counts as online.
        std::fs::remove_file(cpus.join("online")).unwrap();
        assert!(is_online(dir.path(), 3));
    }

    #[test]
    fn one_per_die_on_intel_one_per_package_on_amd() {
        let cands = [
            (0, 0, Some(0)),
            (28, 0, Some(1)),
            (56, 1, Some(0)),
            (84, 1, Some(1)),
        ];
        let (intel, none) = choose(&cands, false);
        assert!(none.is_empty());
        let names: Vec<_> = intel.iter().map(RaplCpu::package_name).collect();
        assert_eq!(
            names,
            [
                "package-0-die-0",
                "package-0-die-1",
                "package-1-die-0",
                "package-1-die-1"
            ]
        );
        assert_eq!(intel[1].cpu, 28);
        let (amd, repeats) = choose(&cands, true);
        assert_eq!(
            amd,
            vec![
                RaplCpu {
                    cpu: 0,
                    package: 0,
                    die: None
                },
                RaplCpu {
                    cpu: 56,
                    package: 1,
                    die: None
                }
            ]
        );
        assert_eq!(repeats.len(), 2);
        assert_eq!(
            repeats[0],
            (
                RaplCpu {
                    cpu: 28,
                    package: 0,
                    die: Some(1)
                },
                0
            )
        );
        // One die per package (or no die_id): whole packages, lowest CPU first.
        let (one, _) = choose(&[(3, 0, Some(0)), (1, 0, Some(0)), (2, 1, None)], false);
        assert_eq!(
            one[0],
            RaplCpu {
                cpu: 1,
                package: 0,
                die: None
            }
        );
        assert_eq!(one[1].scope(), "package 1");
    }
}

//! Discovery: which zones are measured, and why every other zone is not.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::zones::{self, Dangling, ZoneDir, ZoneKind, RAPL_CONTROLS};
use super::{
    read_number, unavailable_from_error, unavailable_io, PowercapSource, BACKEND, DRIVER_HINT,
    MISSING_HINT,
};
use crate::sensors::{CounterSpec, Domain, Found, Method, Roots, SourceInfo, Unavailable};

/// What to do when the class directory's links point at targets this process cannot see.
pub const CONTAINER_HINT: &str = "Measure on the host, or let this container see \
/sys/devices/virtual/powercap: Docker `--security-opt systempaths=unconfined` (or \
`--privileged`), Podman `--security-opt unmask=/sys/devices/virtual/powercap`, Kubernetes a \
privileged container. energy_uj stays readable by root only. Otherwise the perf power PMU \
(kernel.perf_event_paranoid <= 0 or CAP_PERFMON) reads the same counters without sysfs.";

/// What a RAPL zone measures.
struct Scope {
    domain: Domain,
    index: u32,
    label: String,
}

/// Maps a zone's `name` file to a domain and the package it names: `package-N` and
/// `package-N-die-M` → (Package, Some(N)), `psys` → (Psys, Some(0)), `psys-N` → (Psys, Some(N)),
/// `core`, `uncore`, `dram` → (domain, None: the package is the parent zone's). `None` for names
/// that are not RAPL domains.
pub fn domain_of_name(name: &str) -> Option<(Domain, Option<u32>)> {
    match zones::kind_of_name(name) {
        ZoneKind::Package { package, .. } => Some((Domain::Package, Some(package))),
        ZoneKind::Part(d) => Some((d, None)),
        ZoneKind::Psys(n) => Some((Domain::Psys, Some(n))),
        ZoneKind::Unknown => None,
    }
}

/// The die a source's label names, for sources that measure one die of a package whose RAPL
/// counters are per die (labels `package-N-die-M` and `dram (package N die M)`); `None` for a
/// whole package. Two sources of the same domain and package with different dies are both
/// measured; a whole-package source covers every die of its package.
pub fn die_of(label: &str) -> Option<u32> {
    let rest = match label.strip_prefix("package-") {
        Some(r) => r.split_once("-die-")?.1,
        None => {
            let inner = label.split_once("(package ")?.1;
            let (pkg, rest) = inner.split_once(" die ")?;
            if pkg.is_empty() || !pkg.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            rest
        }
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Finds every zone under `<roots.sys>/class/powercap` (or, where that directory is missing or
/// lists no zone, `<roots.sys>/devices/virtual/powercap`) and measures the RAPL ones.
///
/// Zones come back in a stable order (control type, then zone ids). Every zone found and not
/// measured becomes an [`Unavailable`] entry with the reason and what to do: zones whose files
/// cannot be read (a permission error carries [`PERMISSION_HINT`](super::PERMISSION_HINT)), links into a directory this
/// process cannot see (a container's masked `/sys/devices/virtual/powercap`, with
/// [`CONTAINER_HINT`]), names this version does not know, zones that repeat a counter (AMD's per
/// package counter under per-CCD zones) or that do not measure what their name suggests (AMD's
/// one-core `core` zone), and zones of other control types.
pub fn discover(roots: &Roots) -> Found {
    let mut found = Found::default();
    let class = roots.sys.join("class").join("powercap");
    let devices = roots.sys.join("devices").join("virtual").join("powercap");
    // Every kernel with powercap has the class directory; a tree whose class directory is
    // missing, or lists nothing, while the devices' directory holds the control types with
    // their zones nested inside, is read there.
    let mut base = class;
    let mut listed = zones::list(&base);
    let class_is_empty = match &listed {
        Ok(t) => t.zones.is_empty() && t.dangling.is_empty(),
        Err(_) => fs::symlink_metadata(&base).is_err(),
    };
    if class_is_empty && devices.is_dir() {
        if let Ok(t) = zones::list(&devices) {
            if !t.zones.is_empty() || listed.is_err() {
                base = devices;
                listed = Ok(t);
            }
        }
    }
    let tree = match listed {
        Ok(t) => t,
        Err(e) => {
            let reason = if e.kind() == io::ErrorKind::NotFound {
                "there is no powercap directory: the kernel exposes no RAPL zones".to_string()
            } else {
                format!("cannot list the powercap directory: {e}")
            };
            found.unavailable.push(missing(&base, reason));
            return found;
        }
    };
    if !tree.dangling.is_empty() {
        found
            .unavailable
            .push(dangling_entry(&base, &tree.dangling));
    }
    let (rapl, others): (Vec<&ZoneDir>, Vec<&ZoneDir>) = tree
        .zones
        .iter()
        .partition(|z| RAPL_CONTROLS.contains(&z.control.as_str()));
    let mut by_control: BTreeMap<&str, Vec<&ZoneDir>> = BTreeMap::new();
    for z in others {
        by_control.entry(z.control.as_str()).or_default().push(z);
    }
    for (control, zones) in &by_control {
        found.unavailable.push(other_control(&base, control, zones));
    }
    if rapl.is_empty() {
        if tree.dangling.is_empty() {
            let reason = "the powercap directory holds no intel-rapl zones".to_string();
            found.unavailable.push(missing(&base, reason));
        }
        return found;
    }

    let names: BTreeMap<&str, io::Result<String>> = rapl
        .iter()
        .map(|z| {
            let name = fs::read_to_string(z.dir.join("name")).map(|n| n.trim().to_string());
            (z.name.as_str(), name)
        })
        .collect();
    // AMD's layout, by the vendor or, where that is not known, by die zones that read one
    // counter.
    let amd = zones::is_amd(&roots.proc) || zones::dies_share_counter(&rapl, &names);
    // On AMD the first zone of each package stands for it (later die zones repeat it).
    let mut first_of_package: BTreeMap<(String, u32), String> = BTreeMap::new();
    for z in &rapl {
        let name = match &names[z.name.as_str()] {
            Ok(n) => n,
            Err(e) => {
                let path = z.dir.join("name");
                found
                    .unavailable
                    .push(unavailable_io(&path, e, "the zone has no readable name"));
                continue;
            }
        };
        let scope = match scope_of(z, name, &names, amd, &mut first_of_package) {
            Ok(s) => s,
            Err(u) => {
                found.unavailable.push(u);
                continue;
            }
        };
        let range_path = z.dir.join("max_energy_range_uj");
        let max_range = match read_number(&range_path) {
            Ok(v) => v,
            Err(reason) => {
                found.unavailable.push(Unavailable {
                    backend: BACKEND,
                    what: range_path.display().to_string(),
                    reason: format!("{reason}; without it the counter's wraparound is unknown"),
                    hint: DRIVER_HINT.to_string(),
                });
                continue;
            }
        };
        let energy_path = z.dir.join("energy_uj");
        let info = SourceInfo {
            id: format!("powercap:{}", z.name),
            backend: BACKEND,
            domain: scope.domain,
            index: scope.index,
            label: scope.label,
            method: Method::Counter,
            counter: Some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap: max_range.checked_add(1),
            }),
            interval: Duration::from_millis(1),
            path: Some(energy_path.clone()),
            uuid: None,
        };
        match PowercapSource::open(info, energy_path.clone()) {
            Ok(src) => found.sources.push(Box::new(src)),
            Err(e) => found
                .unavailable
                .push(unavailable_from_error(&energy_path, e)),
        }
    }
    found
}

/// What a RAPL zone measures, from its name and its parent's; an [`Unavailable`] entry for a
/// zone that is not measured.
fn scope_of(
    z: &ZoneDir,
    name: &str,
    names: &BTreeMap<&str, io::Result<String>>,
    amd: bool,
    first_of_package: &mut BTreeMap<(String, u32), String>,
) -> Result<Scope, Unavailable> {
    let not_read = |reason: String, hint: &str| Unavailable {
        backend: BACKEND,
        what: z.dir.display().to_string(),
        reason,
        hint: hint.to_string(),
    };
    let suffix = if z.control == "intel-rapl" {
        String::new()
    } else {
        format!(" ({})", z.control)
    };
    match zones::kind_of_name(name) {
        ZoneKind::Package { package, die } => {
            let die = match die {
                Some(d) if !amd => Some(d),
                Some(_) => {
                    let key = (z.control.clone(), package);
                    if let Some(first) = first_of_package.get(&key) {
                        return Err(not_read(
                            format!(
                                "zone {name} reads the same package counter as {first}: AMD's \
                                 package energy counter is per package, and this kernel made \
                                 one zone per CCD; it is not counted twice"
                            ),
                            "Nothing to do: the package is measured once, through the first \
                             zone.",
                        ));
                    }
                    first_of_package.insert(key, z.name.clone());
                    None
                }
                None => None,
            };
            let label = match die {
                Some(d) => format!("package-{package}-die-{d}{suffix}"),
                None => format!("package-{package}{suffix}"),
            };
            Ok(Scope {
                domain: Domain::Package,
                index: package,
                label,
            })
        }
        ZoneKind::Part(domain) => {
            let parent = z.parent_name().and_then(|p| {
                let kind = names
                    .get(p.as_str())?
                    .as_ref()
                    .ok()
                    .map(|n| zones::kind_of_name(n));
                Some((p, kind?))
            });
            let Some((parent, ZoneKind::Package { package, die })) = parent else {
                return Err(not_read(
                    format!("{name} zone {} does not sit in a package zone", z.name),
                    DRIVER_HINT,
                ));
            };
            if amd && domain == Domain::Core {
                return Err(not_read(
                    format!(
                        "on AMD processors the core zone counts one core (the core energy \
                         register of the package's first CPU), not the cores of package {package}"
                    ),
                    "Nothing to do: the package zone is measured. Recent kernels count each \
                     core through perf's power_core PMU.",
                ));
            }
            if amd
                && die.is_some()
                && first_of_package.get(&(z.control.clone(), package)) != Some(&parent)
            {
                return Err(not_read(
                    format!("{name} zone of {parent}, which repeats package {package}'s counter"),
                    "Nothing to do: the package is measured once.",
                ));
            }
            let d = domain.as_str();
            let label = match die {
                Some(die) if !amd => format!("{d} (package {package} die {die}){suffix}"),
                _ => format!("{d} (package {package}){suffix}"),
            };
            Ok(Scope {
                domain,
                index: package,
                label,
            })
        }
        ZoneKind::Psys(n) => Ok(Scope {
            domain: Domain::Psys,
            index: n,
            label: format!("{name}{suffix}"),
        }),
        ZoneKind::Unknown => Err(not_read(
            format!(
                "zone name {name:?} is not a RAPL domain this version knows (package-N, \
                 package-N-die-M, core, uncore, dram, psys, psys-N)"
            ),
            "Report it, with the output of `grep . /sys/class/powercap/*/name`.",
        )),
    }
}

fn missing(base: &Path, reason: String) -> Unavailable {
    Unavailable {
        backend: BACKEND,
        what: base.display().to_string(),
        reason,
        hint: MISSING_HINT.to_string(),
    }
}

/// One entry for every zone link whose target cannot be seen.
fn dangling_entry(base: &Path, dangling: &[Dangling]) -> Unavailable {
    let names: Vec<&str> = dangling.iter().map(|d| d.name.as_str()).collect();
    let target = normalize(&base.join(&dangling[0].target));
    let hidden = target
        .ancestors()
        .find(|a| a.ends_with("devices/virtual/powercap"))
        .unwrap_or(&target)
        .to_path_buf();
    Unavailable {
        backend: BACKEND,
        what: format!("{}/{{{}}}", base.display(), names.join(", ")),
        reason: format!(
            "the zones' links point into {} (e.g. {}), which this process cannot see: the zones \
             exist, but their directory is hidden, as container runtimes (Docker, Podman, \
             containerd, Kubernetes) do by default since late 2023 against the PLATYPUS power \
             side channel",
            hidden.display(),
            target.display()
        ),
        hint: CONTAINER_HINT.to_string(),
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (the target may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// One entry per control type that is not RAPL, naming its zones.
fn other_control(base: &Path, control: &str, zones: &[&ZoneDir]) -> Unavailable {
    let named: Vec<String> = zones
        .iter()
        .map(|z| match fs::read_to_string(z.dir.join("name")) {
            Ok(n) => format!("{} ({})", z.name, n.trim()),
            Err(_) => z.name.clone(),
        })
        .collect();
    let with_energy = zones.iter().any(|z| z.dir.join("energy_uj").exists());
    let detail = if with_energy {
        "what their energy counters cover is not known here, so they are not added to any total"
    } else {
        "they are power-limit controls without an energy counter"
    };
    Unavailable {
        backend: BACKEND,
        what: format!("{}/{control}:*", base.display()),
        reason: format!(
            "{} zone(s) of control type {control} are not RAPL energy counters ({}): {detail}",
            zones.len(),
            named.join(", ")
        ),
        hint: "Nothing to do: CPU energy is read from the intel-rapl zones where the kernel has \
               them."
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_domain_names() {
        assert_eq!(
            domain_of_name("package-3\n"),
            Some((Domain::Package, Some(3)))
        );
        assert_eq!(
            domain_of_name("package-1-die-1"),
            Some((Domain::Package, Some(1)))
        );
        assert_eq!(domain_of_name("dram"), Some((Domain::Dram, None)));
        assert_eq!(domain_of_name("psys"), Some((Domain::Psys, Some(0))));
        assert_eq!(domain_of_name("psys-1"), Some((Domain::Psys, Some(1))));
        assert_eq!(domain_of_name("package-x"), None);
        assert_eq!(domain_of_name("mystery"), None);
    }

    #[test]
    fn dies_from_labels() {
        assert_eq!(die_of("package-0-die-1"), Some(1));
        assert_eq!(die_of("package-12-die-3 (intel-rapl-mmio)"), Some(3));
        assert_eq!(die_of("dram (package 0 die 2)"), Some(2));
        assert_eq!(die_of("package-0"), None);
        assert_eq!(die_of("dram (package 0)"), None);
        assert_eq!(die_of("psys-1"), None);
        assert_eq!(die_of("AMD Instinct MI250X (package die 1)"), None);
    }

    #[test]
    fn normalizes_link_targets() {
        assert_eq!(
            normalize(Path::new(
                "/sys/class/powercap/../../devices/virtual/powercap/intel-rapl/intel-rapl:0"
            )),
            PathBuf::from("/sys/devices/virtual/powercap/intel-rapl/intel-rapl:0")
        );
    }
}

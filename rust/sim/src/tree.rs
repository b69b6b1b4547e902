//! The simulated file tree: sysfs (powercap zones, topology, the perf PMU's description), MSR
//! device files and `/proc`, laid out as real machines lay them out.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use carbonctx_sampler::{msr, Domain, Error};

use crate::spec::SimSpec;
use crate::writer::ZoneState;

/// The perf PMU type written into the simulated power PMU: a number no kernel allocates, so
/// `perf_event_open` on it fails (ENOENT) instead of counting something else.
pub const SIM_PERF_TYPE: u32 = 0x7fff_fff0;

/// Writes the tree described by `spec` (first removing the simulated parts an earlier machine
/// left under the same root). Returns each zone's state and the MSR device files, one per CPU.
/// The spec must have been validated.
pub(crate) fn build(spec: &SimSpec) -> Result<(Vec<ZoneState>, Vec<File>), Error> {
    let root = &spec.root;
    refuse_live_system(root)?;
    let sys = root.join("sys");
    let cpu_count = (spec.packages * spec.cpus_per_package) as usize;

    // Clear what an earlier machine under the same root left.
    let cpu_dir = sys.join("devices/system/cpu");
    let virt = sys.join("devices/virtual/powercap/intel-rapl");
    let class = sys.join("class/powercap");
    let pmu = sys.join("bus/event_source/devices/power");
    for dir in [&cpu_dir, &virt, &class, &pmu, &root.join("dev/cpu")] {
        remove_any(dir)?;
    }

    // Topology, cpuinfo, stat.
    mkdir(&cpu_dir)?;
    write_file(&cpu_dir.join("online"), &format!("0-{}\n", cpu_count - 1))?;
    let mut cpuinfo = String::new();
    let mut stat = String::from("cpu  1000 0 500 10000 100 0 0 0 0 0\n");
    for cpu in 0..cpu_count {
        let pkg = cpu as u32 / spec.cpus_per_package;
        let core = cpu as u32 % spec.cpus_per_package;
        let topo = cpu_dir.join(format!("cpu{cpu}/topology"));
        write_file(&topo.join("physical_package_id"), &format!("{pkg}\n"))?;
        write_file(&topo.join("core_id"), &format!("{core}\n"))?;
        cpuinfo.push_str(&format!(
            "processor\t: {cpu}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {}\n\
             model name\t: {}\nstepping\t: 6\nphysical id\t: {pkg}\nsiblings\t: {}\n\
             core id\t\t: {core}\ncpu cores\t: {}\n\n",
            spec.cpu_model, spec.model_name, spec.cpus_per_package, spec.cpus_per_package
        ));
        stat.push_str(&format!("cpu{cpu} 500 0 250 5000 50 0 0 0 0 0\n"));
    }
    write_file(&root.join("proc/cpuinfo"), &cpuinfo)?;
    write_file(&root.join("proc/stat"), &stat)?;

    // Zones, numbered as real machines number them.
    if spec.powercap {
        mkdir(&virt)?;
        mkdir(&class)?;
        write_file(&virt.join("enabled"), "1\n")?;
        symlink(&virt, &class.join("intel-rapl"))?;
    }
    // The unit register as the MSR devices hold it; each counter counts in the unit the model
    // gives its domain (fixed DRAM and platform units, the Atoms' 2^ESU µJ).
    let unit_value: u64 = (10 << 16) | (u64::from(spec.energy_status_unit) << 8) | 3;
    let mut zones = Vec::new();
    for z in &spec.zones {
        let (dir, link) = if spec.powercap {
            let (dir, name) = match z.domain {
                Domain::Package => (
                    virt.join(format!("intel-rapl:{:x}", z.package)),
                    format!("package-{}", z.package),
                ),
                Domain::Psys => (
                    virt.join(format!("intel-rapl:{:x}", spec.packages)),
                    "psys".to_string(),
                ),
                d => {
                    let order = [Domain::Core, Domain::Uncore, Domain::Dram];
                    let sub = order
                        .iter()
                        .filter(|o| {
                            **o < d
                                && spec
                                    .zones
                                    .iter()
                                    .any(|x| x.domain == **o && x.package == z.package)
                        })
                        .count();
                    // Core < Uncore < Dram in `Domain`'s order, as in `order`.
                    let parent = virt.join(format!("intel-rapl:{:x}", z.package));
                    (
                        parent.join(format!("intel-rapl:{:x}:{:x}", z.package, sub)),
                        d.as_str().to_string(),
                    )
                }
            };
            mkdir(&dir)?;
            write_file(&dir.join("name"), &format!("{name}\n"))?;
            write_file(
                &dir.join("max_energy_range_uj"),
                &format!("{}\n", z.max_energy_range_uj),
            )?;
            write_file(&dir.join("enabled"), "1\n")?;
            let link = class.join(dir.file_name().unwrap_or_default());
            symlink(&dir, &link)?;
            (Some(dir), Some(link))
        } else {
            (None, None)
        };
        let energy = match &dir {
            Some(dir) => {
                let path = dir.join("energy_uj");
                let f = create_rw(&path)?;
                f.set_permissions(fs::Permissions::from_mode(0o644))
                    .map_err(|e| Error::io(&path, e, ""))?;
                Some(f)
            }
            None => None,
        };
        let msr_cpus = if spec.msr {
            let first = (z.package * spec.cpus_per_package) as usize;
            (first..first + spec.cpus_per_package as usize).collect()
        } else {
            Vec::new()
        };
        zones.push(ZoneState {
            spec: z.clone(),
            dir,
            link,
            energy,
            width: z.max_energy_range_uj.to_string().len(),
            wrap_uj: z.max_energy_range_uj.saturating_add(1),
            msr_address: msr_address(z.domain),
            msr_unit_j: msr::intel_joules_per_unit(6, spec.cpu_model, z.domain, unit_value),
            msr_cpus,
            removed: false,
            failing: false,
            reset_j: 0.0,
            written: None,
        });
    }

    // MSR devices.
    let mut msr_files = Vec::new();
    if spec.msr {
        for cpu in 0..cpu_count {
            let path = root.join(format!("dev/cpu/{cpu}/msr"));
            if let Some(parent) = path.parent() {
                mkdir(parent)?;
            }
            let f = create_rw(&path)?;
            f.write_at(&unit_value.to_le_bytes(), msr::MSR_RAPL_POWER_UNIT)
                .map_err(|e| Error::io(&path, e, ""))?;
            msr_files.push(f);
        }
    }

    // The perf power PMU's description.
    if spec.perf {
        write_file(&pmu.join("type"), &format!("{SIM_PERF_TYPE}\n"))?;
        let mask: Vec<String> = (0..spec.packages)
            .map(|p| (p * spec.cpus_per_package).to_string())
            .collect();
        write_file(&pmu.join("cpumask"), &format!("{}\n", mask.join(",")))?;
        write_file(&pmu.join("format/event"), "config:0-7\n")?;
        for z in &spec.zones {
            let (name, event) = perf_event_name(z.domain);
            let ev = pmu.join("events");
            write_file(&ev.join(name), &format!("event=0x{event:02x}\n"))?;
            write_file(
                &ev.join(format!("{name}.scale")),
                "2.3283064365386962890625e-10\n",
            )?;
            write_file(&ev.join(format!("{name}.unit")), "Joules\n")?;
        }
    }

    Ok((zones, msr_files))
}

pub(crate) fn mkdir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e, ""))
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::write(path, text).map_err(|e| Error::io(path, e, ""))
}

/// Removes what is at `path` (file, symlink or directory), ignoring "not there".
pub(crate) fn remove_any(path: &Path) -> Result<(), Error> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e, "")),
    }
}

fn msr_address(domain: Domain) -> u64 {
    match domain {
        Domain::Package => msr::MSR_PKG_ENERGY_STATUS,
        Domain::Core => msr::MSR_PP0_ENERGY_STATUS,
        Domain::Uncore => msr::MSR_PP1_ENERGY_STATUS,
        Domain::Dram => msr::MSR_DRAM_ENERGY_STATUS,
        // Not RAPL domains; `SimSpec::validate` refuses them before a tree is made.
        Domain::Psys | Domain::Gpu | Domain::Module | Domain::Rail | Domain::Node => {
            msr::MSR_PLATFORM_ENERGY_STATUS
        }
    }
}

fn perf_event_name(domain: Domain) -> (&'static str, u32) {
    match domain {
        Domain::Core => ("energy-cores", 1),
        Domain::Package => ("energy-pkg", 2),
        Domain::Dram => ("energy-ram", 3),
        Domain::Uncore => ("energy-gpu", 4),
        // Not RAPL domains; `SimSpec::validate` refuses them before a tree is made.
        Domain::Gpu | Domain::Module | Domain::Rail | Domain::Node => ("energy-gpu", 4),
        Domain::Psys => ("energy-psys", 5),
    }
}

/// Refuses a root that holds the running system's `/proc`, `/sys` or `/dev` (such as `/`):
/// the simulation writes and deletes files there, and writing to a real MSR device changes the
/// hardware.
fn refuse_live_system(root: &Path) -> Result<(), Error> {
    let canonical = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let live = canonical == Path::new("/")
        || root.join("proc/self/stat").exists()
        || root.join("sys/kernel").exists()
        || root.join("dev/null").exists();
    if live {
        return Err(Error::Invalid(format!(
            "{} holds a live system tree; give the simulated machine an empty directory",
            root.display()
        )));
    }
    Ok(())
}

fn symlink(target: &Path, link: &Path) -> Result<(), Error> {
    remove_any(link)?;
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e, ""))
}

/// The writer thread: update at absolute deadlines until told to stop.
/// Makes the calling thread update on time as hardware would: real-time priority where the
/// process may have it (root, CAP_SYS_NICE), and a 1 µs timer slack. Best effort.
/// Creates (or empties) a file the simulation writes and the backends read.
pub(crate) fn create_rw(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e, ""))
}

//! Temporary machines for the MSR backend's tests (sparse files stand in for `/dev/cpu/N/msr`:
//! 8 little-endian bytes at each register's address), and what a discovery over one found.

#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use carbonctx_sampler::{Domain, Found};

/// The energy status units 2^-14 J and 2^-16 J.
pub const ESU14: f64 = 1.0 / 16384.0;
pub const ESU16: f64 = 1.0 / 65536.0;

/// Each source's id, domain, index, label and joules per counter unit.
pub fn summary(found: &Found) -> Vec<(String, Domain, u32, String, f64)> {
    found
        .sources
        .iter()
        .map(|s| {
            let i = s.info();
            (
                i.id.clone(),
                i.domain,
                i.index,
                i.label.clone(),
                i.counter.unwrap().joules_per_unit,
            )
        })
        .collect()
}

/// A temporary machine: cpuinfo, topology (`cpus[i]` is in package `i`), and msr files with
/// the given registers on each of those CPUs.
pub fn machine(
    dir: &Path,
    vendor: &str,
    family: u32,
    model: u32,
    cpus: &[u32],
    regs: &[(u64, u64)],
) {
    let layout: Vec<(u32, u32, Option<u32>)> = (0..)
        .zip(cpus)
        .map(|(pkg, &cpu)| (cpu, pkg, None))
        .collect();
    write_machine(dir, (vendor, family, model), &layout, |_| regs.to_vec());
}

/// Writes a machine of the CPU model `(vendor, family, model)`: for each `(cpu, package, die)`
/// of `layout` its cpuinfo entry, topology files (`die_id` where a die is given) and an msr
/// file holding the registers `regs(cpu)` gives.
pub fn write_machine(
    dir: &Path,
    (vendor, family, model): (&str, u32, u32),
    layout: &[(u32, u32, Option<u32>)],
    regs: impl Fn(u32) -> Vec<(u64, u64)>,
) {
    fs::create_dir_all(dir.join("proc")).unwrap();
    let mut cpuinfo = String::new();
    for &(cpu, pkg, die) in layout {
        cpuinfo.push_str(&format!(
            "processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n\
             physical id\t: {pkg}\n\n"
        ));
        let topo = dir.join(format!("sys/devices/system/cpu/cpu{cpu}/topology"));
        fs::create_dir_all(&topo).unwrap();
        fs::write(topo.join("physical_package_id"), format!("{pkg}\n")).unwrap();
        if let Some(die) = die {
            fs::write(topo.join("die_id"), format!("{die}\n")).unwrap();
        }
        let dev = dir.join(format!("dev/cpu/{cpu}"));
        fs::create_dir_all(&dev).unwrap();
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dev.join("msr"))
            .unwrap();
        for (addr, v) in regs(cpu) {
            f.write_at(&v.to_le_bytes(), addr).unwrap();
        }
    }
    fs::write(dir.join("proc/cpuinfo"), cpuinfo).unwrap();
}

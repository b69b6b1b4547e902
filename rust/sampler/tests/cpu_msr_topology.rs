//! The MSR backend's choice of the CPU it reads for each package or die (temporary machines:
//! sparse files stand in for `/dev/cpu/N/msr`): CPU 0 for package 0 without a topology, each
//! die of an Intel multi-die package on its own, AMD's dies sharing their package's counter.

#[allow(dead_code)]
mod common_fs;
mod common_msr;

use std::fs;
use std::path::Path;

use carbonctx_sampler::msr;
use carbonctx_sampler::Domain;
use common_fs::{counter, roots_at};
use common_msr::{machine, summary, write_machine, ESU14, ESU16};

#[test]
fn without_topology_cpu_0_reads_package_0() {
    let dir = tempfile::tempdir().unwrap();
    machine(
        dir.path(),
        "GenuineIntel",
        6,
        0x55,
        &[0],
        &[(0x606, 0xA0E03), (0x611, 7), (0x619, 9)],
    );
    fs::remove_dir_all(dir.path().join("sys")).unwrap();
    let found = msr::discover(&roots_at(dir.path()));
    let ids: Vec<_> = summary(&found).into_iter().map(|s| (s.0, s.4)).collect();
    assert_eq!(
        ids,
        vec![
            ("msr:0:package".to_string(), ESU14),
            ("msr:0:dram".to_string(), ESU16)
        ]
    );
}

/// A temporary multi-die machine: `layout[i]` = (cpu, package, die) with `die_id` files, and an
/// msr file per CPU whose package (0x611) and DRAM (0x619) registers read `base + cpu`.
fn multi_die_machine(
    dir: &Path,
    vendor: &str,
    family: u32,
    model: u32,
    layout: &[(u32, u32, u32)],
) {
    let regs: &[(u64, u64)] = if vendor == "GenuineIntel" {
        &[(0x606, 0xA0E03), (0x611, 0x1000), (0x619, 0x2000)]
    } else {
        &[
            (msr::MSR_AMD_RAPL_POWER_UNIT, 0x000A_1003),
            (msr::MSR_AMD_PKG_ENERGY_STATUS, 0x1000),
        ]
    };
    let layout: Vec<_> = layout.iter().map(|&(c, p, d)| (c, p, Some(d))).collect();
    write_machine(dir, (vendor, family, model), &layout, |cpu| {
        regs.iter().map(|&(a, v)| (a, v + u64::from(cpu))).collect()
    });
}

/// Two sockets of two dies (CPUs 0-3: package 0 die 0, 4-7: die 1; 8-15: package 1).
fn two_by_two() -> Vec<(u32, u32, u32)> {
    (0..16).map(|c| (c, c / 8, (c / 4) % 2)).collect()
}

#[test]
fn intel_multi_die_packages_are_read_per_die() {
    // Cascade Lake-AP (family 6, model 0x55): every die has its own RAPL registers.
    let dir = tempfile::tempdir().unwrap();
    multi_die_machine(dir.path(), "GenuineIntel", 6, 0x55, &two_by_two());
    let mut found = msr::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let got: Vec<_> = summary(&found)
        .into_iter()
        .map(|s| (s.0, s.2, s.3))
        .collect();
    let want: Vec<(String, u32, String)> = vec![
        (
            "msr:0-die-0:package".into(),
            0,
            "package-0-die-0 (msr)".into(),
        ),
        (
            "msr:0-die-0:dram".into(),
            0,
            "dram (package 0 die 0, msr)".into(),
        ),
        (
            "msr:0-die-1:package".into(),
            0,
            "package-0-die-1 (msr)".into(),
        ),
        (
            "msr:0-die-1:dram".into(),
            0,
            "dram (package 0 die 1, msr)".into(),
        ),
        (
            "msr:1-die-0:package".into(),
            1,
            "package-1-die-0 (msr)".into(),
        ),
        (
            "msr:1-die-0:dram".into(),
            1,
            "dram (package 1 die 0, msr)".into(),
        ),
        (
            "msr:1-die-1:package".into(),
            1,
            "package-1-die-1 (msr)".into(),
        ),
        (
            "msr:1-die-1:dram".into(),
            1,
            "dram (package 1 die 1, msr)".into(),
        ),
    ];
    assert_eq!(got, want);
    // Each die is read through its own first CPU.
    assert_eq!(counter(&mut found, "msr:0-die-1:package"), 0x1004);
    assert_eq!(counter(&mut found, "msr:1-die-1:dram"), 0x200c);

    // Discovery keeps all four dies: nothing is taken for a duplicate of another die.
    let opts = carbonctx_sampler::discover::Options {
        roots: roots_at(dir.path()),
        cpu_backends: vec!["msr".into()],
        nvml: false,
        amd: false,
        hwmon: false,
        ..Default::default()
    };
    let d = carbonctx_sampler::discover::discover(&opts);
    let packages = d
        .chosen
        .iter()
        .filter(|s| s.info().domain == Domain::Package)
        .count();
    assert_eq!(packages, 4);
    assert!(d.alternatives.is_empty(), "{:?}", d.alternatives);
}

#[test]
fn amd_dies_share_the_package_counter() {
    // Kernels that number AMD's CCDs as dies: still one package counter per package.
    let dir = tempfile::tempdir().unwrap();
    multi_die_machine(dir.path(), "AuthenticAMD", 0x19, 0x11, &two_by_two());
    let found = msr::discover(&roots_at(dir.path()));
    let got: Vec<_> = summary(&found).into_iter().map(|s| (s.0, s.3)).collect();
    assert_eq!(
        got,
        vec![
            ("msr:0:package".to_string(), "package-0 (msr)".to_string()),
            ("msr:1:package".to_string(), "package-1 (msr)".to_string()),
        ]
    );
    // A single-die Intel package is a whole package, whatever its die_id.
    let dir = tempfile::tempdir().unwrap();
    let layout: Vec<_> = (0..4).map(|c| (c, c / 2, 0)).collect();
    multi_die_machine(dir.path(), "GenuineIntel", 6, 0x6A, &layout);
    let found = msr::discover(&roots_at(dir.path()));
    assert_eq!(summary(&found)[2].3, "package-1 (msr)");
}

/// A CPU taken offline keeps its `cpuN` directory (its `online` reads 0) but has no MSR device:
/// its package is read through the package's first online CPU.
#[test]
fn an_offline_cpu_is_not_read_its_package_is() {
    let dir = tempfile::tempdir().unwrap();
    let layout: Vec<(u32, u32, u32)> = (0..4).map(|c| (c, c / 2, 0)).collect();
    multi_die_machine(dir.path(), "GenuineIntel", 6, 0x6A, &layout);
    let cpu2 = dir.path().join("sys/devices/system/cpu/cpu2");
    fs::write(cpu2.join("online"), "0\n").unwrap();
    fs::write(dir.path().join("sys/devices/system/cpu/cpu3/online"), "1\n").unwrap();
    fs::remove_dir_all(dir.path().join("dev/cpu/2")).unwrap();
    let mut found = msr::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let ids: Vec<String> = summary(&found).into_iter().map(|s| s.0).collect();
    assert_eq!(
        ids,
        ["msr:0:package", "msr:0:dram", "msr:1:package", "msr:1:dram"]
    );
    let path = found.sources[2].info().path.clone().unwrap();
    assert!(path.ends_with("dev/cpu/3/msr"), "{path:?}");
    assert_eq!(counter(&mut found, "msr:1:package"), 0x1003);
}

/// A CPU whose `online` file cannot be read is looked up in the kernel's list of online CPUs.
#[test]
fn an_unreadable_online_file_defers_to_the_kernels_list() {
    let dir = tempfile::tempdir().unwrap();
    let layout: Vec<(u32, u32, u32)> = (0..4).map(|c| (c, c / 2, 0)).collect();
    multi_die_machine(dir.path(), "GenuineIntel", 6, 0x6A, &layout);
    let cpus = dir.path().join("sys/devices/system/cpu");
    fs::write(cpus.join("online"), "0-1,3\n").unwrap();
    // Not readable as a file.
    fs::create_dir(cpus.join("cpu2/online")).unwrap();
    fs::remove_dir_all(dir.path().join("dev/cpu/2")).unwrap();
    let found = msr::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let path = found.sources[2].info().path.clone().unwrap();
    assert!(path.ends_with("dev/cpu/3/msr"), "{path:?}");
}

//! The MSR backend against committed fixture trees and temporary ones (sparse files stand in
//! for `/dev/cpu/N/msr`: 8 little-endian bytes at each register's address).

mod common_fs;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use carbonctx_sampler::msr;
use carbonctx_sampler::{Domain, Found, Method, Reading};
use common_fs::{fixture, roots_at};

fn summary(found: &Found) -> Vec<(String, Domain, u32, String, f64)> {
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

fn value(found: &mut Found, id: &str) -> u64 {
    let src = found
        .sources
        .iter_mut()
        .find(|s| s.info().id == id)
        .unwrap_or_else(|| panic!("no source {id}"));
    match src.read().expect("read") {
        Reading::Counter(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

const ESU14: f64 = 1.0 / 16384.0;
const ESU16: f64 = 1.0 / 65536.0;

#[test]
fn intel_server_with_fixed_dram_unit() {
    let mut found = msr::discover(&roots_at(&fixture("intel-server-2s")));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    // PP0/PP1 read 0 (not implemented on servers) and psys is absent: not offered.
    assert_eq!(
        summary(&found),
        vec![
            (
                "msr:0:package".into(),
                Domain::Package,
                0,
                "package-0 (msr)".into(),
                ESU14
            ),
            (
                "msr:0:dram".into(),
                Domain::Dram,
                0,
                "dram (package 0, msr)".into(),
                ESU16
            ),
            (
                "msr:1:package".into(),
                Domain::Package,
                1,
                "package-1 (msr)".into(),
                ESU14
            ),
            (
                "msr:1:dram".into(),
                Domain::Dram,
                1,
                "dram (package 1, msr)".into(),
                ESU16
            ),
        ]
    );
    let info = found.sources[2].info().clone();
    assert_eq!(info.backend, "msr");
    assert_eq!(info.method, Method::Counter);
    assert_eq!(info.counter.unwrap().wrap, Some(1 << 32));
    assert!(info.path.unwrap().ends_with("dev/cpu/2/msr"));
    assert_eq!(value(&mut found, "msr:0:package"), 0x1234_5678);
    assert_eq!(value(&mut found, "msr:1:dram"), 0x0abc_def1);
}

#[test]
fn intel_client_domains() {
    let mut found = msr::discover(&roots_at(&fixture("intel-client")));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    // Coffee Lake: DRAM reads 0 there; no fixed DRAM unit anyway.
    assert_eq!(
        summary(&found),
        vec![
            (
                "msr:0:package".into(),
                Domain::Package,
                0,
                "package-0 (msr)".into(),
                ESU14
            ),
            (
                "msr:0:core".into(),
                Domain::Core,
                0,
                "core (package 0, msr)".into(),
                ESU14
            ),
            (
                "msr:0:uncore".into(),
                Domain::Uncore,
                0,
                "uncore (package 0, msr)".into(),
                ESU14
            ),
            (
                "msr:0:psys".into(),
                Domain::Psys,
                0,
                "psys (package 0, msr)".into(),
                ESU14
            ),
        ]
    );
    assert_eq!(value(&mut found, "msr:0:package"), 0xdead_beef);
    assert_eq!(value(&mut found, "msr:0:psys"), 0x7777_0000);
}

/// A temporary machine: cpuinfo, topology (`cpus[i]` is in package `i`), and msr files with
/// the given registers on each of those CPUs.
fn machine(dir: &Path, vendor: &str, family: u32, model: u32, cpus: &[u32], regs: &[(u64, u64)]) {
    fs::create_dir_all(dir.join("proc")).unwrap();
    let mut cpuinfo = String::new();
    for (pkg, cpu) in cpus.iter().enumerate() {
        cpuinfo.push_str(&format!(
            "processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n\
             physical id\t: {pkg}\n\n"
        ));
        let topo = dir.join(format!("sys/devices/system/cpu/cpu{cpu}/topology"));
        fs::create_dir_all(&topo).unwrap();
        fs::write(topo.join("physical_package_id"), format!("{pkg}\n")).unwrap();
        let dev = dir.join(format!("dev/cpu/{cpu}"));
        fs::create_dir_all(&dev).unwrap();
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dev.join("msr"))
            .unwrap();
        for &(addr, v) in regs {
            f.write_at(&v.to_le_bytes(), addr).unwrap();
        }
    }
    fs::write(dir.join("proc/cpuinfo"), cpuinfo).unwrap();
}

#[test]
fn amd_and_hygon_package_counters() {
    for (vendor, family) in [("AuthenticAMD", 0x19), ("HygonGenuine", 0x18)] {
        let dir = tempfile::tempdir().unwrap();
        machine(
            dir.path(),
            vendor,
            family,
            1,
            &[0, 64],
            // AMD's registers sit at consecutive numbers, so in a file they overlap: the
            // package counter (written last) covers bytes 2.. of the unit register, whose
            // energy unit (bits 12:8) stays intact. The per-core register is left out.
            &[
                (msr::MSR_AMD_RAPL_POWER_UNIT, 0x000A_1003),
                (msr::MSR_AMD_PKG_ENERGY_STATUS, 0x0000_0001_8000_0001),
            ],
        );
        let mut found = msr::discover(&roots_at(dir.path()));
        assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
        assert_eq!(
            summary(&found),
            vec![
                (
                    "msr:0:package".into(),
                    Domain::Package,
                    0,
                    "package-0 (msr)".into(),
                    ESU16
                ),
                (
                    "msr:1:package".into(),
                    Domain::Package,
                    1,
                    "package-1 (msr)".into(),
                    ESU16
                ),
            ]
        );
        assert!(found.sources[1]
            .info()
            .path
            .as_ref()
            .unwrap()
            .ends_with("dev/cpu/64/msr"));
        // Only the low 32 bits count.
        assert_eq!(value(&mut found, "msr:1:package"), 0x8000_0001);
    }
}

#[test]
fn older_amd_and_other_vendors_are_unavailable() {
    for (vendor, family) in [("AuthenticAMD", 0x15), ("CentaurHauls", 6)] {
        let dir = tempfile::tempdir().unwrap();
        machine(dir.path(), vendor, family, 1, &[0], &[(0x606, 0xA0E03)]);
        let found = msr::discover(&roots_at(dir.path()));
        assert!(found.sources.is_empty());
        assert_eq!(found.unavailable.len(), 1);
        assert!(found.unavailable[0].reason.contains("no RAPL registers"));
        assert!(found.unavailable[0].reason.contains(vendor));
    }
}

#[test]
fn counters_follow_the_register_and_wrap_at_32_bits() {
    let dir = tempfile::tempdir().unwrap();
    machine(
        dir.path(),
        "GenuineIntel",
        6,
        0x8F,
        &[0],
        &[(0x606, 0xA1003), (0x611, 0xFFFF_FFF0)],
    );
    let mut found = msr::discover(&roots_at(dir.path()));
    assert_eq!(summary(&found).len(), 1);
    // ESU 16 from the unit register on a part without the fixed DRAM unit.
    assert_eq!(
        found.sources[0].info().counter.unwrap().joules_per_unit,
        ESU16
    );
    assert_eq!(value(&mut found, "msr:0:package"), 0xFFFF_FFF0);
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join("dev/cpu/0/msr"))
        .unwrap();
    // The register went past 2^32: bits above 31 are not part of the counter.
    f.write_at(&0x1_0000_0010u64.to_le_bytes(), 0x611).unwrap();
    assert_eq!(value(&mut found, "msr:0:package"), 0x10);
    // The device goes away (CPU offlined): an error, not a panic.
    f.set_len(0).unwrap();
    let err = found.sources[0].read().unwrap_err().to_string();
    assert!(err.contains("short read of MSR 0x611"), "{err}");
    assert!(err.contains("dev/cpu/0/msr"), "{err}");
}

#[test]
fn missing_device_and_unreadable_unit() {
    let dir = tempfile::tempdir().unwrap();
    machine(
        dir.path(),
        "GenuineIntel",
        6,
        0x55,
        &[0, 8],
        &[(0x606, 0xA0E03)],
    );
    fs::remove_dir_all(dir.path().join("dev")).unwrap();
    let found = msr::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    // One entry: the cause is the same for every package.
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert_eq!(u.backend, "msr");
    assert!(u.what.ends_with("dev/cpu/0/msr"), "{}", u.what);
    assert!(u.reason.contains("does not exist"));
    assert!(u.hint.contains("modprobe msr"));

    // The unit register cannot be read (here: the device is a directory).
    fs::create_dir_all(dir.path().join("dev/cpu/0/msr")).unwrap();
    fs::create_dir_all(dir.path().join("dev/cpu/8/msr")).unwrap();
    let found = msr::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 2);
    assert!(
        found.unavailable[0].reason.contains("unit register 0x606"),
        "{:?}",
        found.unavailable
    );

    // No cpuinfo at all.
    fs::remove_file(dir.path().join("proc/cpuinfo")).unwrap();
    let found = msr::discover(&roots_at(dir.path()));
    assert!(found.unavailable[0].what.ends_with("proc/cpuinfo"));
}

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

#[test]
fn permission_denied_when_not_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return; // Root opens anything; nothing to test here.
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    machine(
        dir.path(),
        "GenuineIntel",
        6,
        0x55,
        &[0],
        &[(0x606, 0xA0E03), (0x611, 7)],
    );
    let msr_path = dir.path().join("dev/cpu/0/msr");
    fs::set_permissions(&msr_path, fs::Permissions::from_mode(0o000)).unwrap();
    let found = msr::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert!(found.unavailable[0].hint.contains("CAP_SYS_RAWIO"));
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
    let mut cpuinfo = String::new();
    for &(cpu, pkg, die) in layout {
        cpuinfo.push_str(&format!(
            "processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n\
             physical id\t: {pkg}\n\n"
        ));
        let topo = dir.join(format!("sys/devices/system/cpu/cpu{cpu}/topology"));
        fs::create_dir_all(&topo).unwrap();
        fs::write(topo.join("physical_package_id"), format!("{pkg}\n")).unwrap();
        fs::write(topo.join("die_id"), format!("{die}\n")).unwrap();
        let dev = dir.join(format!("dev/cpu/{cpu}"));
        fs::create_dir_all(&dev).unwrap();
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dev.join("msr"))
            .unwrap();
        let regs: &[(u64, u64)] = if vendor == "GenuineIntel" {
            &[(0x606, 0xA0E03), (0x611, 0x1000), (0x619, 0x2000)]
        } else {
            &[
                (msr::MSR_AMD_RAPL_POWER_UNIT, 0x000A_1003),
                (msr::MSR_AMD_PKG_ENERGY_STATUS, 0x1000),
            ]
        };
        for &(addr, v) in regs {
            f.write_at(&(v + u64::from(cpu)).to_le_bytes(), addr)
                .unwrap();
        }
    }
    fs::create_dir_all(dir.join("proc")).unwrap();
    fs::write(dir.join("proc/cpuinfo"), cpuinfo).unwrap();
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
    assert_eq!(value(&mut found, "msr:0-die-1:package"), 0x1004);
    assert_eq!(value(&mut found, "msr:1-die-1:dram"), 0x200c);

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

/// Sapphire Rapids (family 6, model 0x8F) and Emerald Rapids (0xCF) count the platform domain
/// in whole joules whatever `MSR_RAPL_POWER_UNIT` says (`intel_rapl_common.c`: their defaults
/// give the platform domain an energy unit of one joule; `arch/x86/events/rapl.c`: their unit
/// quirk sets the psys unit to 2^0), and, unlike Haswell-X to Ice Lake-X, count DRAM in the
/// unit the register gives (the fixed DRAM unit was dropped for them).
#[test]
fn sapphire_rapids_counts_the_platform_in_joules() {
    for model in [0x8F, 0xCF] {
        let dir = tempfile::tempdir().unwrap();
        machine(
            dir.path(),
            "GenuineIntel",
            6,
            model,
            &[0, 56],
            &[
                (0x606, 0xA0E03),
                (0x611, 0x1000),
                (0x619, 0x2000),
                (0x639, 0),
                (0x641, 0),
                (0x64D, 0x30),
            ],
        );
        let found = msr::discover(&roots_at(dir.path()));
        assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
        let units: Vec<(String, f64)> = summary(&found)
            .into_iter()
            .map(|(id, _, _, _, unit)| (id, unit))
            .collect();
        assert_eq!(
            units,
            vec![
                ("msr:0:package".to_string(), ESU14),
                ("msr:0:dram".to_string(), ESU14),
                ("msr:0:psys".to_string(), 1.0),
                ("msr:1:package".to_string(), ESU14),
                ("msr:1:dram".to_string(), ESU14),
                ("msr:1:psys".to_string(), 1.0),
            ],
            "model {model:#x}"
        );
    }
    // A client part's platform counter keeps the register's unit.
    let dir = tempfile::tempdir().unwrap();
    machine(
        dir.path(),
        "GenuineIntel",
        6,
        0x97,
        &[0],
        &[(0x606, 0xA0E03), (0x611, 0x1000), (0x64D, 0x30)],
    );
    let found = msr::discover(&roots_at(dir.path()));
    let psys: Vec<f64> = summary(&found)
        .into_iter()
        .filter(|s| s.1 == Domain::Psys)
        .map(|s| s.4)
        .collect();
    assert_eq!(psys, vec![ESU14]);
}

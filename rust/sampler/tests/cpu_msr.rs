//! The MSR backend against committed fixture trees and temporary ones (sparse files stand in
//! for `/dev/cpu/N/msr`: 8 little-endian bytes at each register's address): each vendor's and
//! model's domains and units, counters read and wrapping, and a missing device, an unreadable
//! unit or a denied permission as reasons. Which CPU is read for a package or die is in
//! `cpu_msr_topology.rs`.

mod common_fs;
mod common_msr;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use carbonctx_sampler::msr;
use carbonctx_sampler::{Domain, Method};
use common_fs::{counter, fixture, roots_at};
use common_msr::{machine, summary, ESU14, ESU16};

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
    assert_eq!(counter(&mut found, "msr:0:package"), 0x1234_5678);
    assert_eq!(counter(&mut found, "msr:1:dram"), 0x0abc_def1);
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
    assert_eq!(counter(&mut found, "msr:0:package"), 0xdead_beef);
    assert_eq!(counter(&mut found, "msr:0:psys"), 0x7777_0000);
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
        assert_eq!(counter(&mut found, "msr:1:package"), 0x8000_0001);
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
    assert_eq!(counter(&mut found, "msr:0:package"), 0xFFFF_FFF0);
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join("dev/cpu/0/msr"))
        .unwrap();
    // The register went past 2^32: bits above 31 are not part of the counter.
    f.write_at(&0x1_0000_0010u64.to_le_bytes(), 0x611).unwrap();
    assert_eq!(counter(&mut found, "msr:0:package"), 0x10);
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

/// Bay Trail and the other Silvermont and Airmont Atoms give their energy unit as 2^ESU µJ
/// (`intel_rapl_common.c`, the Atom unit check): ESU 5 is 32 µJ per count, not 2^-5 J.
#[test]
fn silvermont_and_airmont_atoms_count_in_powers_of_two_microjoules() {
    for model in [0x37, 0x4A, 0x4C, 0x5A] {
        let dir = tempfile::tempdir().unwrap();
        let regs = [(0x606, 0xA0505), (0x611, 0x1000), (0x639, 0x800)];
        machine(dir.path(), "GenuineIntel", 6, model, &[0], &regs);
        let found = msr::discover(&roots_at(dir.path()));
        assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
        let units: Vec<(String, f64)> = summary(&found)
            .into_iter()
            .map(|(id, _, _, _, unit)| (id, unit))
            .collect();
        assert_eq!(
            units,
            vec![
                ("msr:0:package".to_string(), 32e-6),
                ("msr:0:core".to_string(), 32e-6)
            ],
            "model {model:#x}"
        );
    }
    // Goldmont (0x5C) and later Atoms read the register as the cores do.
    let dir = tempfile::tempdir().unwrap();
    machine(
        dir.path(),
        "GenuineIntel",
        6,
        0x5C,
        &[0],
        &[(0x606, 0xA0E03), (0x611, 0x1000)],
    );
    assert_eq!(summary(&msr::discover(&roots_at(dir.path())))[0].4, ESU14);
}

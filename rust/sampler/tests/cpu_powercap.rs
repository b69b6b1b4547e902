//! The powercap backend against committed fixture trees and temporary ones.

mod common_fs;

use std::fs;
use std::path::Path;

use carbonctx_sampler::powercap;
use carbonctx_sampler::{CounterSpec, Domain, Error, Method};
use carbonctx_sim::{SimMachine, SimSpec, SquareWave};
use common_fs::{counter, fixture, roots_at, summary};

/// A minimal zone directory.
fn zone(dir: &Path, name: &str, energy: &str, range: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("name"), format!("{name}\n")).unwrap();
    fs::write(dir.join("energy_uj"), energy).unwrap();
    fs::write(dir.join("max_energy_range_uj"), range).unwrap();
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn server_two_sockets() {
    let mut found = powercap::discover(&roots_at(&fixture("intel-server-2s")));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "powercap:intel-rapl:0".into(),
                Domain::Package,
                0,
                "package-0".into()
            ),
            (
                "powercap:intel-rapl:0:0".into(),
                Domain::Dram,
                0,
                "dram (package 0)".into()
            ),
            (
                "powercap:intel-rapl:1".into(),
                Domain::Package,
                1,
                "package-1".into()
            ),
            (
                "powercap:intel-rapl:1:0".into(),
                Domain::Dram,
                1,
                "dram (package 1)".into()
            ),
        ]
    );
    let info = found.sources[0].info().clone();
    assert_eq!(info.backend, "powercap");
    assert_eq!(info.method, Method::Counter);
    assert_eq!(info.interval, std::time::Duration::from_millis(1));
    assert_eq!(
        info.counter,
        Some(CounterSpec {
            joules_per_unit: 1e-6,
            wrap: Some(262_143_328_851)
        })
    );
    assert!(info.path.unwrap().ends_with("intel-rapl:0/energy_uj"));
    assert_eq!(
        found.sources[1].info().counter.unwrap().wrap,
        Some(65_712_999_614)
    );
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0"), 12_345_678_901);
    assert_eq!(
        counter(&mut found, "powercap:intel-rapl:1:0"),
        3_456_789_012
    );
}

#[test]
fn client_with_subzones_psys_and_mmio() {
    let mut found = powercap::discover(&roots_at(&fixture("intel-client")));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "powercap:intel-rapl:0".into(),
                Domain::Package,
                0,
                "package-0".into()
            ),
            (
                "powercap:intel-rapl:0:0".into(),
                Domain::Core,
                0,
                "core (package 0)".into()
            ),
            (
                "powercap:intel-rapl:0:1".into(),
                Domain::Uncore,
                0,
                "uncore (package 0)".into()
            ),
            (
                "powercap:intel-rapl:0:2".into(),
                Domain::Dram,
                0,
                "dram (package 0)".into()
            ),
            (
                "powercap:intel-rapl:1".into(),
                Domain::Psys,
                0,
                "psys".into()
            ),
            (
                "powercap:intel-rapl-mmio:0".into(),
                Domain::Package,
                0,
                "package-0 (intel-rapl-mmio)".into()
            ),
        ]
    );
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0:1"), 123_456_789);
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0:2"), 0);
    assert_eq!(
        counter(&mut found, "powercap:intel-rapl-mmio:0"),
        54_321_000_000
    );
}

#[test]
fn amd_packages() {
    let mut found = powercap::discover(&roots_at(&fixture("amd-epyc-2s")));
    // The core zones count one core each on AMD: listed, not measured.
    assert_eq!(found.unavailable.len(), 2, "{:?}", found.unavailable);
    for u in &found.unavailable {
        assert!(u.what.ends_with(":0"), "{u:?}");
        assert!(u.reason.contains("counts one core"), "{u:?}");
    }
    assert_eq!(
        summary(&found),
        vec![
            (
                "powercap:intel-rapl:0".into(),
                Domain::Package,
                0,
                "package-0".into()
            ),
            (
                "powercap:intel-rapl:1".into(),
                Domain::Package,
                1,
                "package-1".into()
            ),
        ]
    );
    assert_eq!(
        found.sources[1].info().counter.unwrap().wrap,
        Some(65_532_610_988)
    );
    assert_eq!(counter(&mut found, "powercap:intel-rapl:1"), 5_432_109_876);
}

#[test]
fn no_powercap_directory() {
    let dir = tempfile::tempdir().unwrap();
    let found = powercap::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert_eq!(u.backend, "powercap");
    assert!(u.what.ends_with("class/powercap"), "{}", u.what);
    assert!(u.reason.contains("no powercap directory"), "{}", u.reason);
    assert!(u.hint.contains("modprobe intel_rapl_msr"), "{}", u.hint);
}

#[test]
fn empty_powercap_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("sys/class/powercap/dtpm")).unwrap();
    let found = powercap::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    assert!(found.unavailable[0].reason.contains("no intel-rapl zones"));
}

#[test]
fn reads_follow_the_file_with_padding_and_whitespace() {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("sys/class/powercap/intel-rapl:0");
    zone(&z, "package-0", "100\n", "999999\n");
    let mut found = powercap::discover(&roots_at(dir.path()));
    assert_eq!(found.sources.len(), 1);
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0"), 100);
    // fs::write truncates and rewrites the same inode, which the source keeps open.
    fs::write(z.join("energy_uj"), "000123\n").unwrap();
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0"), 123);
    fs::write(z.join("energy_uj"), "  999999 \n").unwrap();
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0"), 999_999);
    fs::write(z.join("energy_uj"), "7").unwrap();
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0"), 7);
}

#[test]
fn unknown_zone_names_are_listed_and_subzones_take_the_parent_package() {
    let dir = tempfile::tempdir().unwrap();
    let pc = dir.path().join("sys/class/powercap");
    // Package 1 lives in zone 0 here, on purpose: the index comes from the name.
    zone(&pc.join("intel-rapl:0"), "package-1", "1\n", "10\n");
    // Nested only, not listed flat.
    zone(
        &pc.join("intel-rapl:0/intel-rapl:0:0"),
        "dram",
        "2\n",
        "10\n",
    );
    zone(
        &pc.join("intel-rapl:0/intel-rapl:0:1"),
        "something-new",
        "3\n",
        "10\n",
    );
    zone(&pc.join("intel-rapl:2"), "psys", "4\n", "10\n");
    let found = powercap::discover(&roots_at(dir.path()));
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    let u = &found.unavailable[0];
    assert!(u.what.ends_with("intel-rapl:0:1"), "{u:?}");
    assert!(u.reason.contains("\"something-new\""), "{u:?}");
    assert!(!u.hint.is_empty());
    assert_eq!(
        summary(&found),
        vec![
            (
                "powercap:intel-rapl:0".into(),
                Domain::Package,
                1,
                "package-1".into()
            ),
            (
                "powercap:intel-rapl:0:0".into(),
                Domain::Dram,
                1,
                "dram (package 1)".into()
            ),
            (
                "powercap:intel-rapl:2".into(),
                Domain::Psys,
                0,
                "psys".into()
            ),
        ]
    );
}

#[test]
fn garbled_and_missing_files_are_unavailable_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let pc = dir.path().join("sys/class/powercap");
    zone(&pc.join("intel-rapl:0"), "package-0", "12ab\n", "100\n");
    zone(&pc.join("intel-rapl:1"), "package-1", "5\n", "lots\n");
    zone(&pc.join("intel-rapl:2"), "package-2", "", "100\n");
    zone(&pc.join("intel-rapl:3"), "package-3", "5\n", "100\n");
    fs::remove_file(pc.join("intel-rapl:3/energy_uj")).unwrap();
    zone(&pc.join("intel-rapl:4"), "package-4", "5\n", "100\n");
    fs::remove_file(pc.join("intel-rapl:4/energy_uj")).unwrap();
    fs::create_dir(pc.join("intel-rapl:4/energy_uj")).unwrap();
    zone(&pc.join("intel-rapl:5"), "package-5", "5\n", "100\n");
    fs::remove_file(pc.join("intel-rapl:5/name")).unwrap();
    zone(&pc.join("intel-rapl:6"), "package-6", "6\n", "100\n");

    let found = powercap::discover(&roots_at(dir.path()));
    assert_eq!(summary(&found).len(), 1);
    assert_eq!(found.sources[0].info().id, "powercap:intel-rapl:6");
    let u = &found.unavailable;
    assert_eq!(u.len(), 6, "{u:#?}");
    let find = |zone: &str| {
        u.iter()
            .find(|x| x.what.contains(&format!("{zone}/")))
            .unwrap_or_else(|| panic!("no entry for {zone}: {u:#?}"))
    };
    assert!(
        find("intel-rapl:0").reason.contains("\"12ab\\n\""),
        "{:?}",
        find("intel-rapl:0")
    );
    assert!(find("intel-rapl:1").what.ends_with("max_energy_range_uj"));
    assert!(find("intel-rapl:1").reason.contains("lots"));
    assert!(
        find("intel-rapl:2").reason.contains("empty"),
        "{:?}",
        find("intel-rapl:2")
    );
    assert!(
        find("intel-rapl:3").reason.contains("No such file"),
        "{:?}",
        find("intel-rapl:3")
    );
    assert!(
        find("intel-rapl:4").reason.contains("directory"),
        "{:?}",
        find("intel-rapl:4")
    );
    assert!(find("intel-rapl:5").what.ends_with("name"));
    for x in u {
        assert_eq!(x.backend, "powercap");
        assert!(!x.hint.is_empty());
    }
}

#[test]
fn permission_denied_gives_the_side_channel_hint() {
    // Root reads anything, so build the error the kernel would give instead.
    let path = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj");
    let err = Error::io(path, std::io::Error::from_raw_os_error(libc::EACCES), "");
    let u = powercap::unavailable_from_error(path, err);
    assert!(u.reason.contains("permission denied"));
    assert!(u.hint.contains("CVE-2020-8694"), "{}", u.hint);
    assert!(u.hint.contains("PLATYPUS"));
    assert!(u.hint.contains("perf_event_paranoid"));
    assert!(u.hint.contains("CAP_PERFMON"));
    assert!(u.hint.contains("udev"));

    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("sys/class/powercap/intel-rapl:0");
        zone(&z, "package-0", "1\n", "10\n");
        fs::set_permissions(z.join("energy_uj"), fs::Permissions::from_mode(0o000)).unwrap();
        let found = powercap::discover(&roots_at(dir.path()));
        assert!(found.sources.is_empty());
        assert!(found.unavailable[0].hint.contains("CVE-2020-8694"));
    }
}

#[test]
fn runtime_failures_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("sys/class/powercap/intel-rapl:0");
    zone(&z, "package-0", "1\n", "10\n");
    let mut found = powercap::discover(&roots_at(dir.path()));
    let src = &mut found.sources[0];
    fs::write(z.join("energy_uj"), "garbage\n").unwrap();
    let err = src.read().unwrap_err();
    assert!(matches!(err, Error::Parse { .. }), "{err}");
    assert!(err.to_string().contains("energy_uj"), "{err}");
    // Emptied (what the simulation does when a zone vanishes), then removed.
    fs::write(z.join("energy_uj"), "").unwrap();
    let err = src.read().unwrap_err();
    assert!(err.to_string().contains("removed"), "{err}");
    fs::remove_dir_all(&z).unwrap();
    assert!(src.read().is_err());
}

#[test]
fn a_zone_vanishing_under_the_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SimSpec::server(
        dir.path(),
        2,
        SquareWave::constant(50.0),
        SquareWave::constant(5.0),
    );
    let mut sim = SimMachine::new(spec).unwrap();
    sim.start().unwrap();
    let mut found = powercap::discover(&sim.roots());
    assert_eq!(found.sources.len(), 4);
    for s in &mut found.sources {
        assert!(s.read().is_ok());
    }
    sim.remove_zone(Domain::Package, 1).unwrap();
    // Package 1 and its dram sub-zone are gone; package 0 is fine.
    for s in &mut found.sources {
        let r = s.read();
        if s.info().index == 1 {
            assert!(r.is_err(), "{}: {r:?}", s.info().id);
        } else {
            assert!(r.is_ok(), "{}: {r:?}", s.info().id);
        }
    }
    sim.stop();
    let again = powercap::discover(&sim.roots());
    assert_eq!(again.sources.len(), 2);
}

//! The hwmon backend for amd_energy (AMD CPUs' per-core and per-socket counters), on temporary
//! sysfs trees laid out as the kernel makes them: packages and their cores, NUMA nodes, no CPU
//! topology, 32-bit wraparound, beside powercap, and counters only root may read.

// Each test file uses part of the shared helpers.
#[allow(dead_code)]
mod common_fs;
#[allow(dead_code)]
mod common_hwmon;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carbonctx_sampler::discover;
use carbonctx_sampler::hwmon;
use carbonctx_sampler::{Domain, Method, Reading};
use common_fs::{roots_at, summary};
use common_hwmon::{chip, is_root, options, read};

const AMD_ENERGY: &str = "platform/amd_energy.0";

/// amd_energy's channels as the driver numbers them: one per core (`EcoreNNN`), then one per
/// socket (`EsocketN`), each with an input and a label.
fn amd_chip(root: &Path, sockets: &[(u32, &str)], cores: u32) -> PathBuf {
    let mut files = vec![("name".to_string(), "amd_energy\n".to_string())];
    let channels = (0..cores)
        .map(|c| (format!("{}\n", 1000 * (c + 1)), format!("Ecore{c:03}\n")))
        .chain(
            sockets
                .iter()
                .map(|(s, v)| (v.to_string(), format!("Esocket{s}\n"))),
        );
    for (k, (value, label)) in channels.enumerate() {
        files.push((format!("energy{}_input", k + 1), value));
        files.push((format!("energy{}_label", k + 1), label));
    }
    let refs: Vec<(bool, &str, &str)> = files
        .iter()
        .map(|(n, c)| (false, n.as_str(), c.as_str()))
        .collect();
    chip(root, AMD_ENERGY, 2, &refs)
}

/// The CPU topology the kernel publishes: `nodes[k]` lists node k's CPUs, `packages[c]` is
/// CPU c's package.
fn topology(root: &Path, nodes: &[&str], packages: &[u32]) {
    let sys = root.join("sys/devices/system");
    for (k, cpus) in nodes.iter().enumerate() {
        let dir = sys.join(format!("node/node{k}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cpulist"), format!("{cpus}\n")).unwrap();
    }
    for (c, p) in packages.iter().enumerate() {
        let dir = sys.join(format!("cpu/cpu{c}/topology"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("physical_package_id"), format!("{p}\n")).unwrap();
    }
}

#[test]
fn amd_energy_packages_and_their_cores() {
    let tmp = tempfile::tempdir().unwrap();
    amd_chip(tmp.path(), &[(0, "5000000\n"), (1, "6000000\n")], 4);
    topology(
        tmp.path(),
        &["0-1,4-5", "2-3,6-7"],
        &[0, 0, 1, 1, 0, 0, 1, 1],
    );
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "hwmon:amd_energy:amd_energy.0:Esocket0".into(),
                Domain::Package,
                0,
                "package-0 (amd_energy)".into()
            ),
            (
                "hwmon:amd_energy:amd_energy.0:Esocket1".into(),
                Domain::Package,
                1,
                "package-1 (amd_energy)".into()
            ),
            (
                "hwmon:amd_energy:amd_energy.0:cores-package0".into(),
                Domain::Core,
                0,
                "cores of package-0 (2 counters, amd_energy)".into()
            ),
            (
                "hwmon:amd_energy:amd_energy.0:cores-package1".into(),
                Domain::Core,
                1,
                "cores of package-1 (2 counters, amd_energy)".into()
            ),
        ]
    );
    let sock = found.sources[0].info().clone();
    assert_eq!(sock.interval, Duration::from_millis(1));
    assert_eq!(sock.method, Method::Counter);
    assert_eq!(sock.counter.unwrap().joules_per_unit, 1e-6);
    assert_eq!(
        read(&mut found, "hwmon:amd_energy:amd_energy.0:Esocket0"),
        Reading::Counter(5_000_000)
    );
    // Cores 2 and 3 (1000 µJ apart from the first two) are package 1's.
    assert_eq!(
        read(&mut found, "hwmon:amd_energy:amd_energy.0:cores-package0"),
        Reading::Counter(1000 + 2000)
    );
    assert_eq!(
        read(&mut found, "hwmon:amd_energy:amd_energy.0:cores-package1"),
        Reading::Counter(3000 + 4000)
    );
}

#[test]
fn amd_energy_with_several_numa_nodes_per_socket_counts_each_package_once() {
    let tmp = tempfile::tempdir().unwrap();
    // NPS2 on one socket: the driver shows the package counter for each of the two nodes.
    amd_chip(tmp.path(), &[(0, "5000000\n"), (1, "5000000\n")], 2);
    topology(tmp.path(), &["0", "1"], &[0, 0]);
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    let ids: Vec<_> = summary(&found).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        ids,
        vec![
            (
                "hwmon:amd_energy:amd_energy.0:Esocket0".to_string(),
                Domain::Package
            ),
            (
                "hwmon:amd_energy:amd_energy.0:cores-package0".to_string(),
                Domain::Core
            ),
        ]
    );
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    let u = &found.unavailable[0];
    assert!(u.what.ends_with("energy4_input"), "{u:?}");
    assert!(u.reason.contains("repeats Esocket0"), "{u:?}");
}

#[test]
fn amd_energy_without_cpu_topology() {
    // One socket: its cores are its own.
    let tmp = tempfile::tempdir().unwrap();
    amd_chip(tmp.path(), &[(0, "5000000\n")], 2);
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(found.sources.len(), 2);
    // Two sockets: nodes are taken as packages, and the cores cannot be placed: said so.
    let tmp = tempfile::tempdir().unwrap();
    amd_chip(tmp.path(), &[(0, "5\n"), (1, "6\n")], 2);
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    let packages: Vec<_> = summary(&found).into_iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(packages, vec![(Domain::Package, 0), (Domain::Package, 1)]);
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    assert!(found.unavailable[0].reason.contains("cores [0, 1]"));
}

#[test]
fn amd_energy_counters_wrapping_at_32_bits_count_on() {
    let tmp = tempfile::tempdir().unwrap();
    // ESU 16: the register wraps at 2^32 × 15.26 µJ = 65 536 000 000 µJ.
    let hw = amd_chip(tmp.path(), &[(0, "65535000000\n")], 0);
    let id = "hwmon:amd_energy:amd_energy.0:Esocket0";
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert_eq!(read(&mut found, id), Reading::Counter(65_535_000_000));
    std::thread::sleep(Duration::from_millis(200));
    fs::write(hw.join("energy1_input"), "200000\n").unwrap();
    // 1.0 J before the wrap and 0.2 J after it.
    assert_eq!(read(&mut found, id), Reading::Counter(65_536_200_000));
    fs::write(hw.join("energy1_input"), "300000\n").unwrap();
    assert_eq!(read(&mut found, id), Reading::Counter(65_536_300_000));
    // Back to near zero from mid-range in an instant: a reset, shown as a step back.
    fs::write(hw.join("energy1_input"), "30000000000\n").unwrap();
    let Reading::Counter(mid) = read(&mut found, id) else {
        panic!()
    };
    fs::write(hw.join("energy1_input"), "10\n").unwrap();
    let Reading::Counter(after) = read(&mut found, id) else {
        panic!()
    };
    assert!(
        after < mid,
        "a reset must show as a step back ({after} >= {mid})"
    );
}

#[test]
fn amd_energy_beside_powercap_keeps_one_package_counter() {
    let tmp = tempfile::tempdir().unwrap();
    amd_chip(tmp.path(), &[(0, "5000000\n"), (1, "6000000\n")], 2);
    topology(tmp.path(), &["0", "1"], &[0, 1]);
    // AMD's RAPL zones: a package zone per socket, and a core zone in package 0.
    for (zone, name) in [
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:0:0", "core"),
        ("intel-rapl:1", "package-1"),
    ] {
        let z = tmp.path().join("sys/class/powercap").join(zone);
        fs::create_dir_all(&z).unwrap();
        fs::write(z.join("name"), format!("{name}\n")).unwrap();
        fs::write(z.join("energy_uj"), "1000\n").unwrap();
        fs::write(z.join("max_energy_range_uj"), "65532610987\n").unwrap();
    }
    let d = discover::discover(&options(tmp.path()));
    let packages: Vec<_> = d
        .chosen
        .iter()
        .map(|s| s.info())
        .filter(|i| i.domain == Domain::Package)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(
        packages,
        vec!["powercap:intel-rapl:0", "powercap:intel-rapl:1"]
    );
    let alts: Vec<_> = d.alternatives.iter().map(|i| i.id.as_str()).collect();
    assert!(
        alts.contains(&"hwmon:amd_energy:amd_energy.0:Esocket0"),
        "{alts:?}"
    );
    assert!(
        alts.contains(&"hwmon:amd_energy:amd_energy.0:Esocket1"),
        "{alts:?}"
    );
    // Package 0's cores pair with its RAPL core zone; package 1 has none, so its sum is read.
    let cores: Vec<_> = d
        .chosen
        .iter()
        .filter(|s| s.info().domain == Domain::Core)
        .map(|s| s.info().id.clone())
        .collect();
    assert_eq!(
        cores,
        vec![
            "powercap:intel-rapl:0:0",
            "hwmon:amd_energy:amd_energy.0:cores-package1"
        ]
    );
    assert!(alts.contains(&"hwmon:amd_energy:amd_energy.0:cores-package0"));

    // Without powercap, amd_energy's socket counters are the packages.
    let mut opts = options(tmp.path());
    opts.cpu_backends.clear();
    let d = discover::discover(&opts);
    let packages: Vec<_> = d
        .chosen
        .iter()
        .filter(|s| s.info().domain == Domain::Package)
        .map(|s| s.info().id.clone())
        .collect();
    assert_eq!(
        packages,
        vec![
            "hwmon:amd_energy:amd_energy.0:Esocket0",
            "hwmon:amd_energy:amd_energy.0:Esocket1"
        ]
    );
}

#[test]
fn root_only_counters_are_explained() {
    if is_root() {
        eprintln!("skipped: root reads every file");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let hw = amd_chip(tmp.path(), &[(0, "5000000\n")], 0);
    fs::set_permissions(hw.join("energy1_input"), fs::Permissions::from_mode(0o000)).unwrap();
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert!(u.what.ends_with("energy1_input"), "{u:?}");
    assert!(u.reason.contains("permission denied"), "{u:?}");
    assert_eq!(u.hint, hwmon::PERMISSION_HINT);
}

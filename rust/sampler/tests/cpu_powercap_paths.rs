//! Where the powercap zones are found: the class directory's links to each zone, a class
//! directory that holds the control types only (their zones nested inside, as under
//! `/sys/devices/virtual/powercap`), and a tree that has the devices' directory and no class.

// Each test file uses part of the shared helpers.
#[allow(dead_code)]
mod common_fs;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use carbonctx_sampler::{powercap, Domain};
use common_fs::{counter, roots_at, summary};

/// A zone's directory at `<root>/<rel>`, with its files.
fn zone(root: &Path, rel: &str, name: &str, energy: u64) {
    let dir = root.join(rel);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("name"), format!("{name}\n")).unwrap();
    fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
    fs::write(dir.join("max_energy_range_uj"), "262143328850\n").unwrap();
    fs::write(dir.join("enabled"), "1\n").unwrap();
}

/// A client's zones nested as the device tree nests them, under `<base>/intel-rapl`.
fn client_zones(base: &Path) {
    zone(base, "intel-rapl/intel-rapl:0", "package-0", 1000);
    zone(base, "intel-rapl/intel-rapl:0/intel-rapl:0:0", "core", 400);
    zone(base, "intel-rapl/intel-rapl:0/intel-rapl:0:1", "uncore", 30);
    zone(base, "intel-rapl/intel-rapl:1", "psys", 5000);
    fs::write(base.join("intel-rapl/enabled"), "0\n").unwrap();
}

fn expected() -> Vec<(String, Domain, u32, String)> {
    [
        ("intel-rapl:0", Domain::Package, 0, "package-0"),
        ("intel-rapl:0:0", Domain::Core, 0, "core (package 0)"),
        ("intel-rapl:0:1", Domain::Uncore, 0, "uncore (package 0)"),
        ("intel-rapl:1", Domain::Psys, 0, "psys"),
    ]
    .into_iter()
    .map(|(id, d, i, l)| (format!("powercap:{id}"), d, i, l.to_string()))
    .collect()
}

#[test]
fn zones_nested_in_a_control_type_directory_of_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("sys/class/powercap");
    client_zones(&class);
    let mut found = powercap::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(summary(&found), expected());
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0:1"), 30);
    assert_eq!(counter(&mut found, "powercap:intel-rapl:1"), 5000);
}

#[test]
fn a_tree_with_the_device_directories_only() {
    let dir = tempfile::tempdir().unwrap();
    client_zones(&dir.path().join("sys/devices/virtual/powercap"));
    let found = powercap::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(summary(&found), expected());
    let path = found.sources[0].info().path.clone().unwrap();
    assert!(
        path.ends_with("devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"),
        "{path:?}"
    );
}

#[test]
fn an_empty_class_directory_sends_the_search_to_the_device_directories() {
    // The class directory is there (the powercap class is registered) but links nothing, while
    // the devices' directory holds the zones.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("sys/class/powercap")).unwrap();
    client_zones(&dir.path().join("sys/devices/virtual/powercap"));
    let mut found = powercap::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(summary(&found), expected());
    assert_eq!(counter(&mut found, "powercap:intel-rapl:0:0"), 400);
}

#[test]
fn an_empty_class_directory_and_no_devices_say_so_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("sys/class/powercap")).unwrap();
    fs::create_dir_all(dir.path().join("sys/devices/virtual/powercap")).unwrap();
    let found = powercap::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    assert!(found.unavailable[0].what.ends_with("class/powercap"));
    assert!(found.unavailable[0].reason.contains("no intel-rapl zones"));
}

#[test]
fn class_links_are_preferred_and_nothing_is_listed_twice() {
    // As sysfs lays it out: the control type and every zone linked from the class directory.
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    client_zones(&sys.join("devices/virtual/powercap"));
    let class = sys.join("class/powercap");
    fs::create_dir_all(&class).unwrap();
    let target = Path::new("../../devices/virtual/powercap/intel-rapl");
    symlink(target, class.join("intel-rapl")).unwrap();
    for rel in [
        "intel-rapl:0",
        "intel-rapl:0/intel-rapl:0:0",
        "intel-rapl:1",
    ] {
        let leaf = Path::new(rel).file_name().unwrap();
        symlink(target.join(rel), class.join(leaf)).unwrap();
    }
    let found = powercap::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(summary(&found), expected());
    for s in &found.sources {
        let path = s.info().path.clone().unwrap();
        assert!(
            path.starts_with(&class),
            "{path:?} is not reached through the class links"
        );
    }
}

#[test]
fn no_tree_at_all_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("sys/devices/virtual")).unwrap();
    let found = powercap::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    assert!(found.unavailable[0].what.ends_with("class/powercap"));
}

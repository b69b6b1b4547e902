//! The powercap trees the kernel makes on real machines: many packages and dies, a psys domain
//! per socket, AMD's per-CCD zones, MMIO duplicates, other control types, containers that hide
//! the zones, and counters readable by root only.

mod common_fs;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use carbonctx_sampler::discover::{self, Options, TdpModelUse};
use carbonctx_sampler::{powercap, Domain, Found, Reading, Roots};
use common_fs::{fixture, roots_at, summary};

fn row(id: &str, d: Domain, index: u32, label: &str) -> (String, Domain, u32, String) {
    (format!("powercap:{id}"), d, index, label.to_string())
}

/// Discovery with powercap only (no NVML, no model): what is chosen and what is an alternative.
fn choose(roots: &Roots) -> (Vec<String>, Vec<String>) {
    let opts = Options {
        roots: roots.clone(),
        cpu_backends: vec!["powercap".into()],
        nvml: false,
        tdp_model: TdpModelUse::Never,
        ..Options::default()
    };
    let d = discover::discover(&opts);
    (
        d.chosen.iter().map(|s| s.info().id.clone()).collect(),
        d.alternatives.iter().map(|i| i.id.clone()).collect(),
    )
}

/// A zone's real directory under `devices/virtual/powercap`, linked from `class/powercap`.
fn zone(sys: &Path, rel: &str, name: &str, energy: u64, enabled: u8) {
    let dir = sys.join("devices/virtual/powercap").join(rel);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("name"), format!("{name}\n")).unwrap();
    fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
    fs::write(dir.join("max_energy_range_uj"), "262143328850\n").unwrap();
    fs::write(dir.join("enabled"), format!("{enabled}\n")).unwrap();
    let class = sys.join("class/powercap");
    fs::create_dir_all(&class).unwrap();
    let leaf = Path::new(rel).file_name().unwrap();
    symlink(
        Path::new("../../devices/virtual/powercap").join(rel),
        class.join(leaf),
    )
    .unwrap();
}

fn read(found: &mut Found, id: &str) -> u64 {
    let s = found
        .sources
        .iter_mut()
        .find(|s| s.info().id == id)
        .unwrap_or_else(|| panic!("no source {id}"));
    match s.read().unwrap() {
        Reading::Counter(v) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn sapphire_rapids_has_a_psys_domain_per_socket() {
    let found = powercap::discover(&roots_at(&fixture("intel-spr-2s")));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    // Zone numbers interleave (each package registers its psys); the names say which is which.
    assert_eq!(
        summary(&found),
        vec![
            row("intel-rapl:0", Domain::Package, 0, "package-0"),
            row("intel-rapl:0:0", Domain::Dram, 0, "dram (package 0)"),
            row("intel-rapl:1", Domain::Psys, 0, "psys"),
            row("intel-rapl:2", Domain::Package, 1, "package-1"),
            row("intel-rapl:2:0", Domain::Dram, 1, "dram (package 1)"),
            row("intel-rapl:3", Domain::Psys, 1, "psys-1"),
        ]
    );
    let psys = found.sources[2].info().counter.unwrap();
    assert_eq!(psys.wrap, Some(4_294_967_295_000_001));
    let (chosen, alternatives) = choose(&roots_at(&fixture("intel-spr-2s")));
    assert_eq!(chosen.len(), 6, "{chosen:?}");
    assert!(alternatives.is_empty(), "{alternatives:?}");
}

#[test]
fn per_die_packages_measure_every_die() {
    let mut found = powercap::discover(&roots_at(&fixture("intel-clx-ap-2s")));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            row("intel-rapl:0", Domain::Package, 0, "package-0-die-0"),
            row("intel-rapl:0:0", Domain::Dram, 0, "dram (package 0 die 0)"),
            row("intel-rapl:1", Domain::Package, 0, "package-0-die-1"),
            row("intel-rapl:1:0", Domain::Dram, 0, "dram (package 0 die 1)"),
            row("intel-rapl:2", Domain::Package, 1, "package-1-die-0"),
            row("intel-rapl:2:0", Domain::Dram, 1, "dram (package 1 die 0)"),
            row("intel-rapl:3", Domain::Package, 1, "package-1-die-1"),
            row("intel-rapl:3:0", Domain::Dram, 1, "dram (package 1 die 1)"),
        ]
    );
    // `enabled` reads 0 on every zone (no power limit set): the counters are read all the same.
    assert_eq!(read(&mut found, "powercap:intel-rapl:3"), 1_000_000_004);
    // Two dies of one package are two counters: both are measured, neither is an alternative.
    let (chosen, alternatives) = choose(&roots_at(&fixture("intel-clx-ap-2s")));
    assert_eq!(chosen.len(), 8, "{chosen:?}");
    assert!(alternatives.is_empty(), "{alternatives:?}");
}

#[test]
fn amd_per_ccd_zones_read_the_package_counter_once() {
    let roots = roots_at(&fixture("amd-zen4-ccd-2s"));
    let mut found = powercap::discover(&roots);
    assert_eq!(
        summary(&found),
        vec![
            row("intel-rapl:0", Domain::Package, 0, "package-0"),
            row("intel-rapl:8", Domain::Package, 1, "package-1"),
        ]
    );
    assert_eq!(read(&mut found, "powercap:intel-rapl:8"), 7_000_001_000);
    let u = &found.unavailable;
    // 14 repeated die zones (ids up to intel-rapl:f, hexadecimal) and 16 one-core zones.
    assert_eq!(u.len(), 30, "{u:#?}");
    let repeats: Vec<_> = u
        .iter()
        .filter(|x| x.reason.contains("same package counter"))
        .collect();
    assert_eq!(repeats.len(), 14);
    let a = repeats
        .iter()
        .find(|x| x.what.ends_with("intel-rapl:a"))
        .expect("zone intel-rapl:a (the eleventh)");
    assert!(a.reason.contains("package-1-die-2"), "{a:?}");
    assert!(a.reason.contains("as intel-rapl:8"), "{a:?}");
    let cores = u
        .iter()
        .filter(|x| x.reason.contains("counts one core"))
        .count();
    assert_eq!(cores, 16);
    assert!(u.iter().all(|x| !x.hint.is_empty()));
    let (chosen, alternatives) = choose(&roots);
    assert_eq!(chosen.len(), 2);
    assert!(alternatives.is_empty());
}

#[test]
fn a_container_that_hides_the_zones_says_so() {
    let found = powercap::discover(&roots_at(&fixture("container-masked")));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    let u = &found.unavailable[0];
    for z in [
        "intel-rapl:0",
        "intel-rapl:0:0",
        "intel-rapl:0:1",
        "intel-rapl:1",
        "intel-rapl-mmio:0",
    ] {
        assert!(u.what.contains(z), "{z} in {}", u.what);
    }
    assert!(
        u.reason.contains("devices/virtual/powercap/intel-rapl"),
        "{}",
        u.reason
    );
    assert!(u.reason.contains("cannot see"), "{}", u.reason);
    assert!(u.reason.contains("container"), "{}", u.reason);
    assert!(!u.reason.contains("no powercap directory"));
    assert!(u.hint.contains("systempaths=unconfined"), "{}", u.hint);
    assert!(u.hint.contains("unmask"), "{}", u.hint);
}

#[test]
fn mmio_zones_repeat_the_msr_zones_and_stand_in_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    zone(&sys, "intel-rapl/intel-rapl:0", "package-0", 10, 1);
    zone(
        &sys,
        "intel-rapl/intel-rapl:0/intel-rapl:0:0",
        "dram",
        20,
        0,
    );
    zone(
        &sys,
        "intel-rapl-mmio/intel-rapl-mmio:0",
        "package-0",
        11,
        1,
    );
    zone(
        &sys,
        "intel-rapl-mmio/intel-rapl-mmio:0/intel-rapl-mmio:0:0",
        "dram",
        21,
        0,
    );
    let roots = roots_at(dir.path());
    let found = powercap::discover(&roots);
    assert_eq!(
        summary(&found),
        vec![
            row("intel-rapl:0", Domain::Package, 0, "package-0"),
            row("intel-rapl:0:0", Domain::Dram, 0, "dram (package 0)"),
            row(
                "intel-rapl-mmio:0",
                Domain::Package,
                0,
                "package-0 (intel-rapl-mmio)"
            ),
            row(
                "intel-rapl-mmio:0:0",
                Domain::Dram,
                0,
                "dram (package 0) (intel-rapl-mmio)"
            ),
        ]
    );
    let (chosen, alternatives) = choose(&roots);
    assert_eq!(chosen, ["powercap:intel-rapl:0", "powercap:intel-rapl:0:0"]);
    assert_eq!(
        alternatives,
        ["powercap:intel-rapl-mmio:0", "powercap:intel-rapl-mmio:0:0"]
    );
    // With the MSR zone's counter unusable, the MMIO copy measures the package.
    let energy = sys.join("devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj");
    fs::write(&energy, "garbage\n").unwrap();
    let (chosen, alternatives) = choose(&roots);
    assert_eq!(
        chosen,
        ["powercap:intel-rapl-mmio:0", "powercap:intel-rapl:0:0"]
    );
    assert_eq!(alternatives, ["powercap:intel-rapl-mmio:0:0"]);
}

#[test]
fn other_control_types_are_listed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    zone(&sys, "intel-rapl/intel-rapl:0", "package-0", 10, 1);
    let dtpm = sys.join("devices/virtual/powercap/dtpm/dtpm:0");
    fs::create_dir_all(dtpm.join("dtpm:0:0")).unwrap();
    fs::write(dtpm.join("name"), "soc\n").unwrap();
    fs::write(dtpm.join("power_uw"), "1500000\n").unwrap();
    fs::write(dtpm.join("dtpm:0:0/name"), "cpu0\n").unwrap();
    symlink(
        "../../devices/virtual/powercap/dtpm/dtpm:0",
        sys.join("class/powercap/dtpm:0"),
    )
    .unwrap();
    let found = powercap::discover(&roots_at(dir.path()));
    assert_eq!(found.sources.len(), 1);
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    let u = &found.unavailable[0];
    assert!(u.what.ends_with("dtpm:*"), "{}", u.what);
    assert!(
        u.reason.contains("2 zone(s) of control type dtpm"),
        "{}",
        u.reason
    );
    assert!(u.reason.contains("dtpm:0 (soc)"), "{}", u.reason);
    assert!(u.reason.contains("dtpm:0:0 (cpu0)"), "{}", u.reason);
    assert!(
        u.reason.contains("without an energy counter"),
        "{}",
        u.reason
    );
}

#[test]
fn zone_numbers_past_nine_are_hexadecimal() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    for p in 0..18u32 {
        zone(
            &sys,
            &format!("intel-rapl/intel-rapl:{p:x}"),
            &format!("package-{p}"),
            u64::from(p),
            1,
        );
    }
    zone(
        &sys,
        "intel-rapl/intel-rapl:11/intel-rapl:11:0",
        "dram",
        99,
        0,
    );
    let mut found = powercap::discover(&roots_at(dir.path()));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let got = summary(&found);
    assert_eq!(got.len(), 19);
    assert_eq!(
        got[10],
        row("intel-rapl:a", Domain::Package, 10, "package-10")
    );
    assert_eq!(
        got[17],
        row("intel-rapl:11", Domain::Package, 17, "package-17")
    );
    assert_eq!(
        got[18],
        row("intel-rapl:11:0", Domain::Dram, 17, "dram (package 17)")
    );
    assert_eq!(read(&mut found, "powercap:intel-rapl:f"), 15);
}

const AS_NOBODY: &str = "CARBONCTX_TEST_POWERCAP_TREE";

/// `energy_uj` is mode 0400, owner root, since the PLATYPUS mitigation. Root reads anything, so
/// when the tests run as root the check runs again in a child process as `nobody`.
#[test]
fn energy_readable_by_root_only() {
    if let Ok(tree) = std::env::var(AS_NOBODY) {
        let found = powercap::discover(&roots_at(Path::new(&tree)));
        assert!(found.sources.is_empty());
        assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
        let u = &found.unavailable[0];
        assert!(u.what.ends_with("intel-rapl:0/energy_uj"), "{u:?}");
        assert!(u.reason.contains("permission denied"), "{u:?}");
        assert!(u.reason.contains("mode 0400"), "{u:?}");
        assert!(u.reason.contains("readable by root only"), "{u:?}");
        assert!(u.hint.contains("CVE-2020-8694"), "{u:?}");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Not root: a file owned by this user with mode 0400 reads fine, so there is nothing
        // to see here without root's help.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    zone(
        &dir.path().join("sys"),
        "intel-rapl/intel-rapl:0",
        "package-0",
        1,
        1,
    );
    let energy = dir
        .path()
        .join("sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj");
    fs::set_permissions(&energy, fs::Permissions::from_mode(0o400)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "energy_readable_by_root_only", "--nocapture"])
        .env(AS_NOBODY, dir.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// A two-socket Xeon 6 (Granite Rapids) whose RAPL registers are reached through TPMI, under a
/// kernel whose TPMI driver registers its own control type, `intel-rapl-tpmi` (Intel's
/// out-of-tree driver and distribution backports; mainline's `intel_rapl_tpmi.c` registers
/// `intel-rapl`). The zones are those of the common RAPL code (`intel_rapl_common.c`): per
/// package `package-N` with its `dram` inside, and the platform domain beside it, `psys` for
/// the package with id 0 and `psys-N` for the others, each registered with its package so the
/// top-level numbers interleave.
#[test]
fn tpmi_zones_under_their_own_control_type_are_rapl_zones() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let t = "intel-rapl-tpmi/intel-rapl-tpmi";
    zone(&sys, &format!("{t}:0"), "package-0", 100, 1);
    zone(&sys, &format!("{t}:0/intel-rapl-tpmi:0:0"), "dram", 10, 0);
    zone(&sys, &format!("{t}:1"), "psys", 500, 0);
    zone(&sys, &format!("{t}:2"), "package-1", 200, 1);
    zone(&sys, &format!("{t}:2/intel-rapl-tpmi:2:0"), "dram", 20, 0);
    zone(&sys, &format!("{t}:3"), "psys-1", 600, 0);
    let roots = roots_at(dir.path());
    let mut found = powercap::discover(&roots);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let s = " (intel-rapl-tpmi)";
    assert_eq!(
        summary(&found),
        vec![
            row(
                "intel-rapl-tpmi:0",
                Domain::Package,
                0,
                &format!("package-0{s}")
            ),
            row(
                "intel-rapl-tpmi:0:0",
                Domain::Dram,
                0,
                &format!("dram (package 0){s}")
            ),
            row("intel-rapl-tpmi:1", Domain::Psys, 0, &format!("psys{s}")),
            row(
                "intel-rapl-tpmi:2",
                Domain::Package,
                1,
                &format!("package-1{s}")
            ),
            row(
                "intel-rapl-tpmi:2:0",
                Domain::Dram,
                1,
                &format!("dram (package 1){s}")
            ),
            row("intel-rapl-tpmi:3", Domain::Psys, 1, &format!("psys-1{s}")),
        ]
    );
    assert_eq!(read(&mut found, "powercap:intel-rapl-tpmi:2"), 200);
    let (chosen, alternatives) = choose(&roots);
    assert_eq!(chosen.len(), 6, "{chosen:?}");
    assert!(alternatives.is_empty(), "{alternatives:?}");

    // Where the MSR interface also publishes the packages, its zones measure them and the
    // TPMI zones of the same packages are alternatives: nothing is counted twice.
    zone(&sys, "intel-rapl/intel-rapl:0", "package-0", 101, 1);
    zone(&sys, "intel-rapl/intel-rapl:1", "package-1", 201, 1);
    let (chosen, alternatives) = choose(&roots);
    assert_eq!(
        chosen,
        [
            "powercap:intel-rapl:0",
            "powercap:intel-rapl:1",
            "powercap:intel-rapl-tpmi:0:0",
            "powercap:intel-rapl-tpmi:2:0",
            "powercap:intel-rapl-tpmi:1",
            "powercap:intel-rapl-tpmi:3",
        ]
    );
    assert_eq!(
        alternatives,
        ["powercap:intel-rapl-tpmi:0", "powercap:intel-rapl-tpmi:2"]
    );
}

/// The per-CCD layout of AMD's zones (every `package-N-die-M` zone of a package reads the
/// package's one counter) is recognised from the zones themselves where `/proc/cpuinfo` does
/// not name the vendor: a `/proc` without it, or one of another machine. Die zones that read
/// one counter value and range are one counter; Intel's per-die counters (Cascade Lake-AP),
/// which differ, stay one source per die.
#[test]
fn per_ccd_zones_are_recognised_without_the_vendor() {
    let elsewhere = tempfile::tempdir().unwrap();
    let intel = elsewhere.path().join("intel");
    fs::create_dir_all(&intel).unwrap();
    fs::write(
        intel.join("cpuinfo"),
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n",
    )
    .unwrap();
    for proc in [elsewhere.path().join("none"), intel] {
        let mut roots = roots_at(&fixture("amd-zen4-ccd-2s"));
        roots.proc = proc.clone();
        let found = powercap::discover(&roots);
        assert_eq!(
            summary(&found),
            vec![
                row("intel-rapl:0", Domain::Package, 0, "package-0"),
                row("intel-rapl:8", Domain::Package, 1, "package-1"),
            ],
            "{proc:?}"
        );
        let (chosen, _) = choose(&roots);
        assert_eq!(chosen.len(), 2, "{proc:?}: {chosen:?}");

        let mut roots = roots_at(&fixture("intel-clx-ap-2s"));
        roots.proc = proc.clone();
        let dies = powercap::discover(&roots)
            .sources
            .iter()
            .filter(|s| s.info().domain == Domain::Package)
            .count();
        assert_eq!(dies, 4, "{proc:?}");
    }
}

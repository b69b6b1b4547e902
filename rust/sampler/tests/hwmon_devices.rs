//! The hwmon backend: Intel GPUs (i915, xe) and amd_energy, on temporary sysfs trees laid out
//! as the kernel makes them.

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
use common_fs::roots_at;
use common_hwmon::{chip, is_root, options, read, summary};

const XE_CARD: &str = "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0/0000:03:00.0";

#[test]
fn xe_card_and_package_are_one_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    chip(
        tmp.path(),
        XE_CARD,
        3,
        &[
            (false, "name", "xe\n"),
            (false, "energy1_input", "123456789\n"),
            (false, "energy1_label", "card\n"),
            (false, "energy2_input", "100000000\n"),
            (false, "energy2_label", "pkg\n"),
            (false, "power1_max", "150000000\n"),
            (false, "in1_input", "880\n"),
        ],
    );
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "hwmon:xe:0000:03:00.0:energy1".into(),
                Domain::Gpu,
                0,
                "Intel GPU 0000:03:00.0 card (xe)".into()
            ),
            (
                "hwmon:xe:0000:03:00.0:energy2".into(),
                Domain::Gpu,
                0,
                "Intel GPU 0000:03:00.0 package (xe)".into()
            ),
        ]
    );
    let info = found.sources[0].info();
    assert_eq!(info.backend, "hwmon");
    assert_eq!(info.method, Method::Counter);
    let spec = info.counter.unwrap();
    assert_eq!((spec.joules_per_unit, spec.wrap), (1e-6, None));
    assert_eq!(
        read(&mut found, "hwmon:xe:0000:03:00.0:energy1"),
        Reading::Counter(123_456_789)
    );

    // Through discovery: the card is read, the package listed as the same GPU's alternative.
    let d = discover::discover(&options(tmp.path()));
    let chosen: Vec<_> = d.chosen.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(chosen, vec!["hwmon:xe:0000:03:00.0:energy1".to_string()]);
    let alts: Vec<_> = d.alternatives.iter().map(|i| i.id.clone()).collect();
    assert_eq!(alts, vec!["hwmon:xe:0000:03:00.0:energy2".to_string()]);
}

#[test]
fn unlabelled_xe_channels_follow_the_abi_numbering() {
    let tmp = tempfile::tempdir().unwrap();
    // A kernel that labels nothing: energy1 is the card, energy2 the package.
    chip(
        tmp.path(),
        XE_CARD,
        0,
        &[
            (false, "name", "xe\n"),
            (false, "energy2_input", "5\n"),
            (false, "energy1_input", "7\n"),
        ],
    );
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    let labels: Vec<_> = summary(&found).into_iter().map(|s| s.3).collect();
    assert_eq!(
        labels,
        vec![
            "Intel GPU 0000:03:00.0 card (xe)".to_string(),
            "Intel GPU 0000:03:00.0 package (xe)".to_string()
        ]
    );
}

#[test]
fn i915_gpus_are_numbered_after_other_gpus_by_pci_address() {
    let tmp = tempfile::tempdir().unwrap();
    let energy = |v: &'static str| {
        vec![
            (false, "name", "i915\n"),
            (false, "energy1_input", v),
            (false, "power1_rated_max", "190000000\n"),
        ]
    };
    chip(
        tmp.path(),
        "pci0000:80/0000:80:01.0/0000:8a:00.0",
        5,
        &energy("2000\n"),
    );
    chip(
        tmp.path(),
        "pci0000:00/0000:00:01.0/0000:03:00.0",
        7,
        &energy("1000\n"),
    );
    // The gt-level counter lies inside the device's figure: not a source of its own.
    chip(
        tmp.path(),
        "pci0000:00/0000:00:01.0/0000:03:00.0/gt0",
        8,
        &[
            (false, "name", "i915_gt0\n"),
            (false, "energy1_input", "9\n"),
        ],
    );
    // An integrated GPU publishes no energy: said so.
    chip(
        tmp.path(),
        "pci0000:00/0000:00:02.0",
        1,
        &[(false, "name", "i915\n"), (false, "in0_input", "700\n")],
    );
    let found = hwmon::discover(&roots_at(tmp.path()), 2);
    assert_eq!(
        summary(&found)
            .into_iter()
            .map(|s| (s.0, s.2))
            .collect::<Vec<_>>(),
        vec![
            ("hwmon:i915:0000:03:00.0:energy1".to_string(), 2),
            ("hwmon:i915:0000:8a:00.0:energy1".to_string(), 3),
        ]
    );
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    let u = &found.unavailable[0];
    assert_eq!(u.backend, "hwmon");
    assert!(u.reason.contains("0000:00:02.0"), "{u:?}");
    assert!(u.reason.contains("no energy counter"), "{u:?}");
    assert!(!u.hint.is_empty());
}

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

/// An amdgpu card's hwmon directory, as `amdgpu_pm.c` lays it out on a kernel that lists both
/// `power1_average` and `power1_input` whatever the firmware supports (before the driver hid
/// the unsupported one): the board power in µW, `power1_label` `PPT`, the caps beside it. The
/// file the firmware lacks fails on read (`EOPNOTSUPP` from the driver; here a directory in its
/// place, whose read fails too). The other file measures the GPU.
#[test]
fn amdgpu_power_file_that_fails_leaves_the_other_one_measuring() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let gpu = |n: u32, bdf: &str| {
        chip(
            root,
            &format!("pci0000:00/0000:00:03.1/{bdf}"),
            n,
            &[
                (false, "name", "amdgpu\n"),
                (false, "power1_label", "PPT\n"),
                (false, "power1_cap", "255000000\n"),
                (false, "power1_cap_max", "293000000\n"),
            ],
        )
    };
    // An RX 6800-like card: no instantaneous power, an average of 42.5 W.
    let older = gpu(2, "0000:0b:00.0");
    fs::create_dir(older.join("power1_input")).unwrap();
    fs::write(older.join("power1_average"), "42500000\n").unwrap();
    // An RDNA 3-like card: instantaneous power of 61 W, no average.
    let newer = gpu(3, "0000:0e:00.0");
    fs::write(newer.join("power1_input"), "61000000\n").unwrap();
    fs::create_dir(newer.join("power1_average")).unwrap();
    // A card neither of whose files answers.
    let broken = gpu(4, "0000:11:00.0");
    fs::create_dir(broken.join("power1_input")).unwrap();
    fs::create_dir(broken.join("power1_average")).unwrap();

    let mut opts = options(root);
    opts.amdsmi_library = Some(root.join("missing/libamd_smi.so"));
    let mut d = discover::discover(&opts);
    let chosen: Vec<(String, String)> = d
        .chosen
        .iter()
        .map(|s| (s.info().id.clone(), s.info().label.clone()))
        .collect();
    assert_eq!(chosen.len(), 2, "{chosen:?} {:?}", d.unavailable);
    assert_eq!(chosen[0].0, "hwmon:amdgpu:0000:0b:00.0:power1");
    assert!(chosen[0].1.contains("power1_average"), "{chosen:?}");
    assert_eq!(chosen[1].0, "hwmon:amdgpu:0000:0e:00.0:power1");
    assert!(chosen[1].1.contains("power1_input"), "{chosen:?}");
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(42.5));
    assert_eq!(d.chosen[1].read().unwrap(), Reading::Power(61.0));
    let broken_entry = d
        .unavailable
        .iter()
        .find(|u| u.what.ends_with("hwmon4"))
        .unwrap_or_else(|| panic!("the broken card is not explained: {:?}", d.unavailable));
    assert!(
        broken_entry.reason.contains("power1_input")
            && broken_entry.reason.contains("power1_average"),
        "{broken_entry:?}"
    );
    assert!(!broken_entry.hint.is_empty(), "{broken_entry:?}");
}

/// A Ryzen laptop: the package counter (AMD's RAPL zone) and the APU's amdgpu hwmon directory
/// as `amdgpu_pm.c` lays it out on an APU: `vddgfx`, `vddnb` (shown on APUs only), `PPT` in
/// `power1_input`, which "on APUs includes the CPU". The socket is a module beside the package,
/// never a GPU added to it; a discrete card beside it stays a GPU.
#[test]
fn an_apus_amdgpu_power_is_the_socket_beside_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let zone = root.join("sys/class/powercap/intel-rapl:0");
    fs::create_dir_all(&zone).unwrap();
    fs::write(zone.join("name"), "package-0\n").unwrap();
    fs::write(zone.join("energy_uj"), "1000\n").unwrap();
    fs::write(zone.join("max_energy_range_uj"), "65532610987\n").unwrap();
    chip(
        root,
        "pci0000:00/0000:00:08.1/0000:c4:00.0",
        4,
        &[
            (false, "name", "amdgpu\n"),
            (false, "in0_label", "vddgfx\n"),
            (false, "in0_input", "1210\n"),
            (false, "in1_label", "vddnb\n"),
            (false, "in1_input", "1190\n"),
            (false, "power1_label", "PPT\n"),
            (false, "power1_input", "23000000\n"),
        ],
    );
    chip(
        root,
        "pci0000:00/0000:00:01.1/0000:03:00.0",
        5,
        &[
            (false, "name", "amdgpu\n"),
            (false, "in0_label", "vddgfx\n"),
            (false, "power1_label", "PPT\n"),
            (false, "power1_average", "95000000\n"),
        ],
    );
    let mut opts = options(root);
    opts.amdsmi_library = Some(root.join("missing/libamd_smi.so"));
    let mut d = discover::discover(&opts);
    let chosen: Vec<(String, Domain)> = d
        .chosen
        .iter()
        .map(|s| (s.info().id.clone(), s.info().domain))
        .collect();
    assert_eq!(
        chosen,
        vec![
            ("powercap:intel-rapl:0".to_string(), Domain::Package),
            ("hwmon:amdgpu:0000:03:00.0:power1".to_string(), Domain::Gpu),
            (
                "hwmon:amdgpu:0000:c4:00.0:power1".to_string(),
                Domain::Module
            ),
        ],
        "{:?}",
        d.unavailable
    );
    let apu = &mut d.chosen[2];
    assert!(
        apu.info().label.contains("APU socket power"),
        "{:?}",
        apu.info()
    );
    assert!(apu.info().label.contains("CPU cores"), "{:?}", apu.info());
    assert_eq!(apu.read().unwrap(), Reading::Power(23.0));
}

/// An amdgpu card's hwmon directory (`amdgpu_pm.c`'s layout: `PPT` in `power1_label`, the
/// socket power in µW) and its PCI device's runtime PM status (`power/runtime_status`, as
/// `Documentation/ABI/testing/sysfs-devices-power` describes it), with the given files.
fn amdgpu_card(root: &Path, bdf: &str, n: u32, status: &str, files: &[(&str, &str)]) -> PathBuf {
    let mut all = vec![
        (false, "name", "amdgpu\n"),
        (false, "power1_label", "PPT\n"),
    ];
    all.extend(files.iter().map(|(f, c)| (false, *f, *c)));
    let hw = chip(root, &format!("pci0000:00/0000:00:01.1/{bdf}"), n, &all);
    fs::create_dir_all(hw.join("device/power")).unwrap();
    fs::write(hw.join("device/power/runtime_status"), status).unwrap();
    fs::write(hw.join("device/power/control"), "auto\n").unwrap();
    hw
}

fn amd_options(root: &Path) -> discover::Options {
    let mut opts = options(root);
    opts.amdsmi_library = Some(root.join("missing/libamd_smi.so"));
    opts
}

/// A discrete GPU runtime-suspended at discovery (BACO: its PCI device's `runtime_status` is
/// `suspended`). Since late 2024 `amdgpu_pm.c` refuses hwmon reads of a GPU that is not active
/// (`pm_runtime_get_if_active`, `EPERM`) and older kernels wake it to answer: here its power
/// file fails on read (a directory in its place), which must not matter, since a sleeping GPU's
/// file is never read. It is kept as a source, reads as asleep (0 W), says so with how to keep
/// it awake, and is read normally once it wakes.
#[test]
fn an_amd_gpu_asleep_at_discovery_is_measured_as_asleep_and_read_once_it_wakes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hw = amdgpu_card(root, "0000:0b:00.0", 2, "suspended\n", &[]);
    fs::create_dir(hw.join("power1_input")).unwrap();
    let mut d = discover::discover(&amd_options(root));
    let ids: Vec<String> = d.chosen.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(
        ids,
        ["hwmon:amdgpu:0000:0b:00.0:power1"],
        "{:?}",
        d.unavailable
    );
    let info = d.chosen[0].info().clone();
    assert_eq!(info.domain, Domain::Gpu);
    assert!(info.label.contains("asleep at discovery"), "{}", info.label);
    assert!(
        info.label.contains("runtime PM status suspended"),
        "{}",
        info.label
    );
    assert!(info.label.contains("up to 3 W"), "{}", info.label);
    assert!(
        info.label.contains("echo on > ")
            && info
                .label
                .contains("bus/pci/devices/0000:0b:00.0/power/control"),
        "{}",
        info.label
    );
    assert!(
        d.unavailable.iter().all(|u| !u.what.contains("hwmon2")),
        "{:?}",
        d.unavailable
    );
    for _ in 0..3 {
        assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(0.0));
    }
    // It wakes (a program uses it): its power is read from then on.
    fs::remove_dir(hw.join("power1_input")).unwrap();
    fs::write(hw.join("power1_input"), "87000000\n").unwrap();
    fs::write(hw.join("device/power/runtime_status"), "active\n").unwrap();
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(87.0));
    // Back to sleep, and on its way out of it: asleep, the file not read (it still says 87 W).
    for status in ["suspending\n", "suspended\n", "resuming\n"] {
        fs::write(hw.join("device/power/runtime_status"), status).unwrap();
        assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(0.0), "{status}");
    }
    fs::write(hw.join("device/power/runtime_status"), "active\n").unwrap();
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(87.0));
}

/// Awake GPUs are as before: an `active` status, or none at all (no runtime PM), reads the
/// file; a GPU that falls asleep during the run reads as asleep instead of failing, without
/// its file being read.
#[test]
fn an_awake_amd_gpu_is_read_and_reads_as_asleep_when_it_sleeps() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hw = amdgpu_card(
        root,
        "0000:0b:00.0",
        2,
        "active\n",
        &[("power1_average", "42500000\n")],
    );
    chip(
        root,
        "pci0000:00/0000:00:03.1/0000:0e:00.0",
        3,
        &[
            (false, "name", "amdgpu\n"),
            (false, "power1_input", "61000000\n"),
        ],
    );
    let mut d = discover::discover(&amd_options(root));
    let labels: Vec<String> = d.chosen.iter().map(|s| s.info().label.clone()).collect();
    assert_eq!(labels.len(), 2, "{:?}", d.unavailable);
    assert!(labels.iter().all(|l| !l.contains("asleep")), "{labels:?}");
    // The one runtime PM may put to sleep states what it counts then; the other has no status.
    assert!(
        labels[0].contains("runtime-suspended") && labels[0].contains("up to 3 W"),
        "{labels:?}"
    );
    assert!(!labels[1].contains("runtime-suspended"), "{labels:?}");
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(42.5));
    assert_eq!(d.chosen[1].read().unwrap(), Reading::Power(61.0));
    fs::write(hw.join("device/power/runtime_status"), "suspended\n").unwrap();
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(0.0));
    assert_eq!(d.chosen[1].read().unwrap(), Reading::Power(61.0));
}

/// The partner-die check looks at every power file: a `power1_input` reading 0 W beside a
/// `power1_average` that reads is a measured GPU; only a GPU whose every readable file says
/// 0 W is a die whose package reports on its partner.
#[test]
fn a_zero_power_file_beside_one_that_reads_is_no_partner_die() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    amdgpu_card(
        root,
        "0000:0b:00.0",
        2,
        "active\n",
        &[("power1_input", "0\n"), ("power1_average", "35000000\n")],
    );
    amdgpu_card(
        root,
        "0000:0e:00.0",
        3,
        "active\n",
        &[("power1_input", "0\n"), ("power1_average", "0\n")],
    );
    let mut d = discover::discover(&amd_options(root));
    let chosen: Vec<(String, String)> = d
        .chosen
        .iter()
        .map(|s| (s.info().id.clone(), s.info().label.clone()))
        .collect();
    assert_eq!(chosen.len(), 1, "{chosen:?} {:?}", d.unavailable);
    assert_eq!(chosen[0].0, "hwmon:amdgpu:0000:0b:00.0:power1");
    assert!(chosen[0].1.contains("power1_average"), "{chosen:?}");
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(35.0));
    let zero = d
        .unavailable
        .iter()
        .find(|u| u.reason.contains("0000:0e:00.0"))
        .unwrap_or_else(|| panic!("{:?}", d.unavailable));
    assert!(zero.reason.contains("reads 0 W"), "{zero:?}");
    assert!(zero.reason.contains("partner die"), "{zero:?}");
}

/// A Steam Deck-like APU (GC 10.3.1, the one part `amdgpu_pm.c` gives two power limits): the
/// socket's channel is labelled `slowPPT`, and a second channel labelled `fastPPT` carries the
/// fast limit (and, on kernels up to late 2025, a `power2_average`). The socket's channel is
/// read, by its label, whatever its number.
#[test]
fn the_socket_channel_is_chosen_by_its_label_never_fast_ppt() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let apu = |bdf: &str, n: u32, channels: [(&str, &str); 2]| {
        let mut files = vec![
            (false, "name", "amdgpu\n"),
            (false, "in0_label", "vddgfx\n"),
            (false, "in1_label", "vddnb\n"),
        ];
        let owned: Vec<(String, String, String, String)> = channels
            .iter()
            .enumerate()
            .map(|(k, (label, uw))| {
                (
                    format!("power{}_label", k + 1),
                    format!("{label}\n"),
                    format!("power{}_average", k + 1),
                    format!("{uw}\n"),
                )
            })
            .collect();
        for (lf, l, af, a) in &owned {
            files.push((false, lf.as_str(), l.as_str()));
            files.push((false, af.as_str(), a.as_str()));
        }
        files.push((false, "power1_cap", "15000000\n"));
        chip(root, &format!("pci0000:00/0000:00:08.1/{bdf}"), n, &files);
    };
    apu(
        "0000:04:00.0",
        2,
        [("slowPPT", "9000000"), ("fastPPT", "14000000")],
    );
    // The same labels on the other channels: still the slow (socket) one.
    apu(
        "0000:05:00.0",
        3,
        [("fastPPT", "14000000"), ("slowPPT", "9000000")],
    );
    let mut d = discover::discover(&amd_options(root));
    let chosen: Vec<(String, Domain, PathBuf)> = d
        .chosen
        .iter()
        .map(|s| {
            let i = s.info();
            (i.id.clone(), i.domain, i.path.clone().unwrap())
        })
        .collect();
    assert_eq!(chosen.len(), 2, "{chosen:?} {:?}", d.unavailable);
    assert_eq!(chosen[0].0, "hwmon:amdgpu:0000:04:00.0:power1");
    assert!(chosen[0].2.ends_with("power1_average"), "{chosen:?}");
    assert_eq!(chosen[1].0, "hwmon:amdgpu:0000:05:00.0:power2");
    assert!(chosen[1].2.ends_with("power2_average"), "{chosen:?}");
    assert!(
        chosen.iter().all(|c| c.1 == Domain::Module),
        "APUs: {chosen:?}"
    );
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(9.0));
    assert_eq!(d.chosen[1].read().unwrap(), Reading::Power(9.0));
}

/// A GPU asleep at discovery whose `power1_input` reads 0 W beside a `power1_average` that
/// reads (the sensor its firmware lacks, as at discovery): once it wakes, the file that reads
/// is measured, not the one at 0 W; while both read 0 W it reads 0 W, and the choice is made
/// again at the next read.
#[test]
fn a_gpu_asleep_at_discovery_is_read_from_the_file_that_reads_once_it_wakes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hw = amdgpu_card(
        root,
        "0000:0b:00.0",
        2,
        "suspended\n",
        &[("power1_input", "0\n"), ("power1_average", "0\n")],
    );
    let mut d = discover::discover(&amd_options(root));
    assert_eq!(d.chosen.len(), 1, "{:?}", d.unavailable);
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(0.0));
    fs::write(hw.join("device/power/runtime_status"), "active\n").unwrap();
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(0.0));
    fs::write(hw.join("power1_average"), "35000000\n").unwrap();
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(35.0));
    fs::write(hw.join("power1_average"), "36000000\n").unwrap();
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(36.0));
}

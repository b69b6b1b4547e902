//! The hwmon backend against temporary sysfs trees laid out as the kernel makes them: devices
//! under `/sys/devices/...` with a `hwmon/hwmonN` directory, `class/hwmon/hwmonN` links to it
//! and a `device` link back.

// Only `roots_at` is used here: the trees are built by each test.
#[allow(dead_code)]
mod common_fs;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carbonctx_sampler::discover::{self, Options, TdpModelUse};
use carbonctx_sampler::hwmon::{self, CORE_INDEX_BASE};
use carbonctx_sampler::{Domain, Found, Method, Reading};
use common_fs::roots_at;

/// Makes `<root>/sys/devices/<device_path>/hwmon/hwmon<n>`, links it from the class
/// directory, links its `device` to the device directory, and writes `files` into it (or into
/// the device directory for the `(true, ..)` entries, as drivers on the old hwmon interface
/// do). Returns the hwmon directory.
fn chip(root: &Path, device_path: &str, n: u32, files: &[(bool, &str, &str)]) -> PathBuf {
    let dev = root.join("sys/devices").join(device_path);
    let hw = dev.join("hwmon").join(format!("hwmon{n}"));
    fs::create_dir_all(&hw).unwrap();
    let class = root.join("sys/class/hwmon");
    fs::create_dir_all(&class).unwrap();
    symlink(
        format!("../../devices/{device_path}/hwmon/hwmon{n}"),
        class.join(format!("hwmon{n}")),
    )
    .unwrap();
    let dev_name = Path::new(device_path).file_name().unwrap();
    symlink(Path::new("../../..").join(dev_name), hw.join("device")).unwrap();
    assert!(
        hw.join("device").join("hwmon").is_dir(),
        "the device link leads back"
    );
    for (on_device, name, content) in files {
        let dir = if *on_device { &dev } else { &hw };
        fs::write(dir.join(name), content).unwrap();
    }
    hw
}

fn summary(found: &Found) -> Vec<(String, Domain, u32, String)> {
    found
        .sources
        .iter()
        .map(|s| {
            let i = s.info();
            (i.id.clone(), i.domain, i.index, i.label.clone())
        })
        .collect()
}

fn read(found: &mut Found, id: &str) -> Reading {
    let src = found
        .sources
        .iter_mut()
        .find(|s| s.info().id == id)
        .unwrap_or_else(|| panic!("no source {id}"));
    src.read().expect("read")
}

fn options(root: &Path) -> Options {
    Options {
        roots: roots_at(root),
        cpu_backends: vec!["powercap".into()],
        nvml: false,
        tdp_model: TdpModelUse::Never,
        ..Options::default()
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

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

fn amd_energy_files(
    sockets: &[(u32, &'static str)],
    cores: u32,
) -> Vec<(bool, &'static str, String)> {
    let mut files = vec![(false, "name", "amd_energy\n".to_string())];
    let mut ch = 1;
    for c in 0..cores {
        let input: &'static str = Box::leak(format!("energy{ch}_input").into_boxed_str());
        let label: &'static str = Box::leak(format!("energy{ch}_label").into_boxed_str());
        files.push((false, input, format!("{}\n", 1000 * (c + 1))));
        files.push((false, label, format!("Ecore{c:03}\n")));
        ch += 1;
    }
    for (s, value) in sockets {
        let input: &'static str = Box::leak(format!("energy{ch}_input").into_boxed_str());
        let label: &'static str = Box::leak(format!("energy{ch}_label").into_boxed_str());
        files.push((false, input, value.to_string()));
        files.push((false, label, format!("Esocket{s}\n")));
        ch += 1;
    }
    files
}

fn amd_chip(root: &Path, sockets: &[(u32, &'static str)], cores: u32) -> PathBuf {
    let files = amd_energy_files(sockets, cores);
    let refs: Vec<(bool, &str, &str)> =
        files.iter().map(|(d, n, c)| (*d, *n, c.as_str())).collect();
    chip(root, AMD_ENERGY, 2, &refs)
}

#[test]
fn amd_energy_sockets_and_cores() {
    let tmp = tempfile::tempdir().unwrap();
    amd_chip(tmp.path(), &[(0, "5000000\n"), (1, "6000000\n")], 3);
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    let s = summary(&found);
    assert_eq!(s.len(), 5);
    assert!(s.contains(&(
        "hwmon:amd_energy:amd_energy.0:Esocket1".into(),
        Domain::Package,
        1,
        "package-1 (amd_energy)".into()
    )));
    assert!(s.contains(&(
        "hwmon:amd_energy:amd_energy.0:Ecore002".into(),
        Domain::Core,
        CORE_INDEX_BASE + 2,
        "core 2 (amd_energy)".into()
    )));
    let sock = found
        .sources
        .iter()
        .find(|s| s.info().id.ends_with("Esocket0"))
        .unwrap()
        .info()
        .clone();
    assert_eq!(sock.interval, Duration::from_millis(1));
    assert_eq!(sock.counter.unwrap().joules_per_unit, 1e-6);
    assert_eq!(
        read(&mut found, "hwmon:amd_energy:amd_energy.0:Esocket0"),
        Reading::Counter(5_000_000)
    );
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
    for p in 0..2 {
        let z = tmp
            .path()
            .join(format!("sys/class/powercap/intel-rapl:{p}"));
        fs::create_dir_all(&z).unwrap();
        fs::write(z.join("name"), format!("package-{p}\n")).unwrap();
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
    // Per-core counters are read (nothing else measures one core).
    let cores = d
        .chosen
        .iter()
        .filter(|s| s.info().domain == Domain::Core)
        .count();
    assert_eq!(cores, 2);

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

/// A Grace Hopper superchip's four ACPI meters per socket, on the old hwmon interface (files
/// and name on the ACPI device).
fn grace_meter(root: &Path, n: u32, oem: &str, uw: &str) {
    chip(
        root,
        &format!("LNXSYSTM:00/LNXSYBUS:00/ACPI000D:{n:02}"),
        n,
        &[
            (true, "name", "power_meter\n"),
            (true, "power1_oem_info", &format!("{oem}\n")),
            (true, "power1_average", uw),
            (true, "power1_average_interval", "50\n"),
            (true, "power1_average_interval_min", "50\n"),
            (true, "power1_average_interval_max", "1000\n"),
            (true, "power1_is_battery", "0\n"),
            (true, "power1_model_number", "\n"),
        ],
    );
}

#[test]
fn grace_meters_by_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    grace_meter(tmp.path(), 0, "Module Power Socket 0", "480000000\n");
    grace_meter(tmp.path(), 1, "Grace Power Socket 0", "120500000\n");
    grace_meter(tmp.path(), 2, "CPU Power Socket 0", "90000000\n");
    grace_meter(tmp.path(), 3, "SysIO Power Socket 0", "25000000\n");
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "hwmon:power_meter:ACPI000D:00:power1".into(),
                Domain::Module,
                0,
                "Grace module power (socket 0)".into()
            ),
            (
                "hwmon:power_meter:ACPI000D:01:power1".into(),
                Domain::Package,
                0,
                "Grace CPU power (socket 0)".into()
            ),
            (
                "hwmon:power_meter:ACPI000D:02:power1".into(),
                Domain::Core,
                0,
                "Grace CPU rail (socket 0)".into()
            ),
            (
                "hwmon:power_meter:ACPI000D:03:power1".into(),
                Domain::Uncore,
                0,
                "Grace SysIO rail (socket 0)".into()
            ),
        ]
    );
    let info = found.sources[0].info();
    assert_eq!(info.method, Method::IntegratedPower);
    assert_eq!(info.counter, None);
    assert_eq!(info.interval, Duration::from_millis(50));
    assert_eq!(
        read(&mut found, "hwmon:power_meter:ACPI000D:01:power1"),
        Reading::Power(120.5)
    );
    // The Grace CPU is the package: no estimate is made for it.
    let mut opts = options(tmp.path());
    opts.tdp_model = TdpModelUse::Auto;
    let d = discover::discover(&opts);
    assert!(d.chosen.iter().all(|s| s.info().backend == "hwmon"));
    assert_eq!(d.chosen.len(), 4);
}

#[test]
fn a_server_power_meter_is_the_nodes_power() {
    let tmp = tempfile::tempdir().unwrap();
    // The newer hwmon interface: files in the hwmon directory.
    chip(
        tmp.path(),
        "LNXSYSTM:00/LNXSYBUS:00/ACPI000D:00",
        4,
        &[
            (false, "name", "power_meter\n"),
            (false, "power1_average", "312000000\n"),
            (false, "power1_average_interval", "300000\n"),
            (false, "power1_oem_info", "Acme PSU\n"),
            (false, "power1_is_battery", "0\n"),
        ],
    );
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert_eq!(
        summary(&found),
        vec![(
            "hwmon:power_meter:ACPI000D:00:power1".into(),
            Domain::Node,
            0,
            "node power (ACPI power meter ACPI000D:00) [Acme PSU]".into()
        )]
    );
    // A five-minute averaging interval is polled no slower than once a second.
    assert_eq!(found.sources[0].info().interval, Duration::from_secs(1));
    assert_eq!(
        read(&mut found, "hwmon:power_meter:ACPI000D:00:power1"),
        Reading::Power(312.0)
    );
}

const ORIN_I2C: &str = "platform/bus@0/c240000.i2c/i2c-1";

#[test]
fn jetson_rails_and_module_input() {
    let tmp = tempfile::tempdir().unwrap();
    chip(
        tmp.path(),
        &format!("{ORIN_I2C}/1-0040"),
        1,
        &[
            (false, "name", "ina3221\n"),
            (false, "in1_label", "VDD_IN\n"),
            (false, "in1_enable", "1\n"),
            (false, "in1_input", "5072\n"),
            (false, "curr1_input", "1480\n"),
            (false, "in2_label", "VDD_CPU_GPU_CV\n"),
            (false, "in2_enable", "1\n"),
            (false, "in2_input", "5064\n"),
            (false, "curr2_input", "320\n"),
            (false, "in3_label", "VDD_SOC\n"),
            (false, "in3_enable", "1\n"),
            (false, "in3_input", "5064\n"),
            (false, "curr3_input", "-4\n"),
            (false, "in4_input", "14800\n"),
            (false, "in7_input", "20000\n"),
            (false, "in7_label", "sum of shunt voltages\n"),
            (false, "shunt1_resistor", "10000\n"),
        ],
    );
    // A second chip: channel 1 not connected, 2 disabled, 3 unlabelled.
    chip(
        tmp.path(),
        &format!("{ORIN_I2C}/1-0041"),
        2,
        &[
            (false, "name", "ina3221\n"),
            (false, "in1_label", "NC\n"),
            (false, "in1_input", "0\n"),
            (false, "curr1_input", "0\n"),
            (false, "in2_enable", "0\n"),
            (false, "in2_label", "VDDQ_VDD2_1V8AO\n"),
            (false, "in3_enable", "1\n"),
            (false, "in3_input", "1800\n"),
            (false, "curr3_input", "100\n"),
        ],
    );
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "hwmon:ina3221:1-0040:in1".into(),
                Domain::Module,
                0,
                "module input VDD_IN".into()
            ),
            (
                "hwmon:ina3221:1-0040:in2".into(),
                Domain::Rail,
                0,
                "rail VDD_CPU_GPU_CV".into()
            ),
            (
                "hwmon:ina3221:1-0040:in3".into(),
                Domain::Rail,
                1,
                "rail VDD_SOC".into()
            ),
            (
                "hwmon:ina3221:1-0041:in3".into(),
                Domain::Rail,
                2,
                "rail channel 3 of 1-0041".into()
            ),
        ]
    );
    let Reading::Power(w) = read(&mut found, "hwmon:ina3221:1-0040:in1") else {
        panic!()
    };
    assert!((w - 5.072 * 1.48).abs() < 1e-9, "{w}");
    assert_eq!(found.sources[0].info().method, Method::IntegratedPower);
    // A negative current (a rail feeding back) is read as it is; the sampler counts it as 0.
    let Reading::Power(w) = read(&mut found, "hwmon:ina3221:1-0040:in3") else {
        panic!()
    };
    assert!(w < 0.0);
    // Modules and rails are never chosen in place of anything: each is its own figure.
    let d = discover::discover(&options(tmp.path()));
    assert_eq!(d.chosen.len(), 4);
    assert!(d.alternatives.is_empty());
}

#[test]
fn hostile_and_broken_trees_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // No class directory at all: nothing found, nothing to explain.
    let found = hwmon::discover(&roots_at(root), 0);
    assert!(found.sources.is_empty() && found.unavailable.is_empty());

    // A counter that does not parse, a name in binary, a label with control characters.
    chip(
        root,
        XE_CARD,
        0,
        &[(false, "name", "xe\n"), (false, "energy1_input", "lots\n")],
    );
    chip(root, "virtual/a", 1, &[(false, "name", "\u{1}\u{2}xe\n")]);
    chip(
        root,
        AMD_ENERGY,
        2,
        &[
            (false, "name", "amd_energy\n"),
            (false, "energy1_input", "5\n"),
            (false, "energy1_label", "Esocket\u{7}0\n"),
            (false, "energy2_input", "-5\n"),
            (false, "energy2_label", "Esocket1\n"),
            (false, "energy99999999_input", "5\n"),
        ],
    );
    // A meter whose value is a directory, an INA3221 with half a channel.
    let pm = chip(
        root,
        "LNXSYSTM:00/ACPI000D:00",
        3,
        &[(false, "name", "power_meter\n")],
    );
    fs::create_dir_all(pm.join("power1_average")).unwrap();
    chip(
        root,
        "platform/i2c-1/1-0040",
        4,
        &[(false, "name", "ina3221\n"), (false, "in1_input", "5000\n")],
    );
    // A class entry whose link points nowhere, and one without a device link.
    symlink(
        "../../devices/gone/hwmon/hwmon9",
        root.join("sys/class/hwmon/hwmon9"),
    )
    .unwrap();
    let lone = root.join("sys/class/hwmon/hwmon10");
    fs::create_dir_all(&lone).unwrap();
    fs::write(lone.join("name"), "power_meter\n").unwrap();
    fs::write(lone.join("power1_average"), "1000000\n").unwrap();

    let mut found = hwmon::discover(&roots_at(root), 0);
    let ids: Vec<_> = found.sources.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(ids, vec!["hwmon:power_meter:hwmon10:power1".to_string()]);
    assert_eq!(read(&mut found, &ids[0]), Reading::Power(1.0));
    let what: Vec<_> = found.unavailable.iter().map(|u| u.what.clone()).collect();
    for needle in [
        "hwmon0/energy1_input",
        "hwmon2/energy1_label",
        "hwmon2/energy2_input",
        "hwmon3/power1_average",
        "hwmon4",
    ] {
        assert!(
            what.iter().any(|w| w.ends_with(needle)),
            "{needle} not explained: {:?}",
            found.unavailable
        );
    }
    assert!(found
        .unavailable
        .iter()
        .all(|u| u.backend == "hwmon" && !u.reason.is_empty() && !u.hint.is_empty()));
}

#[test]
fn a_channel_that_stops_answering_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let hw = chip(
        tmp.path(),
        XE_CARD,
        0,
        &[(false, "name", "xe\n"), (false, "energy1_input", "10\n")],
    );
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    fs::write(hw.join("energy1_input"), "").unwrap();
    let err = found.sources[0].read().unwrap_err();
    assert!(err.to_string().contains("energy1_input"), "{err}");
    fs::write(hw.join("energy1_input"), "11\n").unwrap();
    assert_eq!(found.sources[0].read().unwrap(), Reading::Counter(11));
}

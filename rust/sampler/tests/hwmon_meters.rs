//! The hwmon backend: ACPI power meters (servers, NVIDIA Grace), INA3221 rails (Jetson) and
//! broken trees, on temporary sysfs trees laid out as the kernel makes them.

// Each test file uses part of the shared helpers.
#[allow(dead_code)]
mod common_fs;
#[allow(dead_code)]
mod common_hwmon;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use carbonctx_sampler::discover::{self, TdpModelUse};
use carbonctx_sampler::hwmon;
use carbonctx_sampler::{Domain, Method, Reading};
use common_fs::{roots_at, summary};
use common_hwmon::{chip, options, read};

const XE_CARD: &str = "pci0000:00/0000:00:01.0/0000:03:00.0";
const AMD_ENERGY: &str = "platform/amd_energy.0";

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
    // The 50 ms average stands for the middle of its window, 25 ms (and the reader thread's
    // age) before the read.
    let (w, ago) = power_at(read(&mut found, "hwmon:power_meter:ACPI000D:01:power1"));
    assert_eq!(w, 120.5);
    assert!(ago >= Duration::from_millis(25), "{ago:?}");
    assert!(ago < Duration::from_secs(10), "{ago:?}");
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
    // The five-minute average is moved back by four poll intervals at most (regions would
    // otherwise wait minutes for it).
    let (w, ago) = power_at(read(&mut found, "hwmon:power_meter:ACPI000D:00:power1"));
    assert_eq!(w, 312.0);
    assert!(ago >= Duration::from_secs(4), "{ago:?}");
    assert!(ago < Duration::from_secs(9), "{ago:?}");
}

/// The watts and how long before the read they stood, for a meter's reading.
fn power_at(r: Reading) -> (f64, Duration) {
    match r {
        Reading::PowerAt { watts, ago_ns } => (watts, Duration::from_nanos(ago_ns)),
        other => panic!("not a power with its time: {other:?}"),
    }
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

/// The hwmon ABI lets a chip's attributes live in its device's directory (drivers on the old
/// interface, whose hwmon directory holds no `name`): they are read there, for every driver.
#[test]
fn attributes_on_the_device_directory_are_read_there() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<(bool, &str, &str)> = [
        ("name", "ina3221\n"),
        ("in1_label", "VDD_IN\n"),
        ("in1_input", "5000\n"),
        ("curr1_input", "2000\n"),
    ]
    .into_iter()
    .map(|(f, c)| (true, f, c))
    .collect();
    chip(tmp.path(), &format!("{ORIN_I2C}/1-0040"), 1, &files);
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![(
            "hwmon:ina3221:1-0040:in1".into(),
            Domain::Module,
            0,
            "module input VDD_IN".into()
        )]
    );
    let Reading::Power(w) = read(&mut found, "hwmon:ina3221:1-0040:in1") else {
        panic!()
    };
    assert!((w - 10.0).abs() < 1e-9, "{w}");
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
    assert_eq!(power_at(read(&mut found, &ids[0])).0, 1.0);
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

/// A meter averaging over 1 s, polled faster than it updates (`intervals` for hwmon set to
/// 10 ms, as for an Intel GPU's counter): its last reading stands half a window and the reader
/// thread's age before the last poll. A region inside that span waits for the meter's next
/// reading instead of being resolved at once with no energy after the last reading.
#[test]
fn a_meter_polled_faster_than_it_updates_is_not_taken_as_idle() {
    use carbonctx_sampler::sampler::{Config, Sampler};

    let tmp = tempfile::tempdir().unwrap();
    chip(
        tmp.path(),
        "LNXSYSTM:00/LNXSYBUS:00/ACPI000D:00",
        0,
        &[
            (false, "name", "power_meter\n"),
            (false, "power1_average", "200000000\n"),
            (false, "power1_average_interval", "1000\n"),
        ],
    );
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert_eq!(found.sources.len(), 1);
    let cfg = Config {
        intervals: vec![("hwmon".into(), Duration::from_millis(10))],
        ..Config::default()
    };
    let (s, unavailable) = Sampler::start(found.sources, cfg).unwrap();
    assert!(unavailable.is_empty());
    let id = s.begin();
    std::thread::sleep(Duration::from_millis(300));
    let t = s.end(id);
    assert!(s.wait_until_resolved(t, Duration::from_secs(30)));
    let r = s.drain().remove(0);
    let d = (r.t1_ns - r.t0_ns) as f64 * 1e-9;
    let j = r.joules[0];
    // A constant 200 W: 200 W times the region's length (not 0 J, the last reading held flat).
    assert!(
        (j - 200.0 * d).abs() <= 0.01 * 200.0 * d,
        "{j} J over {d} s"
    );
    s.stop();
}

/// ACPI (section 10.4, Power Meters) gives an unknown value as an integer with every bit set,
/// 32 or 64 bits wide, and `acpi_power_meter.c` before it checked for that printed `_PMM`'s
/// answer times 1000 as it was: `power1_average` then reads 4294967295000 (the 32-bit one) or
/// 18446744073709550616 (the 64-bit one, wrapped), and an unknown `_GAI` makes
/// `power1_average_interval` read 4294967295 ms. Neither is a measurement: a meter that says
/// its reading is unknown is explained, never read as megawatts, and an unknown window is no
/// window (the reading is not moved back by one).
#[test]
fn a_meter_whose_firmware_says_unknown_is_no_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let acpi = "LNXSYSTM:00/LNXSYBUS:00";
    // The old hwmon interface (name and files on the ACPI device), 32-bit unknown.
    chip(
        root,
        &format!("{acpi}/ACPI000D:00"),
        1,
        &[
            (true, "name", "power_meter\n"),
            (true, "power1_average", "4294967295000\n"),
            (true, "power1_average_interval", "1000\n"),
            (true, "power1_is_battery", "0\n"),
        ],
    );
    // The newer one (files in the hwmon directory), 64-bit unknown.
    chip(
        root,
        &format!("{acpi}/ACPI000D:01"),
        2,
        &[
            (false, "name", "power_meter\n"),
            (false, "power1_average", "18446744073709550616\n"),
            (false, "power1_average_interval", "1000\n"),
        ],
    );
    // A meter that measures, over a window the firmware does not know.
    chip(
        root,
        &format!("{acpi}/ACPI000D:02"),
        3,
        &[
            (false, "name", "power_meter\n"),
            (false, "power1_average", "250000000\n"),
            (false, "power1_average_interval", "4294967295\n"),
        ],
    );
    let mut found = hwmon::discover(&roots_at(root), 0);
    let ids: Vec<String> = found.sources.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(
        ids,
        ["hwmon:power_meter:ACPI000D:02:power1"],
        "{:?}",
        found.unavailable
    );
    for dev in ["hwmon1/device/power1_average", "hwmon2/power1_average"] {
        let u = found
            .unavailable
            .iter()
            .find(|u| u.what.ends_with(dev))
            .unwrap_or_else(|| panic!("{dev} not explained: {:?}", found.unavailable));
        assert!(u.reason.contains("unknown"), "{u:?}");
        assert!(u.hint.contains("no power reading now"), "{u:?}");
    }
    let src = &found.sources[0];
    assert_eq!(src.info().interval, Duration::from_secs(1));
    let (w, ago) = power_at(read(&mut found, "hwmon:power_meter:ACPI000D:02:power1"));
    assert_eq!(w, 250.0);
    // With a window of 4294967295 ms taken as said, the reading would stand 4 s back.
    assert!(ago < Duration::from_secs(3), "{ago:?}");
}

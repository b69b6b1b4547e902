//! The hwmon backend for amdgpu cards and APUs, on temporary sysfs trees laid out as
//! `amdgpu_pm.c` makes them: which power file measures, an APU's socket beside the package, the
//! socket channel chosen by its label, and GPUs asleep (runtime-suspended) at discovery or
//! during the run.

// Each test file uses part of the shared helpers.
#[allow(dead_code)]
mod common_fs;
#[allow(dead_code)]
mod common_hwmon;

use std::fs;
use std::path::{Path, PathBuf};

use carbonctx_sampler::discover;
use carbonctx_sampler::{Domain, Reading};
use common_hwmon::{chip, options};

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

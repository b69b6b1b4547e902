//! The utilisation × TDP model: table matching, /proc/stat snapshots, labels and failures.

mod common_fs;

use std::fs;
use std::path::Path;

use carbonctx_sampler::tdp_model::{self, CpuTimes, TdpSource, DEFAULT_TDP_W};
use carbonctx_sampler::{Domain, Method, Reading};
use common_fs::{fixture, roots_at};

fn power(r: Reading) -> f64 {
    match r {
        Reading::Power(w) => w,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn matches_real_model_strings() {
    let cases = [
        (
            "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
            "Intel Xeon Platinum 8375C",
            300.0,
        ),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),
        (
            "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz",
            "Intel Core i7-9700K",
            95.0,
        ),
        (
            "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz",
            "Intel Xeon E5-2686 v4",
            145.0,
        ),
        (
            "AMD Ryzen 9 5950X 16-Core Processor",
            "AMD Ryzen 9 5950X",
            105.0,
        ),
        // The longest whole-word match wins over the bare "6140" (an AMD Opteron).
        (
            "Intel(R) Xeon(R) Gold 6140 CPU @ 2.30GHz",
            "Intel Xeon Gold 6140",
            140.0,
        ),
        ("AMD Opteron(tm) Processor 6140", "AMD Opteron 6140", 115.0),
        // Bare table names are AMD parts and match AMD model strings.
        (
            "AMD Turion(tm) 64 X2 Mobile Technology TL-60",
            "TL-60",
            31.0,
        ),
    ];
    for (model, name, tdp) in cases {
        assert_eq!(tdp_model::lookup_tdp(model), Some((name, tdp)), "{model}");
    }
    // Not in the table: generic virtual CPUs, a bare family name, an AMD-only bare number
    // inside an Intel name, a model that only shares a prefix with a table name.
    for model in [
        "AMD EPYC",
        "QEMU Virtual CPU version 2.5+",
        "Intel(R) Imaginary 6140",
        "Intel(R) Core(TM) i7-9700KS CPU @ 3.60GHz",
        "",
    ] {
        assert_eq!(tdp_model::lookup_tdp(model), None, "{model}");
    }
}

#[test]
fn parses_proc_stat_and_utilisation() {
    let text = fs::read_to_string(fixture("intel-server-2s/proc/stat")).unwrap();
    let t = tdp_model::parse_proc_stat(&text).unwrap();
    // user nice system idle iowait irq softirq steal = 4705 150 1120 16250 520 0 45 0
    assert_eq!(
        t,
        CpuTimes {
            busy: 4705 + 150 + 1120 + 45,
            total: 4705 + 150 + 1120 + 16250 + 520 + 45
        }
    );
    assert_eq!(tdp_model::parse_proc_stat("cpu0 1 2 3 4\n"), None);
    assert_eq!(tdp_model::parse_proc_stat("cpu  1 2 x 4\n"), None);
    assert_eq!(tdp_model::parse_proc_stat("cpu  1 2 3\n"), None);
    // Four fields are enough (very old kernels).
    assert_eq!(
        tdp_model::parse_proc_stat("cpu  1 2 3 4\n"),
        Some(CpuTimes { busy: 6, total: 10 })
    );
    let a = CpuTimes {
        busy: 100,
        total: 1000,
    };
    let b = CpuTimes {
        busy: 175,
        total: 1100,
    };
    assert_eq!(tdp_model::utilisation(a, b), Some(0.75));
    assert_eq!(tdp_model::utilisation(a, a), None);
    assert_eq!(tdp_model::utilisation(b, a), None);
}

fn machine(dir: &Path, model: &str, packages: u32) {
    let mut cpuinfo = String::new();
    for p in 0..packages {
        cpuinfo.push_str(&format!(
            "processor\t: {p}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nphysical id\t: {p}\n\n"
        ));
    }
    fs::create_dir_all(dir.join("proc")).unwrap();
    fs::write(dir.join("proc/cpuinfo"), cpuinfo).unwrap();
    stat(dir, 0, 1000);
}

/// Writes a /proc/stat whose aggregate line has `busy` busy and `total` total ticks.
fn stat(dir: &Path, busy: u64, total: u64) {
    let idle = total - busy;
    fs::write(
        dir.join("proc/stat"),
        format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n"),
    )
    .unwrap();
}

#[test]
fn power_from_two_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz", 2);
    let mut found = tdp_model::discover(&roots_at(dir.path()), Some("50"));
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(found.sources.len(), 1);
    let src = &mut found.sources[0];
    let info = src.info().clone();
    assert_eq!(info.id, "estimate:cpu");
    assert_eq!(info.backend, "estimate");
    assert_eq!(info.domain, Domain::Package);
    assert_eq!(info.index, 0);
    assert_eq!(info.method, Method::Estimate);
    assert_eq!(info.counter, None);
    assert_eq!(info.interval, std::time::Duration::from_millis(100));
    assert!(info.label.starts_with("estimate"), "{}", info.label);
    assert!(info.label.contains("2 × 50 W"), "{}", info.label);
    assert!(info.label.contains("CARBONCTX_CPU_TDP_W"), "{}", info.label);

    // No tick since discovery: 0 W.
    assert_eq!(power(src.read().unwrap()), 0.0);
    // 30 of 100 ticks busy: 30 % of 2 × 50 W.
    stat(dir.path(), 30, 1100);
    assert!((power(src.read().unwrap()) - 30.0).abs() < 1e-9);
    // No tick since: the last value again.
    assert!((power(src.read().unwrap()) - 30.0).abs() < 1e-9);
    // Fully busy.
    stat(dir.path(), 230, 1300);
    assert!((power(src.read().unwrap()) - 100.0).abs() < 1e-9);
    // Garbled: an error naming the file, not a panic.
    fs::write(dir.path().join("proc/stat"), "cpu  what\n").unwrap();
    let err = src.read().unwrap_err().to_string();
    assert!(err.contains("proc/stat"), "{err}");
    fs::write(dir.path().join("proc/stat"), "").unwrap();
    assert!(src.read().is_err());
}

#[test]
fn tdp_from_the_table_and_the_default() {
    let (tdp, problem) = tdp_model::choose_tdp(&roots_at(&fixture("intel-server-2s")), None);
    assert!(problem.is_none());
    assert_eq!(tdp.source, TdpSource::Table);
    assert_eq!(tdp.packages, 2);
    assert_eq!(tdp.tdp_w, 300.0);
    assert_eq!(tdp.total_w, 600.0);
    assert_eq!(tdp.matched, Some("Intel Xeon Platinum 8375C"));
    assert!(tdp.label().contains("2 × 300 W"), "{}", tdp.label());
    assert!(
        tdp.label().contains("Intel Xeon Platinum 8375C"),
        "{}",
        tdp.label()
    );

    let (tdp, _) = tdp_model::choose_tdp(&roots_at(&fixture("amd-epyc-2s")), None);
    assert_eq!((tdp.tdp_w, tdp.total_w), (280.0, 560.0));

    let dir = tempfile::tempdir().unwrap();
    machine(dir.path(), "QEMU Virtual CPU version 2.5+", 1);
    let found = tdp_model::discover(&roots_at(dir.path()), None);
    let label = &found.sources[0].info().label;
    assert!(label.contains("not in the TDP table"), "{label}");
    assert!(label.contains("QEMU Virtual CPU"), "{label}");
    assert!(label.contains("CARBONCTX_CPU_TDP_W"), "{label}");
    assert!(label.contains(&format!("{DEFAULT_TDP_W} W")), "{label}");
}

#[test]
fn a_bad_setting_is_reported_and_ignored() {
    for bad in ["lots", "-5", "0", "NaN", "inf"] {
        let found = tdp_model::discover(&roots_at(&fixture("intel-client")), Some(bad));
        assert_eq!(found.sources.len(), 1);
        assert_eq!(found.unavailable.len(), 1, "{bad}");
        let u = &found.unavailable[0];
        assert_eq!(u.what, "CARBONCTX_CPU_TDP_W");
        assert!(u.reason.contains(bad), "{u:?}");
        assert!(found.sources[0]
            .info()
            .label
            .contains("Intel Core i7-9700K"));
    }
    assert_eq!(tdp_model::parse_tdp_setting(" 125.5 "), Some(125.5));
}

#[test]
fn missing_files() {
    let dir = tempfile::tempdir().unwrap();
    // No cpuinfo: the default TDP and one package; no stat: unavailable.
    let found = tdp_model::discover(&roots_at(dir.path()), None);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    assert!(found.unavailable[0].what.ends_with("proc/stat"));
    assert!(
        found.unavailable[0].reason.contains("No such file"),
        "{:?}",
        found.unavailable[0]
    );
    assert!(tdp_model::describe(&roots_at(dir.path()), None).is_none());

    fs::create_dir_all(dir.path().join("proc")).unwrap();
    fs::write(dir.path().join("proc/stat"), "intr 1 2\n").unwrap();
    let found = tdp_model::discover(&roots_at(dir.path()), None);
    assert!(found.sources.is_empty());
    assert!(
        found.unavailable[0].reason.contains("cpu line"),
        "{:?}",
        found.unavailable[0]
    );
}

#[test]
fn describe_the_fixtures() {
    let d = tdp_model::describe(&roots_at(&fixture("intel-client")), None).unwrap();
    assert_eq!(d.model, "Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz");
    assert_eq!(d.packages, 1);
    assert_eq!(d.tdp_w, 95.0);
    assert_eq!(d.source.as_str(), "table");
}

#[test]
fn normalises_model_names() {
    assert_eq!(
        tdp_model::normalise_model("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz"),
        ["intel", "xeon", "e5-2686", "v4"]
    );
    assert_eq!(
        tdp_model::normalise_model("  AMD Ryzen 9 5950X 16-Core Processor  "),
        ["amd", "ryzen", "9", "5950x", "16-core"]
    );
}

/// A virtual machine's /proc/cpuinfo: `vcpus` logical CPUs in one virtual socket, the host's
/// model name, and the `hypervisor` flag (as AWS, GCP, Azure and KVM guests show).
fn vm(dir: &Path, model: &str, vcpus: u32) {
    let mut cpuinfo = String::new();
    for p in 0..vcpus {
        cpuinfo.push_str(&format!(
            "processor\t: {p}\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\n\
             physical id\t: 0\nsiblings\t: {vcpus}\ncpu cores\t: {}\n\
             flags\t\t: fpu vme de pse tsc msr pae sse sse2 ht syscall nx lm hypervisor lahf_lm\n\n",
            vcpus.div_ceil(2)
        ));
    }
    fs::create_dir_all(dir.join("proc")).unwrap();
    fs::write(dir.join("proc/cpuinfo"), cpuinfo).unwrap();
    stat(dir, 0, 1000);
}

#[test]
fn in_a_virtual_machine_the_tdp_is_the_guests_share_and_an_upper_bound() {
    // 2 vCPUs of a 64-core EPYC 7763 (280 W): 2/64 of the package.
    let dir = tempfile::tempdir().unwrap();
    vm(dir.path(), "AMD EPYC 7763 64-Core Processor", 2);
    let (tdp, _) = tdp_model::choose_tdp(&roots_at(dir.path()), None);
    assert_eq!(tdp.tdp_w, 280.0);
    assert!(
        (tdp.total_w - 280.0 * 2.0 / 64.0).abs() < 1e-9,
        "{}",
        tdp.total_w
    );
    let label = tdp.label();
    assert!(label.contains("virtual machine"), "{label}");
    assert!(label.contains("2 vCPUs of a 64-core package"), "{label}");
    assert!(label.contains("8.75 W"), "{label}");
    assert!(label.contains("upper bound"), "{label}");
    // One busy thread of the two: half of 8.75 W, not half of 280 W.
    let mut found = tdp_model::discover(&roots_at(dir.path()), None);
    let src = &mut found.sources[0];
    assert!(src.info().label.contains("upper bound"));
    stat(dir.path(), 50, 1100);
    assert!((power(src.read().unwrap()) - 8.75 / 2.0).abs() < 1e-9);

    // A package of unknown size: the whole TDP, said to be an upper bound, with what to do.
    vm(
        dir.path(),
        "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
        2,
    );
    let (tdp, _) = tdp_model::choose_tdp(&roots_at(dir.path()), None);
    assert_eq!(tdp.total_w, tdp.tdp_w);
    let label = tdp.label();
    assert!(label.contains("package of unknown size"), "{label}");
    assert!(label.contains("upper bound"), "{label}");
    assert!(label.contains("CARBONCTX_CPU_TDP_W"), "{label}");

    // The user's setting is taken as given.
    let (tdp, _) = tdp_model::choose_tdp(&roots_at(dir.path()), Some("12"));
    assert_eq!((tdp.total_w, tdp.vm.clone()), (12.0, None));

    // Bare metal: no hypervisor flag, no scaling, no VM words.
    let (tdp, _) = tdp_model::choose_tdp(&roots_at(&fixture("amd-epyc-2s")), None);
    assert_eq!((tdp.total_w, tdp.vm.clone()), (560.0, None));
    assert!(!tdp.label().contains("virtual machine"));
}

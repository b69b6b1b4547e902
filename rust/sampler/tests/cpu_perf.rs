//! The perf power PMU backend: parsing its description, and failing cleanly where the PMU
//! cannot be opened (there is none on the machines these tests run on).

mod common_fs;

use std::fs;

use carbonctx_sampler::perf::{self, PerfEvent};
use carbonctx_sampler::Domain;
use carbonctx_sim::{SimMachine, SimSpec, SquareWave, SIM_PERF_TYPE};
use common_fs::{fixture, roots_at};

/// 2^-32 J, the scale the kernel publishes (`2.3283064365386962890625e-10`).
fn scale() -> f64 {
    2f64.powi(-32)
}

fn event(name: &'static str, domain: Domain, config: u64) -> PerfEvent {
    PerfEvent {
        name,
        domain,
        config,
        scale: scale(),
        unit: "Joules".into(),
    }
}

#[test]
fn parses_the_server_pmu() {
    let pmu = perf::parse_pmu(&fixture("intel-server-2s/sys")).unwrap();
    assert_eq!(pmu.pmu_type, 2_147_483_632);
    assert_eq!(pmu.cpus, vec![(0, 0), (2, 1)]);
    assert_eq!(
        pmu.events,
        vec![
            event("energy-pkg", Domain::Package, 2),
            event("energy-ram", Domain::Dram, 3)
        ]
    );
    assert!(pmu.problems.is_empty());
}

#[test]
fn parses_the_client_and_amd_pmus() {
    let pmu = perf::parse_pmu(&fixture("intel-client/sys")).unwrap();
    assert_eq!(pmu.cpus, vec![(0, 0)]);
    assert_eq!(
        pmu.events,
        vec![
            event("energy-pkg", Domain::Package, 2),
            event("energy-cores", Domain::Core, 1),
            event("energy-gpu", Domain::Uncore, 4),
            event("energy-ram", Domain::Dram, 3),
            event("energy-psys", Domain::Psys, 5),
        ]
    );
    let pmu = perf::parse_pmu(&fixture("amd-epyc-2s/sys")).unwrap();
    assert_eq!(pmu.cpus, vec![(0, 0), (2, 1)]);
    assert_eq!(pmu.events, vec![event("energy-pkg", Domain::Package, 2)]);
}

#[test]
fn opening_fails_cleanly_with_a_reason() {
    for name in ["intel-server-2s", "intel-client", "amd-epyc-2s"] {
        let found = perf::discover(&roots_at(&fixture(name)));
        assert!(found.sources.is_empty(), "{name}");
        assert!(!found.unavailable.is_empty(), "{name}");
        for u in &found.unavailable {
            assert_eq!(u.backend, "perf");
            assert!(u.reason.contains("perf_event_open"), "{u:?}");
            assert!(u.what.contains("events/energy-"), "{u:?}");
            assert!(u.what.contains("on cpu "), "{u:?}");
            if u.reason.contains("refused") {
                // Blocked (seccomp, paranoid): the server fixture's level is quoted.
                assert!(u.hint.contains("perf_event_paranoid"), "{u:?}");
                if name == "intel-server-2s" {
                    assert!(u.reason.contains("perf_event_paranoid is 2"), "{u:?}");
                }
            }
        }
    }
}

#[test]
fn open_errors_say_what_to_do() {
    let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
    let (u, fatal) = perf::open_error("energy-pkg on cpu 0", &eacces, Some("2\n"));
    assert!(fatal);
    assert!(
        u.reason.contains("perf_event_paranoid is 2"),
        "{}",
        u.reason
    );
    assert!(u.hint.contains("sysctl kernel.perf_event_paranoid=0"));
    assert!(u.hint.contains("CAP_PERFMON"));
    let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
    let (u, fatal) = perf::open_error("x", &eperm, None);
    assert!(fatal);
    assert!(u.reason.contains("is unknown"), "{}", u.reason);
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
    let (u, fatal) = perf::open_error("x", &enoent, Some("0"));
    assert!(!fatal);
    assert!(u.reason.contains("no such power PMU event"), "{}", u.reason);
}

#[test]
fn missing_pmu() {
    let dir = tempfile::tempdir().unwrap();
    let found = perf::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    assert!(found.unavailable[0].reason.contains("no perf power PMU"));
    assert!(found.unavailable[0].what.ends_with("devices/power"));
}

#[test]
fn garbled_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let pmu = dir.path().join("sys/bus/event_source/devices/power");
    let w = |rel: &str, text: &str| {
        let p = pmu.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w("type", "23\n");
    w("cpumask", "0-1\n");
    w("events/energy-pkg", "event=0x02\n");
    w("events/energy-pkg.scale", "not-a-number\n");
    w("events/energy-pkg.unit", "Joules\n");
    w("events/energy-ram", "event=0x03,umask=0x1\n");
    w("events/energy-cores", "event=0x01\n");
    w("events/energy-cores.scale", "1e-6\n");
    w("events/energy-cores.unit", "Watts\n");
    w("events/energy-psys", "event=0x05\n");
    w("events/energy-psys.scale", "2.3283064365386962890625e-10\n");
    // No .unit: taken as Joules.
    let parsed = perf::parse_pmu(&dir.path().join("sys")).unwrap();
    // Without topology files, packages are numbered in cpumask order.
    assert_eq!(parsed.cpus, vec![(0, 0), (1, 1)]);
    assert_eq!(parsed.events, vec![event("energy-psys", Domain::Psys, 5)]);
    let reasons: Vec<_> = parsed.problems.iter().map(|u| u.reason.clone()).collect();
    assert_eq!(parsed.problems.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not-a-number")));
    assert!(reasons.iter().any(|r| r.contains("umask")));
    assert!(reasons.iter().any(|r| r.contains("Watts")));

    w("cpumask", "\n");
    let err = perf::parse_pmu(&dir.path().join("sys")).unwrap_err();
    assert!(err.what.ends_with("cpumask"), "{err:?}");
    w("type", "power\n");
    let err = perf::parse_pmu(&dir.path().join("sys")).unwrap_err();
    assert!(err.what.ends_with("type"), "{err:?}");
    assert!(err.reason.contains("power"), "{err:?}");
}

#[test]
fn the_simulated_pmu_parses() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimMachine::new(SimSpec::server(
        dir.path(),
        2,
        SquareWave::constant(50.0),
        SquareWave::constant(5.0),
    ))
    .unwrap();
    let pmu = perf::parse_pmu(&sim.roots().sys).unwrap();
    assert_eq!(pmu.pmu_type, SIM_PERF_TYPE);
    assert_eq!(pmu.cpus, vec![(0, 0), (2, 1)]);
    assert_eq!(
        pmu.events,
        vec![
            event("energy-pkg", Domain::Package, 2),
            event("energy-ram", Domain::Dram, 3)
        ]
    );
    let found = perf::discover(&sim.roots());
    assert!(found.sources.is_empty());
    assert!(!found.unavailable.is_empty());
}

/// A perf power PMU with `cpumask` and topology files: `layout[i]` = (cpu, package, die).
fn pmu_tree(dir: &std::path::Path, vendor: &str, mask: &str, layout: &[(u32, u32, u32)]) {
    let pmu = dir.join("sys/bus/event_source/devices/power");
    let w = |p: std::path::PathBuf, text: &str| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    w(pmu.join("type"), "2147483632\n");
    w(pmu.join("cpumask"), mask);
    for (name, ev) in [("energy-pkg", 2), ("energy-ram", 3)] {
        w(
            pmu.join(format!("events/{name}")),
            &format!("event=0x{ev:02x}\n"),
        );
        w(
            pmu.join(format!("events/{name}.scale")),
            "2.3283064365386962890625e-10\n",
        );
        w(pmu.join(format!("events/{name}.unit")), "Joules\n");
    }
    for &(cpu, pkg, die) in layout {
        let topo = dir.join(format!("sys/devices/system/cpu/cpu{cpu}/topology"));
        w(topo.join("physical_package_id"), &format!("{pkg}\n"));
        w(topo.join("die_id"), &format!("{die}\n"));
    }
    w(
        dir.join("proc/cpuinfo"),
        &format!("processor\t: 0\nvendor_id\t: {vendor}\n\n"),
    );
}

#[test]
fn intel_multi_die_pmu_is_opened_per_die() {
    // Cascade Lake-AP: the PMU's scope is the die, its cpumask one CPU per die.
    let dir = tempfile::tempdir().unwrap();
    let layout: Vec<_> = (0..16).map(|c| (c, c / 8, (c / 4) % 2)).collect();
    pmu_tree(dir.path(), "GenuineIntel", "0,4,8,12\n", &layout);
    let sys = dir.path().join("sys");
    let pmu = perf::parse_pmu(&sys).unwrap();
    assert_eq!(pmu.cpus, vec![(0, 0), (4, 0), (8, 1), (12, 1)]);
    let (cpus, skipped) = perf::counter_cpus(&pmu, &sys, false);
    assert!(skipped.is_empty());
    let names: Vec<_> = cpus.iter().map(|c| (c.cpu, c.package_name())).collect();
    assert_eq!(
        names,
        vec![
            (0, "package-0-die-0".to_string()),
            (4, "package-0-die-1".to_string()),
            (8, "package-1-die-0".to_string()),
            (12, "package-1-die-1".to_string()),
        ]
    );
    assert_eq!(cpus[1].scope(), "package 0 die 1");
    // Labels that the die-aware de-duplication tells apart.
    assert_eq!(
        carbonctx_sampler::powercap::die_of("package-0-die-1 (perf)"),
        Some(1)
    );
    assert_eq!(
        carbonctx_sampler::powercap::die_of(&format!("dram ({}, perf)", cpus[3].scope())),
        Some(1)
    );
    // Without die_id files (older kernels) the dies are told apart by their rank in the mask.
    for c in 0..16 {
        fs::remove_file(sys.join(format!("devices/system/cpu/cpu{c}/topology/die_id"))).unwrap();
    }
    let (cpus, _) = perf::counter_cpus(&pmu, &sys, false);
    assert_eq!(cpus.len(), 4);
    assert_eq!(cpus[3].package_name(), "package-1-die-1");
    // Opening still fails here (no such PMU type); every die is tried and explained.
    let found = perf::discover(&roots_at(dir.path()));
    assert!(found.sources.is_empty());
    assert!(found.unavailable.iter().all(|u| u.backend == "perf"));
}

#[test]
fn amd_pmu_with_one_cpu_per_ccd_is_read_per_package() {
    // Kernels that numbered AMD's CCDs as dies gave the PMU one CPU per CCD, each reading the
    // one package counter: one CPU per package, the others explained.
    let dir = tempfile::tempdir().unwrap();
    let layout: Vec<_> = (0..16).map(|c| (c, c / 8, (c / 4) % 2)).collect();
    pmu_tree(dir.path(), "AuthenticAMD", "0,4,8,12\n", &layout);
    let sys = dir.path().join("sys");
    let pmu = perf::parse_pmu(&sys).unwrap();
    let (cpus, skipped) = perf::counter_cpus(&pmu, &sys, true);
    let names: Vec<_> = cpus.iter().map(|c| (c.cpu, c.package_name())).collect();
    assert_eq!(
        names,
        vec![(0, "package-0".to_string()), (8, "package-1".to_string())]
    );
    assert_eq!(skipped.len(), 2);
    assert!(skipped[0].what.ends_with("on cpu 4"), "{:?}", skipped[0]);
    assert!(
        skipped[0].reason.contains("per package"),
        "{:?}",
        skipped[0]
    );
    assert!(
        skipped[1].reason.contains("cpu 8 reads"),
        "{:?}",
        skipped[1]
    );
    // discover reads the vendor from cpuinfo and lists the repeats.
    let found = perf::discover(&roots_at(dir.path()));
    assert_eq!(
        found
            .unavailable
            .iter()
            .filter(|u| u.reason.contains("AMD's energy counters are per package"))
            .count(),
        2
    );
}

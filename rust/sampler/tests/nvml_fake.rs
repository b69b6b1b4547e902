//! The NVML backend against the stand-in library (`python/carbonctx/_fakes/fake_nvml.c`).

mod common_nvml;

use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::nvml::{discover, list_gpus, visible_among};
use carbonctx_sampler::{now_ns, CounterSpec, Domain, Error, Found, Method, Reading, Roots};
use carbonctx_sim::{SimGpu, SquareWave};
use common_nvml::{ms_since, sim_with_gpus, FakeNvml, Trace};

const TRACE: Trace = Trace {
    low_w: 40.0,
    high_w: 120.0,
    period_ms: 50.0,
    duty: 0.4,
    base_mj: 1_000_000,
};

fn ids(found: &Found) -> Vec<String> {
    found.sources.iter().map(|s| s.info().id.clone()).collect()
}

fn reasons(found: &Found) -> String {
    found
        .unavailable
        .iter()
        .map(|u| format!("{} | {} | {} | {}", u.backend, u.what, u.reason, u.hint))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Four GPUs with distinct UUIDs, for `CUDA_VISIBLE_DEVICES`.
fn four_gpus() -> FakeNvml {
    FakeNvml::new(
        "devices=4\n\
         gpu0.uuid=GPU-aaaa0000-0000-0000-0000-000000000000\n\
         gpu1.uuid=GPU-bbbb0000-0000-0000-0000-000000000001\n\
         gpu2.uuid=GPU-bbbc0000-0000-0000-0000-000000000002\n\
         gpu3.uuid=GPU-cccc0000-0000-0000-0000-000000000003\n",
    )
}

#[test]
fn discovers_two_gpus_with_names_and_uuids() {
    let fake = FakeNvml::new(
        "devices=2\n\
         gpu0.name=NVIDIA H100 80GB HBM3\n\
         gpu0.uuid=GPU-11111111-2222-3333-4444-555555555555\n\
         gpu1.name=NVIDIA A100-SXM4-40GB\n\
         gpu1.uuid=GPU-66666666-7777-8888-9999-000000000000\n",
    );
    let found = discover(&fake.roots(), None, None);
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:0", "nvml:1"]);
    let a = found.sources[0].info();
    assert_eq!(a.backend, "nvml");
    assert_eq!(a.domain, Domain::Gpu);
    assert_eq!(a.index, 0);
    assert_eq!(
        a.label,
        "NVIDIA H100 80GB HBM3 [GPU-11111111-2222-3333-4444-555555555555]"
    );
    assert_eq!(a.method, Method::Counter);
    assert_eq!(
        a.counter,
        Some(CounterSpec {
            joules_per_unit: 1e-3,
            wrap: None
        })
    );
    assert_eq!(a.interval, Duration::from_millis(20));
    assert_eq!(a.path.as_deref(), Some(fake.lib.as_path()));
    let b = found.sources[1].info();
    assert_eq!(b.index, 1);
    assert_eq!(
        b.label,
        "NVIDIA A100-SXM4-40GB [GPU-66666666-7777-8888-9999-000000000000]"
    );
}

#[test]
fn energy_counter_follows_the_trace() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let t0 = sim.t0_ns();
    let fake = FakeNvml::for_sim(&sim, "");
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0"], "{}", reasons(&found));
    let src = &mut found.sources[0];
    assert_eq!(src.info().method, Method::Counter);
    let mut last = 0;
    for _ in 0..6 {
        let before = ms_since(t0, now_ns());
        let Reading::Counter(mj) = src.read().expect("read the energy counter") else {
            panic!("an energy source reads a counter");
        };
        let after = ms_since(t0, now_ns());
        // The counter is the trace's integral at the last update before the read.
        let lo = TRACE.counter_mj(before, 20.0);
        let hi = TRACE.counter_mj(after, 20.0);
        assert!(
            lo.saturating_sub(1) <= mj && mj <= hi + 1,
            "{mj} mJ outside [{lo}, {hi}] for a read between {before} and {after} ms"
        );
        // ... so within one update period's energy of the exact integral.
        let exact = TRACE.base_mj as f64 + TRACE.energy_mj(before);
        assert!(
            (mj as f64 - exact).abs() <= TRACE.high_w * 20.0 + 1.0,
            "{mj} mJ vs {exact} mJ exact"
        );
        assert!(mj >= last, "the counter went backwards: {last} then {mj}");
        last = mj;
        sleep(Duration::from_millis(37));
    }
    assert!(last > TRACE.base_mj, "the counter never moved");
}

#[test]
fn gpu_without_energy_counter_reads_power() {
    let other = SimGpu::new(SquareWave {
        low_w: 50.0,
        high_w: 150.0,
        period_ns: 100_000_000,
        duty: 0.5,
    });
    let (_dir, sim) = sim_with_gpus(vec![other, TRACE.gpu(false)], 20, 10);
    let t0 = sim.t0_ns();
    let fake = FakeNvml::for_sim(&sim, "");
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0", "nvml:1"], "{}", reasons(&found));
    assert_eq!(found.sources[0].info().method, Method::Counter);
    let src = &mut found.sources[1];
    assert_eq!(src.info().method, Method::IntegratedPower);
    assert_eq!(src.info().counter, None);
    let mut seen = Vec::new();
    for _ in 0..8 {
        let q = |ms: f64| (ms / 10.0).floor() * 10.0;
        let before = q(ms_since(t0, now_ns()));
        let Reading::Power(w) = src.read().expect("read power") else {
            panic!("a power source reads watts");
        };
        let after = q(ms_since(t0, now_ns()));
        let expected = [TRACE.power_w(before), TRACE.power_w(after)];
        assert!(
            expected.contains(&w),
            "{w} W, expected one of {expected:?} between {before} and {after} ms"
        );
        seen.push(w);
        sleep(Duration::from_millis(13));
    }
    assert!(seen.iter().all(|w| *w == TRACE.low_w || *w == TRACE.high_w));
}

#[test]
fn gpu_with_neither_reading_is_unavailable() {
    let fake = FakeNvml::new("devices=2\ngpu0.has_energy=0\ngpu0.has_power=0\n");
    let found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:1"]);
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert_eq!(u.backend, "nvml");
    assert!(u.what.contains("Fake GPU 0"), "{}", u.what);
    assert!(u.reason.contains("Not Supported"), "{}", u.reason);
    assert!(u.reason.contains("code 3"), "{}", u.reason);
    assert!(!u.hint.is_empty());
}

#[test]
fn missing_library_is_a_reason_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots {
        nvml_library: Some(dir.path().join("no-such-libnvidia-ml.so.1")),
        ..Roots::default()
    };
    let found = discover(&roots, None, None);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert_eq!(u.backend, "nvml");
    assert!(u.what.contains("no-such-libnvidia-ml.so.1"), "{}", u.what);
    assert!(u.reason.contains("cannot load"), "{}", u.reason);
    assert!(u.hint.contains("NVIDIA driver"), "{}", u.hint);
    assert!(u.hint.contains("CARBONCTX_NVML_LIBRARY"), "{}", u.hint);
}

#[test]
fn a_library_that_is_not_nvml_is_a_reason() {
    // Any shared library without the NVML calls: the C library will do.
    let roots = Roots {
        nvml_library: Some("libc.so.6".into()),
        ..Roots::default()
    };
    let found = discover(&roots, None, None);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    assert!(
        found.unavailable[0].reason.contains("nvmlInit_v2"),
        "{}",
        reasons(&found)
    );
}

#[test]
fn init_error_is_a_reason_with_nvml_message() {
    let fake = FakeNvml::new("devices=2\ninit_error=9\n");
    let found = discover(&fake.roots(), None, None);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert!(u.reason.contains("nvmlInit_v2"), "{}", u.reason);
    assert!(u.reason.contains("Driver Not Loaded"), "{}", u.reason);
    assert!(u.reason.contains("code 9"), "{}", u.reason);
    assert!(u.hint.contains("driver"), "{}", u.hint);
    // A failed init is not shut down.
    assert_eq!(fake.init_count(), 0);
}

#[test]
fn read_errors_carry_code_message_and_hint() {
    let t0 = now_ns();
    let fake = FakeNvml::new(&format!(
        "devices=2\nt0_ns={t0}\n\
         gpu0.energy_error=15\ngpu0.energy_error_after_ms=1000\n\
         gpu1.has_energy=0\ngpu1.power_error=18\ngpu1.power_error_after_ms=1000\n"
    ));
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0", "nvml:1"], "{}", reasons(&found));
    assert_eq!(found.sources[1].info().method, Method::IntegratedPower);
    if ms_since(t0, now_ns()) < 900.0 {
        assert!(found.sources[0].read().is_ok());
        assert!(found.sources[1].read().is_ok());
    }
    while ms_since(t0, now_ns()) < 1050.0 {
        sleep(Duration::from_millis(20));
    }
    match found.sources[0].read() {
        Err(Error::Nvml {
            call,
            code,
            message,
            hint,
        }) => {
            assert_eq!(call, "nvmlDeviceGetTotalEnergyConsumption");
            assert_eq!(code, 15);
            assert_eq!(message, "GPU is lost");
            assert!(hint.contains("reboot"), "{hint}");
        }
        other => panic!("expected an NVML error, got {other:?}"),
    }
    let err = found.sources[1]
        .read()
        .expect_err("power read after the error time");
    let text = err.to_string();
    assert!(text.contains("nvmlDeviceGetPowerUsage"), "{text}");
    assert!(text.contains("code 18"), "{text}");
    assert!(text.contains("version mismatch"), "{text}");
    assert!(text.contains("reload the nvidia kernel modules"), "{text}");
}

#[test]
fn one_read_is_one_nvml_call_and_shutdown_waits_for_the_last_source() {
    let fake = FakeNvml::new("devices=2\ngpu1.has_energy=0\n");
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(fake.init_count(), 1);
    for src in &mut found.sources {
        let before = fake.call_count();
        src.read().expect("read");
        assert_eq!(fake.call_count() - before, 1, "{}", src.info().id);
    }
    let mut sources = found.sources;
    let last = sources.pop().unwrap();
    drop(sources);
    assert_eq!(fake.init_count(), 1, "NVML shut down while a source lives");
    // Sources move to the sampler thread.
    let mut last = std::thread::spawn(move || {
        let mut last = last;
        last.read().expect("read on another thread");
        last
    })
    .join()
    .unwrap();
    last.read().expect("read after moving back");
    drop(last);
    assert_eq!(
        fake.init_count(),
        0,
        "NVML not shut down after the last source"
    );
}

#[test]
fn no_gpu_is_a_reason() {
    let fake = FakeNvml::new("devices=0\n");
    let found = discover(&fake.roots(), None, None);
    assert!(found.sources.is_empty());
    assert!(reasons(&found).contains("no GPU"), "{}", reasons(&found));
    assert_eq!(fake.init_count(), 0);
}

#[test]
fn cuda_visible_devices_indices_keep_their_order() {
    let fake = four_gpus();
    let found = discover(&fake.roots(), Some("2, 0"), None);
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:2", "nvml:0"]);
    // Indices are read in PCI order, which CUDA follows only when told to.
    let label = &found.sources[0].info().label;
    assert!(label.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"), "{label}");
    let found = discover(&fake.roots(), Some("2,0"), Some("PCI_BUS_ID"));
    assert_eq!(ids(&found), ["nvml:2", "nvml:0"]);
    let label = &found.sources[0].info().label;
    assert!(!label.contains("CUDA_DEVICE_ORDER"), "{label}");
}

#[test]
fn cuda_visible_devices_uuids_and_prefixes() {
    let fake = four_gpus();
    let found = discover(
        &fake.roots(),
        Some("GPU-cccc0000-0000-0000-0000-000000000003,GPU-aaaa"),
        None,
    );
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:3", "nvml:0"]);
    assert!(!found.sources[0].info().label.contains("CUDA_DEVICE_ORDER"));

    // `GPU-bbb` matches two GPUs: ambiguous, so the list ends there.
    let found = discover(&fake.roots(), Some("1,GPU-bbb,0"), None);
    assert_eq!(ids(&found), ["nvml:1"]);
    assert!(reasons(&found).contains("GPU-bbb"), "{}", reasons(&found));
    let found = discover(&fake.roots(), Some("GPU-bbbc"), None);
    assert_eq!(ids(&found), ["nvml:2"]);
}

#[test]
fn cuda_visible_devices_stops_at_an_invalid_entry() {
    let fake = four_gpus();
    let found = discover(&fake.roots(), Some("1,7,2"), None);
    assert_eq!(ids(&found), ["nvml:1"]);
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert!(u.what.contains("\"7\""), "{}", u.what);
    assert!(u.reason.contains("7,2"), "{}", u.reason);
    assert!(!u.hint.is_empty());

    for value in ["-1", "none", "0,0,1", "GPU-ffff"] {
        let found = discover(&fake.roots(), Some(value), None);
        let expected: &[&str] = if value == "0,0,1" { &["nvml:0"] } else { &[] };
        assert_eq!(ids(&found), expected, "CUDA_VISIBLE_DEVICES={value:?}");
        assert!(!found.unavailable.is_empty(), "{value:?}");
    }
}

#[test]
fn empty_cuda_visible_devices_means_no_gpu() {
    let fake = four_gpus();
    let found = discover(&fake.roots(), Some(""), None);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert!(u.reason.contains("CUDA_VISIBLE_DEVICES"), "{}", u.reason);
    assert!(u.hint.contains("unset CUDA_VISIBLE_DEVICES"), "{}", u.hint);
    assert_eq!(fake.init_count(), 0);
}

/// Three GPUs: GPU 0 without MIG, GPU 1 with two instances in slots 0 and 2 (slot 1 empty),
/// GPU 2 with MIG on and no instance.
const MIG_CONFIG: &str = "devices=3\n\
     gpu0.uuid=GPU-aaaa0000-0000-0000-0000-000000000000\n\
     gpu1.uuid=GPU-bbbb0000-0000-0000-0000-000000000001\n\
     gpu1.name=NVIDIA A100-SXM4-80GB\n\
     gpu1.mig=MIG-abcd0000-0000-0000-0000-000000000000, ,MIG-22220000-0000-0000-0000-000000000000\n\
     gpu2.uuid=GPU-cccc0000-0000-0000-0000-000000000002\n\
     gpu2.mig=\n";
const MIG_A: &str = "MIG-abcd0000-0000-0000-0000-000000000000";
const MIG_B: &str = "MIG-22220000-0000-0000-0000-000000000000";

#[test]
fn the_listing_carries_each_gpus_mig_instances() {
    let fake = FakeNvml::new(MIG_CONFIG);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    let migs: Vec<(u32, Vec<&str>)> = gpus
        .iter()
        .map(|g| (g.index, g.mig_uuids.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(migs, [(0, vec![]), (1, vec![MIG_A, MIG_B]), (2, vec![])]);
    assert_eq!(
        gpus[1].uuid.as_deref(),
        Some("GPU-bbbb0000-0000-0000-0000-000000000001")
    );
    assert_eq!(gpus[1].name.as_deref(), Some("NVIDIA A100-SXM4-80GB"));
    assert_eq!(fake.init_count(), 0, "the listing shuts NVML down");

    let missing = FakeNvml::new("");
    std::fs::remove_file(&missing.lib).unwrap();
    let u = list_gpus(&missing.roots()).expect_err("no library");
    assert!(u.hint.contains("CARBONCTX_NVML_LIBRARY"), "{}", u.hint);
}

#[test]
fn a_mig_instance_stands_for_its_whole_gpu() {
    let fake = FakeNvml::new(MIG_CONFIG);
    let found = discover(&fake.roots(), Some(MIG_B), None);
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:1"]);
    let info = found.sources[0].info();
    assert_eq!(info.method, Method::Counter);
    assert_eq!(
        info.uuid.as_deref(),
        Some("GPU-bbbb0000-0000-0000-0000-000000000001")
    );
    assert!(
        info.label.contains("whole GPU") && info.label.contains(MIG_B),
        "{}",
        info.label
    );
    drop(found);

    // nvidia-smi -L prints UUIDs in either case; another instance of a GPU listed adds nothing;
    // entries after a MIG instance still count; the legacy form names the parent GPU.
    let cases: [(String, &[&str]); 4] = [
        (MIG_A.to_uppercase(), &["nvml:1"]),
        (format!("{MIG_A},{MIG_B}"), &["nvml:1"]),
        (format!("{MIG_B},2,0"), &["nvml:1", "nvml:2", "nvml:0"]),
        (
            "MIG-GPU-bbbb0000-0000-0000-0000-000000000001/1/0".to_string(),
            &["nvml:1"],
        ),
    ];
    for (value, want) in cases {
        let found = discover(&fake.roots(), Some(&value), Some("PCI_BUS_ID"));
        assert!(found.unavailable.is_empty(), "{value}: {}", reasons(&found));
        assert_eq!(ids(&found), want, "CUDA_VISIBLE_DEVICES={value}");
    }
}

#[test]
fn a_mig_uuid_that_names_no_instance_is_unavailable_and_ends_the_list() {
    let fake = FakeNvml::new(MIG_CONFIG);
    let unknown = "MIG-ffff0000-0000-0000-0000-000000000000";
    let found = discover(&fake.roots(), Some(unknown), None);
    assert!(found.sources.is_empty());
    let u = &found.unavailable[0];
    assert!(u.what.contains(unknown), "{}", u.what);
    assert!(u.reason.contains("no MIG instance"), "{}", u.reason);
    assert!(u.reason.contains("2 instance(s)"), "{}", u.reason);
    assert!(u.hint.contains("nvidia-smi -L"), "{}", u.hint);
    // As CUDA reads the list: nothing after an entry that names nothing.
    let found = discover(&fake.roots(), Some(&format!("0,{unknown},1")), None);
    assert_eq!(ids(&found), ["nvml:0"]);
    // A legacy entry naming a GPU that is not there names nothing either.
    let found = discover(
        &fake.roots(),
        Some("MIG-GPU-dddd0000-0000-0000-0000-000000000009/1/0"),
        None,
    );
    assert!(found.sources.is_empty() && !found.unavailable.is_empty());
}

/// CUDA gives a process one MIG instance, the first listed (NVIDIA's MIG user guide): an
/// instance of another GPU listed after it is not this process's, and its GPU is not measured.
#[test]
fn a_process_measures_the_gpu_of_its_first_mig_instance_only() {
    let config = MIG_CONFIG.replace(
        "gpu2.mig=\n",
        "gpu2.mig=MIG-33330000-0000-0000-0000-000000000000\n",
    );
    let fake = FakeNvml::new(&config);
    let other = "MIG-33330000-0000-0000-0000-000000000000";
    let found = discover(&fake.roots(), Some(&format!("{MIG_B},{other}")), None);
    assert_eq!(ids(&found), ["nvml:1"]);
    let [u] = &found.unavailable[..] else {
        panic!("{}", reasons(&found))
    };
    assert!(u.what.contains(other), "{}", u.what);
    assert!(u.reason.contains("one MIG instance"), "{}", u.reason);
    assert!(u.reason.contains("GPU 2 is not measured"), "{}", u.reason);
    assert!(
        u.hint.contains("one MIG instance per process"),
        "{}",
        u.hint
    );
    drop(found);
    // Its own GPU's instance alone is measured as before.
    let found = discover(&fake.roots(), Some(other), None);
    assert_eq!(ids(&found), ["nvml:2"]);
}

#[test]
fn each_instance_comes_with_its_slices_and_the_gpu_with_its_own() {
    // An A100 cut 3g + 4g of its 7 slices, and an A30-like GPU of 4 slices cut 2g (one compute
    // instance of 1 slice in it) + 1g.
    let fake = FakeNvml::new(
        "devices=2\n\
         gpu0.name=NVIDIA A100-SXM4-40GB\n\
         gpu0.memory_mib=40960\n\
         gpu0.mig=MIG-aaaa:3, ,MIG-bbbb:4\n\
         gpu1.mig=MIG-cccc:2:1,MIG-dddd\n\
         gpu1.mig_slices=4\n",
    );
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    /// An instance's UUID, slices and GPU instance id.
    type Inst<'a> = (&'a str, Option<u32>, Option<u32>);
    let got: Vec<(Option<u32>, Vec<Inst>)> = gpus
        .iter()
        .map(|g| {
            let inst = g
                .mig_instances
                .iter()
                .map(|m| (m.uuid.as_str(), m.slices, m.gpu_instance_id))
                .collect();
            (g.slices, inst)
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                Some(7),
                vec![
                    ("MIG-aaaa", Some(3), Some(1)),
                    ("MIG-bbbb", Some(4), Some(3))
                ]
            ),
            (
                Some(4),
                vec![
                    ("MIG-cccc", Some(2), Some(1)),
                    ("MIG-dddd", Some(1), Some(2))
                ]
            ),
        ]
    );
    assert_eq!(gpus[0].mig_uuids, ["MIG-aaaa", "MIG-bbbb"]);
    let a = &gpus[0].mig_instances[0];
    assert_eq!(a.name.as_deref(), Some("NVIDIA A100-SXM4-40GB MIG 3g.17gb"));
    assert_eq!(
        (a.compute_instance_id, a.slices_error.as_deref()),
        (Some(0), None)
    );
    assert_eq!(
        a.compute_slices,
        Some(3),
        "one compute instance spans its GPU instance"
    );
    let c = &gpus[1].mig_instances[0];
    assert_eq!((c.slices, c.compute_slices), (Some(2), Some(1)));
    assert!(
        c.name
            .as_deref()
            .unwrap_or_default()
            .ends_with("MIG 1c.2g.8gb"),
        "{c:?}"
    );
    assert!(gpus.iter().all(|g| g.slices_error.is_none()));
    assert_eq!(fake.init_count(), 0);
}

#[test]
fn where_the_driver_does_not_give_slices_the_listing_says_why() {
    let config = "devices=2\ngpu0.mig=MIG-aaaa:3\ngpu1.mig=MIG-bbbb:2\ngpu1.mig_slices=0\n";
    // Calls missing (a driver before R455): instances listed, slices unknown, with the call.
    let fake = FakeNvml::of(common_nvml::built_without_mig_slices(), config);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    let g = &gpus[0];
    assert_eq!(g.mig_uuids, ["MIG-aaaa"]);
    assert_eq!((g.slices, g.mig_instances[0].slices), (None, None));
    let why = g.mig_instances[0]
        .slices_error
        .as_deref()
        .unwrap_or_default();
    assert!(why.contains("lacks nvmlDeviceGetAttributes_v2"), "{why}");
    let why = g.slices_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("lacks nvmlDeviceGetGpuInstanceProfileInfo"),
        "{why}"
    );
    // Calls refused: NVML's own words and code.
    let fake = FakeNvml::new(config);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    assert_eq!(
        (gpus[0].slices, gpus[0].mig_instances[0].slices),
        (Some(7), Some(3))
    );
    let g = &gpus[1];
    assert_eq!((g.slices, g.mig_instances[0].slices), (None, None));
    let why = g.mig_instances[0]
        .slices_error
        .as_deref()
        .unwrap_or_default();
    assert!(
        why.contains("nvmlDeviceGetAttributes_v2 failed") && why.contains("code 3"),
        "{why}"
    );
    let why = g.slices_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("no profile") && why.contains("code 3"),
        "{why}"
    );
    // Either way the GPU is read as ever.
    let found = discover(&fake.roots(), Some("MIG-bbbb"), None);
    assert_eq!(ids(&found), ["nvml:1"]);
}

#[test]
fn without_the_drivers_mig_calls_no_instance_is_known() {
    let fake = FakeNvml::of(common_nvml::built_without_mig(), MIG_CONFIG);
    let gpus = list_gpus(&fake.roots()).expect("NVML loads");
    assert_eq!(gpus.len(), 3);
    assert!(gpus
        .iter()
        .all(|g| g.mig_uuids.is_empty() && g.slices.is_none()));
    let found = discover(&fake.roots(), Some(MIG_A), None);
    assert!(found.sources.is_empty());
    assert!(
        reasons(&found).contains("no MIG instance"),
        "{}",
        reasons(&found)
    );
    // The GPUs themselves are read as ever.
    let found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0", "nvml:1", "nvml:2"]);
}

#[test]
fn published_gpus_resolve_only_the_legacy_mig_form() {
    // A process sharing the node's sampler has its GPUs' UUIDs, not their instances': the
    // legacy form names the parent; the current one is reported, with what to do.
    let published = [
        (
            0,
            Some("GPU-aaaa0000-0000-0000-0000-000000000000".to_string()),
        ),
        (
            1,
            Some("GPU-bbbb0000-0000-0000-0000-000000000001".to_string()),
        ),
    ];
    let (v, u) = visible_among(
        &published,
        Some("MIG-GPU-BBBB0000-0000-0000-0000-000000000001/2/0,0"),
    );
    assert_eq!((v, u.len()), (vec![1, 0], 0));
    let (v, u) = visible_among(&published, Some(MIG_A));
    assert!(v.is_empty());
    assert!(u[0].hint.contains("parent GPU's UUID"), "{}", u[0].hint);
    assert!(
        u[0].reason.contains("not their instances"),
        "{}",
        u[0].reason
    );
}

#[test]
fn the_stand_ins_mig_handles_follow_nvmls_contract() {
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    let fake = FakeNvml::new(MIG_CONFIG);
    type Dev = *mut c_void;
    // SAFETY: the stand-in exports these with NVML's signatures, as declared here; the library
    // stays loaded (and initialised) until the end of the block.
    unsafe {
        let lib = libloading::Library::new(&fake.lib).unwrap();
        let init = *lib
            .get::<unsafe extern "C" fn() -> c_int>(b"nvmlInit_v2\0")
            .unwrap();
        let shutdown = *lib
            .get::<unsafe extern "C" fn() -> c_int>(b"nvmlShutdown\0")
            .unwrap();
        let by_index = *lib
            .get::<unsafe extern "C" fn(c_uint, *mut Dev) -> c_int>(
                b"nvmlDeviceGetHandleByIndex_v2\0",
            )
            .unwrap();
        let mode = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_uint, *mut c_uint) -> c_int>(
                b"nvmlDeviceGetMigMode\0",
            )
            .unwrap();
        let max = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_uint) -> c_int>(
                b"nvmlDeviceGetMaxMigDeviceCount\0",
            )
            .unwrap();
        let mig = *lib
            .get::<unsafe extern "C" fn(Dev, c_uint, *mut Dev) -> c_int>(
                b"nvmlDeviceGetMigDeviceHandleByIndex\0",
            )
            .unwrap();
        let is_mig = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_uint) -> c_int>(
                b"nvmlDeviceIsMigDeviceHandle\0",
            )
            .unwrap();
        let parent = *lib
            .get::<unsafe extern "C" fn(Dev, *mut Dev) -> c_int>(
                b"nvmlDeviceGetDeviceHandleFromMigDeviceHandle\0",
            )
            .unwrap();
        let uuid = *lib
            .get::<unsafe extern "C" fn(Dev, *mut c_char, c_uint) -> c_int>(b"nvmlDeviceGetUUID\0")
            .unwrap();
        let energy = *lib
            .get::<unsafe extern "C" fn(Dev, *mut u64) -> c_int>(
                b"nvmlDeviceGetTotalEnergyConsumption\0",
            )
            .unwrap();
        assert_eq!(init(), 0);
        let mut gpu: [Dev; 3] = [std::ptr::null_mut(); 3];
        for (i, g) in gpu.iter_mut().enumerate() {
            assert_eq!(by_index(i as c_uint, g), 0);
        }
        let (mut cur, mut pend, mut n) = (9, 9, 9);
        assert_eq!(
            mode(gpu[0], &mut cur, &mut pend),
            3,
            "no MIG: NOT_SUPPORTED"
        );
        assert_eq!((max(gpu[0], &mut n), n), (0, 0), "no MIG: zero slots");
        assert_eq!((mode(gpu[1], &mut cur, &mut pend), cur), (0, 1));
        assert_eq!((max(gpu[1], &mut n), n), (0, 3));
        let mut h: Dev = std::ptr::null_mut();
        assert_eq!(mig(gpu[1], 1, &mut h), 6, "an empty slot: NOT_FOUND");
        assert_eq!(
            mig(gpu[1], 3, &mut h),
            2,
            "past the slots: INVALID_ARGUMENT"
        );
        assert_eq!(mig(gpu[0], 0, &mut h), 3);
        assert_eq!(mig(gpu[1], 2, &mut h), 0);
        let mut buf = [0 as c_char; 96];
        assert_eq!(uuid(h, buf.as_mut_ptr(), 96), 0);
        assert_eq!(CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), MIG_B);
        let mut flag = 9;
        assert_eq!((is_mig(h, &mut flag), flag), (0, 1));
        assert_eq!((is_mig(gpu[1], &mut flag), flag), (0, 0));
        let mut p: Dev = std::ptr::null_mut();
        assert_eq!(parent(h, &mut p), 0);
        assert_eq!(p, gpu[1]);
        assert_eq!(parent(gpu[1], &mut p), 2);
        let mut mj = 0u64;
        assert_eq!(
            energy(h, &mut mj),
            3,
            "energy is the GPU's, not an instance's"
        );
        assert_eq!(energy(gpu[1], &mut mj), 0);
        assert_eq!(shutdown(), 0);
    }
}

#[test]
fn period_zero_is_the_mean_power_in_rust_and_in_the_fake_library() {
    // One definition of the wave: a constant (period 0) trace is `high · duty + low · (1 − duty)`
    // in the simulator, and the fake library reports what the simulator publishes.
    let wave = SquareWave {
        low_w: 40.0,
        high_w: 120.0,
        period_ns: 0,
        duty: 0.25,
    };
    assert_eq!(wave.power_w(0), 60.0);
    let mut power_only = SimGpu::new(wave);
    power_only.energy_counter = false;
    let (_dir, sim) = sim_with_gpus(vec![SimGpu::new(wave), power_only], 20, 20);
    let fake = FakeNvml::for_sim(&sim, "");
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0", "nvml:1"], "{}", reasons(&found));
    assert_eq!(found.sources[1].read().unwrap(), Reading::Power(60.0));
    let Reading::Counter(a) = found.sources[0].read().unwrap() else {
        panic!("an energy source reads a counter");
    };
    let ta = now_ns();
    sleep(Duration::from_millis(200));
    let Reading::Counter(b) = found.sources[0].read().unwrap() else {
        panic!("an energy source reads a counter");
    };
    let tb = now_ns();
    // 60 W, within one 20 ms update (1.2 J) and a tick either side.
    let expected_mj = 60.0 * (tb - ta) as f64 * 1e-6;
    assert!(
        ((b - a) as f64 - expected_mj).abs() <= 1_200.0 + 120.0 + 1.0,
        "{} mJ vs {expected_mj} mJ at 60 W",
        b - a
    );
}

#[test]
fn without_a_published_trace_a_gpu_reads_idle() {
    // The fake computes no wave: with no state file its GPUs read 0 mJ and 0 W.
    let fake = FakeNvml::new("devices=2\ngpu1.has_energy=0\n");
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0", "nvml:1"], "{}", reasons(&found));
    assert_eq!(found.sources[0].read().unwrap(), Reading::Counter(0));
    assert_eq!(found.sources[1].read().unwrap(), Reading::Power(0.0));
}

/// The driver's 20 ms power samples place a counter update's energy inside it: a 100 ms update
/// that is busy (250 W) for its first half and idle (50 W) for the second spends two thirds of
/// its energy in its first 40 ms. A library without the samples, or a power-only GPU, does not
/// shape (the energy is spread evenly).
#[test]
fn power_samples_place_an_updates_energy() {
    const MS: u64 = 1_000_000;
    let busy_first = SimGpu::new(SquareWave {
        low_w: 50.0,
        high_w: 250.0,
        period_ns: 100 * MS,
        duty: 0.5,
    });
    // The start of a whole 100 ms period of the wave after now, and then waits until 50 ms
    // past its end (the samples in it are then in the driver's buffer).
    let next_period = |t0: u64| {
        let k = (now_ns() - t0) / (100 * MS) + 1;
        let from = t0 + k * 100 * MS;
        while now_ns() < from + 150 * MS {
            sleep(Duration::from_millis(10));
        }
        from
    };
    let (_dir, sim) = sim_with_gpus(vec![busy_first.clone()], 100, 100);
    let t0 = sim.t0_ns();
    let fake = FakeNvml::for_sim(&sim, "");
    let mut found = discover(&fake.roots(), None, None);
    let src = &mut found.sources[0];
    for _ in 0..2 {
        // Incremental: the second time only the samples newer than the last one seen come.
        let from = next_period(t0);
        let f = src
            .shape(from, from + 100 * MS)
            .expect("the fake library offers power samples");
        // Samples 20, 40, 60 and 80 ms in, each the mean power of the 20 ms before it (and
        // perhaps the one at the end, stamped a few µs before it: the clocks' offset is read by
        // the library and by the source, each on its own).
        let want = [
            (20, 5000.0 / 15000.0),
            (40, 10000.0 / 15000.0),
            (60, 13000.0 / 15000.0),
            (80, 14000.0 / 15000.0),
            (100, 1.0),
        ];
        assert!(f.len() == 4 || f.len() == 5, "{f:?}");
        for ((t, frac), (at, w)) in f.iter().zip(want) {
            assert!(t.abs_diff(from + at * MS) < MS / 10, "{t} vs {at} ms");
            assert!((frac - w).abs() < 1e-3, "{frac} vs {w} at {at} ms");
        }
    }

    // Without the samples: no shaping, the counter reads as before.
    let (_dir2, sim2) = sim_with_gpus(vec![busy_first], 100, 100);
    let t2 = sim2.t0_ns();
    let off = FakeNvml::for_sim(&sim2, "gpu0.power_samples=0\n");
    let mut found = discover(&off.roots(), None, None);
    let src = &mut found.sources[0];
    let from = next_period(t2);
    assert!(src.read().is_ok());
    assert!(src.shape(from, from + 100 * MS).is_none());
    let power_only = FakeNvml::for_sim(&sim2, "gpu0.has_energy=0\n");
    let mut found = discover(&power_only.roots(), None, None);
    assert_eq!(found.sources[0].info().method, Method::IntegratedPower);
    assert!(found.sources[0].shape(from, from + 100 * MS).is_none());
}

/// The stand-in's `nvmlDeviceGetSamples` keeps NVML's documented contract: with `samples`
/// NULL it says how many there are, it fills no more than `*sampleCount` (oldest first) and
/// says how many it wrote, none newer than `lastSeenTimeStamp` is NVML_ERROR_NOT_FOUND (6),
/// and another sampling type is NOT_SUPPORTED (3).
#[test]
fn the_stand_ins_power_samples_follow_nvmls_contract() {
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Sample {
        time_us: u64,
        value: u64,
    }
    type Samples = unsafe extern "C" fn(*mut u8, i32, u64, *mut i32, *mut u32, *mut Sample) -> i32;
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 100, 100);
    let fake = FakeNvml::for_sim(&sim, "gpu0.power_sample_ms=10\n");
    while now_ns() < sim.t0_ns() + 200_000_000 {
        sleep(Duration::from_millis(10));
    }
    // SAFETY: the stand-in exports these with NVML's signatures; every pointer passed is valid
    // for what the call writes, and the library stays loaded while they are called.
    unsafe {
        let lib = libloading::Library::new(&fake.lib).unwrap();
        let init = lib
            .get::<unsafe extern "C" fn() -> i32>(b"nvmlInit_v2\0")
            .unwrap();
        let by_index = lib
            .get::<unsafe extern "C" fn(u32, *mut *mut u8) -> i32>(
                b"nvmlDeviceGetHandleByIndex_v2\0",
            )
            .unwrap();
        let samples = lib.get::<Samples>(b"nvmlDeviceGetSamples\0").unwrap();
        let shutdown = lib
            .get::<unsafe extern "C" fn() -> i32>(b"nvmlShutdown\0")
            .unwrap();
        assert_eq!(init(), 0);
        let mut dev = std::ptr::null_mut();
        assert_eq!(by_index(0, &mut dev), 0);
        let (mut vt, mut n) = (-1, 0u32);
        assert_eq!(samples(dev, 0, 0, &mut vt, &mut n, std::ptr::null_mut()), 0);
        assert!(n >= 15, "{n} samples after 200 ms at one per 10 ms");
        let mut buf = [Sample::default(); 4];
        let mut cap = 4u32;
        assert_eq!(samples(dev, 0, 0, &mut vt, &mut cap, buf.as_mut_ptr()), 0);
        assert_eq!((cap, vt), (4, 1), "four unsigned-int samples");
        assert!(buf
            .windows(2)
            .all(|w| w[1].time_us - w[0].time_us == 10_000));
        // mW within the trace's range.
        let mw = |s: &Sample| s.value as u32;
        assert!(buf.iter().all(|s| (40_000..=120_000).contains(&mw(s))));
        // Incremental: only those after the last one seen.
        let mut cap = 4u32;
        let last = buf[3].time_us;
        assert_eq!(
            samples(dev, 0, last, &mut vt, &mut cap, buf.as_mut_ptr()),
            0
        );
        assert_eq!(buf[0].time_us, last + 10_000);
        let mut cap = 4u32;
        assert_eq!(
            samples(dev, 0, u64::MAX, &mut vt, &mut cap, buf.as_mut_ptr()),
            6
        );
        assert_eq!(cap, 0);
        let mut cap = 4u32;
        assert_eq!(samples(dev, 1, 0, &mut vt, &mut cap, buf.as_mut_ptr()), 3);
        assert_eq!(shutdown(), 0);
    }
}

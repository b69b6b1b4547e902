//! Discovery and reads: each GPU's name, UUID and method (the energy counter, else power, else
//! a reason), what the library's failures become (a reason at discovery, an error with NVML's
//! code, message and hint at a read), one NVML call per read, and NVML shut down with the last
//! source.

use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::nvml::discover;
use carbonctx_sampler::{now_ns, CounterSpec, Domain, Error, Method, Reading, Roots};
use carbonctx_sim::{SimGpu, SquareWave};

use super::ids;
use crate::common_nvml::{ms_since, reasons, sim_with_gpus, FakeNvml, TRACE};

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

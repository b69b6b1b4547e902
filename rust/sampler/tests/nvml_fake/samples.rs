//! The stand-in's readings of the simulated traces (a constant trace, no trace at all) and the
//! driver's power samples: how they place a counter update's energy, and the stand-in's
//! `nvmlDeviceGetSamples` keeping NVML's contract.

use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::nvml::discover;
use carbonctx_sampler::{now_ns, Method, Reading};
use carbonctx_sim::{SimGpu, SquareWave};

use super::ids;
use crate::common_nvml::{reasons, sim_with_gpus, FakeNvml, TRACE};

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

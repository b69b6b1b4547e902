//! A driver that refuses a power sample buffer smaller than what it holds
//! (`NVML_ERROR_INSUFFICIENT_SIZE`) still gives its samples: the buffer is sized as nvml.h says
//! (a call with `samples` NULL says how many there are).

use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::now_ns;
use carbonctx_sampler::nvml::discover;
use carbonctx_sim::{SimGpu, SquareWave};

use super::ids;
use crate::common_nvml::{reasons, sim_with_gpus, FakeNvml};

#[test]
fn a_driver_that_refuses_a_small_sample_buffer_still_gives_its_samples() {
    const MS: u64 = 1_000_000;
    let busy_first = SimGpu::new(SquareWave {
        low_w: 50.0,
        high_w: 250.0,
        period_ns: 100 * MS,
        duty: 0.5,
    });
    let (_dir, sim) = sim_with_gpus(vec![busy_first], 100, 100);
    let t0 = sim.t0_ns();
    // One sample a millisecond: the driver holds 800, more than the 256 first asked for.
    let fake = FakeNvml::for_sim(&sim, "gpu0.power_sample_ms=1\ngpu0.power_sample_strict=1\n");
    let mut found = discover(&fake.roots(), None, None);
    assert_eq!(ids(&found), ["nvml:0"], "{}", reasons(&found));
    let src = &mut found.sources[0];
    // A whole 100 ms period of the wave after now, once its samples are in the buffer.
    let k = (now_ns() - t0) / (100 * MS) + 2;
    let from = t0 + k * 100 * MS;
    while now_ns() < from + 150 * MS {
        sleep(Duration::from_millis(10));
    }
    let f = src
        .shape(from, from + 100 * MS)
        .expect("the samples are fetched with a buffer as large as the driver asks");
    assert!(f.len() >= 90, "{} samples inside 100 ms", f.len());
    // Busy (250 W) for the first half, idle (50 W) after: 5/6 of the energy by the middle.
    let mid = f
        .iter()
        .find(|(t, _)| t.abs_diff(from + 50 * MS) < MS / 2)
        .expect("a sample at the middle");
    assert!((mid.1 - 250.0 / 300.0).abs() < 0.02, "{mid:?}");
}

//! The accumulator as the firmware keeps it: 32 bits on RDNA parts (carried past 2^32 where it
//! wraps), and `UINT32_MAX` where amdgpu marks the firmware's counter as not to be trusted (the
//! socket power is integrated instead); the partitions of one device, which share its counter,
//! counted once.

use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::{now_ns, Method, Reading};

use super::{ids, Machine};
use crate::common_nvml::{ms_since, reasons, sim_with_gpus, TRACE};

const RES_UJ: f64 = 15.259;

#[test]
fn a_32_bit_accumulator_that_wraps_is_carried_past_2_to_the_32() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    // The wrap is placed a margin after now; where discovery on a busy machine took longer than
    // that, the GPU was first read after the wrap and there is nothing to carry: again, with a
    // longer margin.
    for margin_ms in [300.0, 1_500.0, 6_000.0] {
        if wraps_and_is_carried(&sim, margin_ms, "AMD Radeon RX 6900 XT", true) {
            return;
        }
    }
    panic!("discovery never finished before the wrap; the machine is too busy for this test");
}

#[test]
fn a_64_bit_accumulator_below_2_to_the_32_that_steps_back_is_not_carried() {
    // An MI300X keeps its accumulator in 64 bits, yet reads below 2^32 for its first minutes
    // after boot: a step back then (here as a wrap would look) is a reset, passed on as it is.
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    for margin_ms in [300.0, 1_500.0, 6_000.0] {
        if wraps_and_is_carried(&sim, margin_ms, "AMD Instinct MI300X", false) {
            return;
        }
    }
    panic!("discovery never finished before the wrap; the machine is too busy for this test");
}

/// Whether the GPU named `name` was first read before its count wrapped (then checks that the
/// wrap is carried past 2^32, or with `carried` false passed on as it is); `false` where it was
/// first read after.
fn wraps_and_is_carried(
    sim: &carbonctx_sim::SimMachine,
    margin_ms: f64,
    name: &str,
    carried: bool,
) -> bool {
    let t0 = sim.t0_ns();
    // The count the stand-in reports `ms` after t0, before the offset.
    let count_at = |ms: f64| (TRACE.base_mj as f64 + TRACE.energy_mj(ms)) * 1e3 / RES_UJ;
    let wrap_ms = ms_since(t0, now_ns()) + margin_ms;
    let offset = (1u64 << 32) - count_at(wrap_ms) as u64;
    let m = Machine::for_sim(
        sim,
        &[0],
        &format!("gpu0.energy_bits=32\ngpu0.energy_offset={offset}\ngpu0.name={name}\n"),
    );
    let mut found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let spec = found.sources[0].info().counter.expect("a counter");
    let src = &mut found.sources[0];
    let mut last = 0;
    let mut reads_after_wrap = 0;
    let mut first = true;
    let mut steps_back = 0;
    while reads_after_wrap < 5 {
        let before = ms_since(t0, now_ns());
        let Reading::Counter(count) = src.read().expect("read the accumulator") else {
            panic!("a counter source reads a counter");
        };
        if first && (count < offset || before > wrap_ms - 40.0) {
            return false;
        }
        first = false;
        if count < last {
            // Only where it is passed on as it is, and once.
            steps_back += 1;
            assert!(
                !carried && steps_back == 1,
                "the count went back: {last} then {count}"
            );
        }
        last = count;
        // What the firmware counted since t0, past 2^32 once it wrapped (carried or not).
        let unwrapped = if count < offset {
            count + (1 << 32)
        } else {
            count
        };
        let mj = (unwrapped - offset) as f64 * spec.joules_per_unit * 1e3;
        let exact = TRACE.base_mj as f64 + TRACE.energy_mj(before);
        assert!(
            (mj - exact).abs() <= TRACE.high_w * 20.0 + 1.0,
            "{mj} mJ vs {exact} mJ exact (count {count}, at {before} ms, wrap at {wrap_ms} ms)"
        );
        // Reads well past the wrap (the published counter lags by one update).
        if before > wrap_ms + 60.0 {
            reads_after_wrap += 1;
            if carried {
                assert!(count >= 1 << 32, "{count}: the wrap was not carried");
            } else {
                assert!(
                    count < 1 << 32,
                    "{count}: a 64-bit count was carried past 2^32"
                );
            }
        }
        sleep(Duration::from_millis(23));
    }
    true
}

#[test]
fn an_accumulator_marked_not_to_be_trusted_is_no_counter() {
    // amdgpu reports UINT32_MAX where the firmware's counter is not to be trusted; the socket
    // power is there.
    let m = Machine::new("gpu0.energy_na=1\ngpu0.power_field=current\n");
    let mut found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let info = found.sources[0].info().clone();
    assert_eq!(info.method, Method::IntegratedPower, "{}", info.label);
    assert!(
        info.label.contains("current_socket_power"),
        "{}",
        info.label
    );
    assert_eq!(found.sources[0].read().unwrap(), Reading::Power(100.0));
    // Without power either, it is explained, not measured as a counter that never moves.
    let m = Machine::new("gpu0.energy_na=1\ngpu0.has_power=0\n");
    let found = m.discover(None, None);
    assert!(found.sources.is_empty());
    assert!(
        reasons(&found).contains("neither the energy counter nor power"),
        "{}",
        reasons(&found)
    );
}

#[test]
fn partitions_that_all_read_their_devices_counter_count_it_once() {
    // An MI300X in CPX mode: eight partitions at one PCI address, each reading the device's one
    // energy counter and power.
    let mut config = String::from("devices=8\n");
    for k in 0..8 {
        config.push_str(&format!(
            "gpu{k}.name=AMD Instinct MI300X\ngpu{k}.bdf=0000:05:00.0\n"
        ));
    }
    let m = Machine::new(&config);
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let label = &found.sources[0].info().label;
    assert!(
        label.contains("8 partitions share one energy counter"),
        "{label}"
    );
    let r = reasons(&found);
    assert_eq!(
        r.matches(
            "whose partitions share one energy counter and power: energy reported on its \
                   partner die, GPU 0"
        )
        .count(),
        7,
        "{r}"
    );
    // One partition alone (the others hidden by ROCR_VISIBLE_DEVICES): it measures the whole
    // device, and says so.
    let found = m.discover(Some("5"), None);
    assert_eq!(ids(&found), ["amdsmi:5"], "{}", reasons(&found));
    let label = &found.sources[0].info().label;
    assert!(label.contains("the whole device"), "{label}");
    // Two visible, listed the other way round: still once, on the first listed.
    let found = m.discover(Some("3,1"), None);
    assert_eq!(found.sources.len(), 1, "{}", reasons(&found));
}

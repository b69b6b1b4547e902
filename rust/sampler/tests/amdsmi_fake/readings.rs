//! What AMD SMI reads: GPUs numbered as ROCr numbers them, with its UUIDs; the energy
//! accumulator following the trace; power-only GPUs integrating the field their release fills;
//! dies and partitions without readings of their own; failures as reasons and read errors with
//! the status.

use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::{now_ns, Domain, Method, Reading};

use super::{ids, Machine};
use crate::common_nvml::{ms_since, reasons, sim_with_gpus, TRACE};

const TWO_GPUS: &str = "devices=2\n\
    gpu0.name=AMD Instinct MI300X\ngpu0.bdf=0000:c1:00.0\n\
    gpu1.name=AMD Instinct MI300X\ngpu1.bdf=0000:03:00.0\n";

#[test]
fn gpus_are_numbered_as_rocr_numbers_them_with_its_uuids() {
    let m = Machine::new(TWO_GPUS);
    // The topology lists c1:00.0 first: ROCr's GPU 0, whatever the bus order.
    m.kfd(&[
        ("0000:c1:00.0", 0xd38b_8b5d_9ee2_ae01),
        ("0000:03:00.0", 0x42),
    ]);
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0", "amdsmi:1"], "{}", reasons(&found));
    let by_index = |i: u32| {
        found
            .sources
            .iter()
            .find(|s| s.info().index == i)
            .unwrap()
            .info()
            .clone()
    };
    let a = by_index(0);
    assert_eq!(a.backend, "amdsmi");
    assert_eq!(a.domain, Domain::Gpu);
    assert_eq!(a.method, Method::Counter);
    assert_eq!(a.uuid.as_deref(), Some("GPU-D38B8B5D9EE2AE01"));
    assert_eq!(
        a.label,
        "AMD Instinct MI300X [GPU-D38B8B5D9EE2AE01] (PCI 0000:c1:00.0)"
    );
    let spec = a.counter.expect("a counter");
    assert!((spec.joules_per_unit - 15.259e-6).abs() < 1e-10, "{spec:?}");
    assert_eq!(spec.wrap, None);
    assert_eq!(by_index(1).uuid.as_deref(), Some("GPU-0000000000000042"));
}

#[test]
fn the_energy_accumulator_follows_the_trace() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let t0 = sim.t0_ns();
    let m = Machine::for_sim(&sim, &[0], "");
    let mut found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let spec = found.sources[0].info().counter.unwrap();
    let src = &mut found.sources[0];
    let mut last = 0.0;
    for _ in 0..6 {
        let before = ms_since(t0, now_ns());
        let Reading::Counter(count) = src.read().expect("read the accumulator") else {
            panic!("a counter source reads a counter");
        };
        let mj = count as f64 * spec.joules_per_unit * 1e3;
        let exact = TRACE.base_mj as f64 + TRACE.energy_mj(before);
        // The published counter lags by at most one 20 ms update, and the count is floored to
        // the resolution.
        assert!(
            (mj - exact).abs() <= TRACE.high_w * 20.0 + 1.0,
            "{mj} mJ vs {exact} mJ exact"
        );
        assert!(mj >= last, "the counter went backwards");
        last = mj;
        sleep(Duration::from_millis(37));
    }
}

#[test]
fn power_only_gpus_integrate_the_field_their_release_fills() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 10);
    // 24.x marks the member a part lacks with 0xFFFF: RDNA's current, an MI300's average.
    for (version, field) in [
        ("24.7.1", "average"),
        ("24.7.1", "current"),
        ("26.1.0", "socket"),
        ("25.3.0", "current"),
    ] {
        let extra = format!(
            "version={version}\ngpu0.has_energy=0\ngpu0.power_field={field}\n\
             gpu1.has_energy=0\ngpu1.has_power=0\n"
        );
        let m = Machine::for_sim(&sim, &[0, 1], &extra);
        let mut found = m.discover(None, None);
        assert_eq!(ids(&found), ["amdsmi:0"], "{version}: {}", reasons(&found));
        let info = found.sources[0].info().clone();
        assert_eq!(info.method, Method::IntegratedPower);
        assert!(info.label.contains(field), "{}", info.label);
        let before = ms_since(sim.t0_ns(), now_ns());
        let Reading::Power(w) = found.sources[0].read().unwrap() else {
            panic!("a power source reads power")
        };
        let after = ms_since(sim.t0_ns(), now_ns());
        let ok = [before - 10.0, after]
            .iter()
            .any(|&t| (TRACE.power_w(t.max(0.0)) - w).abs() < 1.0)
            || w == TRACE.low_w
            || w == TRACE.high_w;
        assert!(ok, "{w} W is not on the trace");
        // The GPU with neither reading is explained.
        assert!(
            reasons(&found).contains("neither the energy counter nor power"),
            "{}",
            reasons(&found)
        );
    }
    // A release whose power structure is not known here: power is not read, and it says why.
    let m = Machine::for_sim(&sim, &[0], "version=23.4.0\ngpu0.has_energy=0\n");
    let found = m.discover(None, None);
    assert!(found.sources.is_empty());
    assert!(reasons(&found).contains("23.4.0"), "{}", reasons(&found));
}

#[test]
fn a_die_that_reads_zero_is_no_measurement_and_names_its_partner() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    // An MI250X: two GCDs, the package's energy on the first; a third GPU elsewhere.
    let extra = "gpu0.name=AMD Instinct MI250X\ngpu0.bdf=0000:29:00.0\n\
                 gpu1.name=AMD Instinct MI250X\ngpu1.bdf=0000:2c:00.0\ngpu1.zero=1\n\
                 gpu2.name=AMD Instinct MI250X\ngpu2.bdf=0000:2f:00.0\n";
    let m = Machine::for_sim(&sim, &[0, 0, 0], extra);
    // Even where the zero die's hwmon reads something, the die is not counted.
    m.hwmon(5, "0000:2c:00.0", Some(("power1_average", 5_000_000)));
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0", "amdsmi:2"], "{}", reasons(&found));
    let zero = found
        .unavailable
        .iter()
        .find(|u| u.what.contains("0000:2c:00.0"))
        .expect("the zero die is explained");
    assert!(
        zero.reason
            .contains("energy reported on its partner die, GPU 0"),
        "{}",
        zero.reason
    );
    let partner = found.sources.iter().find(|s| s.info().index == 0).unwrap();
    assert!(
        partner.info().label.contains("paired die(s) GPU 1"),
        "{}",
        partner.info().label
    );
    // Alone (its partner hidden by ROCR_VISIBLE_DEVICES), it still is no measurement.
    let found = m.discover(Some("1"), None);
    assert!(found.sources.is_empty());
    assert!(
        reasons(&found).contains("partner is not visible"),
        "{}",
        reasons(&found)
    );
}

#[test]
fn partitions_without_readings_of_their_own_point_at_the_first() {
    // An MI300X in a partitioned mode: four processors at one PCI address, only the first
    // reading; and another device whose only GPU reads nothing (its own reason stays).
    let mut config = String::from("devices=5\n");
    for k in 0..4 {
        config.push_str(&format!(
            "gpu{k}.name=AMD Instinct MI300X\ngpu{k}.bdf=0000:05:00.0\n"
        ));
        if k > 0 {
            config.push_str(&format!("gpu{k}.has_energy=0\ngpu{k}.has_power=0\n"));
        }
    }
    config.push_str("gpu4.bdf=0000:85:00.0\ngpu4.has_energy=0\ngpu4.has_power=0\n");
    let m = Machine::new(&config);
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let label = &found.sources[0].info().label;
    assert!(label.contains("paired die(s) GPU 1, 2, 3"), "{label}");
    let r = reasons(&found);
    assert_eq!(
        r.matches("energy reported on its partner die, GPU 0")
            .count(),
        3,
        "{r}"
    );
    assert!(r.contains("0000:85:00.0") && r.contains("neither the energy counter nor power"));
}

#[test]
fn failures_are_reasons_and_read_errors_carry_the_status() {
    let m = Machine::new("init_error=34\n");
    let found = m.discover(None, None);
    assert!(found.sources.is_empty());
    let r = reasons(&found);
    assert!(
        r.contains("amdsmi_init(AMDSMI_INIT_AMD_GPUS) failed"),
        "{r}"
    );
    assert!(r.contains("DRIVER_NOT_LOADED"), "{r}");
    assert!(r.contains("load the amdgpu kernel driver"), "{r}");

    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let m = Machine::for_sim(
        &sim,
        &[0],
        "gpu0.energy_error=10\ngpu0.energy_error_after_ms=0\n",
    );
    let found = m.discover(None, None);
    // Probing the counter failed: power is used instead.
    assert_eq!(found.sources[0].info().method, Method::IntegratedPower);
    let m = Machine::for_sim(
        &sim,
        &[0],
        "gpu0.energy_error=10\ngpu0.energy_error_after_ms=300000000\n",
    );
    {
        let mut found = m.discover(None, None);
        assert!(found.sources[0].read().is_ok());
        assert_eq!(
            m.init_count(),
            1,
            "the sources hold the library initialised"
        );
    }
    assert_eq!(m.init_count(), 0, "the last source shuts the library down");
    let late = format!(
        "gpu0.energy_error=10\ngpu0.energy_error_after_ms={}\n",
        ms_since(sim.t0_ns(), now_ns()) + 150.0
    );
    let m = Machine::for_sim(&sim, &[0], &late);
    let mut found = m.discover(None, None);
    sleep(Duration::from_millis(200));
    let err = found.sources[0].read().unwrap_err().to_string();
    assert!(err.contains("amdsmi_get_energy_count failed"), "{err}");
    assert!(err.contains("NO_PERM"), "{err}");
    assert!(err.contains("/dev/kfd"), "{err}");
}

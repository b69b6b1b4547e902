//! The NVML backend on a real GPU. Ignored by default; run on a machine with the NVIDIA driver:
//! `cargo test -p carbonctx-sampler --test nvml_hardware -- --ignored --nocapture`.

use std::time::Duration;

use carbonctx_sampler::nvml::discover;
use carbonctx_sampler::{now_ns, Method, Reading, Roots};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn real_gpus_report_energy_or_power() {
    // The test reads the environment the way the binding does; the crate itself reads none.
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let roots = Roots {
        nvml_library: env("CARBONCTX_NVML_LIBRARY").map(Into::into),
        ..Roots::default()
    };
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let order = env("CUDA_DEVICE_ORDER");
    let mut found = discover(&roots, visible.as_deref(), order.as_deref());
    for u in &found.unavailable {
        println!("unavailable: {} | {} | {}", u.what, u.reason, u.hint);
    }
    assert!(!found.sources.is_empty(), "no GPU found");
    for src in &mut found.sources {
        let info = src.info().clone();
        println!("{} {} {:?}", info.id, info.label, info.method);
        // Poll as fast as possible for a while: how long a read takes, how often the value
        // changes.
        let start = now_ns();
        let mut latencies = Vec::new();
        let mut changes = Vec::new();
        let mut last: Option<Reading> = None;
        let mut last_change = None;
        let mut first = None;
        while now_ns() - start < 2_000_000_000 {
            let a = now_ns();
            let r = src.read().expect("read a real GPU");
            let b = now_ns();
            latencies.push((b - a) as f64 / 1e3);
            first.get_or_insert(r);
            if last != Some(r) {
                if let Some(t) = last_change {
                    changes.push((b - t) as f64 / 1e6);
                }
                last_change = Some(b);
                last = Some(r);
            }
        }
        println!(
            "  {} reads, median read {:.1} us, {} changes, median interval between changes {:.2} ms",
            latencies.len(),
            median(&mut latencies),
            changes.len(),
            median(&mut changes)
        );
        match (info.method, first, last) {
            (Method::Counter, Some(Reading::Counter(a)), Some(Reading::Counter(b))) => {
                let watts = (b - a) as f64 / 2.0 / 1e3;
                println!("  {a} -> {b} mJ: about {watts:.1} W");
                assert!(b > a, "the energy counter did not move in 2 s");
            }
            (Method::IntegratedPower, _, Some(Reading::Power(w))) => {
                println!("  {w:.1} W");
                assert!(w > 0.0);
            }
            other => panic!("unexpected readings {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

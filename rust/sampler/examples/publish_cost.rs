//! How long publishing one point into the node's segment takes (the owner's cost per point),
//! and copying one out (a follower's): `cargo run --release -p carbonctx-sampler --example
//! publish_cost`.

use std::time::{Duration, Instant};

use carbonctx_sampler::shared::{Copied, Published, Segment};
use carbonctx_sampler::timeline::Point;
use carbonctx_sampler::{CounterSpec, Domain, Method, SourceInfo};

fn main() {
    let dir = std::env::temp_dir().join(format!("carbonctx-publish-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let info = Published {
        info: SourceInfo {
            id: "powercap:intel-rapl:0".into(),
            backend: "powercap",
            domain: Domain::Package,
            index: 0,
            label: "package-0".into(),
            method: Method::Counter,
            counter: Some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap: None,
            }),
            interval: Duration::from_millis(1),
            path: None,
            uuid: None,
        },
        settle_ns: 100_000_000,
    };
    let path = dir.join("bench.seg");
    let seg = Segment::create(&path, "bench", &[info], 1 << 16, 0).expect("a segment");
    let n = 10_000_000u64;
    let t = Instant::now();
    for k in 0..n {
        seg.publish(
            0,
            Point {
                t_ns: k,
                joules: k as f64,
            },
            false,
        );
    }
    let publish_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let mut c = Copied::default();
    let t = Instant::now();
    let mut next = n - (1 << 16);
    let rounds = 200;
    for _ in 0..rounds {
        c.entries.clear();
        let _ = seg.copy_since(0, next, &mut c);
        next = n - (1 << 16);
    }
    let copy_ns = t.elapsed().as_nanos() as f64 / (rounds as f64 * (1 << 16) as f64);
    println!("publish: {publish_ns:.1} ns a point; copy: {copy_ns:.1} ns a point");
    let _ = std::fs::remove_dir_all(&dir);
}

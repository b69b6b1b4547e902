//! A simulated node for the node sampler's tests: its power traces, samplers of its sources
//! started on the node, the truth of a source, and the bounds every wait is held to.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::{now_ns, Config, Domain, NodeConfig, Role, Sampler};
use carbonctx_sim::{SimGpu, SimMachine, SimSpec, SimZone, SquareWave};

use crate::common_fs;
use crate::common_nvml::FakeNvml;

/// The package zone's trace (the DRAM zone draws a constant 5 W).
pub const WAVE: SquareWave = SquareWave {
    low_w: 40.0,
    high_w: 120.0,
    period_ns: 50_000_000,
    duty: 0.5,
};
/// The GPUs' traces, GPU k following `GPU_WAVES[k]`.
pub const GPU_WAVES: [SquareWave; 2] = [
    SquareWave {
        low_w: 60.0,
        high_w: 250.0,
        period_ns: 70_000_000,
        duty: 0.4,
    },
    SquareWave {
        low_w: 30.0,
        high_w: 90.0,
        period_ns: 110_000_000,
        duty: 0.7,
    },
];
/// How long any wait may take before the test fails (generous: no test depends on speed).
pub const WAIT: Duration = Duration::from_secs(60);

/// A running simulated node: one package (package and DRAM zones), and `gpus` GPUs.
pub fn node_sim(dir: &Path, gpus: usize) -> SimMachine {
    let mut spec = SimSpec::new(dir, 1)
        .with_zone(SimZone::new(Domain::Package, 0, WAVE))
        .with_zone(SimZone::new(Domain::Dram, 0, SquareWave::constant(5.0)));
    spec.gpus = GPU_WAVES[..gpus].iter().map(|w| SimGpu::new(*w)).collect();
    let mut sim = SimMachine::new(spec).expect("simulate a node");
    sim.start().expect("start the writer");
    sim
}

/// Discovery on the simulated node: powercap, and NVML through `nvml` where given.
pub fn options(sim_root: &Path, nvml: Option<&FakeNvml>, visible: Option<&str>) -> Options {
    let mut roots = common_fs::roots_at(sim_root);
    roots.nvml_library = nvml.map(|f| f.lib.clone());
    Options {
        roots,
        cpu_backends: vec!["powercap".into()],
        nvml: nvml.is_some(),
        tdp_model: TdpModelUse::Never,
        cuda_visible_devices: visible.map(str::to_string),
        ..Options::default()
    }
}

/// The node `key` with its files in `dir`, a standing owner looked for every 100 ms.
pub fn node_config(dir: &Path, key: &str) -> NodeConfig {
    NodeConfig {
        takeover_poll: Duration::from_millis(100),
        ..NodeConfig::new(key).in_dir(dir)
    }
}

/// A sampler started on the node, every source available.
pub fn start(opts: Options, node: NodeConfig) -> Sampler {
    let (s, unavailable) =
        Sampler::start_on_node(opts, Config::default(), node).expect("start on the node");
    assert!(unavailable.is_empty(), "{unavailable:?}");
    s
}

/// The sampler's role on the node.
pub fn role(s: &Sampler) -> Role {
    s.node_status().expect("a node sampler").role
}

/// The ids of the sampler's sources, in its order.
pub fn ids(s: &Sampler) -> Vec<String> {
    s.sources().iter().map(|i| i.id.clone()).collect()
}

/// The truth of source `id` between two instants.
pub fn truth(sim: &SimMachine, id: &str, t0: u64, t1: u64) -> f64 {
    match id {
        "powercap:intel-rapl:0" => sim.truth_j(Domain::Package, 0, t0, t1).unwrap(),
        "powercap:intel-rapl:0:0" => sim.truth_j(Domain::Dram, 0, t0, t1).unwrap(),
        gpu => {
            let k: usize = gpu.trim_start_matches("nvml:").parse().unwrap();
            sim.gpu_truth_j(k, t0, t1).unwrap()
        }
    }
}

/// Whether `got` J is close enough to `want` J: within `rel` of it, or within the bracket the
/// sampler gives (`unc`, the counter brackets at both edges) and half an update of peak power
/// (a loaded machine polls late, which widens the bracket rather than moving the truth out).
pub fn close(got: f64, want: f64, rel: f64, unc: f64, slack_j: f64) -> bool {
    let err = (got - want).abs();
    err <= rel * want || err <= unc + slack_j
}

/// One region over `[t0, t1]` in `s`, resolved: its joules and uncertainty per source.
pub fn region_with_uncertainty(s: &Sampler, t0: u64, t1: u64) -> (Vec<f64>, Vec<f64>) {
    let id = s.begin_at(t0);
    s.end_at(id, t1);
    // Marks stamped in the past may wait one more pass of the thread after the frontier.
    let deadline = now_ns() + WAIT.as_nanos() as u64;
    loop {
        assert!(
            s.wait_until_resolved(now_ns(), WAIT),
            "not resolved in {WAIT:?}"
        );
        if let Some(r) = s.drain().into_iter().find(|r| r.id == id) {
            return (r.joules, r.uncertainty);
        }
        assert!(now_ns() < deadline, "region not resolved in {WAIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `ok`, for `WAIT` at most.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = now_ns() + WAIT.as_nanos() as u64;
    while !ok() {
        assert!(now_ns() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

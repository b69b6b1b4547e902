//! The NVML backend against the stand-in library (`python/carbonctx/_fakes/fake_nvml.c`), one
//! test binary so that the stand-in is built once: discovery and reads, `CUDA_VISIBLE_DEVICES`,
//! MIG, and the power samples, each in a module beside this one.

#[path = "../common_nvml/mod.rs"]
mod common_nvml;

mod discovery;
mod mig;
mod samples;
mod visible;

use carbonctx_sampler::Found;
use common_nvml::Trace;

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

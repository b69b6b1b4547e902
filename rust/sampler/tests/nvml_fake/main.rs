//! The NVML backend against the stand-in library (`python/carbonctx/_fakes/fake_nvml.c`), one
//! test binary so that the stand-in is built once: discovery and reads, `CUDA_VISIBLE_DEVICES`,
//! MIG, and the power samples, each in a module beside this one.

#[path = "../common_nvml/mod.rs"]
mod common_nvml;

mod discovery;
mod mig;
mod sample_buffer;
mod samples;
mod visible;

use carbonctx_sampler::Found;

/// The ids of what discovery found, in its order.
fn ids(found: &Found) -> Vec<String> {
    found.sources.iter().map(|s| s.info().id.clone()).collect()
}

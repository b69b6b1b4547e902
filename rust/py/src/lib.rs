//! Python bindings: argument conversion, one call into the core, result conversion. No logic.
//! This file registers the module's classes, functions and constants; each lives in its own
//! module.

mod check;
mod context;
mod drained;
mod errors;
mod feed;
mod hub;
mod lines;
mod machine;
mod numtext;
mod region;
mod sampler;
mod sim;
mod sources;
mod span;
mod step;

use pyo3::prelude::*;

// hub.rs and span.rs name the class `crate::Sampler`.
pub(crate) use crate::sampler::Sampler;

/// CLOCK_MONOTONIC in ns: the clock of every timestamp the sampler gives.
#[pyfunction]
fn now_ns() -> u64 {
    carbonctx_sampler::now_ns()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Sampler>()?;
    m.add_class::<feed::Feed>()?;
    m.add_class::<sim::SimMachine>()?;
    m.add_class::<region::Region>()?;
    m.add_class::<hub::RegionHub>()?;
    m.add_class::<lines::CompactLines>()?;
    m.add_class::<span::SpanCall>()?;
    m.add_class::<step::Step>()?;
    m.add("SPAN_BACKLOG", hub::SPAN_BACKLOG)?;
    m.add("SPAN_WARNINGS", hub::SPAN_WARNINGS)?;
    m.add_function(wrap_pyfunction!(hub::set_hub, m)?)?;
    m.add_function(wrap_pyfunction!(region::claim_regions, m)?)?;
    m.add_function(wrap_pyfunction!(region::current, m)?)?;
    m.add_function(wrap_pyfunction!(sources::discover, m)?)?;
    m.add_function(wrap_pyfunction!(sources::nvml_gpus, m)?)?;
    m.add_function(wrap_pyfunction!(check::check_sources, m)?)?;
    m.add_function(wrap_pyfunction!(now_ns, m)?)?;
    m.add_function(wrap_pyfunction!(numtext::float_texts, m)?)?;
    m.add_function(wrap_pyfunction!(sim::square_wave_power_w, m)?)?;
    m.add_function(wrap_pyfunction!(sim::square_wave_energy_j, m)?)?;
    Ok(())
}

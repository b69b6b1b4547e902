//! `check_sources`: how good each chosen source is (see `carbonctx_sampler::check`).

use std::path::PathBuf;

use carbonctx_sampler::check::{self, SourceCheck};
use carbonctx_sampler::discover as disc;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{self, seconds};
use crate::machine::{options, AmdArgs, Machine};
use crate::sources::{info_dict, unavailable_dicts};

fn check_dict<'py>(py: Python<'py>, c: &SourceCheck) -> PyResult<Bound<'py, PyDict>> {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    let d = info_dict(py, &c.info)?;
    d.set_item("reads", c.reads)?;
    d.set_item("errors", c.errors)?;
    d.set_item("last_error", c.last_error.as_deref())?;
    d.set_item("poll_interval_s", c.poll_interval.as_secs_f64())?;
    d.set_item("pace_s", c.pace.as_secs_f64())?;
    d.set_item("changes", c.changes)?;
    d.set_item("update_period_s", secs(c.update_period))?;
    d.set_item("read_cost_s", secs(c.read_cost))?;
    d.set_item("mean_power_w", c.mean_power_w)?;
    d.set_item("wrap_j", c.wrap_joules)?;
    d.set_item("wrap_after_s", secs(c.wrap_after))?;
    d.set_item("reading", c.reading)?;
    d.set_item("shortest_region_s", secs(c.shortest_region))?;
    Ok(d)
}

/// Discover the sources as `discover` does, read each chosen one for `duration_s` seconds, and
/// return `{"sources": [...], "unavailable": [...]}`, each source's description with what the
/// check measured.
#[pyfunction]
#[pyo3(signature = (*, duration_s, sys_root=None, dev_root=None, proc_root=None,
                    nvml_library=None, cuda_visible_devices=None, cuda_device_order=None,
                    cpu_tdp_w=None, cpu_backends=None, nvml=true, estimate="auto", gpus=None,
                    intervals=None, amdsmi=true, amdsmi_library=None,
                    rocr_visible_devices=None, hip_visible_devices=None, amd_gpus=None, gpu=true,
                    hwmon=true))]
#[allow(clippy::too_many_arguments)]
pub fn check_sources<'py>(
    py: Python<'py>,
    duration_s: f64,
    sys_root: Option<PathBuf>,
    dev_root: Option<PathBuf>,
    proc_root: Option<PathBuf>,
    nvml_library: Option<PathBuf>,
    cuda_visible_devices: Option<String>,
    cuda_device_order: Option<String>,
    cpu_tdp_w: Option<String>,
    cpu_backends: Option<Vec<String>>,
    nvml: bool,
    estimate: &str,
    gpus: Option<Vec<String>>,
    intervals: Option<Vec<(String, f64)>>,
    amdsmi: bool,
    amdsmi_library: Option<PathBuf>,
    rocr_visible_devices: Option<String>,
    hip_visible_devices: Option<String>,
    amd_gpus: Option<Vec<String>>,
    gpu: bool,
    hwmon: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let duration = seconds("duration_s", duration_s)?;
    let mut polls = Vec::new();
    for (backend, secs) in intervals.unwrap_or_default() {
        polls.push((
            backend.clone(),
            seconds(&format!("interval for {backend:?}"), secs)?,
        ));
    }
    if duration.is_zero() {
        return Err(errors::configuration(format!(
            "duration_s must be a positive number of seconds, not {duration_s}"
        )));
    }
    let machine = Machine {
        sys_root,
        dev_root,
        proc_root,
        nvml_library,
        cuda_visible_devices,
        cuda_device_order,
        cpu_tdp_w,
        amd: AmdArgs {
            amdsmi,
            amdsmi_library,
            rocr_visible_devices,
            hip_visible_devices,
            amd_gpus,
        },
        gpu,
        hwmon,
    };
    let opts = options(machine, cpu_backends, nvml, estimate, gpus)?;
    let (checks, unavailable) = py.detach(|| {
        let found = disc::discover(&opts);
        (
            check::check(found.chosen, duration, &polls),
            found.unavailable,
        )
    });
    let d = PyDict::new(py);
    let sources: PyResult<Vec<_>> = checks.iter().map(|c| check_dict(py, c)).collect();
    d.set_item("sources", sources?)?;
    d.set_item("unavailable", unavailable_dicts(py, &unavailable)?)?;
    Ok(d)
}

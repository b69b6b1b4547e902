//! Sources as Python sees them: the dicts that describe a source and one that could not be
//! used, `discover` (the sources found, nothing started) and `nvml_gpus` (the GPUs NVML lists).

use std::path::PathBuf;

use carbonctx_sampler::discover as disc;
use carbonctx_sampler::{SourceInfo, Unavailable};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::machine::{options, AmdArgs, Machine};

pub(crate) fn info_dict<'py>(py: Python<'py>, i: &SourceInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", &i.id)?;
    d.set_item("backend", i.backend)?;
    d.set_item("domain", i.domain.as_str())?;
    d.set_item("index", i.index)?;
    d.set_item("label", &i.label)?;
    d.set_item("method", i.method.as_str())?;
    d.set_item("interval_s", i.interval.as_secs_f64())?;
    d.set_item("path", i.path.as_ref().map(|p| p.display().to_string()))?;
    d.set_item("joules_per_unit", i.counter.map(|c| c.joules_per_unit))?;
    d.set_item("wrap", i.counter.and_then(|c| c.wrap))?;
    d.set_item("uuid", i.uuid.as_deref())?;
    Ok(d)
}

pub(crate) fn unavailable_dict<'py>(
    py: Python<'py>,
    u: &Unavailable,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("backend", u.backend)?;
    d.set_item("what", &u.what)?;
    d.set_item("reason", &u.reason)?;
    d.set_item("hint", &u.hint)?;
    Ok(d)
}

/// The dicts of `infos`, in order.
pub(crate) fn info_dicts<'py>(
    py: Python<'py>,
    infos: &[SourceInfo],
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    infos.iter().map(|i| info_dict(py, i)).collect()
}

/// The dicts of `unavailable`, in order.
pub(crate) fn unavailable_dicts<'py>(
    py: Python<'py>,
    unavailable: &[Unavailable],
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    unavailable
        .iter()
        .map(|u| unavailable_dict(py, u))
        .collect()
}

/// Find energy sources without starting anything.
#[pyfunction]
#[pyo3(signature = (*, sys_root=None, dev_root=None, proc_root=None, nvml_library=None,
                    cuda_visible_devices=None, cuda_device_order=None, cpu_tdp_w=None,
                    cpu_backends=None, nvml=true, estimate="auto", gpus=None, amdsmi=true,
                    amdsmi_library=None, rocr_visible_devices=None, hip_visible_devices=None,
                    amd_gpus=None, gpu=true, hwmon=true))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn discover<'py>(
    py: Python<'py>,
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
    amdsmi: bool,
    amdsmi_library: Option<PathBuf>,
    rocr_visible_devices: Option<String>,
    hip_visible_devices: Option<String>,
    amd_gpus: Option<Vec<String>>,
    gpu: bool,
    hwmon: bool,
) -> PyResult<Bound<'py, PyDict>> {
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
    let found = py.detach(|| disc::discover(&opts));
    let d = PyDict::new(py);
    let chosen: PyResult<Vec<_>> = found
        .chosen
        .iter()
        .map(|s| info_dict(py, s.info()))
        .collect();
    d.set_item("sources", chosen?)?;
    d.set_item("alternatives", info_dicts(py, &found.alternatives)?)?;
    d.set_item("unavailable", unavailable_dicts(py, &found.unavailable)?)?;
    Ok(d)
}

/// Every NVIDIA GPU NVML lists, with its MIG instances. See `carbonctx/_native.pyi`.
#[pyfunction]
#[pyo3(signature = (*, nvml_library=None))]
pub(crate) fn nvml_gpus<'py>(
    py: Python<'py>,
    nvml_library: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let roots = carbonctx_sampler::Roots {
        nvml_library,
        ..Default::default()
    };
    let listed = py.detach(|| carbonctx_sampler::nvml::list_gpus(&roots));
    let d = PyDict::new(py);
    let (gpus, unavailable) = match listed {
        Ok(gpus) => (gpus, Vec::new()),
        Err(u) => (Vec::new(), vec![unavailable_dict(py, &u)?]),
    };
    let gpus: PyResult<Vec<_>> = gpus
        .iter()
        .map(|g| {
            let e = PyDict::new(py);
            e.set_item("index", g.index)?;
            e.set_item("uuid", g.uuid.as_deref())?;
            e.set_item("name", g.name.as_deref())?;
            e.set_item("mig_uuids", &g.mig_uuids)?;
            let migs: PyResult<Vec<_>> = g
                .mig_instances
                .iter()
                .map(|m| {
                    let d = PyDict::new(py);
                    d.set_item("uuid", &m.uuid)?;
                    d.set_item("name", m.name.as_deref())?;
                    d.set_item("gpu_instance_id", m.gpu_instance_id)?;
                    d.set_item("compute_instance_id", m.compute_instance_id)?;
                    d.set_item("slices", m.slices)?;
                    d.set_item("compute_slices", m.compute_slices)?;
                    d.set_item("slices_error", m.slices_error.as_deref())?;
                    Ok(d)
                })
                .collect();
            e.set_item("mig_instances", migs?)?;
            e.set_item("slices", g.slices)?;
            e.set_item("slices_error", g.slices_error.as_deref())?;
            Ok(e)
        })
        .collect();
    d.set_item("gpus", gpus?)?;
    d.set_item("unavailable", unavailable)?;
    Ok(d)
}

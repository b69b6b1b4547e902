//! Where the hardware is, as Python passes it (roots, libraries, the visible-device variables,
//! which kinds of source to read), converted into the core's discovery options.

use std::path::PathBuf;

use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::Roots;
use pyo3::prelude::*;

use crate::errors;

/// Where the counters are and what the environment says about them: every value comes from
/// the caller (the Python settings module reads the environment, once); nothing is read here.
#[derive(Default)]
pub(crate) struct Machine {
    pub(crate) sys_root: Option<PathBuf>,
    pub(crate) dev_root: Option<PathBuf>,
    pub(crate) proc_root: Option<PathBuf>,
    pub(crate) nvml_library: Option<PathBuf>,
    pub(crate) cuda_visible_devices: Option<String>,
    pub(crate) cuda_device_order: Option<String>,
    pub(crate) cpu_tdp_w: Option<String>,
    pub(crate) amd: AmdArgs,
    /// Read GPUs at all (every vendor), and hwmon's channels.
    pub(crate) gpu: bool,
    pub(crate) hwmon: bool,
}

/// The AMD GPU arguments: whether to look, the library, the ROCm visible-device variables, and
/// the GPUs this process reports (ROCr UUIDs or indices; they replace both variables).
#[derive(Default)]
pub(crate) struct AmdArgs {
    pub(crate) amdsmi: bool,
    pub(crate) amdsmi_library: Option<PathBuf>,
    pub(crate) rocr_visible_devices: Option<String>,
    pub(crate) hip_visible_devices: Option<String>,
    pub(crate) amd_gpus: Option<Vec<String>>,
}

/// Converts the arguments into discovery options. `gpus` (NVML indices or UUIDs, in
/// CUDA_VISIBLE_DEVICES syntax) replaces the visible-device list: the GPUs this process reports.
pub(crate) fn options(
    machine: Machine,
    cpu_backends: Option<Vec<String>>,
    nvml: bool,
    estimate: &str,
    gpus: Option<Vec<String>>,
) -> PyResult<Options> {
    let defaults = Roots::default();
    let roots = Roots {
        sys: machine.sys_root.unwrap_or(defaults.sys),
        dev: machine.dev_root.unwrap_or(defaults.dev),
        proc: machine.proc_root.unwrap_or(defaults.proc),
        nvml_library: machine.nvml_library,
    };
    let tdp_model = match estimate {
        "auto" => TdpModelUse::Auto,
        "never" => TdpModelUse::Never,
        "always" => TdpModelUse::Always,
        other => {
            return Err(errors::configuration(format!(
                "estimate must be 'auto', 'never' or 'always', not {other:?}"
            )))
        }
    };
    let amd = machine.amd;
    let (rocr_visible_devices, hip_visible_devices) = match amd.amd_gpus {
        Some(g) => (Some(g.join(",")), None),
        None => (amd.rocr_visible_devices, amd.hip_visible_devices),
    };
    let mut opts = Options {
        roots,
        nvml,
        gpu: machine.gpu,
        hwmon: machine.hwmon,
        tdp_model,
        cuda_visible_devices: gpus.map(|g| g.join(",")).or(machine.cuda_visible_devices),
        cuda_device_order: machine.cuda_device_order,
        cpu_tdp_w: machine.cpu_tdp_w,
        amd: amd.amdsmi,
        amdsmi_library: amd.amdsmi_library,
        rocr_visible_devices,
        hip_visible_devices,
        ..Options::default()
    };
    if let Some(b) = cpu_backends {
        opts.cpu_backends = b;
    }
    Ok(opts)
}

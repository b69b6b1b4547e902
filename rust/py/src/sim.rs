//! Python bindings of the simulated energy hardware and of its one waveform definition
//! (`carbonctx.testing` wraps them).

use std::path::PathBuf;
use std::sync::Mutex;

use carbonctx_sampler::Domain;
use carbonctx_sim::{secs_to_ns, SimGpu, SimMachine as Machine, SimSpec, SimZone, SquareWave};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn domain(name: &str) -> PyResult<Domain> {
    Ok(match name {
        "package" => Domain::Package,
        "core" => Domain::Core,
        "uncore" => Domain::Uncore,
        "dram" => Domain::Dram,
        "psys" => Domain::Psys,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown zone domain {other:?}: use package, core, uncore, dram or psys"
            )))
        }
    })
}

fn err(e: carbonctx_sampler::Error) -> PyErr {
    crate::errors::from_core(e)
}

/// A zone: (domain, package, low_w, high_w, period_s, duty, max_energy_range_uj, offset_j).
type ZoneArgs = (String, u32, f64, f64, f64, f64, Option<u64>, Option<f64>);

/// A GPU: (name, energy_counter, base_mj, low_w, high_w, period_s, duty).
type GpuArgs = (String, bool, u64, f64, f64, f64, f64);

/// The wave Python describes in seconds; every conversion goes through [`secs_to_ns`].
fn wave(low_w: f64, high_w: f64, period_s: f64, duty: f64) -> SquareWave {
    SquareWave {
        low_w,
        high_w,
        period_ns: secs_to_ns(period_s),
        duty,
    }
}

/// Power of a square wave `elapsed_s` after its start, watts (`carbonctx.testing.Wave`).
#[pyfunction]
pub fn square_wave_power_w(
    low_w: f64,
    high_w: f64,
    period_s: f64,
    duty: f64,
    elapsed_s: f64,
) -> f64 {
    wave(low_w, high_w, period_s, duty).power_w(secs_to_ns(elapsed_s))
}

/// Exact energy of a square wave from its start to `elapsed_s`, joules.
#[pyfunction]
pub fn square_wave_energy_j(
    low_w: f64,
    high_w: f64,
    period_s: f64,
    duty: f64,
    elapsed_s: f64,
) -> f64 {
    wave(low_w, high_w, period_s, duty).energy_j(secs_to_ns(elapsed_s))
}

/// Simulated RAPL hardware: powercap, MSR and perf trees kept current by a writer thread.
#[pyclass(frozen, module = "carbonctx._native")]
pub struct SimMachine {
    inner: Mutex<Machine>,
}

impl SimMachine {
    fn with<T>(&self, f: impl FnOnce(&mut Machine) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

#[pymethods]
impl SimMachine {
    #[new]
    #[pyo3(signature = (root, *, packages=1, zones=Vec::new(), update_period_s=0.001,
                        powercap=true, msr=true, perf=true, model_name=None, cpu_model=None,
                        gpus=Vec::new(), gpu_update_s=0.02))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        root: PathBuf,
        packages: u32,
        zones: Vec<ZoneArgs>,
        update_period_s: f64,
        powercap: bool,
        msr: bool,
        perf: bool,
        model_name: Option<String>,
        cpu_model: Option<u32>,
        gpus: Vec<GpuArgs>,
        gpu_update_s: f64,
    ) -> PyResult<Self> {
        if !(update_period_s.is_finite() && update_period_s > 0.0) {
            return Err(PyValueError::new_err(
                "update_period_s must be a positive number of seconds",
            ));
        }
        let mut spec = SimSpec::new(root, packages);
        spec.update_period_ns = (update_period_s * 1e9) as u64;
        spec.powercap = powercap;
        spec.msr = msr;
        spec.perf = perf;
        if let Some(m) = model_name {
            spec.model_name = m;
        }
        if let Some(m) = cpu_model {
            spec.cpu_model = m;
        }
        for (d, pkg, low, high, period_s, duty, range, offset) in zones {
            let mut z = SimZone::new(domain(&d)?, pkg, wave(low, high, period_s, duty));
            if let Some(r) = range {
                z = z.with_max_energy_range_uj(r);
            }
            if let Some(o) = offset {
                z = z.with_offset_j(o);
            }
            spec.zones.push(z);
        }
        if !(gpu_update_s.is_finite() && gpu_update_s >= 0.0) {
            return Err(PyValueError::new_err(
                "gpu_update_s must be a non-negative number of seconds",
            ));
        }
        spec.gpu_energy_update_ns = secs_to_ns(gpu_update_s);
        spec.gpu_power_update_ns = secs_to_ns(gpu_update_s);
        for (name, energy_counter, base_mj, low, high, period_s, duty) in gpus {
            spec.gpus.push(SimGpu {
                name,
                wave: wave(low, high, period_s, duty),
                energy_counter,
                base_mj,
            });
        }
        let m = Machine::new(spec).map_err(err)?;
        Ok(SimMachine {
            inner: Mutex::new(m),
        })
    }

    /// Start the writer thread.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.with(|m| m.start())).map_err(err)
    }

    /// Stop and join the writer thread.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.with(|m| m.stop()))
    }

    #[getter]
    fn t0_ns(&self) -> u64 {
        self.with(|m| m.t0_ns())
    }

    #[getter]
    fn running(&self) -> bool {
        self.with(|m| m.is_running())
    }

    /// The roots to point the sampler at: sys, dev, proc.
    fn roots<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self.with(|m| m.roots());
        let d = PyDict::new(py);
        d.set_item("sys_root", r.sys)?;
        d.set_item("dev_root", r.dev)?;
        d.set_item("proc_root", r.proc)?;
        Ok(d)
    }

    /// Exact energy of a zone between two CLOCK_MONOTONIC instants, joules.
    fn truth_j(&self, domain_name: &str, package: u32, t_a: u64, t_b: u64) -> PyResult<f64> {
        let d = domain(domain_name)?;
        self.with(|m| m.truth_j(d, package, t_a, t_b)).map_err(err)
    }

    /// Exact energy of GPU `index` between two CLOCK_MONOTONIC instants, joules.
    fn gpu_truth_j(&self, index: usize, t_a: u64, t_b: u64) -> PyResult<f64> {
        self.with(|m| m.gpu_truth_j(index, t_a, t_b)).map_err(err)
    }

    /// Where the GPUs' files are (`<root>/nvml`); the fake NVML library goes here.
    fn nvml_dir(&self) -> PathBuf {
        self.with(|m| m.nvml_dir())
    }

    /// The fake NVML library's configuration (None without GPUs).
    fn nvml_config(&self) -> Option<String> {
        self.with(|m| m.nvml_config())
    }

    /// CLOCK_MONOTONIC instants of the most recent counter updates.
    fn write_times(&self) -> Vec<u64> {
        self.with(|m| m.write_times())
    }

    fn write_count(&self) -> u64 {
        self.with(|m| m.write_count())
    }

    fn last_error(&self) -> Option<String> {
        self.with(|m| m.last_error())
    }

    fn energy_path(&self, domain_name: &str, package: u32) -> PyResult<PathBuf> {
        let d = domain(domain_name)?;
        self.with(|m| m.energy_path(d, package)).map_err(err)
    }

    /// Make a zone vanish mid-run.
    fn remove_zone(&self, domain_name: &str, package: u32) -> PyResult<()> {
        let d = domain(domain_name)?;
        self.with(|m| m.remove_zone(d, package)).map_err(err)
    }

    /// Make a zone's counter read as garbage (or stop doing so).
    fn fail_reads(&self, domain_name: &str, package: u32, fail: bool) -> PyResult<()> {
        let d = domain(domain_name)?;
        self.with(|m| m.fail_reads(d, package, fail)).map_err(err)
    }

    /// Make a zone's counters start again from zero (a firmware reset, a driver reload).
    fn reset_counter(&self, domain_name: &str, package: u32) -> PyResult<()> {
        let d = domain(domain_name)?;
        self.with(|m| m.reset_counter(d, package)).map_err(err)
    }
}

//! `Sampler`: the native sampler thread as a Python class (its options converted, its
//! results and counters handed out as dicts and byte columns).

use std::path::PathBuf;
use std::time::Duration;

use carbonctx_sampler::discover as disc;
use carbonctx_sampler::sampler::{self, Config};
use carbonctx_sampler::{NodeConfig, SourceInfo, Unavailable};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict};

use crate::errors::{self, seconds};
use crate::machine::{options, AmdArgs, Machine};
use crate::sources::{info_dicts, unavailable_dicts};
use crate::{drained, feed};

/// The native sampler thread. See `carbonctx/_native.pyi`.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct Sampler {
    pub(crate) inner: sampler::Sampler,
    alternatives: Vec<SourceInfo>,
    unavailable: Vec<Unavailable>,
    drained: drained::Drained,
}

#[pymethods]
impl Sampler {
    #[new]
    #[pyo3(signature = (*, sys_root=None, dev_root=None, proc_root=None, nvml_library=None,
                        cuda_visible_devices=None, cuda_device_order=None, cpu_tdp_w=None,
                        cpu_backends=None, nvml=true, estimate="auto", gpus=None,
                        intervals=None, timeline_capacity=None, settle_s=None, phase_lock=true,
                        quiet_s=None, node_key=None, node_dir=None, amdsmi=true,
                        amdsmi_library=None, rocr_visible_devices=None,
                        hip_visible_devices=None, amd_gpus=None, external=None, gpu=true,
                        hwmon=true, gpu_power_samples=true, mark_reads=true, fast_reads=true,
                        predict_marks=false, power_share=None, realtime=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
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
        timeline_capacity: Option<usize>,
        settle_s: Option<f64>,
        phase_lock: bool,
        quiet_s: Option<f64>,
        node_key: Option<String>,
        node_dir: Option<PathBuf>,
        amdsmi: bool,
        amdsmi_library: Option<PathBuf>,
        rocr_visible_devices: Option<String>,
        hip_visible_devices: Option<String>,
        amd_gpus: Option<Vec<String>>,
        external: Option<Vec<PyRef<'_, feed::Feed>>>,
        gpu: bool,
        hwmon: bool,
        gpu_power_samples: bool,
        mark_reads: bool,
        fast_reads: bool,
        predict_marks: bool,
        power_share: Option<&Bound<'_, PyAny>>,
        realtime: bool,
    ) -> PyResult<Self> {
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
        let mut opts = options(machine, cpu_backends, nvml, estimate, gpus)?;
        opts.external = external
            .unwrap_or_default()
            .iter()
            .map(|f| f.inner.clone())
            .collect();
        let mut config = Config {
            phase_lock,
            power_samples: gpu_power_samples,
            mark_reads,
            fast_reads,
            predict_marks,
            realtime,
            ..Config::default()
        };
        if let Some(share) = power_share {
            // A bool is an int to Python (True is 1.0, the whole core): refused, not taken.
            let number = (!share.is_instance_of::<PyBool>())
                .then(|| share.extract::<f64>().ok())
                .flatten();
            let Some(share) = number else {
                return Err(errors::configuration(format!(
                    "power_share must be a number, a share of one core in (0, 1] (0.003 is \
                     0.3 %), not {}",
                    share
                        .repr()
                        .map_or_else(|_| "that".into(), |r| r.to_string())
                )));
            };
            if !(share.is_finite() && share > 0.0 && share <= 1.0) {
                return Err(errors::configuration(format!(
                    "power_share must be a share of one core in (0, 1] (0.003 is 0.3 %), not \
                     {share}"
                )));
            }
            config.power_share = share;
        }
        for (backend, secs) in intervals.unwrap_or_default() {
            let d = seconds(&format!("interval for {backend:?}"), secs)?;
            if d.is_zero() {
                return Err(errors::configuration(format!(
                    "interval for {backend:?} must be a positive number of seconds, not {secs}"
                )));
            }
            config.intervals.push((backend, d));
        }
        if let Some(q) = quiet_s {
            config.quiet_interval = seconds("quiet_s", q)?;
        }
        if let Some(c) = timeline_capacity {
            config.timeline_capacity = c;
        }
        if let Some(s) = settle_s {
            config.settle = seconds("settle_s", s)?;
        }
        let node = node_key.map(|key| {
            let n = NodeConfig::new(key);
            match node_dir {
                Some(dir) => n.in_dir(dir),
                None => n,
            }
        });
        let started = py.detach(move || match node {
            // One sampler per node: the owner reads, the others copy (discovery is its own).
            Some(node) => sampler::Sampler::start_on_node(opts, config, node)
                .map(|(s, un)| (s, Vec::new(), un)),
            None => {
                let found = disc::discover(&opts);
                sampler::Sampler::start(found.chosen, config).map(|(s, mut un)| {
                    let mut all = found.unavailable;
                    all.append(&mut un);
                    (s, found.alternatives, all)
                })
            }
        });
        let (inner, alternatives, unavailable) = started.map_err(errors::from_core)?;
        Ok(Sampler {
            inner,
            alternatives,
            unavailable,
            drained: drained::Drained::default(),
        })
    }

    /// This process's part in its node's shared sampler (None when it samples on its own).
    fn node_status<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(n) = self.inner.node_status() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("role", n.role.as_str())?;
        d.set_item("owner_pid", n.owner_pid)?;
        d.set_item("generation", n.generation)?;
        d.set_item("takeovers", n.takeovers)?;
        d.set_item("segment", n.segment.display().to_string())?;
        d.set_item("node_sources", info_dicts(py, &n.node_sources)?)?;
        d.set_item("node_reads", n.node_reads)?;
        let reclaimed: Vec<String> = n
            .reclaimed
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        d.set_item("reclaimed", reclaimed)?;
        Ok(Some(d))
    }

    /// The sources polled, in the order every result lists them.
    #[getter]
    fn sources<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        info_dicts(py, self.inner.sources())
    }

    #[getter]
    fn alternatives<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        info_dicts(py, &self.alternatives)
    }

    #[getter]
    fn unavailable<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        unavailable_dicts(py, &self.unavailable)
    }

    fn begin(&self) -> u64 {
        self.inner.begin()
    }

    fn end(&self, id: u64) -> u64 {
        self.inner.end(id)
    }

    fn end_tagged(&self, id: u64, tag: u32) -> u64 {
        self.inner.end_tagged(id, tag)
    }

    fn end_span(&self, t0_ns: u64, tag: u32) -> bool {
        self.inner.end_span(t0_ns, tag)
    }

    fn begin_at(&self, t_ns: u64) -> u64 {
        self.inner.begin_at(t_ns)
    }

    fn end_at(&self, id: u64, t_ns: u64) {
        self.inner.end_at(id, t_ns)
    }

    /// Up to `max` resolved regions in columns: (n, ids, tags, t0_ns, t1_ns, joules,
    /// uncertainty), each the native-endian bytes of a u64, u32 or f64 array.
    #[pyo3(signature = (max=100_000))]
    #[allow(clippy::type_complexity)]
    fn drain<'py>(
        &self,
        py: Python<'py>,
        max: usize,
    ) -> PyResult<(
        usize,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
        Bound<'py, PyBytes>,
    )> {
        self.drained.take(&self.inner, max, |p| {
            let out = (|| {
                Ok((
                    p.ids.len(),
                    ne_bytes(py, p.ids, u64::to_ne_bytes)?,
                    ne_bytes(py, p.tags, u32::to_ne_bytes)?,
                    ne_bytes(py, p.t0_ns, u64::to_ne_bytes)?,
                    ne_bytes(py, p.t1_ns, u64::to_ne_bytes)?,
                    ne_bytes(py, p.joules, f64::to_ne_bytes)?,
                    ne_bytes(py, p.uncertainty, f64::to_ne_bytes)?,
                ))
            })();
            let taken = out.is_ok();
            (out, taken)
        })
    }

    /// Wait (without the GIL) until every mark at or before `t_ns` is resolved.
    fn wait(&self, py: Python<'_>, t_ns: u64, timeout_s: f64) -> bool {
        let timeout = Duration::from_secs_f64(timeout_s.clamp(0.0, 86_400.0));
        py.detach(|| self.inner.wait_until_resolved(t_ns, timeout))
    }

    fn status<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .status()
            .iter()
            .map(|s| {
                let d = PyDict::new(py);
                d.set_item("reads", s.reads)?;
                d.set_item("errors", s.errors)?;
                d.set_item("failed", s.failed)?;
                d.set_item("last_error", s.last_error.clone())?;
                d.set_item("late_polls", s.late_polls)?;
                d.set_item("max_late_s", s.max_late_ns as f64 * 1e-9)?;
                d.set_item("skipped_polls", s.skipped_polls)?;
                d.set_item("wraps", s.wraps)?;
                d.set_item("resets", s.resets)?;
                d.set_item("joules", s.joules)?;
                d.set_item("gaps", s.gaps.clone())?;
                d.set_item("interval_s", s.interval_ns as f64 * 1e-9)?;
                d.set_item("update_period_s", s.update_period_ns * 1e-9)?;
                d.set_item("phase_anchors", s.phase_anchors)?;
                d.set_item("shaped_updates", s.shaped_updates)?;
                d.set_item("mark_reads", s.mark_reads)?;
                Ok(d)
            })
            .collect()
    }

    /// How the sampler thread is scheduled, as it set itself ("real-time (SCHED_FIFO 1)",
    /// "nice -10", "default priority: not permitted", ...).
    fn scheduling(&self) -> String {
        self.inner.scheduling().to_string()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("started_ns", s.started_ns)?;
        d.set_item("loops", s.loops)?;
        d.set_item("regions_begun", s.regions_begun)?;
        d.set_item("regions_resolved", s.regions_resolved)?;
        d.set_item("dropped_regions", s.dropped_regions)?;
        d.set_item("frontier_ns", s.frontier_ns)?;
        d.set_item("pending_marks", s.pending_marks)?;
        d.set_item("undrained", s.undrained + self.drained.kept())?;
        Ok(d)
    }

    /// Timeline points (t_ns, joules) of source `index` after `since_ns`.
    #[pyo3(signature = (index, since_ns=0, max=1_000_000))]
    fn timeline(&self, index: usize, since_ns: u64, max: usize) -> Vec<(u64, f64)> {
        self.inner
            .timeline(index, since_ns, max)
            .into_iter()
            .map(|p| (p.t_ns, p.joules))
            .collect()
    }

    /// Stop polling; every open mark is resolved. Idempotent.
    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.stop())
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }
}

/// The native-endian bytes of a column.
fn ne_bytes<'py, T: Copy, const N: usize>(
    py: Python<'py>,
    v: &[T],
    bytes: fn(T) -> [u8; N],
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, v.len() * N, |buf| {
        for (out, &x) in buf.chunks_exact_mut(N).zip(v) {
            out.copy_from_slice(&bytes(x));
        }
        Ok(())
    })
}

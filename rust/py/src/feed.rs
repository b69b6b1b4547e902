//! `Feed`: the Python end of an external source (power fetched by Python, such as the node's
//! BMC reading over Redfish, pushed into the sampler). Conversion only.

use std::time::Duration;

use carbonctx_sampler::external;
use carbonctx_sampler::{Domain, Method, SourceInfo};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{self, seconds};
use crate::sources::info_dict;

/// See `carbonctx/_native.pyi`.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct Feed {
    pub(crate) inner: external::Feed,
}

fn domain(name: &str) -> PyResult<Domain> {
    match name {
        "node" => Ok(Domain::Node),
        "module" => Ok(Domain::Module),
        "rail" => Ok(Domain::Rail),
        other => Err(errors::configuration(format!(
            "an external source's domain is 'node', 'module' or 'rail', not {other:?}"
        ))),
    }
}

fn backend(name: &str) -> PyResult<&'static str> {
    match name {
        "redfish" => Ok("redfish"),
        other => Err(errors::configuration(format!(
            "an external source's backend is 'redfish', not {other:?}"
        ))),
    }
}

#[pymethods]
impl Feed {
    #[new]
    #[pyo3(signature = (*, id, label, backend="redfish", domain="node", interval_s=0.1,
                        stale_s=30.0, first_wait_s=0.0, lag_s=0.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: String,
        label: String,
        backend: &str,
        domain: &str,
        interval_s: f64,
        stale_s: f64,
        first_wait_s: f64,
        lag_s: f64,
    ) -> PyResult<Self> {
        let info = SourceInfo {
            id,
            backend: self::backend(backend)?,
            domain: self::domain(domain)?,
            index: 0,
            label,
            method: Method::IntegratedPower,
            counter: None,
            interval: seconds("interval_s", interval_s)?.max(Duration::from_millis(1)),
            path: None,
            uuid: None,
        };
        let stale = seconds("stale_s", stale_s)?;
        let first_wait = seconds("first_wait_s", first_wait_s)?;
        let lag = seconds("lag_s", lag_s)?;
        Ok(Feed {
            inner: external::Feed::lagged(info, stale, first_wait, lag),
        })
    }

    /// The latest reading in watts, standing for the instant `at_ns` (`time.monotonic_ns()`;
    /// None: now). False: not a finite non-negative number, refused. An instant out of
    /// bounds is moved, never refused (see `clamped`).
    #[pyo3(signature = (watts, at_ns=None))]
    fn push(&self, watts: f64, at_ns: Option<i64>) -> bool {
        self.inner
            .push_at(watts, at_ns.map(|t| u64::try_from(t).unwrap_or(0)))
    }

    #[getter]
    fn lag_s(&self) -> f64 {
        self.inner.lag().as_secs_f64()
    }

    #[getter]
    fn late(&self) -> u64 {
        self.inner.late()
    }

    #[getter]
    fn clamped(&self) -> u64 {
        self.inner.clamped()
    }

    /// No reading could be had, and why (what reads say once the held one is stale).
    fn fail(&self, why: &str) {
        self.inner.fail(why)
    }

    /// Give up for good: every read fails from now on.
    fn close(&self, why: &str) {
        self.inner.close(why)
    }

    /// Whether a sampler read the feed within `within_s`; waits up to `timeout_s` for one.
    fn wanted(&self, py: Python<'_>, within_s: f64, timeout_s: f64) -> PyResult<bool> {
        let within = seconds("within_s", within_s)?;
        let timeout = seconds("timeout_s", timeout_s)?;
        let feed = self.inner.clone();
        Ok(py.detach(move || feed.wanted(within, timeout)))
    }

    #[getter]
    fn reads(&self) -> u64 {
        self.inner.reads()
    }

    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        info_dict(py, self.inner.info())
    }
}

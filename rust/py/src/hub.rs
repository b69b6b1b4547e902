//! The typed object through which the process's runtime and the region code meet.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyWeakrefMethods, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::Sampler;

/// The next [`RegionHub::serial`].
static SERIALS: AtomicU64 = AtomicU64::new(1);

/// What the region code needs of the process's runtime, handed over as one typed object
/// (`carbonctx._measure.runtime.Runtime` makes it and installs it with [`set_hub`]): the
/// runtime itself (a region's `_rt`), its sampler once started, its flags, the map of regions
/// waiting for the resolver, the name tags, and the three callbacks the exit path may need.
/// Its fields are read on every region; nothing is looked up by name. Frozen: the flags are
/// atomics and the sampler is set once, so no borrow is checked and none can collide.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct RegionHub {
    pub(crate) runtime: Py<PyAny>,
    pub(crate) sampler: OnceLock<Py<Sampler>>,
    pub(crate) strict: bool,
    pub(crate) warn_due: AtomicBool,
    /// The resolver has been asked to drain a backlog and has not started its next pass yet:
    /// the marking threads ask once, not on every region while the backlog lasts.
    pub(crate) wake_sent: AtomicBool,
    pub(crate) dead: AtomicBool,
    pub(crate) pending: Py<PyDict>,
    pub(crate) name_tags: Py<PyDict>,
    pub(crate) tag_of: Py<PyAny>,
    pub(crate) drain: Py<PyAny>,
    pub(crate) emit_warnings: Py<PyAny>,
    pub(crate) backlog_high: usize,
    /// The runtime writes full records (thread, parent, tags) or checks strictly: a call of a
    /// `@tracked` function takes the general path, a whole region, not a span.
    pub(crate) detailed: bool,
    /// This hub among those the process has made (from 1): what a name's tag cached outside
    /// the runtime is checked against (a new runtime interns names anew).
    pub(crate) serial: u64,
    /// Weak references to the regions left in another context (thread, task) than the one
    /// they were entered in: that context's variable still holds each of them, and through it
    /// this runtime. [`RegionHub::take_orphans`] hands them over when the runtime shuts down.
    pub(crate) orphans: Mutex<Vec<Py<PyWeakrefReference>>>,
    /// Entries of steps open in this runtime as spans (step.rs): no begin mark says they are,
    /// and a runtime `configure()` replaced keeps measuring until they have ended. Counted in
    /// this object, among the fields an entry reads anyway (no line of its own to fetch); each
    /// entry holds the hub, so the count outlives it, and one dropped with its thread's stack
    /// of entries after the interpreter has finalized leaves it alone (step.rs).
    pub(crate) open_steps: AtomicUsize,
}

impl RegionHub {
    /// Whether this thread is the one to wake the resolver for a backlog (the first since the
    /// resolver's last pass began).
    #[inline]
    pub(crate) fn ask_wake(&self) -> bool {
        !self.wake_sent.load(Ordering::Relaxed) && !self.wake_sent.swap(true, Ordering::AcqRel)
    }

    /// Remember a region left in another context than its own (weakly; the dead are pruned
    /// whenever the list doubles, so it stays as long as the live ones).
    pub(crate) fn add_orphan(&self, region: &Bound<'_, PyAny>) -> PyResult<()> {
        let weak = PyWeakrefReference::new(region)?.unbind();
        let py = region.py();
        let mut list = self.orphans.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|w| w.bind(py).upgrade().is_some());
        }
        list.push(weak);
        Ok(())
    }

    /// [`RegionHub::end_span`] on the native side (see there).
    #[inline]
    pub(crate) fn end_span_now(&self, t0_ns: u64, tag: u32) -> u8 {
        let mut due = 0;
        if let Some(s) = self.sampler.get() {
            if !self.dead.load(Ordering::Relaxed)
                && s.get().inner.end_span(t0_ns, tag)
                && self.ask_wake()
            {
                due |= SPAN_BACKLOG;
            }
        }
        if self.warn_due.load(Ordering::Relaxed) {
            due |= SPAN_WARNINGS;
        }
        due
    }
}

#[pymethods]
impl RegionHub {
    #[new]
    #[pyo3(signature = (runtime, *, strict, pending, name_tags, tag_of, drain, emit_warnings,
                        backlog_high, detailed=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        runtime: Py<PyAny>,
        strict: bool,
        pending: Py<PyDict>,
        name_tags: Py<PyDict>,
        tag_of: Py<PyAny>,
        drain: Py<PyAny>,
        emit_warnings: Py<PyAny>,
        backlog_high: usize,
        detailed: bool,
    ) -> Self {
        RegionHub {
            runtime,
            sampler: OnceLock::new(),
            strict,
            warn_due: AtomicBool::new(false),
            wake_sent: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            pending,
            name_tags,
            tag_of,
            drain,
            emit_warnings,
            backlog_high,
            detailed,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            orphans: Mutex::new(Vec::new()),
            open_steps: AtomicUsize::new(0),
        }
    }

    /// The regions still alive that were left in another context than the one they were
    /// entered in (each still held by that context), handed over once: the runtime lets them
    /// go of it when it shuts down.
    fn take_orphans<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyAny>> {
        let list = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        list.iter().filter_map(|w| w.bind(py).upgrade()).collect()
    }

    /// The runtime's sampler, once it has started (set once).
    #[getter]
    fn sampler(&self, py: Python<'_>) -> Option<Py<Sampler>> {
        self.sampler.get().map(|s| s.clone_ref(py))
    }

    #[setter]
    fn set_sampler(&self, sampler: Py<Sampler>) -> PyResult<()> {
        self.sampler
            .set(sampler)
            .map_err(|_| PyRuntimeError::new_err("the hub's sampler is set once"))
    }

    #[getter]
    fn warn_due(&self) -> bool {
        self.warn_due.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_warn_due(&self, due: bool) {
        self.warn_due.store(due, Ordering::Relaxed);
    }

    /// Set when a marking thread was told to wake the resolver for a backlog; the resolver
    /// clears it as it starts a pass.
    #[getter]
    fn wake_sent(&self) -> bool {
        self.wake_sent.load(Ordering::Acquire)
    }

    #[setter]
    fn set_wake_sent(&self, sent: bool) {
        self.wake_sent.store(sent, Ordering::Release);
    }

    /// Entries of steps open in this runtime that no begin mark counts (their spans are counted
    /// once they have ended).
    #[getter]
    fn open_steps(&self) -> usize {
        // What the entries did before they counted themselves out (their spans) is seen from
        // here on.
        self.open_steps.load(Ordering::Acquire)
    }

    #[getter]
    fn dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_dead(&self, dead: bool) {
        self.dead.store(dead, Ordering::Relaxed);
    }

    /// Ends a span that began at `t0_ns` (a decorated call, CLOCK_MONOTONIC ns) under the name
    /// tag `tag`, and says what is due on the calling thread, so that a decorated call makes one
    /// native call after the function returns: 0 when nothing is, else the sum of
    /// `SPAN_BACKLOG` (1: the regions waiting for the resolver passed the high mark; wake it;
    /// said once until the resolver starts its next pass, see `wake_sent`) and `SPAN_WARNINGS`
    /// (2: warnings wait to be issued from the user's thread). A runtime without a sampler, or
    /// shut down, or inherited by a forked child, marks nothing.
    fn end_span(&self, t0_ns: u64, tag: u32) -> u8 {
        self.end_span_now(t0_ns, tag)
    }

    /// The hub and its runtime refer to each other; the collector breaks that cycle through
    /// the runtime (an ordinary object), so visiting is enough.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.runtime)?;
        if let Some(s) = self.sampler.get() {
            visit.call(s)?;
        }
        visit.call(&self.pending)?;
        visit.call(&self.name_tags)?;
        visit.call(&self.tag_of)?;
        visit.call(&self.drain)?;
        visit.call(&self.emit_warnings)
    }
}

/// [`RegionHub::end_span`]: the regions waiting for the resolver passed the high mark.
pub(crate) const SPAN_BACKLOG: u8 = 1;
/// [`RegionHub::end_span`]: warnings wait to be issued from the user's thread.
pub(crate) const SPAN_WARNINGS: u8 = 2;

/// The hub of the process's current runtime (None before the first region, after
/// `configure()` until the next one, and in a forked child until it makes its own).
static HUB: Mutex<Option<Py<RegionHub>>> = Mutex::new(None);

fn hub_slot() -> std::sync::MutexGuard<'static, Option<Py<RegionHub>>> {
    HUB.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs the current runtime's hub (`None`: no runtime).
#[pyfunction]
#[pyo3(signature = (hub))]
pub(crate) fn set_hub(hub: Option<Py<RegionHub>>) {
    let old = std::mem::replace(&mut *hub_slot(), hub);
    drop(old);
}

pub(crate) fn current_hub(py: Python<'_>) -> Option<Bound<'_, RegionHub>> {
    hub_slot().as_ref().map(|h| h.clone_ref(py).into_bound(py))
}

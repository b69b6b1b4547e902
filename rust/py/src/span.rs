//! The hot path of a call of a `@tracked` function: two native calls around the function (one
//! that starts the span, one that ends it), instead of a Python wrapper that looks up the
//! runtime, its sampler and flags and the name's tag, reads the clock and ends the span through
//! a bound method. After other work has evicted the caches, every object and code path a call
//! touches for the first time costs a line fetched from memory: those lookups cost more than
//! the span itself. The function is still called by the Python wrapper, not from here, so a
//! recursive decorated function keeps the depth it had (a call from native code would count one
//! more level against the recursion limit, and take more C stack).
//!
//! A runtime that writes full records (thread, parent, tags) or checks strictly measures each
//! call as a whole region (a `Tracker`, made by the callable handed in), entered and left here
//! as a `with` would. Anything else that is not the usual case (no runtime or sampler yet, an
//! inherited runtime) is the Python wrapper's: [`SpanCall::start`] says None.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use crate::hub::{current_hub, RegionHub, SPAN_BACKLOG, SPAN_WARNINGS};
use crate::region::Region;

/// The spans of one `@tracked` function: `start()` before each call, `end(started)` after it.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct SpanCall {
    name: Py<PyString>,
    /// Makes the region of one call, for a runtime that writes full records.
    region: Py<PyAny>,
    /// The serial of the hub the name's tag was interned in (0: none yet), and the tag: a new
    /// runtime interns it again.
    tag: Mutex<(u64, u32)>,
}

impl SpanCall {
    /// The name's tag in `hub`'s runtime.
    fn tag_in(&self, hub: &Bound<'_, RegionHub>) -> PyResult<u32> {
        let (serial, tag) = *self.tag.lock().unwrap_or_else(|e| e.into_inner());
        if serial == hub.get().serial {
            return Ok(tag);
        }
        self.new_tag(hub)
    }

    #[cold]
    #[inline(never)]
    fn new_tag(&self, hub: &Bound<'_, RegionHub>) -> PyResult<u32> {
        let py = hub.py();
        let tag: u32 = hub
            .get()
            .tag_of
            .call1(py, (self.name.clone_ref(py),))?
            .extract(py)?;
        *self.tag.lock().unwrap_or_else(|e| e.into_inner()) = (hub.get().serial, tag);
        Ok(tag)
    }
}

/// A call as a whole region: made by `make` and entered.
#[cold]
#[inline(never)]
fn start_region<'py>(py: Python<'py>, make: &Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let region = make.bind(py).call0()?.cast_into::<Region>()?;
    Region::__enter__(&region)?;
    Ok(region.into_any())
}

/// Leaves a call's region, with the exception the function raised if it did, as a `with`
/// would.
#[cold]
#[inline(never)]
fn end_region(started: &Bound<'_, PyAny>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let region = started.cast::<Region>()?;
    let Some(exc) = exc.filter(|e| !e.is_none()) else {
        return Region::__exit__(region, None, None, None);
    };
    let py = started.py();
    let tb = PyErr::from_value(exc.clone()).traceback(py);
    Region::__exit__(
        region,
        Some(exc.get_type().as_any()),
        Some(exc),
        tb.as_ref().map(|t| t.as_any()),
    )
}

/// What is due on the calling thread after a span (see [`RegionHub::end_span`]).
#[cold]
#[inline(never)]
fn handle_due(py: Python<'_>, h: &RegionHub, due: u8) -> PyResult<()> {
    if due & SPAN_BACKLOG != 0 {
        h.drain.call0(py)?;
    }
    if due & SPAN_WARNINGS != 0 {
        h.emit_warnings.call0(py)?;
    }
    Ok(())
}

/// A span begun under one runtime and ended under another (the function called `configure()`):
/// its tag names nothing there, and the runtime it began in has been replaced.
#[cold]
#[inline(never)]
fn dropped() -> PyResult<()> {
    Ok(())
}

#[pymethods]
impl SpanCall {
    #[new]
    fn new(name: Bound<'_, PyString>, region: Py<PyAny>) -> Self {
        SpanCall {
            name: name.unbind(),
            region,
            tag: Mutex::new((0, 0)),
        }
    }

    /// Starts one call: its start time (an int) as a span of the current runtime, or its
    /// region (entered) where the runtime writes full records, or None where the call is the
    /// Python wrapper's to measure (no runtime or sampler yet, or one a forked child inherited).
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(hub) = current_hub(py) else {
            return Ok(None);
        };
        let h = hub.get();
        if h.dead.load(Ordering::Relaxed) || h.sampler.get().is_none() {
            return Ok(None);
        }
        if h.detailed {
            return start_region(py, &self.region).map(Some);
        }
        self.tag_in(&hub)?;
        let t0 = carbonctx_sampler::now_ns();
        Ok(Some(PyInt::new(py, t0).into_any()))
    }

    /// Ends the call `started` (what [`SpanCall::start`] gave), whether the function returned
    /// or raised (`exc`, which a call's region is left with); then does what is due on this
    /// thread (waking the resolver for a backlog, issuing warnings).
    #[pyo3(signature = (started, exc=None))]
    fn end(&self, started: &Bound<'_, PyAny>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = started.py();
        let Ok(t0) = started.cast::<PyInt>() else {
            return end_region(started, exc);
        };
        let t0: u64 = t0.extract()?;
        let Some(hub) = current_hub(py) else {
            return dropped();
        };
        let h = hub.get();
        let (serial, tag) = *self.tag.lock().unwrap_or_else(|e| e.into_inner());
        if serial != h.serial {
            return dropped();
        }
        let due = h.end_span_now(t0, tag);
        if due != 0 {
            handle_due(py, h, due)?;
        }
        Ok(())
    }
}

//! The hot path of a call of a `@tracked` function: one native call that times the function and
//! ends its span, instead of a Python wrapper that looks up the runtime, reads the clock and ends
//! the span in three steps. After other work has evicted the caches, every object and code path
//! a call touches for the first time costs a line fetched from memory: the wrapper's lookups
//! (the process's runtime, its sampler, its flags, the name's tag, the bound method) cost more
//! than the span itself.
//!
//! A runtime that writes full records (thread, parent, tags) or checks strictly measures each
//! call as a whole region (a `Tracker`, made by the callable handed in), entered and left
//! here as a `with` would. Everything else that is not the usual case (no runtime or sampler
//! yet, a shut-down or inherited runtime) goes to the Python path handed in (`slow`), so the
//! behaviour lives in one place.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::hub::{current_hub, RegionHub, SPAN_BACKLOG, SPAN_WARNINGS};
use crate::region::Region;

/// A `@tracked` function's caller: `span(args, kwargs)` calls the function with them as one
/// span under the function's name, or hands them to `slow` (the general path). Collectable:
/// the function may refer back to its wrapper, and so to this object (a recursive function
/// defined in another function, through its closure).
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct SpanCall {
    func: Py<PyAny>,
    name: Py<PyString>,
    slow: Py<PyAny>,
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

/// The general path (`slow(args, kwargs)`): out of line, as the other uncommon paths.
#[cold]
#[inline(never)]
fn call_slow(
    slow: &Py<PyAny>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    let py = args.py();
    slow.call1(py, (args, kwargs))
}

/// One call as a whole region: made by `make`, entered, the function called, left (with the
/// function's exception, if it raised, as a `with` statement would).
#[cold]
#[inline(never)]
fn call_in_region(
    make: &Py<PyAny>,
    func: &Py<PyAny>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    let py = args.py();
    let region = make.bind(py).call0()?.cast_into::<Region>()?;
    Region::__enter__(&region)?;
    match func.bind(py).call(args, kwargs) {
        Ok(out) => {
            Region::__exit__(&region, None, None, None)?;
            Ok(out.unbind())
        }
        Err(err) => {
            let (ty, value, tb) = (err.get_type(py), err.value(py).clone(), err.traceback(py));
            Region::__exit__(
                &region,
                Some(ty.as_any()),
                Some(value.as_any()),
                tb.as_ref().map(|t| t.as_any()),
            )?;
            Err(err)
        }
    }
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

#[pymethods]
impl SpanCall {
    #[new]
    fn new(func: Py<PyAny>, name: Bound<'_, PyString>, slow: Py<PyAny>, region: Py<PyAny>) -> Self {
        SpanCall {
            func,
            name: name.unbind(),
            slow,
            region,
            tag: Mutex::new((0, 0)),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(&self.slow)?;
        visit.call(&self.region)
    }

    /// Calls the function with `args` and `kwargs` as one span (or through the general path).
    /// The span ends whether the function returns or raises; its exception passes through.
    #[pyo3(signature = (args, kwargs=None))]
    fn __call__(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = args.py();
        let Some(hub) = current_hub(py) else {
            return call_slow(&self.slow, args, kwargs);
        };
        let h = hub.get();
        if h.dead.load(Ordering::Relaxed) || h.sampler.get().is_none() {
            return call_slow(&self.slow, args, kwargs);
        }
        if h.detailed {
            return call_in_region(&self.region, &self.func, args, kwargs);
        }
        let tag = self.tag_in(&hub)?;
        let t0 = carbonctx_sampler::now_ns();
        let out = self.func.bind(py).call(args, kwargs);
        let due = h.end_span_now(t0, tag);
        if due != 0 {
            handle_due(py, h, due)?;
        }
        out.map(Bound::unbind)
    }
}

//! The hot path of a call of a `@tracked` function: two native calls around the function (one
//! that starts the span, one that ends it), instead of a Python wrapper that looks up the
//! runtime, its sampler and flags and the name's tag, reads the clock and ends the span through
//! a bound method. After other work has evicted the caches, every object and code path a call
//! touches for the first time costs a line fetched from memory: those lookups cost more than
//! the span itself. The function is still called by the Python wrapper, not from here, so a
//! recursive decorated function keeps the depth it had (a call from native code would count one
//! more level against the recursion limit, and take more C stack).
//!
//! A runtime that writes full records (thread, parent, tags) or checks strictly needs each call
//! as a region of its own: its id, its parent, its thread, and the context variable set to it,
//! so that regions inside the function name it as their parent and `carbonctx.current()` finds
//! it (a region follows its context: a task or thread that did not start inside the call is not
//! inside it, which no per-thread record can tell). [`SpanCall::start`] enters a bare native
//! [`Region`] for it (no `Tracker`, no Python object made, the name's tag known), and
//! `carbonctx.current()` makes the `Tracker` that stands for it only when asked
//! ([`tracker_of`]). Anything else that is not the usual case (no runtime or sampler yet, an
//! inherited runtime, strict checks that must fail) is the Python wrapper's or the `Tracker`'s:
//! [`SpanCall::start`] says None, or enters a whole `Tracker`.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyString, PyType};

use crate::hub::{current_hub, RegionHub, SPAN_BACKLOG, SPAN_WARNINGS};
use crate::region::{enter_core, exit_core, Region};

/// The `Tracker` class (the first [`SpanCall`] made says): what `carbonctx.current()` gives for
/// a call's region.
static TRACKER: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The spans of one `@tracked` function: `start()` before each call, `end(started)` after it.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct SpanCall {
    name: Py<PyString>,
    /// The `Tracker` class: a call that strict checks may fail is measured by one.
    tracker: Py<PyType>,
    /// The decorator's `strict` (None: the runtime's).
    strict: Option<bool>,
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

/// A call as a whole `Tracker`, entered (where strict checks may fail: it raises as a `with`
/// would).
#[cold]
#[inline(never)]
fn start_tracker<'py>(
    py: Python<'py>,
    tracker: &Py<PyType>,
    name: &Py<PyString>,
    strict: Option<bool>,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "strict"), strict)?;
    let region = tracker
        .bind(py)
        .call((name.clone_ref(py),), Some(&kwargs))?
        .cast_into::<Region>()?;
    Region::__enter__(&region)?;
    Ok(region.into_any())
}

/// A call as a bare region, entered: its id, parent and begin mark, the context variable set.
fn start_call<'py>(
    hub: Bound<'py, RegionHub>,
    sampler: Bound<'py, crate::Sampler>,
    name: &Py<PyString>,
    strict: Option<bool>,
    strict_now: bool,
    tag: u32,
) -> PyResult<Bound<'py, PyAny>> {
    let py = hub.py();
    let mut region = Region::for_call(name.clone_ref(py), strict, tag);
    region.strict_now = strict_now;
    let region = Bound::new(py, region)?;
    enter_core(&region, hub, Some(sampler))?;
    Ok(region.into_any())
}

/// The `Tracker` that stands for the call's region `call` (open), made the first time it is
/// asked for: the same id, parent, runtime and enclosing region; the call's result goes to it.
/// None when the call ended while it was made (making it may run other threads).
pub(crate) fn tracker_of<'py>(call: &Bound<'py, Region>) -> PyResult<Option<Bound<'py, Region>>> {
    let py = call.py();
    let (name, strict) = {
        let c = call.borrow();
        if let Some(p) = &c.proxy {
            return Ok(Some(p.bind(py).clone()));
        }
        (c.name.clone_ref(py), c.strict)
    };
    let Some(ty) = TRACKER.get(py) else {
        return Ok(Some(call.clone()));
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "strict"), strict)?;
    let t = ty
        .bind(py)
        .call((name,), Some(&kwargs))?
        .cast_into::<Region>()?;
    crate::region::untrack(t.as_any());
    let mut c = call.borrow_mut();
    if let Some(p) = &c.proxy {
        return Ok(Some(p.bind(py).clone()));
    }
    if c.t1 != 0 {
        return Ok(None);
    }
    {
        let mut m = t.borrow_mut();
        m.id = c.id;
        m.parent = c.parent;
        m.hub = c.hub.as_ref().map(|h| h.clone_ref(py));
        m.strict_now = c.strict_now;
        m.prev = c.prev.as_ref().map(|p| p.clone_ref(py));
    }
    c.proxy = Some(t.clone().unbind());
    Ok(Some(t))
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

/// The start time a span's `start` gave. `PyLong_AsUnsignedLong` where a C long is 64 bits:
/// it reads the int's two or three digits in place, where the conversion to `u64` goes through
/// CPython's general byte-array routine (more code to fetch after the caches were evicted).
#[inline]
fn start_ns(t0: &Bound<'_, PyInt>) -> PyResult<u64> {
    if std::mem::size_of::<std::ffi::c_ulong>() == 8 {
        // SAFETY: `t0` is an int; the call sets an exception (and returns -1) only for one that
        // does not fit, which the check below turns into the error.
        let v = unsafe { pyo3::ffi::PyLong_AsUnsignedLong(t0.as_ptr()) };
        if v == std::ffi::c_ulong::MAX {
            if let Some(e) = PyErr::take(t0.py()) {
                return Err(e);
            }
        }
        return Ok(v as u64);
    }
    t0.extract()
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
    /// `tracker`: the `Tracker` class; `strict`: the decorator's (None: the runtime's).
    #[new]
    #[pyo3(signature = (name, tracker, strict=None))]
    fn new(name: Bound<'_, PyString>, tracker: Bound<'_, PyType>, strict: Option<bool>) -> Self {
        let py = name.py();
        let tracker = tracker.unbind();
        let _ = TRACKER.get_or_init(py, || tracker.clone_ref(py));
        SpanCall {
            name: name.unbind(),
            tracker,
            strict,
            tag: Mutex::new((0, 0)),
        }
    }

    /// Starts one call: its start time (an int) as a span of the current runtime, or its
    /// region (entered) where the runtime writes full records or checks strictly, or None where
    /// the call is the Python wrapper's to measure (no runtime or sampler yet, or one a forked
    /// child inherited).
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(hub) = current_hub(py) else {
            return Ok(None);
        };
        let h = hub.get();
        let Some(sampler) = h.sampler.get().filter(|_| !h.dead.load(Ordering::Relaxed)) else {
            return Ok(None);
        };
        if h.detailed {
            let strict = self.strict.unwrap_or(h.strict);
            if strict && sampler.get().inner.sources().is_empty() {
                // Nothing to measure with: the Tracker raises, as a `with` would.
                return start_tracker(py, &self.tracker, &self.name, self.strict).map(Some);
            }
            let sampler = sampler.bind(py).clone();
            let tag = self.tag_in(&hub)?;
            return start_call(hub, sampler, &self.name, self.strict, strict, tag).map(Some);
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
            let region = started.cast::<Region>()?;
            if region.borrow().call_tag != 0 {
                return exit_core(region);
            }
            return end_region(started, exc);
        };
        let t0 = start_ns(t0)?;
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

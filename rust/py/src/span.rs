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
use crate::region::{enter_with, exit_core, Region};

/// The `Tracker` class (the first [`SpanCall`] made says): what `carbonctx.current()` gives for
/// a call's region.
static TRACKER: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A region name and its tag in the runtime it was last used under: a new runtime (another
/// hub) interns it again. Shared by the `@tracked` calls ([`SpanCall`]) and the steps
/// (step.rs).
pub(crate) struct NameTag {
    pub(crate) name: Py<PyString>,
    /// The serial of the hub the tag was interned in (0: none yet), and the tag.
    tag: Mutex<(u64, u32)>,
}

impl NameTag {
    pub(crate) fn new(name: Py<PyString>) -> Self {
        NameTag {
            name,
            tag: Mutex::new((0, 0)),
        }
    }

    /// The serial of the hub the tag was last interned in, and the tag.
    pub(crate) fn cached(&self) -> (u64, u32) {
        *self.tag.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For a span: the name's tag in `hub`'s runtime, interned there if it is new; None where
    /// that (Python code, during which another thread may run `configure()`) left another
    /// runtime current: a span is ended in the runtime current at its end, so it is begun
    /// anew (routed again) rather than dropped at its end.
    #[inline]
    pub(crate) fn tag_here(&self, hub: &Bound<'_, RegionHub>) -> PyResult<Option<u32>> {
        let (serial, tag) = self.cached();
        if serial == hub.get().serial {
            return Ok(Some(tag));
        }
        let tag = self.new_tag(hub)?;
        let here = current_hub(hub.py()).is_some_and(|now| now.is(hub));
        Ok(here.then_some(tag))
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn new_tag(&self, hub: &Bound<'_, RegionHub>) -> PyResult<u32> {
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

/// The spans of one `@tracked` function: `start()` before each call, `end(started)` after it.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct SpanCall {
    name: NameTag,
    /// The `Tracker` class: a call that strict checks may fail is measured by one.
    tracker: Py<PyType>,
    /// The decorator's `strict` (None: the runtime's).
    strict: Option<bool>,
}

/// A runtime ready for a bare region: its hub (which has a sampler), and whether the region
/// checks strictly.
pub(crate) struct Ready<'py> {
    pub(crate) hub: Bound<'py, RegionHub>,
    pub(crate) strict: bool,
}

/// How the current runtime measures a region of a `@tracked` call or a step, entered now.
pub(crate) enum Route<'py> {
    /// No runtime or sampler yet, or one a forked child inherited: the Python side's.
    Python,
    /// Strict checks with nothing to measure with: a whole `Tracker`, which raises as a `with`
    /// would.
    Tracker,
    /// A bare region (its id, parent, thread; tags): the runtime writes full records or checks
    /// strictly, or the caller has tags to keep.
    Region(Ready<'py>),
    /// A span: a start time and the name's tag, closed in one go.
    Span(Bound<'py, RegionHub>),
}

/// Which way a region entered now is measured (see [`Route`]); `strict`: the caller's (None:
/// the runtime's); `detail`: a bare region even where a span would do. Warnings due are issued
/// first, as a `with` issues them; that is Python code, during which another thread may run
/// `configure()`: the hub is looked up again after it (a region, span or step entry counted in
/// a runtime already shut down would be lost).
pub(crate) fn route(py: Python<'_>, strict: Option<bool>, detail: bool) -> PyResult<Route<'_>> {
    let mut said = false;
    loop {
        let Some(hub) = current_hub(py) else {
            return Ok(Route::Python);
        };
        let h = hub.get();
        let Some(sampler) = h.sampler.get().filter(|_| !h.dead.load(Ordering::Relaxed)) else {
            return Ok(Route::Python);
        };
        let region = h.detailed || detail;
        let strict = strict.unwrap_or(h.strict);
        if region && strict && sampler.get().inner.sources().is_empty() {
            return Ok(Route::Tracker);
        }
        if !said && h.warn_due.load(Ordering::Relaxed) {
            // Said before the region runs, as a `with` says it (a long one would keep it until
            // it ends); once (a warning said meanwhile waits for the next region).
            handle_due(py, h, SPAN_WARNINGS)?;
            said = true;
            continue;
        }
        return Ok(if region {
            Route::Region(Ready { hub, strict })
        } else {
            Route::Span(hub)
        });
    }
}

/// A call (or a step's entry) as a whole `Tracker`, entered (where strict checks may fail: it
/// raises as a `with` would; where there is no runtime yet: it starts one).
#[cold]
#[inline(never)]
pub(crate) fn start_tracker<'py>(
    py: Python<'py>,
    tracker: &Py<PyType>,
    name: &Py<PyString>,
    strict: Option<bool>,
    tags: Option<&Py<PyAny>>,
) -> PyResult<Bound<'py, Region>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "strict"), strict)?;
    if let Some(tags) = tags {
        kwargs.set_item(intern!(py, "tags"), tags)?;
    }
    let region = tracker
        .bind(py)
        .call((name.clone_ref(py),), Some(&kwargs))?
        .cast_into::<Region>()?;
    Region::__enter__(&region)?;
    Ok(region)
}

/// A call (or a step's entry) as a bare region, entered: its id, parent and begin mark; with
/// `context`, the context variable set to it (regions inside name it, `carbonctx.current()`
/// finds it), else only read for the parent. `strict`: the caller's (None: the runtime's).
pub(crate) fn start_call<'py>(
    ready: Ready<'py>,
    name: &NameTag,
    strict: Option<bool>,
    tags: Option<&Py<PyAny>>,
    context: bool,
) -> PyResult<Bound<'py, Region>> {
    let py = ready.hub.py();
    // A name new to this runtime is interned by Python code, during which another thread may
    // run `configure()`: the call counts as open in this runtime (as a step's entry does) until
    // its begin mark counts it, so a replaced runtime keeps measuring it.
    let (serial, cached) = name.cached();
    let hub = ready.hub.clone();
    let open = (serial != hub.get().serial).then(|| OpenWhile::new(hub.get()));
    let tag = match open {
        None => cached,
        Some(_) => name.new_tag(&hub)?,
    };
    let mut region = Region::for_call(name.name.clone_ref(py), strict, tag);
    region.strict_now = ready.strict;
    region.tags = tags.map(|t| t.clone_ref(py));
    let region = Bound::new(py, region)?;
    // Only a region holds the sampler (a span's end, or a step's entry with details, finds it
    // through the hub): no count of it taken otherwise.
    let sampler = ready.hub.get().sampler.get().map(|s| s.bind(py).clone());
    enter_with(&region, ready.hub, sampler, context)?;
    drop(open); // its begin mark counts it from here on
    Ok(region)
}

/// Counts a region open in its runtime (`RegionHub::open_steps`) while it is being begun, on
/// every way out.
struct OpenWhile<'a>(&'a RegionHub);

impl<'a> OpenWhile<'a> {
    fn new(hub: &'a RegionHub) -> Self {
        hub.open_steps.fetch_add(1, Ordering::Relaxed);
        OpenWhile(hub)
    }
}

impl Drop for OpenWhile<'_> {
    fn drop(&mut self) {
        self.0.open_steps.fetch_sub(1, Ordering::Release);
    }
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

/// What is due on the calling thread after a span, or before a call's region (see
/// [`RegionHub::end_span`]).
#[cold]
#[inline(never)]
pub(crate) fn handle_due(py: Python<'_>, h: &RegionHub, due: u8) -> PyResult<()> {
    if due & SPAN_BACKLOG != 0 {
        h.drain.call0(py)?;
    }
    if due & SPAN_WARNINGS != 0 {
        h.emit_warnings.call0(py)?;
    }
    Ok(())
}

/// A span begun at `t0` under the runtime of hub serial `serial` with the name's tag `tag` there,
/// ended now; then what is due on this thread. A span begun under one runtime and ended under
/// another (`configure()` ran meanwhile) is dropped: its tag names nothing in the new runtime,
/// and the one it began in has been replaced.
pub(crate) fn end_span(py: Python<'_>, serial: u64, tag: u32, t0: u64) -> PyResult<()> {
    let Some(hub) = current_hub(py) else {
        return dropped();
    };
    let h = hub.get();
    if serial != h.serial {
        return dropped();
    }
    let due = h.end_span_now(t0, tag);
    if due != 0 {
        handle_due(py, h, due)?;
    }
    Ok(())
}

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
            name: NameTag::new(name.unbind()),
            tracker,
            strict,
        }
    }

    /// Starts one call: its start time (an int) as a span of the current runtime, or its
    /// region (entered) where the runtime writes full records or checks strictly, or None where
    /// the call is the Python wrapper's to measure (no runtime or sampler yet, or one a forked
    /// child inherited).
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match route(py, self.strict, false)? {
            Route::Span(hub) => {
                if self.name.tag_here(&hub)?.is_none() {
                    return self.start(py); // the runtime was replaced meanwhile
                }
                let t0 = carbonctx_sampler::now_ns();
                Ok(Some(PyInt::new(py, t0).into_any()))
            }
            Route::Region(ready) => {
                start_call(ready, &self.name, self.strict, None, true).map(|r| Some(r.into_any()))
            }
            Route::Python => Ok(None),
            Route::Tracker => {
                let name = &self.name.name;
                start_tracker(py, &self.tracker, name, self.strict, None)
                    .map(|r| Some(r.into_any()))
            }
        }
    }

    /// Ends the call `started` (what [`SpanCall::start`] gave), whether the function returned
    /// or raised (`exc`, which a call's region is left with); then does what is due on this
    /// thread (waking the resolver for a backlog, issuing warnings).
    #[pyo3(signature = (started, exc=None))]
    fn end(&self, started: &Bound<'_, PyAny>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Ok(t0) = started.cast::<PyInt>() else {
            let region = started.cast::<Region>()?;
            if region.borrow().call_tag != 0 {
                return exit_core(region);
            }
            return end_region(started, exc);
        };
        let t0 = start_ns(t0)?;
        let (serial, tag) = self.name.cached();
        end_span(started.py(), serial, tag, t0)
    }
}

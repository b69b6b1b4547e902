//! The hot path of `with carbonctx.track(...)`: the region object, entered and left in native
//! code. Everything that is not the common case (a runtime not started yet, strict checks,
//! CUDA synchronisation, warnings due, an object entered twice) is handed to the Python
//! subclass (`carbonctx._measure.region.Tracker`) through its `_enter_slow` / `_exit_slow`
//! methods, so the behaviour lives in one place and this file only makes the usual case cheap.
//! What it needs of the runtime comes through the [`RegionHub`] (hub.rs).

use std::sync::atomic::Ordering;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{ffi, intern};

use crate::context::{context_get, context_reset, context_set, current_var};
use crate::hub::{current_hub, RegionHub};
use crate::sampler::Sampler;

#[path = "region_claim.rs"]
mod claim;
pub(crate) use claim::claim_regions;

/// The innermost region still open here: the context variable's value, or, where that region
/// has ended (it was left in another thread or task, whose context was the one reset), the region
/// that was open when it was entered, and so on. None when there is none.
pub(crate) fn open_region(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let mut v = context_get(py, current_var(py)?)?;
    loop {
        let next = match v.cast::<Region>() {
            Ok(r) => {
                let r = r.borrow();
                if r.t1 == 0 {
                    break;
                }
                match &r.prev {
                    Some(p) => p.clone_ref(py).into_bound(py),
                    None => py.None().into_bound(py),
                }
            }
            Err(_) => break,
        };
        v = next;
    }
    Ok(v)
}

/// `carbonctx.current()`: see [`open_region`]. A `@tracked` call's region is given as its
/// `Tracker` (made the first time it is asked for; see [`crate::span::tracker_of`]).
#[pyfunction]
pub(crate) fn current(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    loop {
        let v = open_region(py)?;
        let call = match v.cast::<Region>() {
            Ok(r) if r.borrow().call_tag != 0 => r.clone(),
            _ => return Ok(v),
        };
        // None: the call ended while its Tracker was made (another thread ran meanwhile).
        if let Some(t) = crate::span::tracker_of(&call)? {
            return Ok(t.into_any());
        }
    }
}

pub(crate) fn thread_ident() -> u64 {
    // `threading.get_ident()` on POSIX is the pthread handle.
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// Takes a region out of the garbage collector's lists. Python makes every subclass defined by
/// a `class` statement collectable, but a region can be in no cycle: its own fields are not
/// visited (the native base has no traverse), the subclass adds no slots and no `__dict__`, and
/// nothing the runtime stores in a region refers back to it (a batch keeps its regions'
/// details, not the regions). Regions are made, kept pending for a sampling interval and
/// resolved tens of thousands of times a second in a tight loop; collections over them cost
/// more than the regions themselves.
pub(crate) fn untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: only objects whose type has the GC flag have the header PyObject_GC_UnTrack
    // reads; untracking an untracked object does nothing, and the deallocator of such a type
    // accepts an untracked object.
    unsafe {
        if ffi::PyType_HasFeature(ffi::Py_TYPE(obj.as_ptr()), ffi::Py_TPFLAGS_HAVE_GC) != 0 {
            ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
        }
    }
}

/// Everything but the common case of entering is Python's (`Tracker._enter_slow`). Out of
/// line, as every path off the usual one here: after other work has evicted the caches, each
/// line of code a region runs is fetched from memory, so the usual path is kept to few.
#[cold]
#[inline(never)]
fn enter_slow(slf: &Bound<'_, Region>) -> PyResult<Py<PyAny>> {
    slf.call_method0(intern!(slf.py(), "_enter_slow"))
        .map(Bound::unbind)
}

/// A measured region. Subclassed by `carbonctx._measure.region.Tracker`, which adds the results.
/// Not collectable (see [`untrack`]). Weakly referable: the hub keeps the regions left in
/// another context than they were entered in by weak reference ([`RegionHub::orphans`]).
#[pyclass(subclass, weakref, module = "carbonctx._native")]
pub(crate) struct Region {
    #[pyo3(get)]
    pub(crate) name: Py<PyString>,
    #[pyo3(get, set)]
    pub(crate) strict: Option<bool>,
    #[pyo3(get, set)]
    pub(crate) tags: Option<Py<PyAny>>,
    #[pyo3(get, set)]
    sync: bool,
    #[pyo3(get, set)]
    pub(crate) id: u64,
    #[pyo3(get, set)]
    pub(crate) parent: Option<u64>,
    #[pyo3(get, set)]
    thread: u64,
    /// End of the region (monotonic ns): 0 while it runs, -1 when nothing measured it.
    #[pyo3(get, set, name = "_t1")]
    pub(crate) t1: i64,
    /// The resolved row: its batch and index (read from Python as `_raw`, a tuple).
    raw_batch: Option<Py<PyAny>>,
    raw_row: usize,
    #[pyo3(get, set, name = "_result")]
    result: Option<Py<PyAny>>,
    /// The hub of the runtime that measures it (set when it is entered).
    pub(crate) hub: Option<Py<RegionHub>>,
    #[pyo3(get, set, name = "_strict")]
    pub(crate) strict_now: bool,
    #[pyo3(get, set, name = "_token")]
    pub(crate) token: Option<Py<PyAny>>,
    #[pyo3(get, set, name = "_clones")]
    clones: Option<Py<PyAny>>,
    /// The region that was open where this one was entered (it outlives this one's entry).
    #[pyo3(get, set, name = "_prev")]
    pub(crate) prev: Option<Py<PyAny>>,
    /// A call of a `@tracked` function (span.rs) made this region, not a `Tracker`: its name's
    /// tag in the runtime of [`Region::hub`] (0: an ordinary region).
    pub(crate) call_tag: u32,
    /// The `Tracker` that `carbonctx.current()` gave for such a call (made on demand): it is the
    /// one the call's result goes to.
    pub(crate) proxy: Option<Py<Region>>,
}

#[pymethods]
impl Region {
    /// The batch and row that resolved the region, or None while it is not resolved.
    #[getter(_raw)]
    fn raw(&self, py: Python<'_>) -> Option<(Py<PyAny>, usize)> {
        self.raw_batch
            .as_ref()
            .map(|b| (b.clone_ref(py), self.raw_row))
    }

    #[setter(_raw)]
    fn set_raw(&mut self, raw: Option<(Py<PyAny>, usize)>) {
        (self.raw_batch, self.raw_row) = match raw {
            Some((b, k)) => (Some(b), k),
            None => (None, 0),
        };
    }

    /// The runtime that measures the region (None until it is entered).
    #[getter(_rt)]
    fn rt(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.hub.as_ref().map(|h| h.get().runtime.clone_ref(py))
    }

    #[new]
    #[pyo3(signature = (name, *, strict=None, tags=None, sync=false))]
    fn new(
        name: &Bound<'_, PyAny>,
        strict: Option<bool>,
        tags: Option<&Bound<'_, PyAny>>,
        sync: bool,
    ) -> PyResult<Self> {
        let (name, tags) = name_and_tags(name, tags)?;
        Ok(Region {
            tags,
            sync,
            ..Region::for_call(name, strict, 0)
        })
    }

    pub(crate) fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        {
            let me = slf.borrow();
            if me.hub.is_some() || me.sync || me.strict == Some(true) {
                drop(me);
                return enter_slow(slf);
            }
        }
        let Some(hub) = current_hub(py) else {
            return enter_slow(slf);
        };
        let h = hub.get();
        let strict_default = slf.borrow().strict.is_none();
        let sampler = match h.sampler.get() {
            Some(s)
                if !((strict_default && h.strict)
                    || h.warn_due.load(Ordering::Relaxed)
                    || h.dead.load(Ordering::Relaxed)) =>
            {
                s.bind(py).clone()
            }
            _ => return enter_slow(slf),
        };
        enter_core(slf, hub, Some(sampler))?;
        Ok(slf.clone().into_any().unbind())
    }

    /// The part of entering that every path shares (`Tracker._enter_slow` calls it once it has
    /// started the runtime and made its checks): the parent, the context, the begin mark.
    #[pyo3(name = "_enter_core")]
    fn py_enter_core(
        slf: &Bound<'_, Self>,
        hub: Bound<'_, RegionHub>,
        sampler: Option<Bound<'_, Sampler>>,
    ) -> PyResult<()> {
        enter_core(slf, hub, sampler)
    }

    /// The part of leaving that every path shares (`Tracker._exit_slow` calls it after CUDA
    /// synchronisation): the context reset, the end mark, the pending entry.
    #[pyo3(name = "_exit_core")]
    fn py_exit_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        exit_core(slf)
    }

    /// Lets go of the runtime (`Tracker._release` calls it once the runtime has shut down and
    /// the region's result is kept): the hub, the resolved batch, the enclosing region.
    #[pyo3(name = "_detach")]
    fn detach(&mut self) {
        self.hub = None;
        self.raw_batch = None;
        self.raw_row = 0;
        self.prev = None;
        self.token = None;
    }

    #[pyo3(signature = (exc_type=None, exc=None, tb=None))]
    pub(crate) fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let slow = {
            let me = slf.borrow();
            me.sync || me.clones.is_some()
        };
        if slow {
            return exit_slow(slf, exc_type, exc, tb);
        }
        exit_core(slf)
    }
}

impl Region {
    /// The region of a call of a `@tracked` function (span.rs), under the name's tag `tag`
    /// (`Region(...)` starts from it too, with tag 0: no tags, no synchronisation, not entered).
    pub(crate) fn for_call(name: Py<PyString>, strict: Option<bool>, tag: u32) -> Self {
        Region {
            name,
            strict,
            tags: None,
            sync: false,
            id: 0,
            parent: None,
            thread: 0,
            t1: 0,
            raw_batch: None,
            raw_row: 0,
            result: None,
            hub: None,
            strict_now: false,
            token: None,
            clones: None,
            prev: None,
            call_tag: tag,
            proxy: None,
        }
    }
}

/// A region's name (a non-empty str) and the tags it copies into its records (a dict of them;
/// None when there are none), checked and copied as `track()` and `step()` take them.
pub(crate) fn name_and_tags(
    name: &Bound<'_, PyAny>,
    tags: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Py<PyString>, Option<Py<PyAny>>)> {
    let name = match name.cast_exact::<PyString>() {
        Ok(s) if s.len()? > 0 => s.clone().unbind(),
        _ => return Err(bad_name(name)),
    };
    let tags = match tags {
        Some(t) => copy_tags(t)?,
        None => None,
    };
    Ok((name, tags))
}

#[cold]
#[inline(never)]
fn bad_name(name: &Bound<'_, PyAny>) -> PyErr {
    match name.repr() {
        Ok(r) => PyTypeError::new_err(format!("a region needs a non-empty name (str), not {r}")),
        Err(e) => e,
    }
}

/// The tags a region copies into its records (a dict of them; None when there are none).
#[cold]
#[inline(never)]
fn copy_tags(tags: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    if !tags.is_truthy()? {
        return Ok(None);
    }
    Ok(Some(
        tags.py().get_type::<PyDict>().call1((tags,))?.unbind(),
    ))
}

/// Everything but the common case of leaving is Python's (`Tracker._exit_slow`).
#[cold]
#[inline(never)]
fn exit_slow(
    slf: &Bound<'_, Region>,
    exc_type: Option<&Bound<'_, PyAny>>,
    exc: Option<&Bound<'_, PyAny>>,
    tb: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    slf.call_method1(intern!(slf.py(), "_exit_slow"), (exc_type, exc, tb))?;
    Ok(())
}

/// Marks the region's start: its parent (the innermost region still open here), the context
/// variable, and a begin mark when there is a sampler.
pub(crate) fn enter_core(
    slf: &Bound<'_, Region>,
    hub: Bound<'_, RegionHub>,
    sampler: Option<Bound<'_, Sampler>>,
) -> PyResult<()> {
    enter_with(slf, hub, sampler, true)
}

/// [`enter_core`], with the context variable set to the region (`context`) or only read for
/// its parent (a step's region, step.rs: nothing inside names it, and nothing needs to find it).
pub(crate) fn enter_with(
    slf: &Bound<'_, Region>,
    hub: Bound<'_, RegionHub>,
    sampler: Option<Bound<'_, Sampler>>,
    context: bool,
) -> PyResult<()> {
    let py = slf.py();
    untrack(slf.as_any());
    let parent = open_region(py)?;
    // Only regions are ever put in the context variable.
    let parent_id = parent.cast::<Region>().ok().map(|p| p.borrow().id);
    let token = if context {
        Some(context_set(py, current_var(py)?, slf.as_any())?.unbind())
    } else {
        None
    };
    let id = sampler.map(|s| s.get().inner.begin());
    let mut me = slf.borrow_mut();
    me.hub = Some(hub.unbind());
    me.parent = parent_id;
    if context {
        me.prev = (!parent.is_none()).then(|| parent.unbind());
    }
    me.token = token;
    if let Some(id) = id {
        me.id = id;
    }
    Ok(())
}

/// Marks the region's end: resets the context variable, and with a live sampler puts the region
/// in the runtime's pending map under its name's tag and ends it (`_t1`; -1 when nothing
/// measured it). Whatever is not the usual case is out of line (see [`enter_slow`]). The region
/// of a `@tracked` call has its name's tag already, and is waited for as the `Tracker` that
/// `carbonctx.current()` gave for it, if it gave one.
pub(crate) fn exit_core(slf: &Bound<'_, Region>) -> PyResult<()> {
    let py = slf.py();
    let (token, hub, id, call_tag) = {
        let mut me = slf.borrow_mut();
        (
            me.token.take(),
            me.hub.as_ref().map(|h| h.bind(py).clone()),
            me.id,
            me.call_tag,
        )
    };
    if let Some(token) = token {
        if !context_reset(py, current_var(py)?, &token)? {
            left_elsewhere(slf, hub.as_ref())?;
        }
    }
    let Some(hub) = hub.filter(|_| id != 0) else {
        return unmeasured(slf);
    };
    let h = hub.get();
    let Some(sampler) = h.sampler.get().filter(|_| !h.dead.load(Ordering::Relaxed)) else {
        return unmeasured(slf);
    };
    let pending = h.pending.bind(py);
    let tag = if call_tag != 0 {
        // The Tracker given for the call, if any, is the one its result goes to.
        match slf.borrow().proxy.as_ref() {
            Some(p) => pending.set_item(id, p)?,
            None => pending.set_item(id, slf)?,
        }
        call_tag
    } else {
        pending.set_item(id, slf)?;
        let found = {
            let me = slf.borrow();
            h.name_tags.bind(py).get_item(me.name.bind(py))?
        };
        match found {
            Some(t) => t.extract()?,
            None => new_tag(slf, h)?,
        }
    };
    let t1 = sampler.get().inner.end_tagged(id, tag);
    let (thread, t1) = (thread_ident(), i64::try_from(t1).unwrap_or(i64::MAX));
    let proxy = {
        let mut me = slf.borrow_mut();
        me.thread = thread;
        me.t1 = t1;
        me.proxy.as_ref().map(|p| p.bind(py).clone())
    };
    if let Some(p) = proxy {
        ended_as(&p, thread, t1);
    }
    if pending.len() > h.backlog_high && h.ask_wake() {
        call_hub(py, &h.drain)?;
    }
    if h.warn_due.load(Ordering::Relaxed) {
        call_hub(py, &h.emit_warnings)?;
    }
    Ok(())
}

/// A `@tracked` call's region has ended: so has the `Tracker` given for it.
#[cold]
#[inline(never)]
fn ended_as(tracker: &Bound<'_, Region>, thread: u64, t1: i64) {
    let mut t = tracker.borrow_mut();
    t.thread = thread;
    t.t1 = t1;
}

/// The context the region was entered in still holds it (and so the runtime): the hub
/// remembers it, to let go of the runtime when that shuts down.
#[cold]
#[inline(never)]
fn left_elsewhere(slf: &Bound<'_, Region>, hub: Option<&Bound<'_, RegionHub>>) -> PyResult<()> {
    if let Some(hub) = hub {
        hub.get().add_orphan(slf.as_any())?;
    }
    Ok(())
}

/// Nothing measured the region (no sampler, or its runtime is dead).
#[cold]
#[inline(never)]
fn unmeasured(slf: &Bound<'_, Region>) -> PyResult<()> {
    let mut me = slf.borrow_mut();
    me.t1 = -1;
    if let Some(p) = &me.proxy {
        // A `@tracked` call's Tracker, given by `carbonctx.current()`: nor was it measured.
        p.bind(slf.py()).borrow_mut().t1 = -1;
    }
    Ok(())
}

/// The tag of a name not seen before (the runtime interns it).
#[cold]
#[inline(never)]
fn new_tag(slf: &Bound<'_, Region>, h: &RegionHub) -> PyResult<u32> {
    let py = slf.py();
    let name = slf.borrow().name.clone_ref(py);
    h.tag_of.call1(py, (name,))?.extract(py)
}

/// One of the hub's callbacks (waking the resolver, issuing warnings).
#[cold]
#[inline(never)]
fn call_hub(py: Python<'_>, f: &Py<PyAny>) -> PyResult<()> {
    f.call0(py)?;
    Ok(())
}

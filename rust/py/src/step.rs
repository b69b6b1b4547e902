//! `carbonctx.step(name)`: a reusable handle whose every entry (`with handle:`) is one region of
//! that name, made once and entered in a loop. A `with track(name)` makes a region object per
//! entry and sets the context variable to it (for `carbonctx.current()` and the parents of the
//! regions inside); after other work has evicted the caches, those cost more than the region's
//! marks. An entry of a step makes neither: it is a span (a start time and the name's tag,
//! closed in one go, as a `@tracked` call's, span.rs) kept on this thread's stack of open
//! entries, and the context variable is only read, for the parent of a region that has one.
//!
//! Where the runtime writes full records or checks strictly (or the step has tags), an entry is
//! a bare native [`Region`] (its id, thread, parent, tags), still without the context variable
//! set. Where there is no runtime or sampler yet (or a forked child's inherited one), the entry
//! starts them first, as a `@tracked` call does; where there is still no sampler, or strict
//! checks must fail, it is a whole `Tracker`, as a `with track(name)` would be (but with the
//! context variable put back once it is entered: no entry sets it).
//!
//! An exit closes the innermost entry of the same handle still open on this thread. Entries of
//! asyncio tasks interleaved on one thread may so be closed out of order: each exit still ends
//! one entry, and no entry ends before it began, so the counts and the sums of durations and
//! energy per name are those of the entries as made (each record may pair one entry's start
//! with another's end).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

use crate::context::{context_reset, current_var};
use crate::region::{exit_core, name_and_tags, Region};
use crate::span::{end_span, route, start_call, start_tracker, NameTag, Route};

/// The next [`Step::key`].
static KEYS: AtomicU64 = AtomicU64::new(1);

/// An open entry of a step on this thread.
enum Entry {
    /// A span: its start, and the serial of the hub whose tag for the name it carries.
    Span { t0: u64, serial: u64, tag: u32 },
    /// A bare region, entered (records with details, strict checks).
    Region(Py<Region>),
    /// A whole `Tracker`, entered (the runtime was not ready for the others).
    Tracker(Py<Region>),
}

thread_local! {
    /// This thread's open entries of every step, innermost last, each with its step's key.
    static OPEN: RefCell<Vec<(u64, Entry)>> = const { RefCell::new(Vec::new()) };
}

/// A reusable region handle (`carbonctx.step(name)`): each `with` of it is one region of its
/// name. See `carbonctx.step` for what it does and does not do.
#[pyclass(frozen, module = "carbonctx._native")]
pub(crate) struct Step {
    /// What tells this handle's entries from another's on a thread's stack.
    key: u64,
    name: NameTag,
    /// The tags copied into each entry's record (a dict; None: none).
    tags: Option<Py<PyAny>>,
    /// The `Tracker` class, for the entries the runtime is not ready to take natively.
    tracker: Py<PyType>,
    /// Starts the runtime and its sampler where there are none yet; says whether there is a
    /// sampler (`carbonctx._measure.region._start_runtime`).
    start: Py<PyAny>,
}

impl Step {
    /// An entry where the runtime was not ready (none, or no sampler, or a forked child's
    /// inherited one; or strict checks that must fail): the runtime started, then the entry as
    /// usual; a whole `Tracker` where there is still no sampler, or strict checks must fail.
    #[cold]
    #[inline(never)]
    fn enter_slow(&self, py: Python<'_>) -> PyResult<Entry> {
        if self.start.bind(py).call0()?.is_truthy()? {
            if let Some(entry) = self.enter_native(py)? {
                return Ok(entry);
            }
        }
        let t = start_tracker(py, &self.tracker, &self.name.name, None, self.tags.as_ref())?;
        context_back(&t)?;
        Ok(Entry::Tracker(t.unbind()))
    }

    /// The entry as a span or a bare region; None where the runtime is not ready for either.
    #[inline]
    fn enter_native(&self, py: Python<'_>) -> PyResult<Option<Entry>> {
        Ok(Some(match route(py, None, self.tags.is_some())? {
            Route::Span(hub) => {
                let tag = self.name.tag_in(&hub)?;
                let serial = hub.get().serial;
                let t0 = carbonctx_sampler::now_ns();
                Entry::Span { t0, serial, tag }
            }
            Route::Region(ready) => {
                let tags = self.tags.as_ref();
                Entry::Region(start_call(ready, &self.name, None, tags, false)?.unbind())
            }
            Route::Python | Route::Tracker => return Ok(None),
        }))
    }

    #[cold]
    #[inline(never)]
    fn not_entered(&self, py: Python<'_>) -> PyErr {
        PyRuntimeError::new_err(format!(
            "step {} was left in a thread where it is not open (entered in another thread, or \
             left more often than entered): each `with` of a step must be left in the thread \
             that entered it; use carbonctx.track(name) for a region that is left in another \
             thread or task",
            self.name
                .name
                .bind(py)
                .repr()
                .map_or_else(|_| "?".into(), |r| r.to_string())
        ))
    }
}

/// Puts the context variable back where the entered `Tracker` `t` found it: an entry of a
/// step sets no context variable whichever way it is measured (inside it, `carbonctx.current()`
/// and the parents of the regions opened are the enclosing region's). Its exit then leaves the
/// variable alone.
#[cold]
#[inline(never)]
fn context_back(t: &Bound<'_, Region>) -> PyResult<()> {
    let py = t.py();
    let (token, prev) = {
        let mut me = t.borrow_mut();
        (me.token.take(), me.prev.take())
    };
    drop(prev); // not while borrowed: letting go of a region may run Python code
    if let Some(token) = token {
        context_reset(py, current_var(py)?, &token)?;
    }
    Ok(())
}

#[pymethods]
impl Step {
    /// `tracker`: the `Tracker` class; `start`: what starts the runtime; `tags`: copied (a
    /// mapping; empty or None: none).
    #[new]
    #[pyo3(signature = (name, tracker, start, tags=None))]
    fn new(
        name: &Bound<'_, PyAny>,
        tracker: Bound<'_, PyType>,
        start: Py<PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let (name, tags) = name_and_tags(name, tags)?;
        Ok(Step {
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            name: NameTag::new(name),
            tags,
            tracker: tracker.unbind(),
            start,
        })
    }

    /// The name of each region this handle measures.
    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.name.clone_ref(py)
    }

    /// Opens one entry (one region of the handle's name) on this thread. Gives None.
    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        let entry = match self.enter_native(py)? {
            Some(entry) => entry,
            None => self.enter_slow(py)?,
        };
        OPEN.with(|o| o.borrow_mut().push((self.key, entry)));
        Ok(())
    }

    /// Closes this thread's innermost open entry of the handle (an exception raised in it
    /// passes on).
    #[pyo3(signature = (exc_type=None, exc=None, tb=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let key = self.key;
        let entry = OPEN.with(|o| {
            let mut open = o.borrow_mut();
            let k = open.iter().rposition(|(s, _)| *s == key)?;
            Some(open.remove(k).1)
        });
        match entry {
            Some(Entry::Span { t0, serial, tag }) => end_span(py, serial, tag, t0),
            Some(Entry::Region(r)) => exit_core(r.bind(py)),
            Some(Entry::Tracker(t)) => Region::__exit__(t.bind(py), exc_type, exc, tb),
            None => Err(self.not_entered(py)),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<Step {}>", self.name.name.bind(py).repr()?))
    }
}

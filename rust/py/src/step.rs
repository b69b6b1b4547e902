//! `carbonctx.step(name)`: a reusable handle whose every entry (`with handle:`) is one region of
//! that name, made once and entered in a loop. A `with track(name)` makes a region object per
//! entry and sets the context variable to it (for `carbonctx.current()` and the parents of the
//! regions inside); after other work has evicted the caches, those cost more than the region's
//! marks. An entry of a step makes neither: it is a span (a start time and the name's tag,
//! closed in one go, as a `@tracked` call's, span.rs) kept on this thread's stack of open
//! entries, and the context variable is only read, for the parent of a region that has one.
//!
//! Where the runtime writes full records or checks strictly (or the step has tags), a record
//! needs the entry's details (name, thread, parent, tags). In a loop they are the same from
//! entry to entry, so the entry is still a span: its tag stands for the details, interned once
//! per (thread, parent) in the runtime (the resolver gives such a row its name's statistics and
//! its details' record) and cached here; each thread also keeps the tag its last such entry
//! found, which the next entry takes when it is of the same handle, parent and runtime (a loop's
//! entry so looks at no lock or cache of the handle). The parent is read from the context
//! variable at each entry (a pointer compare where it holds None, no region open), the thread
//! is the entering one (an entry is left in the thread that entered it). The
//! runtime's table of such tags is bounded (`Resolver.tag_of`): past it (a step entered in a
//! new region each time, without end) an entry is a bare native [`Region`] (its id, thread,
//! parent, tags), still without the context variable set. Where there is no runtime or sampler
//! yet (or a forked child's inherited one), the entry starts them first, as a `@tracked` call
//! does; where there is still no sampler, or strict checks must fail, it is a whole `Tracker`,
//! as a `with track(name)` would be (but with the context variable put back once it is
//! entered: no entry sets it).
//!
//! An exit closes the innermost entry of the same handle still open on this thread. Entries of
//! asyncio tasks interleaved on one thread may so be closed out of order: each exit still ends
//! one entry, and no entry ends before it began, so the counts and the sums of durations and
//! energy per name are those of the entries as made (each record may pair one entry's start
//! with another's end).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

use crate::context::{context_get, context_reset, current_var};
use crate::hub::RegionHub;
use crate::region::{exit_core, name_and_tags, open_region, thread_ident, Region};
use crate::span::{end_span, handle_due, route, start_call, start_tracker, NameTag, Ready, Route};

/// The next [`Step::key`].
static KEYS: AtomicU64 = AtomicU64::new(1);

/// An open entry of a step on this thread.
enum Entry {
    /// A span: its start, and the serial of the hub whose tag for the name it carries.
    Span { t0: u64, serial: u64, tag: u32 },
    /// A span whose tag stands for the entry's details (name, thread, parent, tags), and the
    /// hub of the runtime that interned it: that runtime ends it, as it would a region's
    /// (`configure()` may have replaced it since; a `with` region is recorded by it too).
    Detailed { t0: u64, hub: OpenStep, tag: u32 },
    /// A bare region, entered (records with details, strict checks).
    Region(Py<Region>),
    /// A whole `Tracker`, entered (the runtime was not ready for the others).
    Tracker(Py<Region>),
}

/// What a thread keeps of the steps: one thread-local, so that an entry looks it up once.
struct Local {
    /// This thread's open entries of every step, innermost last, each with its step's key.
    open: Vec<(u64, Entry)>,
    /// The detail tag this thread's last entry with details found: (the step's key, the hub's
    /// serial, the parent's id, the tag); key 0: none. The thread is this one, so a loop's
    /// entry finds its tag with one compare of lines it fetches anyway (no lock, no line of
    /// the handle's cache).
    last: (u64, u64, Option<u64>, u32),
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            open: Vec::new(),
            last: (0, 0, None, 0),
        })
    };
}

/// The id of the innermost region open here (the parent of an entry with details): the
/// context variable's value read, and where that is not None (an enclosing region), the walk
/// out of line.
#[inline]
fn parent_now(py: Python<'_>) -> PyResult<Option<u64>> {
    if context_get(py, current_var(py)?)?.is_none() {
        return Ok(None);
    }
    parent_walk(py)
}

#[cold]
#[inline(never)]
fn parent_walk(py: Python<'_>) -> PyResult<Option<u64>> {
    // Only regions are ever put in the context variable.
    Ok(open_region(py)?
        .cast::<Region>()
        .ok()
        .map(|p| p.borrow().id))
}

/// An entry of a step counted open in its runtime (`RegionHub::open_steps`) for as long as it
/// lives: left, or dropped with its thread's stack of entries when the thread ends inside it (a
/// runtime `configure()` replaced would otherwise wait for it forever). It ends after the span
/// is in (and counted by) the sampler: a retiring runtime sees one or the other.
struct OpenStep {
    hub: Py<RegionHub>,
}

impl OpenStep {
    #[inline]
    fn new(hub: Bound<'_, RegionHub>) -> Self {
        hub.get().open_steps.fetch_add(1, Ordering::Relaxed);
        OpenStep { hub: hub.unbind() }
    }

    /// Left (its span is in the sampler): counted out, with no question of the interpreter's
    /// state; the hub handed back.
    #[inline]
    fn leave(self) -> Py<RegionHub> {
        let this = std::mem::ManuallyDrop::new(self);
        this.hub.get().open_steps.fetch_sub(1, Ordering::Release);
        // SAFETY: the only read of the field out of a value that is never dropped.
        unsafe { std::ptr::read(&this.hub) }
    }
}

impl Drop for OpenStep {
    /// Not left: dropped with its thread's stack of entries (the thread ended inside it).
    fn drop(&mut self) {
        // The hub is alive: this holds it. Only a stack dropped after the interpreter has
        // finalized (the main thread's, at exit, with an entry never left) leaves the count
        // alone: that runtime is gone, and the object may be too.
        // SAFETY: Py_IsInitialized reads a flag of the runtime; any thread may call it, at any
        // time.
        if unsafe { pyo3::ffi::Py_IsInitialized() } != 0 {
            self.hub.get().open_steps.fetch_sub(1, Ordering::Release);
        }
    }
}

/// The most (thread, parent) pairs whose tags a handle keeps; past it, the oldest is forgotten
/// (interned anew if it comes back: the runtime's own bound is the one that holds).
const DETAIL_CACHE: usize = 64;

/// A handle's tags for its entries' details in one runtime.
struct DetailTags {
    /// The serial of the hub they were interned in (0: none yet).
    serial: u64,
    /// That runtime's table of such tags is full: entries with details not in `tags` are bare
    /// regions.
    full: bool,
    /// The (thread, parent, tag) found last here, kept in the handle itself (found without a
    /// line of the list to fetch, where the thread's own last tag was another's); tag 0: none.
    last: (u64, Option<u64>, u32),
    /// (thread, parent, tag), oldest first.
    tags: Vec<(u64, Option<u64>, u32)>,
}

impl DetailTags {
    fn new(serial: u64) -> Self {
        DetailTags {
            serial,
            full: false,
            last: (0, None, 0),
            tags: Vec::new(),
        }
    }
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
    /// The tags of this handle's entries' details in the current runtime.
    details: Mutex<DetailTags>,
}

impl Step {
    /// The tag that stands for an entry's details in `hub`'s runtime (0: none to be had, the
    /// runtime's table is full).
    #[inline]
    fn detail_tag(
        &self,
        hub: &Bound<'_, RegionHub>,
        thread: u64,
        parent: Option<u64>,
    ) -> PyResult<u32> {
        {
            let mut d = self.details.lock().unwrap_or_else(|e| e.into_inner());
            if d.serial == hub.get().serial {
                let (t, p, tag) = d.last;
                if t == thread && p == parent && tag != 0 {
                    return Ok(tag);
                }
                if let Some(&found) = d
                    .tags
                    .iter()
                    .rev()
                    .find(|(t, p, _)| *t == thread && *p == parent)
                {
                    d.last = found;
                    return Ok(found.2);
                }
                if d.full {
                    return Ok(0);
                }
            }
        }
        self.new_detail_tag(hub, thread, parent)
    }

    /// Interns an entry's details in `hub`'s runtime (`Runtime.tag_of(name, details)`), and
    /// keeps the tag.
    #[cold]
    #[inline(never)]
    fn new_detail_tag(
        &self,
        hub: &Bound<'_, RegionHub>,
        thread: u64,
        parent: Option<u64>,
    ) -> PyResult<u32> {
        let py = hub.py();
        let h = hub.get();
        let tags = self.tags.as_ref().map(|t| t.clone_ref(py));
        let details = (thread, parent, tags);
        let tag: u32 = h
            .tag_of
            .call1(py, (self.name.name.clone_ref(py), details))?
            .extract(py)?;
        let mut d = self.details.lock().unwrap_or_else(|e| e.into_inner());
        if d.serial != h.serial {
            *d = DetailTags::new(h.serial);
        }
        if tag == 0 {
            d.full = true;
        } else {
            if d.tags.len() >= DETAIL_CACHE {
                d.tags.remove(0);
            }
            d.tags.push((thread, parent, tag));
            d.last = (thread, parent, tag);
        }
        Ok(tag)
    }

    /// An entry where the runtime was not ready (none, or no sampler, or a forked child's
    /// inherited one; or strict checks that must fail): the runtime started, then the entry as
    /// usual; a whole `Tracker` where there is still no sampler, or strict checks must fail.
    #[cold]
    #[inline(never)]
    fn enter_slow(&self, py: Python<'_>) -> PyResult<()> {
        if self.start.bind(py).call0()?.is_truthy()? && self.enter_native(py)? {
            return Ok(());
        }
        let t = start_tracker(py, &self.tracker, &self.name.name, None, self.tags.as_ref())?;
        context_back(&t)?;
        push(self.key, Entry::Tracker(t.unbind()));
        Ok(())
    }

    /// The entry as a span or a bare region, pushed on this thread's stack; false where the
    /// runtime is not ready for either.
    #[inline]
    fn enter_native(&self, py: Python<'_>) -> PyResult<bool> {
        let entry = match route(py, None, self.tags.is_some())? {
            Route::Span(hub) => {
                let Some(tag) = self.name.tag_here(&hub)? else {
                    return self.enter_native(py); // the runtime was replaced meanwhile
                };
                let serial = hub.get().serial;
                let t0 = carbonctx_sampler::now_ns();
                Entry::Span { t0, serial, tag }
            }
            Route::Region(ready) => {
                let parent = parent_now(py)?;
                let (key, serial) = (self.key, ready.hub.get().serial);
                // The usual case: this thread's last entry with details was one of this handle
                // in the same region and runtime. Found and pushed in one look at the thread's
                // state.
                let hub = ready.hub;
                let hub = LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    let (k, s, p, tag) = l.last;
                    if k != key || s != serial || p != parent {
                        return Some(hub);
                    }
                    let hub = OpenStep::new(hub);
                    let t0 = carbonctx_sampler::now_ns();
                    l.open.push((key, Entry::Detailed { t0, hub, tag }));
                    None
                });
                let Some(hub) = hub else {
                    return Ok(true);
                };
                let ready = Ready { hub, ..ready };
                // Counted open before anything that may run Python code (interning the details,
                // beginning the region): a `configure()` on another thread meanwhile sees the
                // entry and keeps this runtime measuring until it has ended.
                let open = OpenStep::new(ready.hub.clone());
                let tag = self.detail_tag(&ready.hub, thread_ident(), parent)?;
                if tag != 0 {
                    LOCAL.with(|l| l.borrow_mut().last = (key, serial, parent, tag));
                    let t0 = carbonctx_sampler::now_ns();
                    Entry::Detailed { t0, hub: open, tag }
                } else {
                    let tags = self.tags.as_ref();
                    let region = start_call(ready, &self.name, None, tags, false)?.unbind();
                    drop(open.leave()); // its begin mark counts it from here on
                    Entry::Region(region)
                }
            }
            Route::Python | Route::Tracker => return Ok(false),
        };
        push(self.key, entry);
        Ok(true)
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

/// Pushes an entry of the step `key` on this thread's stack.
#[inline]
fn push(key: u64, entry: Entry) {
    LOCAL.with(|l| l.borrow_mut().open.push((key, entry)));
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
            details: Mutex::new(DetailTags::new(0)),
        })
    }

    /// The name of each region this handle measures.
    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.name.clone_ref(py)
    }

    /// Opens one entry (one region of the handle's name) on this thread. Gives None.
    fn __enter__(&self, py: Python<'_>) -> PyResult<()> {
        if self.enter_native(py)? {
            return Ok(());
        }
        self.enter_slow(py)
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
        let entry = LOCAL.with(|l| {
            let open = &mut l.borrow_mut().open;
            let k = open.iter().rposition(|(s, _)| *s == key)?;
            Some(open.remove(k).1)
        });
        match entry {
            Some(Entry::Span { t0, serial, tag }) => end_span(py, serial, tag, t0),
            Some(Entry::Detailed { t0, hub, tag }) => {
                let due = hub.hub.get().end_span_now(t0, tag);
                let h = hub.leave(); // no longer open (as on every other way out)
                if due != 0 {
                    return handle_due(py, h.get(), due);
                }
                Ok(())
            }
            Some(Entry::Region(r)) => exit_core(r.bind(py)),
            Some(Entry::Tracker(t)) => Region::__exit__(t.bind(py), exc_type, exc, tb),
            None => Err(self.not_entered(py)),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<Step {}>", self.name.name.bind(py).repr()?))
    }
}

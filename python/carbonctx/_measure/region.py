"""``track()`` and ``@tracked``: the regions users measure.

Entering and leaving a region takes a monotonic timestamp on the native side and records the
region as pending; nothing waits for hardware. Results resolve once the sampler has passed the
region's end, and reading a field of an unresolved result waits for that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from carbonctx import _native
from carbonctx._measure import RESULT_TIMEOUT_S, process
from carbonctx.errors import CarbonctxError, SamplerError, SourceUnavailableError

if TYPE_CHECKING:
    from carbonctx._measure.runtime import Runtime
    from carbonctx._results.measurement import Measurement, SourceEnergy

F = TypeVar("F", bound=Callable[..., Any])


def _sync_cuda() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


class Tracker(_native.Region):
    """A measured region: ``carbonctx.track(name)`` makes one::

        with carbonctx.track("epoch") as m:
            train_one_epoch()
        print(m.energy_j, m.co2_g)

    ``strict=True`` raises instead of degrading when a source is missing; ``tags`` are copied
    into every record; ``sync=True`` waits for queued CUDA work (PyTorch) at both edges, so GPU
    energy is attributed to the region that launched it.

    Use it as a context manager (``with``, ``async with``: it gives itself as ``m``) or as a
    decorator (each call is a region of its own). Its fields (``duration_s``, ``energy_j``,
    ``cpu_j``, ``dram_j``, ``gpu_j``, ``by_source``, ``co2_g``, ...) are those of its
    :class:`~carbonctx.Measurement`; reading one after the region has ended waits for the
    sampler to pass its end (about one sampling interval). Entering the same object again
    measures a new region, handed out by that ``with``.

    Entering and leaving run in native code (``_native.Region``) in the usual case; the rest
    (first region of the process, strict checks, CUDA synchronisation, warnings due, an object
    entered twice) comes back here, to ``_enter_slow`` and ``_exit_slow``.
    """

    __module__ = "carbonctx"  # public as carbonctx.Tracker: help(), reprs, pickles

    __slots__ = ()

    def __repr__(self) -> str:
        if self.done:
            r = self.result()
            return f"<Tracker {self.name!r} {r.duration_s:.6f} s {r.energy_j:.6g} J>"
        state = "new" if self._rt is None else "running" if self._t1 == 0 else "resolving"
        return f"<Tracker {self.name!r} {state}>"

    @property
    def done(self) -> bool:
        """Whether the region has ended and its result is known."""
        return self._result is not None or self._raw is not None

    def result(self, timeout: float = RESULT_TIMEOUT_S) -> Measurement:
        """The frozen :class:`Measurement`, waiting for the sampler if needed."""
        r: Measurement | None = self._result
        rt: Runtime | None = self._rt
        if r is None and self._raw is not None and rt is not None:
            r = self._result = rt.measurement(*self._raw)
        if r is not None:
            if self._strict and r.missing:
                raise SourceUnavailableError(
                    f"region {self.name!r}: no figures from {', '.join(r.missing)} (strict=True)"
                )
            return r
        if rt is None or self._t1 == 0:
            raise CarbonctxError(
                f"region {self.name!r} is still running: read its results after it ends"
            )
        if rt.sampler is None:
            why = rt.start_error or "no sampler"
            if self._strict:
                raise SamplerError(f"region {self.name!r} has no measurement: {why}")
            # Nothing measured it (the runtime has warned why): say so, invent nothing.
            r = self._result = _unmeasured(self, rt.pid)
            return r
        rt.wait_resolved(self._t1, timeout)
        if self._raw is None and self._result is None:
            raise SamplerError(
                f"region {self.name!r} was not resolved within {timeout} s: the sampler is stalled"
            )
        return self.result()

    # The contract's fields, each from the result.
    @property
    def duration_s(self) -> float:
        return self.result().duration_s

    @property
    def energy_j(self) -> float:
        return self.result().energy_j

    @property
    def energy_kwh(self) -> float:
        return self.result().energy_kwh

    @property
    def cpu_j(self) -> float:
        return self.result().cpu_j

    @property
    def dram_j(self) -> float:
        return self.result().dram_j

    @property
    def gpu_j(self) -> float:
        return self.result().gpu_j

    @property
    def uncertainty_j(self) -> float | None:
        return self.result().uncertainty_j

    @property
    def by_source(self) -> Mapping[str, SourceEnergy]:
        return self.result().by_source

    @property
    def co2_g(self) -> float | None:
        return self.result().co2_g

    @property
    def intensity(self) -> float | None:
        return self.result().intensity

    @property
    def zone(self) -> str | None:
        return self.result().zone

    @property
    def carbon(self) -> Mapping[str, Any] | None:
        return self.result().carbon

    @property
    def missing(self) -> tuple[str, ...]:
        return self.result().missing

    @property
    def estimated(self) -> bool:
        return self.result().estimated

    @property
    def recorded(self) -> bool | None:
        return self.result().recorded

    # ------------------------------------------------------------------ context manager

    def _enter_slow(self) -> Tracker:
        if self._rt is not None or self._t1 != 0:
            # This object measured a region already: measure this block as a new one.
            clone = Tracker(self.name, strict=self.strict, tags=self.tags, sync=self.sync)
            if self._clones is None:
                self._clones = []
            self._clones.append(clone)
            return clone.__enter__()
        rt = process._RT or process.runtime()
        s = rt.sampler or rt.sampler_or_start()
        if self.strict or (self.strict is None and rt.strict):
            self._strict = True
            if s is None or not rt.sources:
                rt.start_error_or_raise(True)
        if rt.warn_due:
            rt.emit_warnings()
        if self.sync:
            _sync_cuda()
        self._enter_core(rt.core, s)
        return self

    def _exit_slow(self, *exc: object) -> None:
        clones = self._clones
        if clones:
            # Entered again while open (in other threads or tasks, or recursively): leave the
            # entry this context made, whatever the others did since.
            entry = self._entry_here(clones)
            if entry is not self:
                for k in range(len(clones) - 1, -1, -1):
                    if clones[k] is entry:
                        del clones[k]
                        break
                entry.__exit__(*exc)
                return
        if self.sync:
            _sync_cuda()
        self._exit_core()

    def _entry_here(self, clones: list[Tracker]) -> Tracker:
        """The innermost entry of this object still open in this thread or task (this object
        or one of its clones); where none is (left elsewhere than it was entered), the last one
        still open."""
        r: Tracker | None = _native.current()
        while r is not None:
            if r is self or any(c is r for c in clones):
                return r
            r = r._prev
            while r is not None and r._t1 != 0:
                r = r._prev
        for c in reversed(clones):
            if c._t1 == 0:
                return c
        return self

    def _release(self) -> None:
        """Let go of the runtime, which has shut down, keeping the result: a context this region
        was not left in still holds it, and would otherwise keep the runtime alive. A region
        whose result cannot be made now (not resolved) keeps its runtime."""
        if self._rt is None:
            return
        import contextlib  # at shutdown only: a region needs none of it

        with contextlib.suppress(Exception):  # strict checks and unresolved regions: see below
            self.result(timeout=0.0)
        if self._result is not None:
            self._detach()

    async def __aenter__(self) -> Tracker:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    # ------------------------------------------------------------------ decorator

    def __call__(self, fn: F) -> F:
        if isinstance(fn, (classmethod, staticmethod)):
            # Measure the function inside and give back the same kind of method.
            return type(fn)(self(fn.__func__))
        if not callable(fn):
            raise TypeError(
                f"@tracked and track(...) decorate a function or method, not {fn!r}"
                + (": put the decorator under @property" if isinstance(fn, property) else "")
            )
        # Imported here, by the decorator alone: a `with` needs neither.
        import functools
        import inspect

        name = self.name
        tags = self.tags
        sync = self.sync

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                with Tracker(name, strict=self.strict, tags=tags, sync=sync):
                    return await fn(*args, **kwargs)

            return awrapper  # type: ignore[return-value]

        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"@tracked cannot measure the generator function {fn.__qualname__}: "
                "wrap the loop that consumes it in `with carbonctx.track(...)` instead"
            )

        strict_opt = self.strict
        if sync or strict_opt or tags:

            @functools.wraps(fn)
            def general(*args: Any, **kwargs: Any) -> Any:
                # Strict checks, CUDA synchronisation or tags: a whole region per call.
                with Tracker(name, strict=strict_opt, tags=tags, sync=sync):
                    return fn(*args, **kwargs)

            return general  # type: ignore[return-value]

        # The usual call: one native call starts the span (or the call's region, where the
        # runtime writes full records or checks strictly: a bare native one, whose Tracker
        # carbonctx.current() makes if asked), one ends it. The function is called here, so
        # that a recursive one keeps its depth.
        span = _native.SpanCall(name, Tracker, strict_opt)
        start, end = span.start, span.end

        def begin() -> Any:
            # What the native spans leave to Python: no runtime or sampler yet, then the span
            # as usual. None: no sampler (the call is measured as a whole region, which says
            # why).
            return start() if _start_runtime() else None

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = start()
            if started is None:
                started = begin()
                if started is None:
                    with Tracker(name, strict=strict_opt):
                        return fn(*args, **kwargs)
            try:
                # Without keywords, no dict made for the call (`**kwargs` would copy one).
                out = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                end(started, exc)  # an exception here comes with the function's as its context
                raise
            end(started)
            return out

        return wrapper  # type: ignore[return-value]


def _start_runtime() -> bool:
    """Starts the runtime and its sampler where there are none yet (a forked child makes its
    own), as a region's first entry would: what the native spans and steps leave to Python.
    False: no sampler (a region is then measured as a whole one, which says why)."""
    rt = process._RT or process.runtime()
    return (rt.sampler or rt.sampler_or_start()) is not None


def _unmeasured(region: Tracker, pid: int) -> Measurement:
    """The result of a region no sampler measured: every figure NaN, ``missing`` says why."""
    from carbonctx._results.measurement import Measurement

    nan = float("nan")
    return Measurement(
        name=region.name,
        id=region.id,
        pid=pid,
        thread=region.thread,
        parent=region.parent,
        start=nan,
        end=nan,
        duration_s=nan,
        energy_j=nan,
        cpu_j=nan,
        dram_j=nan,
        gpu_j=nan,
        uncertainty_j=None,
        by_source={},
        co2_g=None,
        intensity=None,
        zone=None,
        carbon=None,
        missing=("sampler",),
        tags=dict(region.tags) if region.tags else {},
    )


#: ``carbonctx.track(name, *, strict=None, tags=None, sync=False)`` measures a region::
#:
#:     with carbonctx.track("epoch") as m:
#:         train_one_epoch()
#:     print(m.energy_j, m.co2_g)
#:
#: It is the :class:`Tracker` class itself (a function in between would cost a call per region).
track = Tracker


@overload
def tracked(fn: F, /) -> F: ...


@overload
def tracked(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    strict: bool | None = None,
    tags: Mapping[str, Any] | None = None,
    sync: bool = False,
) -> Callable[[F], F]: ...


def tracked(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    strict: bool | None = None,
    tags: Mapping[str, Any] | None = None,
    sync: bool = False,
) -> F | Callable[[F], F]:
    """Measure every call of a function as one region, named after it by default::

    @carbonctx.tracked
    def train_step(batch): ...

    @carbonctx.tracked(name="step", tags={"model": "resnet"})
    async def step(batch): ...
    """

    def deco(f: F) -> F:
        inner = f.__func__ if isinstance(f, (classmethod, staticmethod)) else f
        qualname = getattr(inner, "__qualname__", None)
        if not isinstance(qualname, str) or not callable(inner):
            raise TypeError(
                f"@tracked decorates a function or method, not {f!r}"
                + (": put it under @property" if isinstance(f, property) else "")
            )
        return Tracker(name or qualname, strict=strict, tags=tags, sync=sync)(f)

    if fn is not None:
        return deco(fn)
    return deco


def step(name: str, *, tags: Mapping[str, Any] | None = None) -> _native.Step:
    """A reusable region handle for a hot loop: made once, each ``with`` of it is one region
    named ``name``, at less cost per entry than ``with carbonctx.track(name)``::

        train_step = carbonctx.step("train_step")  # once
        for batch in loader:
            with train_step:  # each entry: one region named "train_step"
                ...

    Each entry counts as a ``with track(name)`` region would: in :func:`stats`, run and job
    totals and the name's figures, and with output on its record is that of a ``with`` region
    (its thread, the region it ran in as its parent, the handle's ``tags``; its ``id`` is
    given when it resolves, from 2**52 up, as nothing refers to it; an entry longer than about
    4 s has one from the sampler, as a region does). Entering sets no context
    variable and makes no object: an entry is a start time and a tag, which with output on,
    strict checks or tags stands for its details (thread, parent, tags), interned once per
    thread and enclosing region. A runtime interns at most ``DETAIL_TAGS`` (16384) of those;
    past that (a handle entered in a new region each time, without end) an entry is a bare
    native region that holds its details. The first entry
    of a process starts the runtime as a ``with`` would; where the runtime has no sampler, or
    strict checks fail, an entry is a whole ``track()`` region, which says why, or raises. So:

    * ``with handle:`` gives None (there is no per-entry result; ``track()`` gives one);
    * regions opened inside an entry name the enclosing ``track()`` region (or ``@tracked``
      call) as their parent, not the step, and :func:`current` inside it gives that enclosing
      region;
    * an exit closes the innermost entry of the handle still open in this thread: the handle may
      be entered from several threads at once and nested or recursively, but each entry must be
      left in the thread that entered it (an exit with none open there raises RuntimeError;
      ``track()`` follows regions across threads and tasks). asyncio tasks that interleave
      entries of one handle on one thread may have them closed out of order: the counts and the
      per-name sums stay right, and each such record may pair one entry's start with another's
      end;
    * a handle has no ``async with``: use ``with handle:`` inside a coroutine (it never awaits),
      or ``async with track(name)`` for a region that follows its task;
    * with output off, an entry without tags is kept in :func:`recent` by its name alone
      (thread 0, no parent), as a ``@tracked`` call is;
    * an entry open while :func:`configure` replaces the runtime is not counted by either
      runtime with output off (with output on, strict checks or tags, the old runtime records
      it, as it does a ``with`` region).
    """
    return _native.Step(name, Tracker, _start_runtime, tags)


#: What ``with track(...) as m`` gives: the tracker itself.
Region = Tracker


def current() -> Tracker | None:
    """The innermost region open in this thread or task, if any (a region left in another
    thread or task no longer counts here)."""
    r: Tracker | None = _native.current()
    return r

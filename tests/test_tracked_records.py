"""The records and the nesting of `@tracked` calls with output on (or strict checks): each call
is written as the record of a `with` region of the same name would be, regions inside it name it
as their parent, and `carbonctx.current()` inside it is the call, whatever path the call takes
to be measured."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import math
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx._measure import runtime as _rt
from carbonctx._output.jsonl import read_jsonl
from carbonctx.errors import CarbonctxError, SourceUnavailableError
from carbonctx.testing import SimulatedMachine
from test_faults import configure_nothing_to_measure


def raw_regions(path: Path) -> list[dict[str, Any]]:
    """The region lines of an output file as written (full or compact)."""
    recs = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln]
    return [r for r in recs if r.get("kind") == "region"]


def beside_blocks(
    measured: Callable[[bool], None], tags: dict[str, Any] | None = None
) -> tuple[int, int | None]:
    """Runs ``measured(fail)`` (a region named "call" with a region "in call" inside it, which
    raises KeyError after it when ``fail``) and `with` blocks named "block" (tagged ``tags``) of
    the same shape, in turn: five of each and a failing call in a region "outer", then one of
    each outside any region, then one of each in another thread. Gives outer's id and that
    thread's."""

    def block() -> None:
        with carbonctx.track("block", tags=tags), carbonctx.track("in block"):
            pass

    with carbonctx.track("outer") as outer:
        for _ in range(5):
            measured(False)
            block()
        with pytest.raises(KeyError):
            measured(True)
        block()
    measured(False)  # no region around it
    block()
    worker = threading.Thread(target=lambda: (measured(False), block()))
    worker.start()
    worker.join()
    assert carbonctx.flush()
    assert carbonctx.stats()["call"].count == carbonctx.stats()["block"].count == 8
    _runtime.reset()
    return outer.id, worker.ident


def records_as_blocks(path: Path, outer: int, worker: int | None) -> dict[str, list[Any]]:
    """The records ``beside_blocks`` wrote to ``path``, by name in id order, once checked: the
    calls' lines (the name's first one in full, the rest compact) have the fields the blocks'
    have; once read, every field but the name, times and figures is the same: the thread, the
    region it ran in, the tags."""
    raw = raw_regions(path)
    calls = [set(r) - {"th"} for r in raw if r["name"] == "call"]
    blocks = [set(r) - {"th"} for r in raw if r["name"] == "block"]
    assert len(calls) == len(blocks) == 8
    assert calls == blocks  # the first in full, then compact lines, alike
    assert "by_source" in calls[0] and "j" in calls[1]

    regions, _, bad = read_jsonl(str(path))
    assert bad == 0
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in regions:
        by_name.setdefault(r["name"], []).append(r)
    by_name = {k: sorted(v, key=lambda r: r["id"]) for k, v in by_name.items()}
    got_calls, got_blocks = by_name["call"], by_name["block"]
    assert len({r["id"] for r in regions}) == len(regions)
    same = ("pid", "thread", "parent", "tags", "missing", "estimated")
    for c, b in zip(got_calls, got_blocks, strict=True):
        assert set(c) == set(b)
        assert {k: c[k] for k in same} == {k: b[k] for k in same}
        assert c["id"] > 0 and c["end"] >= c["start"] and math.isfinite(c["energy_j"])
    main = threading.get_ident()
    assert [c["parent"] for c in got_calls] == [outer] * 6 + [None, None]
    assert [c["thread"] for c in got_calls] == [main] * 7 + [worker]
    return by_name


def test_a_tracked_call_writes_the_record_a_with_region_writes(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # Calls and `with` blocks of the same shape, in turn, are written alike; the region inside
    # each call names it.
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))

    @carbonctx.tracked(name="call")
    def call(fail: bool = False) -> None:
        with carbonctx.track("in call"):
            pass
        if fail:
            raise KeyError("no")

    by_name = records_as_blocks(path, *beside_blocks(call))
    got_calls = by_name["call"]
    assert all(c["tags"] == {} for c in got_calls)
    # The region inside each call (the one that raised too) names it.
    assert [r["parent"] for r in by_name["in call"]] == [c["id"] for c in got_calls]
    assert [r["thread"] for r in by_name["in call"]] == [c["thread"] for c in got_calls]


@pytest.mark.parametrize("settings", [{"output": True}, {"strict": True}])
def test_current_inside_a_tracked_call_is_the_call_with_its_result(
    sim: SimulatedMachine, tmp_path: Path, settings: dict[str, Any]
) -> None:
    # Inside a decorated call (output on, or strict checks), carbonctx.current() is the call:
    # the same object each time it is asked, running, a region of its own whose result comes
    # once it has ended, as the record says.
    kwargs: dict[str, Any] = dict(settings)
    if kwargs.pop("output", False):
        kwargs["output"] = str(tmp_path / "out.jsonl")
    carbonctx.configure(**kwargs)
    seen: list[Any] = []
    inner: list[Any] = []

    @carbonctx.tracked(name="call")
    def call() -> None:
        m = carbonctx.current()
        assert carbonctx.current() is m
        with carbonctx.track("inside") as r:
            assert carbonctx.current() is r
        assert carbonctx.current() is m
        seen.append(m)
        inner.append(r)

    with carbonctx.track("outer") as outer:
        call()
        assert carbonctx.current() is outer
        call()
    call()
    assert carbonctx.current() is None
    assert len(seen) == 3 and len({id(m) for m in seen}) == 3
    for m, r, parent in zip(seen, inner, [outer.id, outer.id, None], strict=True):
        assert isinstance(m, carbonctx.Tracker) and m.name == "call"
        assert m.parent == parent and r.parent == m.id
        res = m.result()
        assert res.name == "call" and res.id == m.id and res.parent == parent
        assert res.thread == threading.get_ident() and math.isfinite(res.energy_j)
        assert res.start <= r.result().start and r.result().end <= res.end
    assert carbonctx.stats()["call"].count == 3
    with pytest.raises(CarbonctxError, match="still running"):

        @carbonctx.tracked(name="peek")
        def peek() -> None:
            carbonctx.current().result()

        peek()


def test_only_tasks_started_inside_a_tracked_call_nest_in_it(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # Regions follow contexts, not threads: a task made before the call and run by a loop the
    # call drives is not inside the call (its region's parent is the region its task was made
    # in); one made inside the call is.
    carbonctx.configure(output=str(tmp_path / "out.jsonl"))
    loop = asyncio.new_event_loop()
    parents: dict[str, Any] = {}

    async def region(name: str) -> None:
        with carbonctx.track(name) as r:
            pass
        parents[name] = r.parent

    try:
        with carbonctx.track("outer") as outer:
            before = loop.create_task(region("made before"))

            @carbonctx.tracked(name="call")
            def call() -> int:
                me = carbonctx.current()
                loop.run_until_complete(asyncio.gather(before, region("made inside")))
                return int(me.id)

            call_id = call()
    finally:
        loop.close()
    assert parents == {"made before": outer.id, "made inside": call_id}
    assert carbonctx.flush()


@pytest.mark.parametrize("output", [False, True])
def test_a_strict_tracked_call_without_sources_raises_each_time(
    tmp_path: Path, output: bool
) -> None:
    # Strict checks with nothing to measure: every call raises before the function runs, as a
    # `with` does, whichever path the call takes (the first starts the runtime).
    carbonctx.configure(
        strict=True,
        cpu_backends=[],
        gpu=False,
        estimate="never",
        output=str(tmp_path / "out.jsonl") if output else None,
    )
    ran: list[int] = []

    @carbonctx.tracked(name="call")
    def call() -> None:
        ran.append(1)

    for _ in range(3):
        with pytest.raises(SourceUnavailableError, match="no energy source"):
            call()
    with pytest.raises(SourceUnavailableError), carbonctx.track("block"):
        pass
    assert ran == [] and carbonctx.current() is None


def test_a_tracked_call_seen_from_a_copied_context_in_another_thread(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # A context copied inside the call and run in another thread sees the call while it runs
    # (the very object the call's own thread sees), and the region around it once it has ended.
    carbonctx.configure(output=str(tmp_path / "out.jsonl"))
    seen: dict[str, Any] = {}

    @carbonctx.tracked(name="call")
    def call() -> contextvars.Context:
        ctx = contextvars.copy_context()
        t = threading.Thread(target=lambda: seen.setdefault("other", ctx.run(carbonctx.current)))
        t.start()
        t.join()
        seen["own"] = carbonctx.current()
        return ctx

    with carbonctx.track("outer") as outer:
        ctx = call()
        assert ctx.run(carbonctx.current) is outer
    assert ctx.run(carbonctx.current) is None
    assert seen["other"] is seen["own"] and seen["own"].name == "call"
    assert seen["own"].result().parent == outer.id


def test_configure_inside_a_tracked_call_finishes_it_under_its_settings(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # The call began under the first output: it is recorded there, with the region inside it
    # that began before configure(); the region after configure() goes to the second output.
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    carbonctx.configure(output=str(a))

    @carbonctx.tracked(name="call")
    def call() -> None:
        with carbonctx.track("before"):
            pass
        carbonctx.configure(output=str(b))
        with carbonctx.track("after"):
            pass

    call()
    assert carbonctx.flush()
    _runtime.reset()
    in_a = {r["name"]: r for r in read_jsonl(str(a))[0]}
    in_b = {r["name"]: r for r in read_jsonl(str(b))[0]}
    assert sorted(in_a) == ["before", "call"] and sorted(in_b) == ["after"]
    assert in_a["before"]["parent"] == in_a["call"]["id"]


def test_configure_while_a_call_interns_its_name_loses_no_call(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call's name new to the runtime is interned by Python code (the runtime's `tag_of`),
    # during which another thread may run `configure()`: the call counts as open in its runtime
    # before that, so the replaced runtime keeps measuring it and records it (here
    # `configure()` runs inside `tag_of` itself, at the moment another thread could).
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    carbonctx.configure(output=str(a))
    ran: list[str] = []
    tag_of = _rt.Runtime.tag_of

    def configure_meanwhile(self: _rt.Runtime, name: str, details: Any = None) -> int:
        tag = tag_of(self, name, details)
        if name == "call" and not ran:
            ran.append(name)
            carbonctx.configure(output=str(b))
        return tag

    monkeypatch.setattr(_rt.Runtime, "tag_of", configure_meanwhile)
    with carbonctx.track("warm"):  # starts the runtime
        pass
    first = _runtime.current_runtime()
    assert first is not None

    @carbonctx.tracked(name="call")
    def call() -> None:
        pass

    call()
    assert ran  # configure() ran while the call was being begun
    deadline = time.monotonic() + 30
    while not first.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.finished
    _runtime.reset()
    assert sorted(r["name"] for r in read_jsonl(str(a))[0]) == ["call", "warm"]


@pytest.mark.parametrize("output", [False, True])
def test_a_tracked_call_warns_before_the_function_runs(tmp_path: Path, output: bool) -> None:
    # A degradation known when the call begins (here: nothing to measure with) is said before
    # the function runs, as a `with` says it, and at the user's line: a long decorated call
    # (a whole `main()`) must not keep it until it returns.
    configure_nothing_to_measure(
        tmp_path / "empty", output=str(tmp_path / "out.jsonl") if output else None
    )
    said_before: list[int] = []

    @carbonctx.tracked(name="main")
    def main() -> None:
        said_before.append(len([w for w in caught if "no energy source" in str(w.message)]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        main()
        main()
    said = [w for w in caught if issubclass(w.category, carbonctx.CarbonctxWarning)]
    assert said_before == [1, 1] and len(said) == 1  # before the first call's body; once
    assert "no energy source" in str(said[0].message)
    assert (said[0].filename, said[0].lineno) == (__file__, line)


@pytest.mark.parametrize("output", [False, True])
def test_configure_while_a_call_says_its_warnings_loses_no_call(
    sim: SimulatedMachine, tmp_path: Path, output: bool
) -> None:
    # Warnings due are said as a call begins, by Python code (a `showwarning` hook, a write to
    # stderr that lets other threads run), during which another thread may run `configure()`:
    # the call is then measured by the runtime current once they are said (here `configure()`
    # runs inside the hook itself, at the moment another thread could). Without output a call
    # is a span; with it, a region of its own.
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    carbonctx.configure(**sim.settings(), output=str(a) if output else None)
    with carbonctx.track("warm"):  # starts the runtime
        pass
    first = _runtime.current_runtime()
    assert first is not None
    shown: list[str] = []

    def configure_meanwhile(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        shown.append(str(message))
        if len(shown) == 1:
            carbonctx.configure(**sim.settings(), output=str(b))

    @carbonctx.tracked(name="call")
    def call() -> None:
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = configure_meanwhile
        first.note("test", "a degradation to say")
        call()
    assert shown == ["a degradation to say"]  # said as the call began
    assert carbonctx.flush()
    assert carbonctx.stats()["call"].count == 1  # measured by the runtime now current
    _runtime.reset()
    assert [r["name"] for r in read_jsonl(str(b))[0]] == ["call"]
    if output:
        assert [r["name"] for r in read_jsonl(str(a))[0]] == ["warm"]


@pytest.mark.parametrize("kind", ["call", "step"])
def test_configure_while_a_span_interns_its_name_loses_no_span(
    sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Without records to write, a call (or a step's entry) is a span; its name, new to the
    # runtime, is interned by Python code, during which another thread may run `configure()`:
    # the span then begins in the runtime current after that, and is counted there (here
    # `configure()` runs inside `tag_of` itself, at the moment another thread could).
    carbonctx.configure(**sim.settings())
    ran: list[str] = []
    tag_of = _rt.Runtime.tag_of

    def configure_meanwhile(self: _rt.Runtime, name: str, details: Any = None) -> int:
        tag = tag_of(self, name, details)
        if name == "s" and not ran:
            ran.append(name)
            carbonctx.configure(**sim.settings())
        return tag

    monkeypatch.setattr(_rt.Runtime, "tag_of", configure_meanwhile)
    with carbonctx.track("warm"):  # starts the runtime
        pass

    @carbonctx.tracked(name="s")
    def call() -> None:
        pass

    if kind == "call":
        call()
    else:
        with carbonctx.step("s"):
            pass
    assert ran  # configure() ran while the name was being interned
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 1

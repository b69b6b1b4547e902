"""`carbonctx.step(name)`: a reusable handle whose every `with` is one region of that name. Its
regions count, and with output on are written, as `with track(name)` regions of the same shape
are; it follows threads, nesting and recursion; whatever the runtime is not ready for (no
runtime yet, strict checks that fail, a forked child) is measured as a `with` would be."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx._output.jsonl import read_jsonl
from carbonctx.errors import SourceUnavailableError
from carbonctx.testing import SimulatedMachine
from test_faults import configure_nothing_to_measure
from test_lifecycle import last_json, run_script
from test_tracked_records import beside_blocks, records_as_blocks

TAGS = {"model": "resnet", "lr": 0.1}


def by_name(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The region records of an output file, read, by name, in id order."""
    regions, _, bad = read_jsonl(str(path))
    assert bad == 0
    out: dict[str, list[dict[str, Any]]] = {}
    for r in regions:
        out.setdefault(r["name"], []).append(r)
    return {k: sorted(v, key=lambda r: r["id"]) for k, v in out.items()}


@pytest.mark.parametrize("tags", [None, TAGS])
def test_a_step_writes_the_records_a_with_region_writes(
    sim: SimulatedMachine, tmp_path: Path, tags: dict[str, Any] | None
) -> None:
    # Entries of a step and `with track()` blocks of the same shape, in turn, are written alike
    # (the thread, the region it ran in, the tags); a region inside an entry names the region
    # the entry ran in, not the step.
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    handle = carbonctx.step("call", tags=tags)
    inner: list[Any] = []

    def entry(fail: bool) -> None:
        with handle:
            with carbonctx.track("in call") as r:
                inner.append(r)
            if fail:
                raise KeyError("no")

    outer, worker = beside_blocks(entry, tags)
    got = records_as_blocks(path, outer, worker)["call"]
    assert all(s["tags"] == (tags or {}) for s in got)
    assert [r.parent for r in inner] == [outer] * 6 + [None, None]
    for s, r in zip(got, inner, strict=True):
        assert s["start"] <= r.result().start and r.result().end <= s["end"]


@pytest.mark.parametrize("output", [False, True])
def test_entries_count_as_with_regions_and_current_is_the_enclosing_one(
    sim: SimulatedMachine, tmp_path: Path, output: bool
) -> None:
    # Entries, nested in each other and in a `with`, and an entry that raises: each counts once
    # (the exception passes on); inside an entry, current() is the enclosing region.
    if output:
        carbonctx.configure(**sim.settings(), output=str(tmp_path / "out.jsonl"))
    handle = carbonctx.step("s")
    assert handle.name == "s" and repr(handle) == "<Step 's'>"
    seen: list[Any] = []
    with carbonctx.track("outer") as outer:
        for _ in range(3):
            with handle as got:
                assert got is None
                seen.append(carbonctx.current())
                with handle:
                    seen.append(carbonctx.current())
    with pytest.raises(ValueError, match="inside"), handle:
        seen.append(carbonctx.current())
        raise ValueError("inside")
    assert seen == [outer] * 6 + [None]
    assert carbonctx.flush()
    stats = carbonctx.stats()
    assert stats["s"].count == 7 and stats["outer"].count == 1
    assert stats["s"].energy_j.total > 0
    assert sum(1 for m in carbonctx.recent() if m.name == "s") == 7


def test_one_step_in_many_threads_at_once_and_recursively(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # Four threads enter one handle at once, each recursively (a function that enters it and
    # calls itself): each entry is one region, of its own thread, in the region it ran in.
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    handle = carbonctx.step("deep")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    outers: dict[int, int] = {}

    def down(n: int) -> int:
        with handle:
            return 0 if n == 0 else 1 + down(n - 1)

    def work() -> None:
        try:
            with carbonctx.track("thread") as t:
                outers[threading.get_ident()] = t.id
                barrier.wait(10)
                for _ in range(5):
                    assert down(9) == 9
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert carbonctx.flush()
    assert carbonctx.stats()["deep"].count == 4 * 5 * 10
    _runtime.reset()
    got = by_name(path)["deep"]
    assert len(got) == 200
    assert {r["thread"] for r in got} == set(outers)
    assert all(r["parent"] == outers[r["thread"]] for r in got)
    # Each exit closed its own entry: the ten entries of one recursion lie inside each other
    # (the outermost begins first, and is the longest; times in records are rounded to a few
    # hundred ns, monotonically, durations are not: equal starts are put longest first).
    for thread in outers:
        mine = sorted(
            (r for r in got if r["thread"] == thread), key=lambda r: (r["start"], -r["duration_s"])
        )
        for k in range(0, 50, 10):
            for a, b in itertools.pairwise(mine[k : k + 10]):
                assert a["duration_s"] >= b["duration_s"]


def test_an_exit_with_no_entry_open_in_its_thread_says_what_to_do(
    sim: SimulatedMachine,
) -> None:
    handle = carbonctx.step("s")
    with pytest.raises(RuntimeError, match=r"not open.*carbonctx\.track"):
        handle.__exit__(None, None, None)
    # Entered here, left in another thread: refused there; still open here.
    handle.__enter__()
    caught: list[BaseException] = []

    def leave() -> None:
        try:
            handle.__exit__(None, None, None)
        except RuntimeError as e:
            caught.append(e)

    t = threading.Thread(target=leave)
    t.start()
    t.join(10)
    assert len(caught) == 1 and "left in the thread that entered it" in str(caught[0])
    handle.__exit__(None, None, None)
    with pytest.raises(RuntimeError, match="not open"):
        handle.__exit__(None, None, None)
    # Another handle of the same name is another handle.
    other = carbonctx.step("s")
    with handle, pytest.raises(RuntimeError, match="not open"):
        other.__exit__(None, None, None)
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 2


@pytest.mark.parametrize("bad", ["", 3, None])
def test_a_step_needs_a_name(bad: Any) -> None:
    with pytest.raises(TypeError, match="non-empty name"):
        carbonctx.step(bad)


@pytest.mark.parametrize("output", [False, True])
def test_a_strict_step_without_sources_raises_at_each_entry(tmp_path: Path, output: bool) -> None:
    # Strict checks with nothing to measure: every entry raises before the block runs, as a
    # `with` does (the first starts the runtime), and leaves nothing open behind it.
    configure_nothing_to_measure(
        tmp_path / "empty",
        strict=True,
        output=str(tmp_path / "out.jsonl") if output else None,
    )
    handle = carbonctx.step("s")
    ran: list[int] = []
    for _ in range(3):
        with pytest.raises(SourceUnavailableError, match="no energy source"), handle:
            ran.append(1)
    assert ran == []
    with pytest.raises(RuntimeError, match="not open"):
        handle.__exit__(None, None, None)


@pytest.mark.parametrize("output", [False, True])
def test_the_first_entry_starts_the_runtime(
    sim: SimulatedMachine, tmp_path: Path, output: bool
) -> None:
    # No runtime yet (configure() made none): the first entry starts it, as a `with` would,
    # and is an entry like the others (current() inside it is the enclosing region, None).
    path = tmp_path / "out.jsonl"
    if output:
        carbonctx.configure(**sim.settings(), output=str(path))
    assert _runtime.current_runtime() is None
    handle = carbonctx.step("first")
    seen = []
    for _ in range(3):
        with handle:
            seen.append(carbonctx.current())
            with carbonctx.track("inside") as r:
                pass
            seen.append(r.parent)
    assert _runtime.current_runtime() is not None
    assert seen == [None] * 6
    assert carbonctx.flush()
    assert carbonctx.stats()["first"].count == 3
    if output:
        _runtime.reset()
        got = by_name(path)
        assert len(got["first"]) == 3 and all(r["parent"] is None for r in got["first"])


def test_configure_inside_an_entry(sim: SimulatedMachine, tmp_path: Path) -> None:
    # configure() while an entry is open: leaving the entry raises nothing; with output on the
    # runtime it was entered in records it, as it records a `with` region; the entries after it
    # are the new runtime's.
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    carbonctx.configure(**sim.settings(), output=str(old))
    handle = carbonctx.step("s")
    with handle:  # the first starts the runtime (as a `with` region)
        pass
    with handle, carbonctx.track("w"):
        carbonctx.configure(**sim.settings(), output=str(new))
    for _ in range(2):
        with handle:
            pass
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 2
    _runtime.reset()
    got = by_name(old)
    assert len(got["s"]) == 2 and len(got["w"]) == 1
    assert len(by_name(new)["s"]) == 2
    # With output off: nothing raises; the new runtime counts only the entries made in it.
    carbonctx.configure(**sim.settings(), output=None)
    with handle:  # the first starts the runtime
        pass
    with handle:
        carbonctx.configure(**sim.settings(), output=None)
    with handle:
        pass
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 1


def test_interleaved_asyncio_tasks_count_every_entry(sim: SimulatedMachine) -> None:
    # Two tasks on one thread enter one handle and leave it in the other order: each exit
    # closes one entry (the innermost of the thread), nothing raises, both count.
    handle = carbonctx.step("task")
    order: list[str] = []

    async def task(name: str, first: asyncio.Event, second: asyncio.Event) -> None:
        with handle:
            order.append(f"{name} in")
            first.set()
            await second.wait()
            order.append(f"{name} out")

    async def run() -> None:
        a_in, b_in, b_go = asyncio.Event(), asyncio.Event(), asyncio.Event()
        ta = asyncio.ensure_future(task("a", a_in, b_in))
        await a_in.wait()
        tb = asyncio.ensure_future(task("b", b_in, b_go))
        await ta
        b_go.set()
        await tb

    asyncio.run(run())
    assert order == ["a in", "b in", "a out", "b out"]
    assert carbonctx.flush()
    stats = carbonctx.stats()["task"]
    assert stats.count == 2 and stats.duration_s.total > 0


FORK_SCRIPT = """
    import json, os, threading
    import carbonctx

    on = os.environ["STEP_OUTPUT"] == "on"
    if on:  # entries with details (each thread's last tag is the parent's runtime's)
        carbonctx.configure(output="out.jsonl")
    handle = carbonctx.step("s")
    for _ in range(3):
        with handle:
            pass
    with handle:
        pid = os.fork()  # the child inherits this open entry
    if pid == 0:
        try:
            for _ in range(2):
                with handle:
                    pass
            carbonctx.flush()
            out = {"stats": {k: v.count for k, v in carbonctx.stats().items()}}
            me = threading.get_ident()
            if on and any((m.thread, m.parent) != (me, None) for m in carbonctx.recent()):
                out["details"] = [(m.thread, m.parent) for m in carbonctx.recent()]
        except BaseException as e:  # report anything
            out = {"fatal": repr(e)}
        with open("child.json", "w") as f:
            json.dump(out, f)
        os._exit(0)
    os.waitpid(pid, 0)
    with handle:
        pass
    carbonctx.flush()
    with open("child.json") as f:
        child = json.load(f)
    print(json.dumps({"child": child,
                      "parent": {k: v.count for k, v in carbonctx.stats().items()}}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("output", ["off", "on"])
def test_a_forked_child_measures_its_own_entries(
    sim: SimulatedMachine, tmp_path: Path, output: str
) -> None:
    # The child leaves the entry it inherited without error (its parent's runtime is not its
    # own: that entry is not counted), then measures its own entries with its own runtime
    # (with details: interned there, not taken from the tag its thread last found in the
    # parent's).
    r = run_script(tmp_path, sim, FORK_SCRIPT, {"STEP_OUTPUT": output})
    assert r.returncode == 0, r.stderr
    doc = last_json(r.stdout)
    assert doc["child"] == {"stats": {"s": 2}}, doc
    assert doc["parent"] == {"s": 5}


NO_SAMPLER_SCRIPT = """
    import json, os
    import carbonctx

    handle = carbonctx.step("s")
    with handle:  # the parent's runtime, started
        pass
    pid = os.fork()
    if pid == 0:
        out = {}
        try:
            with carbonctx.track("outer") as outer:
                with handle:  # no sampler in this child: a whole region, as a `with` would be
                    out["current_is_outer"] = carbonctx.current() is outer
                    with carbonctx.track("inside") as r:
                        pass
                    out["parent_is_outer"] = r._prev is outer
                out["after_is_outer"] = carbonctx.current() is outer
            out["after"] = repr(carbonctx.current())
        except BaseException as e:  # report anything
            out = {"fatal": repr(e)}
        with open("child.json", "w") as f:
            json.dump(out, f)
        os._exit(0)
    os.waitpid(pid, 0)
    with open("child.json") as f:
        print(json.dumps(json.load(f)))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_an_entry_without_a_sampler_sets_no_context_either(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # A forked child that may not start a sampler measures each entry as a whole region (which
    # says why): that one too leaves current() and the parents of the regions inside it to the
    # enclosing region, as every other entry does.
    r = run_script(tmp_path, sim, NO_SAMPLER_SCRIPT, {"CARBONCTX_ON_FORK": "disable"})
    assert r.returncode == 0, r.stderr
    doc = last_json(r.stdout)
    assert doc == {
        "current_is_outer": True,
        "parent_is_outer": True,
        "after_is_outer": True,
        "after": "None",
    }, doc


LEFT_OPEN_SCRIPT = """
    import json, os, threading
    import carbonctx

    on = os.environ["STEP_OUTPUT"] == "on"
    if on:
        carbonctx.configure(output="out.jsonl")
    handle = carbonctx.step("s", tags={"k": 1} if on else None)

    def ends_inside() -> None:  # a thread that ends with an entry of the handle open
        handle.__enter__()
        with handle:
            pass

    for _ in range(20):
        t = threading.Thread(target=ends_inside)
        t.start()
        t.join()
    ready = threading.Event()

    def stays_inside() -> None:  # a daemon thread still inside an entry at exit
        with handle:
            ready.set()
            threading.Event().wait()

    threading.Thread(target=stays_inside, daemon=True).start()
    ready.wait(10)
    for _ in range(3):
        with handle:
            pass
    carbonctx.flush()
    print(json.dumps({k: v.count for k, v in carbonctx.stats().items()}))
    handle.__enter__()  # the process exits with an entry open in its main thread too
"""


@pytest.mark.parametrize("output", ["off", "on"])
def test_threads_and_a_process_that_end_inside_entries(
    sim: SimulatedMachine, tmp_path: Path, output: str
) -> None:
    # Entries left open when a thread ends, or the process exits, are dropped with the thread's
    # stack of entries (a span; a region, let go of without the interpreter): nothing crashes,
    # and every entry that was left counts, the open ones not.
    r = run_script(tmp_path, sim, LEFT_OPEN_SCRIPT, {"STEP_OUTPUT": output})
    assert r.returncode == 0, r.stderr
    assert "panick" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert last_json(r.stdout) == {"s": 20 + 3}

"""Entries of a `carbonctx.step` handle where records need their details (output on, strict
checks, tags): spans whose tag stands for (name, thread, parent, tags), counted under their
name, recorded with their details, within a bound per runtime, and across `configure()`."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx._measure import resolver as _resolver
from carbonctx._measure import runtime as _rt
from carbonctx.errors import CarbonctxWarning
from carbonctx.testing import SimulatedMachine
from test_step import TAGS, by_name


@pytest.mark.parametrize(
    ("output", "strict", "tags"),
    [(True, False, None), (True, False, TAGS), (False, False, TAGS), (False, True, None)],
)
def test_entries_with_details_count_under_their_name_and_keep_their_details(
    sim: SimulatedMachine,
    tmp_path: Path,
    output: bool,
    strict: bool,
    tags: dict[str, Any] | None,
) -> None:
    # Where records need an entry's details (output on, strict checks, tags), the entries of one
    # handle in several places (no region, in a region, in another thread) count as one name;
    # each result and record has its own thread, parent and tags, and an id of its own.
    path = tmp_path / "out.jsonl"
    carbonctx.configure(**sim.settings(), strict=strict, output=str(path) if output else None)
    handle = carbonctx.step("s", tags=tags)
    main = threading.get_ident()
    for _ in range(3):
        with handle:
            pass
    with carbonctx.track("outer") as outer:
        for _ in range(4):
            with handle:
                pass
    worker = threading.Thread(target=lambda: [handle.__enter__(), handle.__exit__()])
    worker.start()
    worker.join(10)
    assert carbonctx.flush()
    stats = carbonctx.stats()
    assert set(stats) == {"s", "outer"} and stats["s"].count == 8
    where = [(None, main)] * 3 + [(outer.id, main)] * 4 + [(None, worker.ident)]
    got = sorted((m for m in carbonctx.recent() if m.name == "s"), key=lambda m: m.start)
    assert [(m.parent, m.thread) for m in got] == where
    assert all(m.tags == (tags or {}) for m in got)
    assert len({m.id for m in got}) == 8 and outer.id not in {m.id for m in got}
    # Each (thread, parent) was interned once, as its own tag of the name.
    rt = _runtime.runtime()
    details = list(rt.resolver.details.values())
    assert sorted((d[0], d[1], d[2] or 0) for d in details) == sorted(
        {("s", t, p or 0) for p, t in where}
    )
    assert all(d[3] == tags for d in details)
    if output:
        _runtime.reset()
        recs = sorted(by_name(path)["s"], key=lambda r: r["start"])
        assert [(r["parent"], r["thread"]) for r in recs] == where
        assert {r["id"] for r in recs} == {m.id for m in got}
        assert all(r["tags"] == (tags or {}) for r in recs)


def test_a_step_in_a_new_region_each_time_grows_no_table_without_bound(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step entered in a fresh region each time: each (thread, parent) is interned until the
    # runtime's bound, then the entries are regions of their own, recorded alike.
    monkeypatch.setattr(_resolver, "DETAIL_TAGS", 5)
    path = tmp_path / "out.jsonl"
    carbonctx.configure(**sim.settings(), output=str(path))
    handle = carbonctx.step("s", tags=TAGS)
    other = carbonctx.step("t")
    parents = []
    for _ in range(20):
        with carbonctx.track("outer") as outer:
            with handle:
                pass
            with other:
                pass
        parents.append(outer.id)
    rt = _runtime.runtime()
    assert len(rt.resolver.details) == 5
    assert carbonctx.flush()
    stats = carbonctx.stats()
    assert stats["s"].count == stats["t"].count == 20
    _runtime.reset()
    got = by_name(path)
    for name, tags in (("s", TAGS), ("t", {})):
        recs = sorted(got[name], key=lambda r: r["start"])
        assert [r["parent"] for r in recs] == parents
        assert all(r["tags"] == tags for r in recs)
    ids = [r["id"] for rs in got.values() for r in rs]
    assert len(set(ids)) == len(ids) == 60
    # A new runtime has a table of its own: the handle interns its details there anew.
    carbonctx.configure(**sim.settings(), output=str(tmp_path / "new.jsonl"))
    for _ in range(3):
        with handle:  # the first starts the runtime
            pass
    assert len(_runtime.runtime().resolver.details) == 1


def test_entries_with_details_are_shed_by_name(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Output that falls behind sheds step entries as it sheds `with` regions: counted by name
    # in the shed records; their statistics are kept.
    monkeypatch.setattr(_resolver, "SHED_AFTER", 0)  # every pass of the resolver thread sheds
    path = tmp_path / "out.jsonl"
    carbonctx.configure(**sim.settings(), output=str(path))
    handle = carbonctx.step("s")
    rt = _runtime.runtime()
    with pytest.warns(CarbonctxWarning, match="fell behind"):
        for _ in range(500):
            with handle:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (rt.recorder is None or not rt.recorder.shed_total):
            time.sleep(0.02)
        assert carbonctx.flush()
        with carbonctx.track("after"):  # warned from the user's thread
            pass
    assert carbonctx.stats()["s"].count == 500
    _runtime.reset()
    recs = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]
    shed = sum(r["names"].get("s", 0) for r in recs if r.get("kind") == "shed")
    written = len(by_name(path).get("s", []))
    assert shed > 0 and written + shed == 500


@pytest.mark.parametrize("tags", [None, TAGS])
def test_configure_inside_an_entry_alone(
    sim: SimulatedMachine, tmp_path: Path, tags: dict[str, Any] | None
) -> None:
    # With output on, an entry open while configure() replaces the runtime, and nothing else
    # open: the old runtime keeps measuring until it ends (its resolver passes meanwhile), then
    # records it.
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    carbonctx.configure(**sim.settings(), output=str(old))
    handle = carbonctx.step("s", tags=tags)
    for _ in range(2):  # the first starts the runtime
        with handle:
            pass
    with handle:
        carbonctx.configure(**sim.settings(), output=str(new))
        time.sleep(3 * _rt.RESOLVE_PERIOD_S)
    with handle:
        pass
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 1
    _runtime.reset()
    got = by_name(old)["s"]
    assert len(got) == 3 and all(r["tags"] == (tags or {}) for r in got)
    assert len(by_name(new)["s"]) == 1


def test_a_thread_that_ends_inside_an_entry_keeps_no_replaced_runtime_alive(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # A thread that ends inside an entry (entered, never left) drops it with its stack of
    # entries: the entry no longer counts as open, so a runtime configure() replaces afterwards
    # shuts down (it would otherwise keep its sampler and threads running until the process
    # exits, waiting for an entry that can no longer end).
    carbonctx.configure(**sim.settings(), output=str(tmp_path / "out.jsonl"))
    handle = carbonctx.step("s")
    with handle:  # the first starts the runtime
        pass
    old = _runtime.current_runtime()
    assert old is not None
    worker = threading.Thread(target=handle.__enter__)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    deadline = time.monotonic() + 10  # the thread's stack is dropped as it ends: at once
    while old.core.open_steps and time.monotonic() < deadline:
        time.sleep(0.01)
    assert old.core.open_steps == 0
    carbonctx.configure(output=None)
    deadline = time.monotonic() + 30
    while not old.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert old.finished
    assert by_name(tmp_path / "out.jsonl")["s"] and len(by_name(tmp_path / "out.jsonl")["s"]) == 1


def test_handles_made_anew_share_the_tags_of_their_details(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handle made anew at each entry (inside a function called in the loop) has no tags cached:
    # the runtime gives it the tag its details already have, so the table does not fill up with
    # copies and the entries stay spans (a handle's own tags are its own: they are not shared).
    monkeypatch.setattr(_resolver, "DETAIL_TAGS", 4)
    path = tmp_path / "out.jsonl"
    carbonctx.configure(**sim.settings(), output=str(path))
    for _ in range(10):
        with carbonctx.step("s"):
            pass
    with carbonctx.track("outer") as outer:
        for _ in range(10):
            with carbonctx.step("s"):
                pass
        tagged = carbonctx.step("s", tags=TAGS)
        for _ in range(3):
            with tagged:
                pass
    rt = _runtime.runtime()
    main = threading.get_ident()
    assert sorted(rt.resolver.details.values(), key=repr) == sorted(
        [("s", main, None, None), ("s", main, outer.id, None), ("s", main, outer.id, TAGS)],
        key=repr,
    )
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 23
    _runtime.reset()
    recs = sorted(by_name(path)["s"], key=lambda r: r["start"])
    want = [(None, {})] * 10 + [(outer.id, {})] * 10 + [(outer.id, TAGS)] * 3
    assert [(r["parent"], r["tags"]) for r in recs] == want


def test_a_thread_takes_its_last_tag_only_for_the_same_handle_region_and_runtime(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # A thread keeps the detail tag its last entry found, and the next entry takes it when it is
    # of the same handle, in the same region and runtime. Entries that alternate handles (other
    # tags), regions (in, deeper, back out), threads and runtimes must each keep their own
    # details.
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    carbonctx.configure(**sim.settings(), output=str(first))
    plain, tagged = carbonctx.step("s"), carbonctx.step("s", tags=TAGS)
    main = threading.get_ident()
    want: list[tuple[int | None, int, dict[str, Any]]] = []

    def enter(handle: Any, parent: int | None, tags: dict[str, Any]) -> None:
        with handle:
            pass
        want.append((parent, threading.get_ident(), tags))

    def worker() -> None:
        enter(plain, None, {})
        enter(plain, None, {})

    for _ in range(2):
        enter(plain, None, {})
        enter(tagged, None, TAGS)
        enter(plain, None, {})
        with carbonctx.track("outer") as outer:
            enter(plain, outer.id, {})
            enter(plain, outer.id, {})
            with carbonctx.track("inner") as inner:
                enter(plain, inner.id, {})
            enter(plain, outer.id, {})
            t = threading.Thread(target=worker)
            t.start()
            t.join(10)
            enter(plain, outer.id, {})
            enter(tagged, outer.id, TAGS)
            enter(tagged, outer.id, TAGS)
        enter(plain, None, {})
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == len(want)
    carbonctx.configure(**sim.settings(), output=str(second))
    want_first, want = want, []
    enter(plain, None, {})
    enter(plain, None, {})
    with carbonctx.track("again") as again:
        enter(plain, again.id, {})
        enter(tagged, again.id, TAGS)
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == len(want) == 4
    _runtime.reset()
    for path, expected in ((first, want_first), (second, want)):
        recs = sorted(by_name(path)["s"], key=lambda r: r["start"])
        assert [(r["parent"], r["thread"], r["tags"]) for r in recs] == expected
    assert {t for _, t, _ in want_first} - {main}  # the worker's entries are in it


def test_configure_while_an_entry_interns_its_details_loses_no_entry(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An entry's details are interned by Python code (the runtime's `tag_of`), during which
    # another thread may run `configure()`: the entry counts as open in its runtime before
    # that, so the replaced runtime keeps measuring until it ends and records it (here
    # `configure()` runs inside `tag_of` itself, at the moment another thread could).
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    carbonctx.configure(**sim.settings(), output=str(old))
    calls: list[int] = []
    tag_of = _rt.Runtime.tag_of

    def configure_meanwhile(self: _rt.Runtime, name: str, details: Any = None) -> int:
        tag = tag_of(self, name, details)
        if details is not None and not calls:
            calls.append(tag)
            carbonctx.configure(**sim.settings(), output=str(new))
        return tag

    monkeypatch.setattr(_rt.Runtime, "tag_of", configure_meanwhile)
    with carbonctx.track("warm"):  # starts the runtime (no step entry yet)
        pass
    first = _runtime.current_runtime()
    assert first is not None
    handle = carbonctx.step("s")
    with handle:
        pass
    assert calls  # configure() ran while the entry was being made
    deadline = time.monotonic() + 30
    while not first.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.finished
    _runtime.reset()
    assert len(by_name(old).get("s", [])) == 1


def test_configure_while_an_entry_says_its_warnings_loses_no_entry(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # Warnings due are said as an entry begins, by Python code (a `showwarning` hook, a write
    # to stderr that lets other threads run), during which another thread may run
    # `configure()`: the entry is then measured by the runtime current once they are said, not
    # counted in the replaced one after it has shut down (here `configure()` runs inside the
    # hook itself, at the moment another thread could).
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    carbonctx.configure(**sim.settings(), output=str(old))
    with carbonctx.track("warm"):  # starts the runtime (no step entry yet)
        pass
    first = _runtime.current_runtime()
    assert first is not None
    handle = carbonctx.step("s")
    shown: list[str] = []

    def configure_meanwhile(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        shown.append(str(message))
        if len(shown) == 1:
            carbonctx.configure(**sim.settings(), output=str(new))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = configure_meanwhile
        first.note("test", "a degradation to say")
        with handle:
            pass
    assert shown == ["a degradation to say"]  # said as the entry began
    deadline = time.monotonic() + 30
    while not first.finished and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.finished
    _runtime.reset()
    in_old = by_name(old).get("s", [])
    in_new = by_name(new).get("s", []) if new.exists() else []
    assert len(in_old) + len(in_new) == 1


def test_an_entry_of_the_same_handle_while_details_are_interned(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interning an entry's details runs Python code (the runtime's `tag_of`; a collector's
    # finalizer may run there too), which may enter the same handle on the same thread: both
    # entries are measured, each with its own parent, and the outer one is left as usual.
    path = tmp_path / "out.jsonl"
    carbonctx.configure(**sim.settings(), output=str(path))
    handle = carbonctx.step("s")
    inner: list[int] = []
    tag_of = _rt.Runtime.tag_of

    def enter_meanwhile(self: _rt.Runtime, name: str, details: Any = None) -> int:
        if details is not None and not inner:
            inner.append(details[1] or 0)
            with carbonctx.track("inside"), handle:
                pass
        return tag_of(self, name, details)

    monkeypatch.setattr(_rt.Runtime, "tag_of", enter_meanwhile)
    with handle:
        pass
    with handle:  # the thread's last tag, found again
        pass
    assert inner == [0]
    assert carbonctx.flush()
    assert carbonctx.stats()["s"].count == 3
    _runtime.reset()
    recs = by_name(path)
    (inside,) = recs["inside"]
    assert sorted(r["parent"] is None for r in recs["s"]) == [False, True, True]
    assert [r["parent"] for r in recs["s"] if r["parent"] is not None] == [inside["id"]]

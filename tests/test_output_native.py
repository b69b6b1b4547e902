"""Compact region lines made in native code (issue 15: step records cheap enough to leave on):
every field is written as the Python formatter wrote it (``repr`` of a float, ``%.2g`` of an
uncertainty rounded up, exact integers, ``null`` where a figure is missing), whatever a batch
mixes; and resolved regions taken from the sampler in slices come out whole and in order."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import carbonctx
from carbonctx import _native
from carbonctx._measure import process as _runtime
from carbonctx._measure import runtime as _rt
from carbonctx._output.compact import ceil2_array
from carbonctx.testing import SimulatedMachine


def _2g_up(u: float) -> str:
    """An uncertainty as the Python formatter wrote it: rounded up to two digits, ``%.2g``."""
    c = float(ceil2_array(np.array([u]))[0])
    return f"{c:.2g}" if math.isfinite(c) else "null"


def test_floats_are_written_as_python_writes_them() -> None:
    rng = random.Random(15)
    xs = [0.0, -0.0, 1e-4, 1e-5, 9.9999e-5, 1e15, 1e16, 9999999999999998.0, 0.125, 1.25, 12.5]
    xs += [0.5, 9.96, 99.5, 95.0, 100.0, 10.0, 1.0, 1e-300, 5e-324, 1.7976931348623157e308]
    xs += [12658374770308.312, 846050037523200.2, -3.2e-7, 2.5e-3, 0.1 + 0.2]
    # Subnormals, where a power of ten is not exact.
    xs += [9.83e-322, 1e-321, 2.2250738585072014e-308, 4.9e-324]
    xs += [rng.uniform(1, 1000) * 5e-324 for _ in range(2000)]
    for _ in range(20_000):
        x = rng.random() * 10 ** rng.uniform(-12, 20)
        xs.append(-x if rng.random() < 0.1 else x)
        xs.append(round(rng.random(), rng.randint(0, 6)) * 10 ** rng.randint(-8, 8))
        bits = rng.getrandbits(63)
        y = np.frombuffer(bits.to_bytes(8, "little"), dtype=np.float64)[0].item()
        if math.isfinite(y):
            xs.append(y)
    for x, (r, g, u) in zip(xs, _native.float_texts(xs), strict=True):
        assert (r, g, u) == (repr(x), f"{x:.2g}", _2g_up(x)), x
    assert _native.float_texts([math.nan, math.inf, -math.inf]) == [("null",) * 3] * 3


def _reference(
    cols: list[int],
    counted: list[int],
    ids: np.ndarray,
    t0: np.ndarray,
    t1: np.ndarray,
    joules: np.ndarray,
    unc: np.ndarray,
    rows: list[int],
    infos: list[Any],
    base: int,
    seen: dict[str, str],
    threads: dict[int, int],
    full_line: Callable[[int], str],
    row_carbon: Callable[[float, int, int], str] | None,
) -> str:
    """The lines as the format (``_output.compact``) describes them, one field at a time."""
    out = []
    prev_end = base
    last_th = 0
    for k in rows:
        name, thread, parent, tags = infos[k]
        if name not in seen:
            seen[name] = json.dumps(name)
            out.append(full_line(k))
            continue
        uj = [float(np.rint(joules[k, c] * 1e6)) for c in cols]
        energy = 0.0
        for p, x in enumerate(uj):
            if p in counted and math.isfinite(x):
                energy += x
        energy /= 1e6
        th = 0
        if thread:
            th = threads.setdefault(thread, len(threads) + 1)
        start, end = int(t0[k]), int(t1[k])
        line = (
            f'{{"kind":"region","name":{seen[name]},"id":{int(ids[k])},'
            f'"parent":{"null" if parent is None else parent},"t":{start - prev_end},'
            f'"dt":{end - start},"energy_j":{repr(energy) if math.isfinite(energy) else "null"},'
            f'"j":[{",".join(str(int(x)) if math.isfinite(x) else "null" for x in uj)}],'
            f'"u":[{",".join(_2g_up(unc[k, c]) for c in cols)}]'
        )
        prev_end = end
        if th != last_th:
            line += f',"th":{th}'
            last_th = th
        if tags:  # none, or set empty: no "tags"
            line += ',"tags":' + json.dumps(tags, separators=(",", ":"))
        if row_carbon is not None:
            line += row_carbon(energy, start, end)
        out.append(line + "}\n")
    return "".join(out)


@pytest.mark.parametrize("own_carbon", [False, True])
def test_lines_of_a_mixed_batch_are_those_the_format_describes(own_carbon: bool) -> None:
    """Tags, several threads (and none), parents, first records of names, a failed source,
    a counter that went backwards, unknown, zero and negative uncertainties, huge figures,
    overlapping regions, rows left out, a column left out of the context and one that does not
    add into the energy; each line byte for byte."""
    rng = np.random.default_rng(7)
    n, width = 400, 5
    cols, counted = [0, 1, 3, 4], [0, 1, 3]  # column 2 is another rank's; 4 is a core domain
    ids = np.arange(1000, 1000 + n, dtype=np.uint64)
    t0 = (10**15 + np.cumsum(rng.integers(0, 5000, n))).astype(np.uint64)
    t1 = t0 + rng.integers(0, 20000, n).astype(np.uint64)  # overlapping: "t" < 0 often
    joules = rng.random((n, width)) * 10.0 ** rng.integers(-7, 3, (n, width))
    unc = rng.random((n, width)) * 10.0 ** rng.integers(-9, 0, (n, width))
    # Uncertainties come in steps: a few values over and over (their texts are kept), zeros of
    # both signs among them (equal, written apart).
    steps = np.array([2.5e-6, 1e-5, 3.3e-7, 0.0, -0.0, 0.012, 1.1e-6, 4.4e-4])
    unc[:, 1] = steps[rng.integers(0, len(steps), n)]
    unc[:, 3] = rng.random(6)[rng.integers(0, 6, n)] * 1e-3
    joules[5, 1] = math.nan  # a failed source
    joules[6, 0] = -0.0004  # a counter read after a reset
    joules[7, 3] = 2e13  # beyond an int64 of microjoules: exact digits
    joules[8, :] = math.nan
    joules[9, 0] = math.inf
    unc[10, 0] = math.nan
    unc[11, 1] = 0.0
    unc[12, 3] = -0.0
    unc[13, 4] = -2.5e-6
    names = ["step", "data", 'quo"te', "naïve ☃", "\U0001f600"]
    threads_pool = [0, 140_000_000_001, 140_000_000_002, 1 << 63]
    infos: list[Any] = []
    for k in range(n):
        tags = {"i": k, "s": "é"} if k % 7 == 0 else ({} if k % 13 == 0 else None)
        parent = None if k % 3 == 0 else int(ids[k]) - 1
        infos.append((names[k % 5], threads_pool[(k // 4) % 4], parent, tags))
    rows = [k for k in range(n) if k % 11 != 4]  # rows nobody claimed are not written
    base = int(t0[rows].min())
    full = {k: f'{{"full":{k}}}\n' for k in rows}

    def row_carbon(energy_j: float, start: int, end: int) -> str:
        return f',"carbon":{{"e":{energy_j!r},"s":{start},"d":{end - start}}}'

    carbon = row_carbon if own_carbon else None
    lines = _native.CompactLines(width, cols, counted)
    written: dict[str, str] = {}  # the names written so far, as the writer keeps them
    ref_written: dict[str, str] = {}
    ref_threads: dict[int, int] = {}

    def name_json(name: str) -> tuple[str, bool]:
        if name in written:
            return written[name], False
        written[name] = json.dumps(name)
        return written[name], True

    everything = ""
    for part in (rows[:150], rows[150:]):  # two batches: names and threads carry over
        base = int(t0[part].min())
        threads_before = dict(ref_threads)
        body, new_threads = lines.lines(
            ids.tobytes(),
            t0.tobytes(),
            t1.tobytes(),
            joules.tobytes(),
            unc.tobytes(),
            part,
            infos,
            base,
            name_json,
            full.__getitem__,
            lambda tags: json.dumps(tags, separators=(",", ":")),
            carbon,
        )
        want = _reference(
            cols, counted, ids, t0, t1, joules, unc, part, infos, base, ref_written,
            ref_threads, full.__getitem__, carbon,
        )  # fmt: skip
        assert body.decode("utf-8") == want
        everything += want
        assert dict(new_threads) == {
            th: ident for ident, th in ref_threads.items() if ident not in threads_before
        }
        recs = [json.loads(ln) for ln in body.decode("utf-8").splitlines()]  # each is JSON
        compact = [r for r in recs if "j" in r]
        assert len(recs) == len(part)
        assert sum("full" in r for r in recs) == (len(names) if part[0] == rows[0] else 0)
        assert any(r["t"] < 0 for r in compact) and any("tags" in r for r in compact)
        assert len({r.get("th") for r in compact}) >= 3
    assert '"j":[null,' in everything and "null]" in everything
    assert ",20000000000000000000," in everything and ",-0," in everything
    assert "-2.5e-06]" in everything and '"u":[null,' in everything
    assert sorted(int(th) for th in lines.threads()) == [1, 2, 3]
    assert lines.span(t0.tobytes(), t1.tobytes(), rows) == (
        int(t0[rows].min()),
        int(t1[rows].max()),
    )


def test_lines_refuse_columns_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        _native.CompactLines(3, [0, 3], [0])
    with pytest.raises(ValueError):
        _native.CompactLines(3, [0, 1], [2])
    lines = _native.CompactLines(2, [0, 1], [0, 1])
    one = np.zeros(1, dtype=np.uint64).tobytes()
    with pytest.raises(ValueError):  # joules of three sources for a width of two
        lines.lines(one, one, one, bytes(24), bytes(24), [0], [("a", 0, None, None)], 0,
                    lambda s: ('"a"', False), str, str)  # fmt: skip
    with pytest.raises(IndexError):
        lines.lines(one, one, one, bytes(16), bytes(16), [1], [("a", 0, None, None)], 0,
                    lambda s: ('"a"', False), str, str)  # fmt: skip


def _undrained_runtime(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The running runtime and its sampler, the resolver thread kept from draining (its period
    a minute): a test drains by hand, holding the resolver's lock."""
    monkeypatch.setattr(_rt, "RESOLVE_PERIOD_S", 60.0)
    with carbonctx.track("warm"):
        pass
    assert carbonctx.flush()
    rt = _runtime._RT
    assert rt is not None and rt.sampler is not None
    return rt, rt.sampler


def test_regions_drained_in_slices_come_out_whole_and_in_order(
    sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The binding takes the sampler's whole backlog and hands it out a slice at a time; the
    rows it still holds count as undrained (a runtime retiring waits for them)."""
    rt, s = _undrained_runtime(monkeypatch)
    with rt.resolver.lock:  # keeps the resolver out
        begun = [s.begin() for _ in range(700)]
        for rid in begun:
            s.end(rid)
        assert s.wait(_native.now_ns(), 10.0)
        got: list[int] = []
        t1s: list[int] = []
        while True:
            n, ids, _tags, _t0, t1, joules, unc = s.drain(64)
            assert len(joules) == len(unc) == n * 8 * len(s.sources)
            got += np.frombuffer(ids, dtype=np.uint64).tolist()
            t1s += np.frombuffer(t1, dtype=np.uint64).tolist()
            if n == 0:
                break
            assert n == 64 or len(got) == len(begun)
            if len(got) == 128:
                assert s.stats()["undrained"] >= len(begun) - 128
        assert got == begun
        assert t1s == sorted(t1s)
        assert s.stats()["undrained"] == 0
    _runtime.reset()


def test_a_loop_of_steps_is_written_whole(sim: SimulatedMachine, tmp_path: Any) -> None:
    """Thousands of regions written by the resolver thread and by ``flush()``: one line each,
    names and threads as the results say."""
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    handles = []
    for i in range(3000):
        with carbonctx.track("step") as m:
            if i % 500 == 0:
                time.sleep(0.02)  # lets the resolver thread write some
        if i % 100 == 0:
            handles.append(m)
    assert carbonctx.flush()
    want = {m.id: m.result() for m in handles}
    _runtime.reset()
    from carbonctx._output.jsonl import read_jsonl

    regions, _power, bad = read_jsonl(str(path))
    assert bad == 0
    assert sum(r["name"] == "step" for r in regions) == 3000
    by_id = {r["id"]: r for r in regions}
    for rid, res in want.items():
        assert by_id[rid]["thread"] == res.thread
        assert by_id[rid]["start"] == res.start
        assert by_id[rid]["energy_j"] == pytest.approx(res.energy_j, abs=3e-6)


# A slice shorter than asked means that nothing more is resolved: the resolver's pass gives up
# the lock between its slices, and a flush() or result() in between drains to the end.
def test_a_short_slice_includes_what_the_sampler_resolved_since(
    sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, s = _undrained_runtime(monkeypatch)
    with rt.resolver.lock:
        first = [s.begin() for _ in range(700)]
        for rid in first:
            s.end(rid)
        assert s.wait(_native.now_ns(), 10.0)
        assert s.drain(480)[0] == 480  # the resolver thread's first slice
        later = [s.begin() for _ in range(5)]
        for rid in later:
            s.end(rid)
        assert s.wait(_native.now_ns(), 10.0)
        n, ids, *_ = s.drain(8192)
        assert n == len(first) - 480 + len(later)
        assert np.frombuffer(ids, dtype=np.uint64).tolist() == first[480:] + later
        assert s.drain(8192)[0] == 0 and s.stats()["undrained"] == 0
    # And through the API: a region ended between two slices of the resolver's pass.
    with rt.resolver.lock:
        for _ in range(700):
            with carbonctx.track("step"):
                pass
        assert s.wait(_native.now_ns(), 10.0)
        rt.resolver.process_batch(*s.drain(480))
    with carbonctx.track("mine") as mine:
        pass
    assert mine.result(timeout=5.0).energy_j >= 0.0
    _runtime.reset()

"""Step records with output on (issue 15): compact lines, provenance written once, readers of
both forms, no region lost, and no user thread ever draining the backlog."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx import _cli
from carbonctx._measure import process as _runtime
from carbonctx._measure import resolver as _resolver
from carbonctx._measure import runtime as _rt
from carbonctx._output.compact import ceil2, expand_records
from carbonctx._output.jsonl import dumps, read_jsonl
from carbonctx.errors import CarbonctxWarning
from carbonctx.testing import SimulatedMachine

#: The issue's bound on one step record.
MAX_RECORD_BYTES = 150


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def steps(path: Path, n: int, tags: bool = False) -> list[carbonctx.Region]:
    carbonctx.configure(output=str(path))
    handles = []
    with carbonctx.track("epoch"):
        for i in range(n):
            with carbonctx.track("step", tags={"i": i} if tags else None) as m:
                time.sleep(0.0005)
            handles.append(m)
    assert carbonctx.flush()
    return handles


def test_step_records_are_compact_and_provenance_is_written_once(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    path = tmp_path / "out.jsonl"
    steps(path, 300)
    _runtime.reset()
    raw = lines(path)
    recs = [json.loads(ln) for ln in raw]
    compact = [
        ln for ln, r in zip(raw, recs, strict=True) if r.get("kind") == "region" and "j" in r
    ]
    full = [r for r in recs if r.get("kind") == "region" and "by_source" in r]
    # The first record of each name is full; every other one is a compact line.
    assert sorted(r["name"] for r in full) == ["epoch", "step"]
    assert len(compact) == 299
    assert max(len(ln.encode()) + 1 for ln in compact) <= MAX_RECORD_BYTES
    # Provenance (labels, carbon details) once: in the context record and the full records.
    contexts = [r for r in recs if r.get("kind") == "context"]
    assert len(contexts) == 1 and contexts[0]["carbon"]["zone"]["zone"] == "DE"
    assert sum("intensity_g_per_kwh" in ln for ln in raw) == 1 + len(full)
    assert sum('"label"' in ln for ln in raw) == 1 + len(full)


def test_readers_give_compact_records_in_full_as_the_results_say(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    path = tmp_path / "out.jsonl"
    handles = steps(path, 50, tags=True)
    results = {m.id: m.result().to_dict() for m in handles}
    _runtime.reset()
    regions, _power, bad = read_jsonl(str(path))
    assert bad == 0
    by_id = {r["id"]: r for r in regions}
    assert set(results) <= set(by_id)
    for rid, want in results.items():
        got = by_id[rid]
        assert list(got) == list(want)  # same fields, same order
        for k in ("name", "pid", "thread", "parent", "start", "end", "duration_s", "tags"):
            assert got[k] == want[k], k
        for k in ("missing", "estimated", "zone", "intensity"):
            assert got[k] == want[k], k
        # Joules to the microjoule; uncertainties rounded up to two digits (still bounds).
        for k in ("energy_j", "cpu_j", "dram_j", "gpu_j"):
            assert got[k] == pytest.approx(want[k], abs=3e-6), k
        assert got["uncertainty_j"] >= want["uncertainty_j"]
        assert got["uncertainty_j"] <= want["uncertainty_j"] * 1.11
        assert got["co2_g"] == pytest.approx(want["co2_g"], rel=1e-5, abs=1e-9)
        assert {k: v for k, v in got["carbon"].items() if k not in ("co2_g", "energy_kwh")} == {
            k: v for k, v in want["carbon"].items() if k not in ("co2_g", "energy_kwh")
        }
        assert got["by_source"].keys() == want["by_source"].keys()
        for sid, src in want["by_source"].items():
            g = got["by_source"][sid]
            assert {k: g[k] for k in ("label", "backend", "domain", "method", "note")} == {
                k: src[k] for k in ("label", "backend", "domain", "method", "note")
            }
            assert g["joules"] == pytest.approx(src["joules"], abs=1e-6)


def test_report_trace_and_csv_read_both_forms_alike(
    sim: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new.jsonl"
    handles = steps(new, 20)
    old = tmp_path / "old.jsonl"
    # The same regions in the full form, as earlier versions wrote them.
    old.write_text(
        "".join(dumps(m.result().to_dict()) for m in handles)
        + "".join(dumps(m.to_dict()) for m in carbonctx.recent() if m.name == "epoch"),
        encoding="utf-8",
    )
    _runtime.reset()
    outs = []
    for p in (new, old):
        trace = tmp_path / f"{p.stem}.trace.json"
        csv_out = tmp_path / f"{p.stem}.csv"
        assert _cli.main(["report", str(p), "--trace", str(trace), "--csv", str(csv_out)]) == 0
        out = capsys.readouterr().out
        # The table's names and counts (figures agree to the microjoule, not to the digit).
        outs.append(
            [ln.split()[:2] for ln in out.splitlines()[1:] if ln.split()[:1] != ["top-level"]]
        )
        doc = json.loads(trace.read_text())
        assert sum(e.get("name") == "step" for e in doc["traceEvents"]) == 20
        assert len(csv_out.read_text().splitlines()) == 22  # header, 20 steps, the epoch
    assert ["step", "20"] in outs[0] and ["epoch", "1"] in outs[0] and outs[0] == outs[1]


def test_a_compact_line_before_any_context_is_kept_as_it_is() -> None:
    rec = {"kind": "region", "name": "x", "id": 1, "t": 0, "dt": 5, "j": [1], "u": [0.1]}
    assert expand_records([rec]) == [rec]


def test_uncertainties_round_up() -> None:
    assert ceil2(0.080112) == 0.081 and ceil2(30.0) == 30.0 and ceil2(30.09) == 31.0
    assert ceil2(0.0) == 0.0 and math.isnan(ceil2(math.nan))


def test_no_user_thread_drains_and_no_region_is_lost(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny backlog bound, threads leaving regions only wake the resolver thread."""
    monkeypatch.setattr(_rt, "BACKLOG_HIGH", 4)
    drained_on: set[str] = set()
    real_drain = _rt.Runtime.drain
    real_bg = _resolver.Resolver.drain_background

    def drain(self: Any) -> None:
        drained_on.add(threading.current_thread().name)
        real_drain(self)

    def drain_background(self: Any, s: Any) -> None:
        drained_on.add(threading.current_thread().name)
        real_bg(self, s)

    monkeypatch.setattr(_rt.Runtime, "drain", drain)
    monkeypatch.setattr(_resolver.Resolver, "drain_background", drain_background)
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))

    @carbonctx.tracked(name="call")
    def call() -> None:
        pass

    def work() -> None:
        for _ in range(2000):
            with carbonctx.track("step"):
                pass
            call()

    threads = [threading.Thread(target=work, name=f"user-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not {n for n in drained_on if n.startswith("user-")}
    assert carbonctx.flush()
    _runtime.reset()
    regions, _, bad = read_jsonl(str(path))
    assert bad == 0
    assert sum(r["name"] == "step" for r in regions) == 8000
    assert sum(r["name"] == "call" for r in regions) == 8000
    assert len({r["id"] for r in regions}) == 16000


def test_output_that_falls_behind_is_shed_counted_warned_and_recorded(
    sim: SimulatedMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_resolver, "SHED_AFTER", 0)  # every pass of the resolver thread sheds
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    handles = []
    rt = _runtime.runtime()
    with pytest.warns(CarbonctxWarning, match="fell behind"):
        for _ in range(500):
            with carbonctx.track("step") as m:
                pass
            handles.append(m)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (rt.recorder is None or not rt.recorder.shed_total):
            time.sleep(0.02)
        assert carbonctx.flush()
        assert "output-shed" in rt.notes
        with carbonctx.track("after"):  # warned from the user's thread
            pass
    assert carbonctx.stats()["step"].count == 500  # statistics keep every region
    shed = [m for m in handles if m.result().recorded is False]
    _runtime.reset()
    recs = [json.loads(ln) for ln in lines(path)]
    shed_recs = [r for r in recs if r.get("kind") == "shed"]
    written = sum(r.get("kind") == "region" and r["name"] == "step" for r in recs)
    assert shed_recs and sum(r["names"]["step"] for r in shed_recs) == len(shed) > 0
    assert written + len(shed) == 500

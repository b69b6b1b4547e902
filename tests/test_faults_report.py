"""``carbonctx report`` on damaged and hostile files (issue 10, item 14): it reads what it can,
says what it skipped and why, writes no NaN, sends no escape sequence to the terminal, reads
any line in bounded memory, and never writes nothing without saying so."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from carbonctx import _cli
from carbonctx._output import reading
from carbonctx._output.jsonl import read_jsonl_checked

GOOD: dict[str, Any] = {
    "kind": "region",
    "name": "step",
    "id": 1,
    "pid": 7,
    "thread": 1,
    "parent": None,
    "start": 100.0,
    "end": 100.5,
    "duration_s": 0.5,
    "energy_j": 2.0,
    "co2_g": 0.1,
    "tags": {},
}


def good(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def hostile_file(path: Path) -> Path:
    lines = [
        good(id=1),
        b'{"kind": "region", "name": "\xff\xfe not utf-8"}',
        b"[" * 200_000 + b"]" * 200_000,
        good(id=3, energy_j="lots"),
        json.dumps({k: v for k, v in GOOD.items() if k != "start"}).encode(),
        good(id=5).replace(b'"energy_j": 2.0', b'"energy_j": NaN'),
        good(id=6).replace(b'"co2_g": 0.1', b'"co2_g": 1e999'),
        b'{"kind": "region", "n": ' + b"1" * 5000 + b"}",
        b'"a string"',
        good(id=9, name=["not", "text"]),
        b'{"kind": "power", "t": 100.2, "watts": {"package-0": 40.0}}',
        b'{"kind": "context", "pid": [1]}',
        good(id=10, tags="x"),
        good(id=11),
    ]
    path.write_bytes(b"\n".join(lines) + b'\n{"kind": "region", "name": "cut')
    return path


def test_a_damaged_file_is_read_around_its_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = hostile_file(tmp_path / "damaged.jsonl")
    trace, csv_out, page = tmp_path / "t.json", tmp_path / "r.csv", tmp_path / "r.html"
    args = ["report", str(path), "--trace", str(trace), "--csv", str(csv_out), "--html", str(page)]
    assert _cli.main(args) == 0
    out = capsys.readouterr().out
    # Regions 1, 5 (energy NaN read as null), 6 (CO2 1e999 read as null) and 11.
    assert f"{path}: 4 regions, 10 unreadable lines skipped" in out
    for reason, line in [
        ("not UTF-8", 2),
        ("nested too deeply", 3),
        ("'energy_j' is a str", 4),
        ("without 'start'", 5),
        ("a number too long", 8),
        ("not an object", 9),
        ("'name' is a list", 10),
        ("context record", 12),
        ("'tags' is a str", 13),
        ("cut short", 15),
    ]:
        assert any(reason in ln and f"line {line})" in ln for ln in out.splitlines()), reason
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    assert rows["step"][1] == "4"
    # Nothing non-standard in what it wrote: browsers' JSON.parse reads the trace.
    doc = strict_json(trace.read_text(encoding="utf-8"))
    slices = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
    assert len(slices) == 4
    assert {e["args"]["energy_j"] for e in slices} == {2.0, None}
    assert "NaN" not in csv_out.read_text(encoding="utf-8")
    html = page.read_text(encoding="utf-8")
    assert "step" in html and "10 unreadable lines skipped" in html


def test_names_never_reach_the_terminal_as_escape_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "\x1b]0;owned\x07\x1b[2J\x9b31m\rstep\u202efdp.exe"
    path = tmp_path / "names.jsonl"
    path.write_bytes(good(name=name) + b"\n")
    assert _cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(ord(c) < 0x20 and c not in "\n\t" for c in out)
    assert "\x7f" not in out and "\x9b" not in out and "\u202e" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\x0dstep\\u202efdp.exe" in out


def test_a_huge_line_is_skipped_in_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reading, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(good(id=1) + b"\n")
        f.write(b'{"kind": "region", "name": "')
        for _ in range(48):
            f.write(b"x" * (1 << 20))
        f.write(b'"}\n')
        f.write(good(id=2) + b"\n")
    tracemalloc.start()
    try:
        regions, _power, skipped = read_jsonl_checked(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r["id"] for r in regions] == [1, 2]
    assert skipped.lines() == ["1 line: longer than 1 MiB (first: line 2)"]
    assert peak < 8 << 20  # the 48 MiB line was never held whole
    assert _cli.main(["report", str(path)]) == 0
    assert "longer than 1 MiB" in capsys.readouterr().out


def test_html_of_a_directory_without_run_logs_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "ranks"
    d.mkdir()
    (d / "rank0.jsonl").write_bytes(good(rank=0, world_size=2) + b"\n")
    page = tmp_path / "r.html"
    assert _cli.main(["report", str(d), "--html", str(page)]) == 2
    cap = capsys.readouterr()
    assert "region records of a distributed job" in cap.out  # the job is still reported
    assert "no HTML report written" in cap.err and not page.exists()


def test_a_fifo_given_to_report_is_refused_not_waited_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    assert _cli.main(["report", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_damaged_run_logs_are_read_around_their_bad_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    import carbonctx
    from carbonctx._measure import process as _runtime
    from carbonctx._runs.epochs import epochs
    from carbonctx.testing import SimulatedMachine, Wave

    m = SimulatedMachine(tmp_path / "hw", package=Wave.constant(100.0), dram=Wave.constant(5.0))
    m.start()
    try:
        carbonctx.configure(**m.settings())
        logs = tmp_path / "logs"
        for _ in epochs(3, log_dir=logs, progress=False, quiet=True):
            time.sleep(0.01)
        _runtime.reset()
    finally:
        m.close()
    (log,) = logs.glob("*.jsonl")
    good = log.read_text(encoding="utf-8")
    with log.open("a", encoding="utf-8") as f:
        f.write('{"kind": "epoch", "run": "x", "epoch": "zero", "start": 1, "end": 2}\n')
        f.write('{"kind": "epoch", "epoch": 9, "energy_j": "lots", "start": 1, "end": 2}\n')
        f.write('{"kind": "epoch", "run": "x", "epoch": 10}\n')
        f.write('{"kind": "run", "run": "x", "actual": {"energy_j": [1]}}\n')
    # A second log that is nothing but damage, and one that is not UTF-8.
    (logs / "broken.jsonl").write_text('{"kind": "epoch", "epoch": 1, "start": "a", "end": 2}\n')
    (logs / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    html = tmp_path / "r.html"
    assert _cli.main(["report", str(logs), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert f"{log}: 4 unreadable or damaged lines skipped" in out
    assert "1 runs" in out and html.exists()
    assert good.count('"kind": "epoch"') + good.count('"kind":"epoch"') == 3


def test_a_long_file_is_summarised_one_record_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --trace (which holds every region) the report keeps no record: statistics keep
    a bounded sample per name and CSV rows are written as they are read."""
    path = tmp_path / "long.jsonl"
    n = 12_000
    with path.open("wb") as f:
        for i in range(n):
            f.write(good(id=i + 1, name=f"step{i % 3}", tags={"i": i, "pad": "x" * 400}) + b"\n")
    size = path.stat().st_size
    csv_out = tmp_path / "r.csv"
    tracemalloc.start()
    try:
        assert _cli.main(["report", str(path), "--csv", str(csv_out)]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    assert f"{n} regions" in out
    assert csv_out.read_text(encoding="utf-8").count("\n") == n + 1
    assert peak < size / 4, (peak, size)  # the records themselves would take several times it


def test_a_file_of_many_names_keeps_a_row_for_the_first_ones_and_sums_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from carbonctx._cli import report

    monkeypatch.setattr(report, "MAX_NAMES", 5)
    path = tmp_path / "names.jsonl"
    path.write_bytes(b"".join(good(id=i + 1, name=f"n{i}") + b"\n" for i in range(12)))
    assert _cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    assert [f"n{i}" in rows for i in range(12)] == [True] * 5 + [False] * 7
    assert "the rest are summed in '(other names)'" in out
    assert next(ln for ln in out.splitlines() if ln.startswith("(other names)")).split()[2] == "7"

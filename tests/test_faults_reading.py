"""Reading output files that were damaged, written by another version, or are still being
written: nothing is guessed at, every skipped line says why (and what to do), and no read waits
on a file that never ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx import _cli
from carbonctx._measure import process as _runtime
from carbonctx._output import reading
from carbonctx._output.jsonl import read_jsonl_checked
from carbonctx._runs.log import read_run_log, read_run_logs, read_runs_of_log
from carbonctx.testing import SimulatedMachine

SOURCE = {
    "id": "powercap:intel-rapl:0",
    "label": "package-0",
    "backend": "powercap",
    "domain": "package",
    "method": "counter",
}
CONTEXT: dict[str, Any] = {
    "kind": "context",
    "format": 2,
    "pid": 7,
    "offset": 1000.0,
    "sources": [SOURCE],
    "estimated": False,
    "rank": None,
    "carbon": None,
}
BATCH = {"kind": "batch", "pid": 7, "t0": 1_000_000_000}
#: A compact line: 0.5 s from 1001.0 (offset + t0), 2 J on the package.
LINE: dict[str, Any] = {
    "kind": "region",
    "name": "step",
    "id": 1,
    "parent": None,
    "t": 0,
    "dt": 500_000_000,
    "energy_j": 2.0,
    "j": [2_000_000],
    "u": [0.01],
}


def write(path: Path, *records: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def reasons(path: Path) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    regions, _, skipped = read_jsonl_checked(path)
    return regions, skipped.reasons


def test_a_compact_line_without_its_context_says_the_start_of_the_file_is_missing(
    tmp_path: Path,
) -> None:
    # Cut at the front (the context gone), or the context after the lines that need it.
    path = write(tmp_path / "cut.jsonl", LINE, dict(LINE, id=2), CONTEXT, BATCH, dict(LINE, id=3))
    regions, why = reasons(path)
    assert [r["id"] for r in regions] == [3]
    assert (regions[0]["start"], regions[0]["end"], regions[0]["energy_j"]) == (1001.0, 1001.5, 2.0)
    (reason,) = why
    assert "no context record before it" in reason and "missing" in reason
    assert why[reason] == [2, 1]


def test_lines_of_a_newer_compact_format_are_not_guessed_at(tmp_path: Path) -> None:
    newer = dict(CONTEXT, format=3, pid=8)
    path = write(
        tmp_path / "mixed.jsonl",
        CONTEXT,
        BATCH,
        LINE,
        newer,
        dict(BATCH, pid=8),
        dict(LINE, id=2),
        dict(LINE, id=3),
        dict(CONTEXT, format="2.x", pid=9),
        dict(BATCH, pid=9),
        dict(LINE, id=4),
    )
    regions, why = reasons(path)
    assert [r["id"] for r in regions] == [1]
    newer_reason = next(r for r in why if "compact format 3" in r)
    assert "upgrade carbonctx" in newer_reason and why[newer_reason] == [2, 6]
    assert any("unknown format ('2.x')" in r for r in why)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"energy_j": -5.0}, "'energy_j' is negative"),
        ({"co2_g": -1e-3}, "'co2_g' is negative"),
        ({"duration_s": -0.5}, "'duration_s' is negative"),
        ({"start": 200.0, "end": 100.0}, "ends before it starts"),
    ],
)
def test_regions_with_impossible_figures_are_skipped_not_summed(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    good = {"kind": "region", "name": "a", "start": 100.0, "end": 101.0, "energy_j": 1.0}
    path = write(tmp_path / "bad.jsonl", good, {**good, **changes})
    regions, why = reasons(path)
    assert len(regions) == 1 and regions[0]["energy_j"] == 1.0
    assert [r for r in why if reason in r] and why[next(iter(why))] == [1, 2]


def test_a_compact_line_whose_figures_are_negative_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "neg.jsonl", CONTEXT, BATCH, dict(LINE, dt=-5), dict(LINE, j=[-5]))
    regions, why = reasons(path)
    assert regions == []
    assert sum(n for n, _ in why.values()) == 2


def test_a_file_still_being_written_is_read_as_far_as_it_went_when_opened(
    tmp_path: Path,
) -> None:
    good = {"kind": "region", "name": "a", "start": 100.0, "end": 101.0, "energy_j": 1.0}
    path = write(tmp_path / "growing.jsonl", *(dict(good, id=i) for i in range(3)))
    skipped = reading.Skipped()
    it = reading.iter_json_lines(path, skipped)
    first = next(it)
    with path.open("a", encoding="utf-8") as f:  # a writer appending as fast as it is read
        f.writelines(json.dumps(dict(good, id=i)) + "\n" for i in range(3, 50))
    rest = list(it)
    assert [rec["id"] for _, rec in [first, *rest]] == [0, 1, 2]
    assert skipped.total == 0


def test_a_fifo_among_a_directorys_files_is_skipped_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "rank0.jsonl")  # nobody will ever write to it
    write(tmp_path / "rank1.jsonl", CONTEXT, BATCH, LINE)
    done = subprocess.run(
        [sys.executable, "-m", "carbonctx", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 2, done.stdout
    assert "no run logs" in done.stderr


def test_a_fifo_is_refused_by_the_reader_itself(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p.jsonl")
    with pytest.raises(OSError, match="not a regular file"):
        list(reading.iter_json_lines(tmp_path / "p.jsonl", reading.Skipped()))


def test_two_runs_appended_to_one_log_are_two_runs(
    sim: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run id given again (a job restarted by hand) appends to the same log.
    actual = []
    for _ in range(2):
        run = carbonctx.epochs(2, log_dir=tmp_path, progress=False, quiet=True, run_id="same")
        for _ in run:
            time.sleep(0.02)
        actual.append(run.actual.energy_j)
    runs = read_run_logs(tmp_path)
    assert [(r.run, len(r.epochs), r.complete) for r in runs] == [("same", 2, True)] * 2
    assert [r.energy_j for r in runs] == pytest.approx(actual)
    assert _cli.main(["report", str(tmp_path), "--json"]) == 0
    job = json.loads(capsys.readouterr().out)["job"]
    assert job["runs"] == 2 and job["energy_j"] == pytest.approx(sum(actual))
    parts = job["cpu_j"] + job["dram_j"] + job["gpu_j"]
    assert parts == pytest.approx(job["energy_j"], rel=0.01)  # each epoch counted once


@pytest.mark.filterwarnings("ignore:.*neither torch.distributed nor MPI:carbonctx.CarbonctxWarning")
def test_a_job_launched_again_with_its_run_id_is_a_second_job_not_a_lost_one(
    sim: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each rank's log holds both launches; the second launch's figures were left out of the
    # job (each rank's second run taken for a copy of its first).
    for n in (1, 3):
        for rank in (0, 1):
            carbonctx.configure(**sim.settings())
            carbonctx.configure(rank=rank, local_rank=0, world_size=2, node=f"n{rank}", job="j")
            run = carbonctx.epochs(n, run_id="exp", log_dir=tmp_path / f"n{rank}", quiet=True)
            for _ in run:
                time.sleep(0.01)
            _runtime.reset()
    logs = sorted(tmp_path.rglob("exp.jsonl"))
    assert len(logs) == 2  # one per rank
    launches = [read_runs_of_log(p) for p in logs]
    assert [[len(r.epochs) for r in runs] for runs in launches] == [[1, 3], [1, 3]]
    assert _cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    totals = [float(ln.split()[2]) for ln in out.splitlines() if ln.startswith("  job total")]
    want = [launches[0][k].energy_j + launches[1][k].energy_j for k in (0, 1)]
    assert totals == pytest.approx(want, abs=0.01), out


def test_damaged_lines_are_counted_against_the_run_they_fell_in(tmp_path: Path) -> None:
    def start(run: str) -> dict[str, Any]:
        return {"kind": "run-start", "run": run, "name": "epoch", "epochs_planned": 1}

    def epoch(run: str) -> dict[str, Any]:
        return {"kind": "epoch", "run": run, "epoch": 0, "start": 1.0, "end": 2.0, "energy_j": 3.0}

    path = tmp_path / "two.jsonl"
    write(path, start("a"), epoch("a"), start("b"), epoch("b"))
    with path.open("a", encoding="utf-8") as f:
        f.write('{"kind": "epoch", "run": "b", "ep')  # the writer killed mid-line
    a, b = read_runs_of_log(path)
    assert (a.run, a.bad_lines, b.run, b.bad_lines) == ("a", 0, "b", 1)
    assert read_run_log(path) == b


def test_a_rank_whose_records_cannot_be_read_is_not_left_out_without_a_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rank = {"rank": {"rank": 0, "local_rank": 0, "node": "n1", "job": "j"}}
    write(tmp_path / "rank0.jsonl", dict(CONTEXT, **rank), BATCH, LINE)
    newer = dict(CONTEXT, format=3, pid=8, rank={**rank["rank"], "rank": 1})
    write(tmp_path / "rank1.jsonl", newer, dict(BATCH, pid=8), LINE, LINE)
    os.mkfifo(tmp_path / "rank2.jsonl")
    assert _cli.main(["report", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["job"]["energy_j"] == 2.0  # rank 0's alone, and said so:
    assert f"skipped {tmp_path / 'rank1.jsonl'}: 2 lines: a region line in compact format 3" in err
    assert "upgrade carbonctx" in err
    assert f"skipped {tmp_path / 'rank2.jsonl'}: not a regular file (a FIFO)" in err


HUGE = 10**400  # JSON allows it; no float holds it


@pytest.mark.parametrize(
    ("records", "kept"),
    [
        ([CONTEXT, BATCH, dict(LINE, j=["2000000"])], [2]),  # numbers as strings
        ([CONTEXT, BATCH, dict(LINE, t="0")], [2]),
        ([CONTEXT, BATCH, dict(LINE, u=["0.01"])], [2]),
        ([CONTEXT, BATCH, dict(LINE, j=[True])], [2]),
        ([CONTEXT, BATCH, dict(LINE, j=[HUGE])], [2]),  # was an OverflowError out of `report`
        # A damaged context or batch record: the lines after it have no start time or sources
        # to be read with, and are skipped rather than placed at a time made up.
        ([dict(CONTEXT, offset="1000"), BATCH, LINE], []),
        ([dict(CONTEXT, offset=HUGE), BATCH, LINE], []),
        ([CONTEXT, dict(BATCH, t0="1000000000"), LINE], []),
        ([CONTEXT, dict(BATCH, t0=HUGE), LINE], []),
        ([CONTEXT, {"kind": "batch", "pid": 7}, LINE], []),
        # A context's figures are checked once, when it is read: a number in a string among
        # its carbon factors or shares damages it, and a later batch does not bring back the
        # context before it.
        ([dict(CONTEXT, carbon={"pue": "1.2", "intensity_g_per_kwh": 300.0}), BATCH, LINE], []),
        ([dict(CONTEXT, carbon={"pue": 1.2, "intensity_g_per_kwh": HUGE}), BATCH, LINE], []),
        ([dict(CONTEXT, sources=[dict(SOURCE, share_rule="cores", share="1")]), BATCH], []),
        ([CONTEXT, BATCH, dict(CONTEXT, offset="1000"), BATCH, LINE], []),
    ],
)
def test_compact_figures_must_be_numbers_a_float_holds(
    tmp_path: Path,
    records: list[dict[str, Any]],
    kept: list[int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path / "odd.jsonl", *records, dict(LINE, id=2))
    regions, why = reasons(path)
    assert [r["id"] for r in regions] == kept
    assert sum(n for n, _ in why.values()) >= 1
    assert _cli.main(["report", str(path)]) == 0
    assert "unreadable lines skipped" in capsys.readouterr().out


def _rank_dir(tmp_path: Path) -> Path:
    rank = {"rank": {"rank": 0, "local_rank": 0, "node": "n1", "job": "j"}}
    (tmp_path / "node1").mkdir()
    write(tmp_path / "node1" / "rank0.jsonl", dict(CONTEXT, **rank), BATCH, LINE)
    (tmp_path / "node2").mkdir()
    return tmp_path


def test_a_folder_that_vanishes_while_report_walks_the_job_never_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _rank_dir(tmp_path)
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        # The job removes node2 between its parent's listing and its own (a race made
        # deterministic: the walk meets the folder, its listing finds it gone).
        if os.fspath(path).endswith("node2"):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert _cli.main(["report", str(d), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["job"]["energy_j"] == 2.0 and err == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_a_folder_report_cannot_list_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _rank_dir(tmp_path)
    (d / "node2").chmod(0)
    try:
        assert _cli.main(["report", str(d), "--json"]) == 0
    finally:
        (d / "node2").chmod(0o700)
    out, err = capsys.readouterr()
    assert json.loads(out)["job"]["energy_j"] == 2.0
    assert f"skipped {d / 'node2'}: Permission denied" in err


def test_report_says_what_it_read_that_is_neither_region_nor_power(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shed = {"kind": "shed", "pid": 7, "regions": 40, "names": {"step": 40}, "start": 1.0}
    shed.update(end=2.0, shed_total=40)
    future = {"kind": "annotation", "pid": 7, "text": "a newer version's record"}
    path = write(tmp_path / "out.jsonl", CONTEXT, BATCH, LINE, shed, future, future)
    assert _cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 1 regions\n" in out  # neither is an unreadable line
    assert "40 regions are not in the file: its writer fell behind and shed them" in out
    assert "skipped 2 records of kind 'annotation'" in out and "(first: line 5)" in out
    assert "upgrade carbonctx" in out


def test_a_reader_that_goes_away_ends_report_without_a_traceback(tmp_path: Path) -> None:
    # Enough names that the table outgrows a pipe's buffer: the writer meets a closed pipe.
    regions = (
        {"kind": "region", "name": f"name-{i}", "start": 1.0, "end": 2.0, "energy_j": 1.0}
        for i in range(5000)
    )
    path = write(tmp_path / "many.jsonl", *regions)
    with subprocess.Popen(
        [sys.executable, "-m", "carbonctx", "report", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(str(path).encode())  # `| head -1`
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_a_crashs_nul_blocks_cost_no_record_beside_them(tmp_path: Path) -> None:
    good = {"kind": "region", "name": "a", "start": 1.0, "end": 2.0, "energy_j": 1.0}
    line = lambda i: json.dumps(dict(good, id=i)).encode() + b"\n"  # noqa: E731
    path = tmp_path / "crashed.jsonl"
    # A crash left a block unwritten (NULs) and the next run appended after it; a record cut
    # by a crash, NULs, the next run's record on the same line; NULs at the end of the file.
    path.write_bytes(line(1) + b"\0" * 4096 + line(2) + line(3)[:20] + b"\0" * 99 + line(4))
    with path.open("ab") as f:
        f.write(b"\0" * 100)
    regions, why = reasons(path)
    assert [r["id"] for r in regions] == [1, 2, 4]
    assert why == {
        "cut short by a crash (NUL bytes after it)": [1, 3],
        "NUL bytes only (blocks a crash left unwritten)": [1, 4],
    }


@pytest.mark.parametrize("flag", ["--csv", "--trace", "--html"])
def test_report_never_writes_over_the_file_it_reads(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "out.jsonl", CONTEXT, BATCH, LINE)
    before = path.read_bytes()
    os.symlink(path, tmp_path / "same.jsonl")  # the same file by another name
    assert _cli.main(["report", str(path), flag, str(tmp_path / "same.jsonl")]) == 2
    assert "is the file being read: give another path" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_report_dir_never_writes_its_page_over_a_run_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = {"kind": "run-start", "run": "a", "name": "epoch", "epochs_planned": 1}
    epoch = {"kind": "epoch", "run": "a", "epoch": 0, "start": 1.0, "end": 2.0, "energy_j": 3.0}
    log = write(tmp_path / "a.jsonl", start, epoch)
    before = log.read_bytes()
    assert _cli.main(["report", str(tmp_path), "--html", str(log)]) == 2
    assert "is a run log being read" in capsys.readouterr().err
    assert log.read_bytes() == before


def test_a_region_without_an_energy_figure_is_not_read_as_zero_joules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"kind": "region", "name": "a", "start": 1.0, "end": 2.0, "duration_s": 1.0}
    path = write(tmp_path / "failed.jsonl", dict(good, energy_j=4.0), dict(good, energy_j=None))
    assert _cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 regions have no energy figure (their sources failed)" in out
    (row,) = [ln.split() for ln in out.splitlines() if ln.startswith("a ")]
    assert row[1] == "2"  # both regions counted ...
    assert row[2:10] == ["4.00", "J", "4.00", "J", "4.00", "J", "4.00", "J"]  # ... no 0 J mean

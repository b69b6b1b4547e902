"""Files the writer of this version makes, in its several modes, read back by ``report FILE``
and ``read_jsonl_checked`` with nothing skipped and every region counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import carbonctx
from carbonctx import _cli
from carbonctx._measure import process as _runtime
from carbonctx._output.jsonl import read_jsonl_checked
from carbonctx.testing import SimulatedMachine


def _work(n: int, tag: int) -> None:
    @carbonctx.tracked(name="call")
    def call(i: int) -> int:
        return i

    with carbonctx.track("epoch", tags={"run": tag}):
        for i in range(n):
            with carbonctx.track("step", tags={"i": i} if i % 3 == 0 else None):
                call(i)
            with carbonctx.track("empty"):
                pass


def test_every_mode_of_this_writer_reads_back_whole(sim: SimulatedMachine, tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    carbonctx.configure(output=str(path))
    _work(200, 0)
    assert carbonctx.flush()
    # configure() again on the same file, then another runtime after a reset.
    carbonctx.configure(output=str(path), pue=1.3)
    _work(50, 1)
    assert carbonctx.flush()
    pid = os.fork()
    if pid == 0:  # a forked child appending to the same file
        code = 1
        try:
            _work(30, 2)
            code = 0 if carbonctx.flush() else 1
        finally:
            os._exit(code)
    _work(30, 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert carbonctx.flush()
    _runtime.reset()
    carbonctx.configure(**sim.settings())
    carbonctx.configure(output=str(path))
    _work(20, 4)
    assert carbonctx.flush()
    _runtime.reset()

    regions, _power, skipped = read_jsonl_checked(path)
    assert skipped.total == 0, skipped.lines()
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    n_regions = sum(1 for r in lines if r.get("kind") == "region")
    assert len(regions) == n_regions
    assert len(regions) == sum(1 + 3 * n for n in (200, 50, 30, 30, 20))  # epoch, 3 per i


def test_ranks_files_of_this_writer_make_a_job_with_nothing_skipped(
    sim: SimulatedMachine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job"
    for rank in (0, 1):
        (job / f"node{rank}").mkdir(parents=True)
        carbonctx.configure(**sim.settings())
        carbonctx.configure(
            output=str(job / f"node{rank}" / f"rank{rank}.jsonl"),
            rank=rank,
            local_rank=0,
            world_size=2,
            node=f"n{rank}",
            job="j1",
        )
        _work(40, rank)
        assert carbonctx.flush()
        _runtime.reset()
    assert _cli.main(["report", str(job)]) == 0
    out, err = capsys.readouterr()
    assert "skipped" not in err, err
    assert "job j1" in out and "2 ranks" in out, out

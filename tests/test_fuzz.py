"""The fuzzers of issue 10 in the test command, for a bounded number of inputs: a seeded
mutation loop over the committed corpus (``tests/fuzz_corpus``), always; and atheris, coverage
guided, for a bounded number of runs and time where it is installed. See ``fuzz_targets``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fuzz_targets as fz

HERE = Path(__file__).resolve().parent


@pytest.fixture
def jsonl_target() -> Iterator[fz.JsonlTarget]:
    t = fz.JsonlTarget()
    yield t
    t.close()


def test_the_corpus_is_committed() -> None:
    assert len(fz.corpus("jsonl")) >= 4 and len(fz.corpus("settings")) >= 4


@pytest.mark.parametrize("seed", [1, 2])
def test_the_json_lines_reader_takes_any_bytes(jsonl_target: fz.JsonlTarget, seed: int) -> None:
    assert fz.mutate_loop(jsonl_target, fz.corpus("jsonl"), runs=3000, seed=seed) > 3000


@pytest.mark.parametrize("seed", [1, 2])
def test_the_settings_parser_takes_any_values(seed: int) -> None:
    assert fz.mutate_loop(fz.settings_target, fz.corpus("settings"), runs=20000, seed=seed) > 20000


def test_the_targets_catch_what_they_guard(jsonl_target: fz.JsonlTarget) -> None:
    """A target that let a finding through would be no fuzzer: an exception other than the
    one the settings parser may raise is reported, with its input."""

    def broken(data: bytes) -> None:
        if b"\xff" in data:
            raise TypeError("found")

    with pytest.raises(AssertionError, match=r"TypeError: found on input"):
        fz.mutate_loop(broken, [b"\xff"], runs=0)


@pytest.mark.parametrize(("target", "runs"), [("settings", 20000), ("jsonl", 5000)])
def test_atheris_for_a_bounded_time(target: str, runs: int, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is not installed for this Python")
    found = tmp_path / "found"  # new inputs land here; the committed corpus is only read
    found.mkdir()
    r = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_targets.py"),
            target,
            f"-runs={runs}",
            "-max_total_time=30",
            "-max_len=4096",
            "-print_final_stats=0",
            f"-artifact_prefix={tmp_path}/",
            str(found),
            str(fz.CORPUS / target),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*"))
    assert "Done" in r.stderr, r.stderr[-2000:]

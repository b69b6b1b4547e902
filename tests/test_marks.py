"""Reads at a region's mark: a GPU counter that moves more finely than it is polled is read
when a region begins and ends (within a CPU budget), a coarse one never."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from carbonctx import _native
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave
from sim_sampler import package_rows, sampler_for

GPU = "nvml:0"


def gpu_status(s: _native.Sampler) -> dict[str, Any]:
    i = next(k for k, src in enumerate(s.sources) if src["id"] == GPU)
    return dict(s.status()[i])


def regions(s: _native.Sampler) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert s.wait(_native.now_ns(), 10.0), "the sampler did not pass the regions' ends"
    n, _ids, _tags, t0, t1, joules, _unc = s.drain()
    i = next(k for k, src in enumerate(s.sources) if src["id"] == GPU)
    return (
        np.frombuffer(t0, dtype=np.uint64),
        np.frombuffer(t1, dtype=np.uint64),
        np.frombuffer(joules, dtype=np.float64).reshape(n, -1)[:, i],
    )


# A GPU whose power steps between 20 and 400 W every 50 ms; its counter moves every millisecond.
STEPS = GpuSpec(wave=Wave(20.0, 400.0, 0.1))
STEP_NS = 50_000_000


def just_after_a_step(sim: SimulatedMachine) -> None:
    """Sleep until half a millisecond after the GPU's power next steps: an edge there,
    interpolated across a 10-20 ms poll, is off by about a joule."""
    since = (_native.now_ns() - sim.t0_ns) % STEP_NS
    time.sleep((STEP_NS - since + 500_000) * 1e-9)


def test_a_fine_gpu_counter_is_read_at_the_marks(tmp_path: Path, fake_nvml: Path) -> None:
    with SimulatedMachine(
        tmp_path / "hw", dram=None, gpus=[STEPS], gpu_update_s=0.001, nvml_library=fake_nvml
    ) as sim:
        s = sampler_for(sim, cpu_backends=["powercap"])
        try:
            time.sleep(0.4)  # the GPU's cadence is learned
            errors = []
            for _ in range(4):
                before = gpu_status(s)["mark_reads"]
                just_after_a_step(sim)
                rid = s.begin()
                time.sleep(0.43)
                just_after_a_step(sim)  # a step the other way: the edges' errors add up
                s.end(rid)
                t0, t1, j = regions(s)
                # Each edge was read at its mark (or by a poll due at that moment).
                assert gpu_status(s)["mark_reads"] >= before + 1
                truth = sim.gpu_truth_j(0, int(t0[0]), int(t1[0]))
                errors.append(abs(float(j[0]) - truth))
        finally:
            s.stop()
    # About 95 J each. Read at the mark, an edge is off by the counter's millisecond and the
    # wake-up's delay (a fraction of a joule); interpolated across the poll, by about a joule.
    assert sorted(errors)[2] < 0.5, errors


def test_reads_at_marks_stay_within_their_budget(tmp_path: Path, fake_nvml: Path) -> None:
    with SimulatedMachine(
        tmp_path / "hw", dram=None, gpus=1, gpu_update_s=0.001, nvml_library=fake_nvml
    ) as sim:
        s = sampler_for(sim, cpu_backends=["powercap"])
        try:
            time.sleep(0.4)
            start = gpu_status(s)
            w0 = time.monotonic()
            marks = 0
            while time.monotonic() - w0 < 1.0:
                rid = s.begin()
                s.end(rid)
                marks += 2
            wall = time.monotonic() - w0
            end = gpu_status(s)
        finally:
            s.stop()
    made = end["mark_reads"] - start["mark_reads"]
    assert made >= 1
    # Thousands of marks; a cheap counter polled every 20 ms is read at marks at most every
    # 5 ms (and within the CPU budget).
    assert marks > 1000
    assert made <= wall / 0.005 + 2, (made, wall)


@pytest.mark.parametrize("update_s", [0.1, 0.01])
def test_a_counter_not_finer_than_its_poll_is_not_read_at_marks(
    tmp_path: Path, fake_nvml: Path, update_s: float
) -> None:
    # Polled every 20 ms. Moving every 100 ms (an H100's counter), a read at a mark would show
    # nothing new. Moving every 10 ms, the phase lock reads it just after each update and
    # stamps the updates themselves, which a read at the mark (up to 10 ms after the update it
    # shows) would not improve.
    with SimulatedMachine(
        tmp_path / "hw", dram=None, gpus=1, gpu_update_s=update_s, nvml_library=fake_nvml
    ) as sim:
        s = sampler_for(sim, cpu_backends=["powercap"])
        try:
            time.sleep(1.6)  # the cadence is learned
            for _ in range(20):
                rid = s.begin()
                time.sleep(0.02)
                s.end(rid)
            st = gpu_status(s)
        finally:
            s.stop()
    assert st["update_period_s"] == pytest.approx(update_s, rel=0.1)
    assert st["mark_reads"] == 0


def twenty_ms_regions(sim: SimulatedMachine, fast_reads: bool) -> tuple[float, int, int]:
    """60 contiguous 20 ms regions once the package counter's phase is known: the median
    relative error, the package reads made meanwhile, and the reads made at marks."""
    s = sampler_for(sim, cpu_backends=["powercap"], fast_reads=fast_reads)
    try:
        time.sleep(1.5)  # the period is learned closely before reads go sparse
        before = s.status()[0]
        rid = s.begin()
        for _ in range(60):
            time.sleep(0.02)
            s.end(rid)
            rid = s.begin()
        s.end(rid)
        after = s.status()[0]
        assert s.wait(_native.now_ns(), 10.0)
        drained = s.drain()
    finally:
        s.stop()
    err, unc = package_rows(sim, drained)
    # The share of regions whose stated ± does not cover the error: what a loaded machine's
    # late reads must never make dishonest (they may widen the brackets, not misplace them).
    assert float(np.mean(err > unc * 1.001 + 1e-9)) <= 0.05, (err, unc)
    median = float(np.median(err))
    return median, after["reads"] - before["reads"], after["mark_reads"] - before["mark_reads"]


def test_short_regions_are_read_at_their_marks_not_at_every_update(tmp_path: Path) -> None:
    with SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=None) as sim:
        sparse, sparse_reads, at_marks = twenty_ms_regions(sim, fast_reads=False)
        every, every_reads, none = twenty_ms_regions(sim, fast_reads=True)
    # About 1.2 s of regions: every update is about 1200 reads; at the marks (and just after
    # the next update) and every 20 ms, a few hundred.
    assert at_marks >= 30 and none == 0
    assert sparse_reads < every_reads / 2, (sparse_reads, every_reads)
    # The edges stay bracketed by the updates around them: within about an update (5 % of a
    # 20 ms region) at each edge, however late a loaded machine's wake-ups make the reads at
    # the marks (the figures on a quiet machine, 0.1-1 %, are the benches' to measure).
    assert sparse < 0.05 and every < 0.05, (sparse, every)

"""A GPU that reports power only (no energy counter) under a periodic load, through the public
API on the simulated machine: the integral over read times is not biased by the load's period
(a period of 34 ms met the earlier golden-ratio read positions at the same phases, 10-20 % off
over 5 s), the stated uncertainty covers the integration error, and the source says how it is
measured."""

from __future__ import annotations

import time
from pathlib import Path

import carbonctx
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave


def region_error(sim: SimulatedMachine, seconds: float) -> tuple[float, float]:
    """Error of the GPU's energy over one region of ``seconds`` and its stated uncertainty,
    both relative to the true energy."""
    with carbonctx.track("step") as m:
        time.sleep(seconds)
    r = m.result()
    rt = m._rt
    t0, t1 = round((r.start - rt._offset) * 1e9), round((r.end - rt._offset) * 1e9)
    truth = sim.gpu_truth_j(0, t0, t1)
    (gpu,) = [s for s in m.by_source.values() if s.domain == "gpu"]
    assert gpu.joules is not None and gpu.uncertainty_j is not None
    return (gpu.joules - truth) / truth, gpu.uncertainty_j / truth


def test_a_periodic_load_on_a_power_only_gpu_is_measured_without_aliasing(
    tmp_path: Path, fake_nvml: Path
) -> None:
    # 50/250 W switching every 17 ms (a 34 ms period), read as instantaneous power. Generous
    # bounds: the spread here is about 0.3 % (reads every 2 ms while the region is open); a
    # machine too busy to wake the sampler on time reads less often, never with a bias.
    gpu = GpuSpec(wave=Wave(50.0, 250.0, 0.034), energy_counter=False)
    with SimulatedMachine(
        tmp_path / "hw", dram=None, gpus=[gpu], gpu_update_s=0.0, nvml_library=fake_nvml
    ) as sim:
        carbonctx.configure(**sim.settings())
        src = [s for s in carbonctx.devices()["sources"] if s["id"] == "nvml:0"]
        assert src and src[0]["method"] == "integrated-power"
        for err, unc in [region_error(sim, 1.5) for _ in range(2)]:
            assert abs(err) < 0.05, err
            # The stated uncertainty (two standard deviations of the integration error, from
            # the readings) is of the error's size: not many times the spread, and it covers
            # the error with room (three times over is six standard deviations).
            assert 0 < unc < 0.05 and abs(err) <= 3 * unc, (err, unc)

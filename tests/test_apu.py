"""AMD APUs end to end: the real sampler on a simulated machine whose CPU package counter
(RAPL) and AMD GPU sit in one socket. The amdgpu driver's power on an APU is the whole
socket's, CPU cores included (``amdgpu_pm.c``: "power used by the SoC ... On APUs this
includes the CPU"), so it is a ``module`` figure shown beside the package: the region's total is
the package's, never the package plus the socket (the CPU counted twice)."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import carbonctx
from carbonctx._cli.devices import _print_devices
from carbonctx._measure import process
from carbonctx.testing import AmdGpuSpec, SimulatedMachine, Wave

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="needs a C compiler for the stand-ins",
)

PACKAGE_W = 20.0
SOCKET_W = 45.0
BDF = "0000:c4:00.0"


def make_apu(machine: SimulatedMachine, k: int = 0) -> None:
    """Gives the simulated GPU's amdgpu hwmon directory an APU's shape, as ``amdgpu_pm.c`` lays
    it out: the northbridge voltage (``in1``, ``vddnb``), which the driver shows on APUs only,
    beside the GPU's (``in0``, ``vddgfx``), and ``power1_label`` ``PPT``."""
    hw = next(machine.root.glob(f"**/devices/pci0000:00/*/hwmon/hwmon{10 + k}"))
    for name, text in (
        ("in0_label", "vddgfx\n"),
        ("in0_input", "1210\n"),
        ("in1_label", "vddnb\n"),
        ("in1_input", "1190\n"),
        ("power1_label", "PPT\n"),
    ):
        (hw / name).write_text(text)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A Strix Halo-like laptop: a package counter at 20 W, and the APU whose AMD SMI and
    hwmon figures (the socket) read 45 W."""
    gpu = AmdGpuSpec(
        wave=Wave.constant(SOCKET_W), name="AMD Radeon 8060S", hwmon_w=SOCKET_W, bdf=BDF
    )
    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave.constant(PACKAGE_W),
        dram=None,
        amd_gpus=[gpu],
        gpu_update_s=0.001,
    ) as m:
        make_apu(m)
        yield m
    process.reset()


def edges(m: carbonctx.Region) -> tuple[int, int]:
    r = m.result()
    rt = m._rt
    return round((r.start - rt._offset) * 1e9), round((r.end - rt._offset) * 1e9)


def test_the_total_counts_the_cpu_once_and_the_socket_is_shown_beside_it(
    machine: SimulatedMachine,
) -> None:
    carbonctx.configure(**machine.settings(), intervals={"amdsmi": 0.005})
    with carbonctx.track("warm-up"):
        time.sleep(0.2)
    with carbonctx.track("epoch") as m:
        time.sleep(2.0)
    t0, t1 = edges(m)
    apu = m.by_source["amdsmi:0"]
    assert apu.domain == "module", apu
    assert "APU socket power" in apu.label and "vddnb" in apu.label, apu.label
    assert apu.note is not None and "CPU cores" in apu.note and "not in the totals" in apu.note
    socket = machine.amd_gpu_truth_j(0, t0, t1)
    package = machine.truth_j("package", 0, t0, t1)
    assert apu.joules is not None
    assert abs(apu.joules - socket) <= max(1e-3 * socket, apu.uncertainty_j or 0.0), (apu, socket)
    # The totals: the package once; the socket (which holds it) beside, not added; no GPU
    # figure of its own.
    assert m.gpu_j == 0.0
    pkg = m.by_source["powercap:intel-rapl:0"]
    assert pkg.joules is not None
    assert m.cpu_j == pytest.approx(pkg.joules)
    assert m.cpu_j == pytest.approx(package, rel=0.02)
    assert m.energy_j == pytest.approx(m.cpu_j + m.dram_j)
    double_counted = package + socket
    assert m.energy_j < 0.5 * double_counted, (m.energy_j, double_counted)
    assert "amdsmi:0" not in m.missing


def test_devices_says_the_apus_power_holds_the_cpu(machine: SimulatedMachine) -> None:
    carbonctx.configure(**machine.settings())
    info = carbonctx.devices()
    src = next(s for s in info["sources"] if s["id"] == "amdsmi:0")
    assert src["domain"] == "module"
    # The hwmon file of the same APU is its alternative, never a second figure.
    alts = {s["id"]: s["domain"] for s in info["alternatives"]}
    assert alts.get(f"hwmon:amdgpu:{BDF}:power1") == "module", alts
    text = io.StringIO()
    _print_devices(info, text)
    out = text.getvalue()
    assert "AMD APU (amdsmi:0)" in out, out
    assert "never added" in out and "not in gpu_j" in out, out


def test_a_discrete_amd_gpu_is_still_counted_as_a_gpu(tmp_path: Path) -> None:
    gpu = AmdGpuSpec(wave=Wave.constant(150.0), hwmon_w=150.0, bdf="0000:03:00.0")
    with SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(PACKAGE_W), dram=None, amd_gpus=[gpu]
    ) as sim:
        carbonctx.configure(**sim.settings())
        with carbonctx.track("step") as m:
            time.sleep(0.3)
        src = m.by_source["amdsmi:0"]
        assert src.domain == "gpu"
        assert src.joules is not None and src.joules > 0
        assert m.gpu_j == pytest.approx(src.joules)
        assert m.energy_j == pytest.approx(m.cpu_j + m.gpu_j)
        process.reset()


def test_a_rank_owns_its_apu_as_it_owns_a_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two MI300A-like APUs and two local ranks: rank 1 reads its own APU's socket whole (as it
    would its GPU), and none of the other's."""
    gpus = [
        AmdGpuSpec(wave=Wave.constant(400.0), name="AMD Instinct MI300A", unique_id=0xA1),
        AmdGpuSpec(wave=Wave.constant(500.0), name="AMD Instinct MI300A", unique_id=0xB2),
    ]
    for k, v in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "TORCHELASTIC_RUN_ID": "apu",
    }.items():
        monkeypatch.setenv(k, v)
    with SimulatedMachine(tmp_path / "hw", dram=None, amd_gpus=gpus) as sim:
        carbonctx.configure(**sim.settings())
        with carbonctx.track("step") as m:
            time.sleep(0.1)
        amd = {k: s for k, s in m.by_source.items() if k.startswith("amdsmi:")}
        assert list(amd) == ["amdsmi:1"], m.by_source
        mine = amd["amdsmi:1"]
        assert mine.domain == "module" and "MI300A" in mine.label
        assert mine.share == 1.0 and "this rank's GPU" in str(mine.share_rule), mine
        assert carbonctx.devices()["rank"]["amd_gpus"]["indices"] == [1]
        assert m.gpu_j == 0.0
        process.reset()

"""AMD APUs end to end: the real sampler on a simulated machine whose CPU package counter
(RAPL) and AMD GPU sit in one socket. The amdgpu driver's power on an APU is the whole
socket's, CPU cores included (``amdgpu_pm.c``: "power used by the SoC ... On APUs this
includes the CPU"), so it is a ``module`` figure: where the sockets match the CPU packages one
to one, each counts in cpu_j in its package's place (the physical package, its integrated GPU
inside), the package shown beside it; elsewhere the package counts and the socket is shown
beside it with a note. Never the package plus the socket (the CPU counted twice)."""

from __future__ import annotations

import io
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import carbonctx
from carbonctx._cli.devices import _print_devices
from carbonctx._measure import process
from carbonctx._output.jsonl import read_jsonl
from carbonctx._results.counted import APU_COUNTED_NOTE, PACKAGE_REPLACED_NOTE, counted_domain
from carbonctx.integrations._meter import Meter
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


def test_the_socket_counts_in_its_packages_place_and_the_package_is_shown_beside_it(
    machine: SimulatedMachine, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    carbonctx.configure(**machine.settings(), intervals={"amdsmi": 0.005}, output=str(out))
    with carbonctx.track("warm-up"):
        time.sleep(0.2)
    with carbonctx.track("epoch") as m:
        time.sleep(2.0)
    t0, t1 = edges(m)
    apu = m.by_source["amdsmi:0"]
    assert apu.domain == "module", apu
    assert "APU socket power" in apu.label and "vddnb" in apu.label, apu.label
    assert "counts as the CPU package in cpu_j" in apu.label, apu.label
    assert apu.note is not None and apu.note.startswith(APU_COUNTED_NOTE), apu.note
    assert "integrated GPU" in apu.note and "powercap:intel-rapl:0" in apu.note, apu.note
    socket = machine.amd_gpu_truth_j(0, t0, t1)
    package = machine.truth_j("package", 0, t0, t1)
    assert apu.joules is not None
    assert abs(apu.joules - socket) <= max(1e-3 * socket, apu.uncertainty_j or 0.0), (apu, socket)
    # The totals: the socket, once: not the package alone, not the package plus the socket.
    assert m.cpu_j == pytest.approx(apu.joules)
    assert m.energy_j == pytest.approx(m.cpu_j + m.dram_j + m.gpu_j)
    assert m.energy_j == pytest.approx(socket, rel=0.02)
    assert m.energy_j < 0.8 * (package + socket) and m.energy_j > 1.5 * package
    assert m.gpu_j == 0.0  # the integrated GPU is inside the socket
    # The package is shown beside it, with its note.
    pkg = m.by_source["powercap:intel-rapl:0"]
    assert pkg.joules is not None and pkg.joules == pytest.approx(package, rel=0.02)
    assert pkg.note is not None and pkg.note.startswith(PACKAGE_REPLACED_NOTE), pkg.note
    assert "amdsmi:0" not in m.missing
    # The output file counts it alike (its context says which total each source is in).
    assert carbonctx.flush()
    regions, _power, bad = read_jsonl(str(out))
    assert not bad
    rec = next(r for r in regions if r["name"] == "epoch")
    assert rec["energy_j"] == pytest.approx(m.energy_j, rel=1e-4)
    assert rec["cpu_j"] == pytest.approx(m.cpu_j, rel=1e-4)
    # So do the metrics exporters' devices: the socket is the cpu device, the package none.
    meter = Meter()
    meter._add_devices(m.result())
    kinds = {dev: kind for (_, kind, dev) in meter.devices}
    assert kinds == {"amdsmi:0": "cpu"}, kinds


def test_the_amdgpu_hwmon_socket_counts_alike_without_amd_smi(
    machine: SimulatedMachine, tmp_path: Path
) -> None:
    """Where AMD SMI is absent the driver's hwmon PPT (power, integrated) is the socket."""
    carbonctx.configure(**{**machine.settings(), "amdsmi_library": str(tmp_path / "absent.so")})
    with carbonctx.track("warm-up"):
        time.sleep(0.2)
    with carbonctx.track("epoch") as m:
        time.sleep(1.0)
    sid = f"hwmon:amdgpu:{BDF}:power1"
    apu = m.by_source[sid]
    assert apu.domain == "module" and apu.note is not None, apu
    assert apu.note.startswith(APU_COUNTED_NOTE), apu.note
    assert apu.joules is not None and apu.joules == pytest.approx(SOCKET_W * m.duration_s, rel=0.05)
    assert m.cpu_j == pytest.approx(apu.joules) and m.energy_j == pytest.approx(apu.joules)
    assert not any(k.startswith("amdsmi:") for k in m.by_source)


def test_devices_says_the_socket_counts_in_the_packages_place(machine: SimulatedMachine) -> None:
    carbonctx.configure(**machine.settings())
    info = carbonctx.devices()
    src = next(s for s in info["sources"] if s["id"] == "amdsmi:0")
    assert src["domain"] == "module" and src["counted"] == "package", src
    pkg = next(s for s in info["sources"] if s["id"] == "powercap:intel-rapl:0")
    assert pkg["counted"] is None, pkg
    # The hwmon file of the same APU is its alternative, never a second figure.
    alts = {s["id"]: s for s in info["alternatives"]}
    alt = alts[f"hwmon:amdgpu:{BDF}:power1"]
    assert alt["domain"] == "module" and "counts as the CPU package" in alt["label"], alt
    text = io.StringIO()
    _print_devices(info, text)
    out = text.getvalue()
    assert "AMD APU (amdsmi:0)" in out, out
    assert "counts in cpu_j in place of the CPU package" in out, out
    assert "gpu_j holds discrete GPUs only" in out, out


def test_a_socket_that_matches_no_package_one_to_one_is_shown_beside(tmp_path: Path) -> None:
    """One APU, two CPU packages: which package it is cannot be told, so nothing changes."""
    gpu = AmdGpuSpec(wave=Wave.constant(SOCKET_W), name="AMD Radeon 8060S", hwmon_w=SOCKET_W)
    with SimulatedMachine(
        tmp_path / "hw", packages=2, package=Wave.constant(PACKAGE_W), dram=None, amd_gpus=[gpu]
    ) as sim:
        make_apu(sim)
        carbonctx.configure(**sim.settings())
        with carbonctx.track("step") as m:
            time.sleep(0.3)
        apu = m.by_source["amdsmi:0"]
        assert apu.note is not None and "not in the totals" in apu.note, apu.note
        assert "1 APU socket(s) and 2 CPU package(s)" in apu.note, apu.note
        pkgs = [s for s in m.by_source.values() if s.domain == "package"]
        assert len(pkgs) == 2
        assert m.cpu_j == pytest.approx(sum(s.joules or 0.0 for s in pkgs))
        assert m.energy_j == pytest.approx(m.cpu_j)
        text = io.StringIO()
        _print_devices(carbonctx.devices(), text)
        assert "never added" in text.getvalue() and "why: this process measures" in text.getvalue()
        process.reset()


def test_a_socket_reading_far_below_its_package_is_not_counted(tmp_path: Path) -> None:
    """A broken socket power reading (one system reads 12 mW): the package is kept, once."""
    gpu = AmdGpuSpec(wave=Wave.constant(0.012), name="AMD Radeon 890M", hwmon_w=0.012)
    with SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(PACKAGE_W), dram=None, amd_gpus=[gpu]
    ) as sim:
        make_apu(sim)
        carbonctx.configure(**sim.settings(), intervals={"amdsmi": 0.005})
        broken = "broken socket power reading"
        with pytest.warns(carbonctx.CarbonctxWarning, match=broken) as caught:
            with carbonctx.track("first") as m0:
                time.sleep(0.3)
            with carbonctx.track("second") as m:
                time.sleep(0.3)
            carbonctx.flush()
            with carbonctx.track("third"):
                pass
        # Decided on the first regions: none counted the socket before.
        assert not any("resolved before" in str(w.message) for w in caught)
        for r in (m0, m):
            apu = r.by_source["amdsmi:0"]
            assert apu.note is not None and "broken socket power reading" in apu.note, apu.note
            pkg = r.by_source["powercap:intel-rapl:0"]
            assert pkg.joules is not None and r.cpu_j == pytest.approx(pkg.joules)
            assert r.energy_j == pytest.approx(pkg.joules)
        assert carbonctx.devices()["sources"][0]["id"]  # still describes
        process.reset()


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


RANK_ENV = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "apu"}


def mi300a_ranks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, watts: tuple[float, float]
) -> Iterator[tuple[int, SimulatedMachine]]:
    """An MI300A-like node (two APUs whose sockets draw ``watts``, two 60 W CPU packages) and
    two local ranks of one job: carbonctx configured as each rank in turn, reset after it."""
    gpus = [
        AmdGpuSpec(wave=Wave.constant(watts[0]), name="AMD Instinct MI300A", unique_id=0xA1),
        AmdGpuSpec(wave=Wave.constant(watts[1]), name="AMD Instinct MI300A", unique_id=0xB2),
    ]
    for k, v in RANK_ENV.items():
        monkeypatch.setenv(k, v)
    with SimulatedMachine(
        tmp_path / "hw", packages=2, package=Wave.constant(60.0), dram=None, amd_gpus=gpus
    ) as sim:
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("LOCAL_RANK", str(rank))
            carbonctx.configure(**sim.settings(), intervals={"amdsmi": 0.005})
            yield rank, sim
            process.reset()


def test_each_rank_counts_its_own_socket_whole_in_place_of_the_packages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An MI300A-like node: two APUs, two CPU packages, two local ranks. Each rank reads its own
    APU's socket whole (as it would its GPU), and none of the other's; it counts it in cpu_j, the
    node's packages left out of its totals (their shares shown beside): the ranks add up to the
    node's sockets once."""
    watts = (400.0, 500.0)
    power = []
    for rank, sim in mi300a_ranks(monkeypatch, tmp_path, watts):
        with carbonctx.track("warm-up"):
            time.sleep(0.1)
        with carbonctx.track("step") as m:
            time.sleep(0.5)
        t0, t1 = edges(m)
        amd = {k: s for k, s in m.by_source.items() if k.startswith("amdsmi:")}
        assert list(amd) == [f"amdsmi:{rank}"], m.by_source
        mine = amd[f"amdsmi:{rank}"]
        assert mine.domain == "module" and "MI300A" in mine.label
        assert mine.share == 1.0 and "this rank's GPU" in str(mine.share_rule), mine
        assert mine.note is not None and mine.note.startswith(APU_COUNTED_NOTE), mine.note
        assert carbonctx.devices()["rank"]["amd_gpus"]["indices"] == [rank]
        truth = sim.amd_gpu_truth_j(rank, t0, t1)
        assert mine.joules == pytest.approx(truth, rel=0.01)
        assert m.cpu_j == pytest.approx(mine.joules)
        assert m.energy_j == pytest.approx(m.cpu_j) and m.gpu_j == 0.0
        pkgs = [s for s in m.by_source.values() if s.domain == "package"]
        assert len(pkgs) == 2
        for p in pkgs:
            assert p.share == 0.5 and p.joules is not None and p.joules > 0, p
            assert p.note is not None and p.note.startswith(PACKAGE_REPLACED_NOTE), p.note
        power.append(m.energy_j / m.duration_s)
    # Each socket once, no package on top: 400 W + 500 W (not + 2 x 60 W).
    assert sum(power) == pytest.approx(sum(watts), rel=0.02), power


def test_a_rank_without_a_socket_per_package_keeps_the_package_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two APUs but one package counter listed, two ranks: the rule does not hold, so each rank
    counts its share of the package, the socket beside it with a note."""
    gpus = [
        AmdGpuSpec(wave=Wave.constant(400.0), name="AMD Instinct MI300A", unique_id=0xA1),
        AmdGpuSpec(wave=Wave.constant(500.0), name="AMD Instinct MI300A", unique_id=0xB2),
    ]
    for k, v in {**RANK_ENV, "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    with SimulatedMachine(tmp_path / "hw", dram=None, amd_gpus=gpus) as sim:
        carbonctx.configure(**sim.settings())
        with carbonctx.track("step") as m:
            time.sleep(0.1)
        mine = m.by_source["amdsmi:1"]
        assert mine.note is not None and "not counted in its package's place" in mine.note
        assert "2 APU socket(s), 1 CPU package(s)" in mine.note, mine.note
        pkg = m.by_source["powercap:intel-rapl:0"]
        assert pkg.share == 0.5 and m.cpu_j == pytest.approx(pkg.joules or 0.0)
        assert m.gpu_j == 0.0
        process.reset()


def test_regions_resolved_before_the_decision_keep_the_rule_they_were_counted_by(
    tmp_path: Path,
) -> None:
    """The package unreadable over the first region: nothing to compare, so that region counts
    the socket. Later regions find the socket broken, and the package counts from then on. The
    first region's result, read only afterwards, still says what its totals counted (the
    socket; the package beside it, so not missing), and a warning says the choice changed."""
    gpu = AmdGpuSpec(wave=Wave.constant(0.012), name="AMD Radeon 890M", hwmon_w=0.012)
    with SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(PACKAGE_W), dram=None, amd_gpus=[gpu]
    ) as sim:
        make_apu(sim)
        carbonctx.configure(**sim.settings(), intervals={"amdsmi": 0.005})
        carbonctx.devices()  # the sampler runs, with the package counter
        sim.fail_reads("package", 0)
        with carbonctx.track("first") as m0:
            time.sleep(0.3)
        carbonctx.flush()  # resolved, not read
        sim.fail_reads("package", 0, fail=False)
        time.sleep(0.6)
        with pytest.warns(carbonctx.CarbonctxWarning) as caught:
            for name in ("second", "third"):
                with carbonctx.track(name) as m:
                    time.sleep(0.3)
                carbonctx.flush()
            with carbonctx.track("fourth"):
                pass
        said = " ".join(str(w.message) for w in caught)
        assert "broken socket power reading" in said and "resolved before" in said, said
        r = m.result()
        assert "broken socket power reading" in str(r.by_source["amdsmi:0"].note)
        pkg = r.by_source["powercap:intel-rapl:0"]
        assert pkg.joules is not None and r.cpu_j == pytest.approx(pkg.joules)
        r0 = m0.result()
        apu0 = r0.by_source["amdsmi:0"]
        assert r0.by_source["powercap:intel-rapl:0"].joules is None
        assert apu0.joules is not None and r0.cpu_j == pytest.approx(apu0.joules)
        assert str(apu0.note).startswith(APU_COUNTED_NOTE), apu0.note
        assert r0.missing == (), r0.missing  # the package was not counted then
        # The recent window reads alike.
        first = next(x for x in carbonctx.recent() if x.name == "first")
        assert str(first.by_source["amdsmi:0"].note).startswith(APU_COUNTED_NOTE)
        process.reset()


def test_a_rank_whose_socket_reads_broken_counts_its_own_package_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two MI300A-like APUs, two local ranks; rank 1's socket reads far too low. Rank 0 counts
    its socket whole (both packages out of its totals); rank 1 must then count the package of
    its own socket, whole, and not half of each package again: half of rank 0's package, inside
    rank 0's socket, would count twice, and half of its own be lost."""
    for rank, _sim in mi300a_ranks(monkeypatch, tmp_path, (400.0, 0.012)):
        if rank == 1:
            with pytest.warns(carbonctx.CarbonctxWarning, match="its own sockets' packages"):
                with carbonctx.track("warm-up"):
                    time.sleep(0.1)
                carbonctx.flush()
                with carbonctx.track("step") as m:
                    time.sleep(0.3)
        else:
            with carbonctx.track("warm-up"):
                time.sleep(0.1)
            with carbonctx.track("step") as m:
                time.sleep(0.3)
        r = m.result()
        mine = r.by_source[f"amdsmi:{rank}"]
        own = r.by_source[f"powercap:intel-rapl:{rank}"]
        other = r.by_source[f"powercap:intel-rapl:{1 - rank}"]
        assert other.note is not None and other.note.startswith(PACKAGE_REPLACED_NOTE)
        assert other.joules is not None and other.joules > 0
        assert r.energy_j == pytest.approx(r.cpu_j + r.dram_j + r.gpu_j)
        meter = Meter()
        meter._add_devices(r)
        kinds = {dev: kind for (_, kind, dev) in meter.devices}
        if rank == 0:
            assert str(mine.note).startswith(APU_COUNTED_NOTE), mine.note
            assert r.cpu_j == pytest.approx(mine.joules)
            assert kinds == {"amdsmi:0": "cpu"}, kinds
        else:
            assert "broken socket power reading" in str(mine.note), mine.note
            assert own.share == 1.0 and own.joules is not None, own
            assert own.note is not None and "counted whole" in own.note, own.note
            assert r.cpu_j == pytest.approx(own.joules)
            assert r.cpu_j == pytest.approx(60.0 * r.duration_s, rel=0.05)
            assert kinds == {"powercap:intel-rapl:1": "cpu"}, kinds


def test_an_estimate_counted_again_in_a_broken_sockets_place_says_so() -> None:
    """In a virtual machine the CPU package is an estimate: a socket counted in its place makes
    no result an estimate; found broken, the estimate counts again and the warning says so."""
    import numpy as np

    from carbonctx._measure.sources import SourceColumns

    est = {"id": "estimate:cpu", "label": "CPU time x 65 W", "backend": "estimate"}
    srcs = [
        {**est, "domain": "package", "method": "estimate", "index": 0},
        {"id": "amdsmi:0", "label": "APU", "backend": "amdsmi", "domain": "module",
         "method": "counter", "index": 0},
    ]  # fmt: skip
    cols = SourceColumns(srcs)
    assert cols.count_as == [None, "package"] and not cols.estimated and cols.pending
    said = cols.settle(np.array([[2.0, 0.01]]), np.array([1.0]))
    assert said is not None and "no energy counter for the CPU" in said, said
    assert cols.count_as == ["package", None] and cols.estimated == {0}
    # A plausible socket keeps the choice, and says nothing.
    cols = SourceColumns(srcs)
    assert cols.settle(np.array([[2.0, 0.5]]), np.array([1.0])) is None and cols.count_as == [
        None,
        "package",
    ]


def test_a_rank_that_does_not_know_its_nodes_ranks_keeps_the_package_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the node's rank count the rule cannot be checked: the socket is shown beside
    the package, and the note names the setting that tells it."""
    gpus = [
        AmdGpuSpec(wave=Wave.constant(400.0), name="AMD Instinct MI300A", unique_id=0xA1),
        AmdGpuSpec(wave=Wave.constant(500.0), name="AMD Instinct MI300A", unique_id=0xB2),
    ]
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with SimulatedMachine(tmp_path / "hw", packages=2, dram=None, amd_gpus=gpus) as sim:
        carbonctx.configure(**sim.settings())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package not split: said elsewhere
            with carbonctx.track("step") as m:
                time.sleep(0.1)
            r = m.result()
        apus = [s for k, s in r.by_source.items() if k.startswith("amdsmi:")]
        assert apus, r.by_source
        for s in apus:
            assert "not counted in its package's place" in str(s.note), s.note
            assert "local_world_size" in str(s.note), s.note
        pkgs = [s.joules or 0.0 for s in r.by_source.values() if s.domain == "package"]
        assert r.cpu_j == pytest.approx(sum(pkgs)) and r.gpu_j == 0.0
        process.reset()


def test_a_socket_without_figures_while_its_package_reads_gives_the_package_back(
    machine: SimulatedMachine, tmp_path: Path
) -> None:
    """The driver's socket power unreadable from the start (amdgpu's hwmon file, AMD SMI
    absent): the socket cannot be checked, and a run must not lose its CPU figure for ever.
    After a second of regions the package read and the socket did not, the package counts; the
    regions before say the socket was missing."""
    out = tmp_path / "out.jsonl"
    absent = str(tmp_path / "absent.so")
    carbonctx.configure(**{**machine.settings(), "amdsmi_library": absent}, output=str(out))
    sid = f"hwmon:amdgpu:{BDF}:power1"
    assert any(s["id"] == sid for s in carbonctx.devices()["sources"])
    hw = next(machine.root.glob("**/devices/pci0000:00/*/hwmon/hwmon10"))
    (hw / "power1_average").write_text("garbage\n")
    with pytest.warns(carbonctx.CarbonctxWarning) as caught:
        results = []
        for _ in range(4):
            with carbonctx.track("r") as m:
                time.sleep(0.45)
            carbonctx.flush()
            results.append(m)
        with carbonctx.track("last") as m:
            time.sleep(0.2)
    said = " ".join(str(w.message) for w in caught)
    assert "failing socket power reading" in said and "resolved before" in said, said
    r = m.result()
    pkg = r.by_source["powercap:intel-rapl:0"]
    assert pkg.joules is not None and r.cpu_j == pytest.approx(pkg.joules) and r.cpu_j > 0
    assert r.missing == (), r.missing
    assert r.cpu_j == pytest.approx(PACKAGE_W * r.duration_s, rel=0.05)
    first = results[0].result()
    assert first.cpu_j == 0.0 and first.missing == (sid,), first  # as counted then
    # Its entry, without a figure, still says which total it counted in; so does the file's.
    assert counted_domain(first.by_source[sid]) == "package", first.by_source[sid]
    assert counted_domain(first.by_source["powercap:intel-rapl:0"]) is None
    assert carbonctx.flush()
    regions, _power, bad = read_jsonl(str(out))
    assert not bad
    recs = {x["name"]: x for x in regions}
    full, compact = [x for x in regions if x["name"] == "r"][:2]  # the second: compact
    for x in (full, compact):
        assert x["cpu_j"] == 0.0 and x["missing"] == [sid], x
        assert counted_domain(x["by_source"][sid]) == "package", x["by_source"][sid]
    assert recs["last"]["cpu_j"] == pytest.approx(r.cpu_j, rel=1e-4)
    assert recs["last"]["energy_j"] == pytest.approx(recs["last"]["cpu_j"])
    process.reset()

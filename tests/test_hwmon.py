"""hwmon sources (Intel GPUs, ACPI power meters, Grace meters, Jetson rails) read by the real
native sampler from a fake sysfs tree laid out as the kernel makes it."""

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

XE = "pci0000:00/0000:00:01.0/0000:03:00.0"
#: Counter files are rewritten in place at this width (no truncation a read could catch).
WIDTH = 16


def _chip(
    sys_root: Path, device: str, n: int, files: dict[str, str], on_device: bool = False
) -> Path:
    """``devices/<device>/hwmon/hwmon<n>``, its class link and its ``device`` link; ``files`` go
    into the hwmon directory, or onto the device as the old hwmon interface puts them."""
    dev = sys_root / "devices" / device
    hw = dev / "hwmon" / f"hwmon{n}"
    hw.mkdir(parents=True)
    cls = sys_root / "class" / "hwmon"
    cls.mkdir(parents=True, exist_ok=True)
    (cls / f"hwmon{n}").symlink_to(f"../../devices/{device}/hwmon/hwmon{n}")
    (hw / "device").symlink_to(f"../../../{Path(device).name}")
    for name, text in files.items():
        ((dev if on_device else hw) / name).write_text(text)
    return hw


def _counter(path: Path, uj: int) -> None:
    """Rewrite a counter in place so that a concurrent read sees the old value, the new one or
    text that does not parse (and reads again), never a mix of both numbers' digits: the
    newline becomes ``x``, the digits are written, the newline comes back (one byte each)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"x", WIDTH)
        os.pwrite(fd, f"{uj:0{WIDTH}d}".encode(), 0)
        os.pwrite(fd, b"\n", WIDTH)
    finally:
        os.close(fd)


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    """A Grace Hopper-like node: module, Grace CPU and rail meters on socket 0, the node's
    meter, a Jetson-style INA3221, and an Intel GPU whose counter the test moves."""
    sys_root = tmp_path / "sys"
    meters = [
        ("Module Power Socket 0", 300_000_000),
        ("Grace Power Socket 0", 100_000_000),
        ("CPU Power Socket 0", 70_000_000),
        ("", 500_000_000),
    ]
    for k, (oem, uw) in enumerate(meters):
        files = {
            "name": "power_meter\n",
            "power1_average": f"{uw}\n",
            "power1_average_interval": "50\n",
            "power1_oem_info": f"{oem}\n",
        }
        _chip(sys_root, f"LNXSYSTM:00/LNXSYBUS:00/ACPI000D:0{k}", k, files, on_device=True)
    _chip(
        sys_root,
        "platform/bus@0/c240000.i2c/i2c-1/1-0040",
        5,
        {
            "name": "ina3221\n",
            "in1_label": "VDD_IN\n",
            "in1_input": "5000\n",
            "curr1_input": "2000\n",
            "in2_label": "VDD_CPU_GPU_CV\n",
            "in2_input": "5000\n",
            "curr2_input": "400\n",
        },
    )
    hw = _chip(
        sys_root,
        XE,
        6,
        {"name": "xe\n", "energy1_label": "card\n", "energy2_label": "pkg\n"},
    )
    for f in ("energy1_input", "energy2_input"):
        (hw / f).write_text("0" * WIDTH + "\n")
    _counter(hw / "energy1_input", 1_000_000)
    carbonctx.configure(
        sys_root=str(sys_root),
        dev_root=str(tmp_path / "dev"),
        proc_root=str(tmp_path / "proc"),
        nvml_library=str(tmp_path / "none.so"),
        estimate="never",
    )
    return hw


def _status(source_id: str) -> dict[str, Any]:
    """The sampler's status of one source (its cumulative joules among them)."""
    src = next(s for s in carbonctx.devices()["sources"] if s["id"] == source_id)
    return dict(src["status"])


GRACE_MODULE = "hwmon:power_meter:ACPI000D:00:power1"
GRACE_CPU = "hwmon:power_meter:ACPI000D:01:power1"
GRACE_RAIL = "hwmon:power_meter:ACPI000D:02:power1"
NODE = "hwmon:power_meter:ACPI000D:03:power1"
VDD_IN = "hwmon:ina3221:1-0040:in1"
RAIL = "hwmon:ina3221:1-0040:in2"
CARD = "hwmon:xe:0000:03:00.0:energy1"


def test_hwmon_sources_in_a_measurement(machine: Path) -> None:
    with carbonctx.track("warm-up"):
        time.sleep(0.2)
    with carbonctx.track("work") as m:
        time.sleep(0.5)
        _counter(machine / "energy1_input", 6_000_000)  # 5 J on the GPU card
        time.sleep(0.5)
    domains = {k: s.domain for k, s in m.by_source.items()}
    assert domains == {
        GRACE_MODULE: "module",
        GRACE_CPU: "package",
        GRACE_RAIL: "core",
        NODE: "node",
        VDD_IN: "module",
        RAIL: "rail",
        CARD: "gpu",
    }
    assert all(s.backend == "hwmon" for s in m.by_source.values())
    assert m.by_source[CARD].method == "counter"
    assert m.by_source[NODE].method == "integrated-power"
    assert "socket 0" in m.by_source[GRACE_MODULE].label
    assert m.by_source[RAIL].label == "rail VDD_CPU_GPU_CV"
    d = m.duration_s
    # Constant power integrates to power × duration; the counter's step is exact.
    for sid, watts in ((GRACE_MODULE, 300.0), (NODE, 500.0), (VDD_IN, 10.0), (RAIL, 2.0)):
        joules = m.by_source[sid].joules
        assert joules == pytest.approx(watts * d, rel=0.01), sid
    # A counter that steps once is placed within its bracket (the step is known only to lie
    # between two reads; when the region's start was settled before it, the figure is exact).
    assert abs(m.gpu_j - 5.0) <= m.by_source[CARD].uncertainty_j + 1e-6
    assert _status(CARD)["joules"] == pytest.approx(5.0, abs=1e-6)
    assert m.cpu_j == pytest.approx(100.0 * d, rel=0.01)
    # Module, rail and node figures (and the core rail) stay out of the totals.
    assert m.energy_j == pytest.approx(m.cpu_j + m.dram_j + m.gpu_j)
    assert m.energy_j == pytest.approx(100.0 * d + m.gpu_j, rel=0.01)
    assert not m.estimated and m.missing == ()


def test_devices_lists_hwmon_sources_and_alternatives(machine: Path) -> None:
    info = carbonctx.devices()
    by_id = {s["id"]: s for s in info["sources"]}
    assert by_id[VDD_IN]["domain"] == "module" and by_id[VDD_IN]["label"] == "module input VDD_IN"
    assert by_id[NODE]["method"] == "integrated-power"
    assert by_id[CARD]["domain"] == "gpu"
    # The GPU package lies inside the card: the same GPU, listed but not read.
    assert "hwmon:xe:0000:03:00.0:energy2" in {a["id"] for a in info["alternatives"]}


def test_devices_command_shows_them_beside_the_totals(machine: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CARBONCTX_SYSFS_ROOT": str(tmp_path / "sys"),
        "CARBONCTX_DEV_ROOT": str(tmp_path / "dev"),
        "CARBONCTX_PROC_ROOT": str(tmp_path / "proc"),
        "CARBONCTX_NVML_LIBRARY": str(tmp_path / "none.so"),
    }
    run = [sys.executable, "-m", "carbonctx", "devices"]
    r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(NODE))
    assert "node" in line and "integrated-power" in line and "[ok]" in line
    assert "never added to totals" in r.stdout
    r = subprocess.run(
        [*run, "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    ids = {s["id"] for s in json.loads(r.stdout)["sources"]}
    assert {GRACE_MODULE, GRACE_CPU, NODE, VDD_IN, RAIL, CARD} <= ids


def test_amd_energy_counter_across_its_wrap(tmp_path: Path) -> None:
    """An amd_energy socket counter (ESU 16: it wraps at 65 536 000 000 µJ) is the package; a
    wrap within a region counts on."""
    sys_root = tmp_path / "sys"
    hw = _chip(
        sys_root,
        "platform/amd_energy.0",
        0,
        {"name": "amd_energy\n", "energy1_label": "Ecore000\n", "energy2_label": "Esocket0\n"},
    )
    for f in ("energy1_input", "energy2_input"):
        (hw / f).write_text("0" * WIDTH + "\n")
    _counter(hw / "energy2_input", 65_535_500_000)
    carbonctx.configure(
        sys_root=str(sys_root),
        dev_root=str(tmp_path / "dev"),
        proc_root=str(tmp_path / "proc"),
        nvml_library=str(tmp_path / "none.so"),
        estimate="never",
    )
    with carbonctx.track("warm-up"):
        time.sleep(0.2)
    with carbonctx.track("work") as m:
        time.sleep(0.3)
        _counter(hw / "energy2_input", 500_000)  # 0.5 J to the wrap, 0.5 J after it
        _counter(hw / "energy1_input", 250_000)
        time.sleep(0.5)
    sock = "hwmon:amd_energy:amd_energy.0:Esocket0"
    cores = "hwmon:amd_energy:amd_energy.0:cores-package0"
    assert m.by_source[sock].domain == "package"
    assert m.by_source[cores].domain == "core"
    # The step is placed within its bracket; the source counted exactly what the counter moved
    # across its wrap (a reset would count nothing, a wrong range kilojoules).
    assert abs(m.cpu_j - 1.0) <= m.by_source[sock].uncertainty_j + 1e-6
    status = _status(sock)
    assert status["joules"] == pytest.approx(1.0, abs=1e-6)
    assert status["resets"] == 0 and not status["failed"]
    assert _status(cores)["joules"] == pytest.approx(0.25, abs=1e-6)
    # The cores lie inside the package: not added.
    assert m.energy_j == pytest.approx(m.cpu_j)


def test_gpu_off_covers_intel_gpus_and_hwmon_turns_off(machine: Path) -> None:
    """``gpu=False`` turns off every vendor's GPUs, the Intel GPUs read through hwmon too; the
    other hwmon meters stay. ``hwmon=False`` (``CARBONCTX_HWMON``) turns the backend off."""
    carbonctx.configure(gpu=False)
    ids = {s["id"] for s in carbonctx.devices()["sources"]}
    assert CARD not in ids
    assert {NODE, GRACE_MODULE, VDD_IN} <= ids
    with carbonctx.track("work") as m:
        time.sleep(0.1)
    assert CARD not in m.by_source and m.gpu_j == 0.0
    carbonctx.configure(gpu=True, hwmon=False)
    assert not [s for s in carbonctx.devices()["sources"] if s["backend"] == "hwmon"]
    carbonctx.configure(hwmon=True)
    assert CARD in {s["id"] for s in carbonctx.devices()["sources"]}
    from carbonctx import _config

    assert _config.from_env({"CARBONCTX_HWMON": "off"}) == {"hwmon": False}
    with pytest.raises(carbonctx.ConfigurationError, match="CARBONCTX_HWMON"):
        _config.from_env({"CARBONCTX_HWMON": "maybe"})
    with pytest.raises(carbonctx.ConfigurationError, match="hwmon="):
        carbonctx.configure(hwmon="yes")  # type: ignore[arg-type]


def test_a_meter_whose_firmware_says_unknown_is_explained_not_measured(tmp_path: Path) -> None:
    """An ACPI power meter whose ``_PMM`` answers ACPI's all-ones "unknown": kernels before the
    driver checked for it print 4294967295000 µW. That is no reading (never 4.3 MW in the
    node's power): the meter is listed as unavailable with why and what to do, and a meter
    beside it that measures is read."""
    sys_root = tmp_path / "sys"
    acpi = "LNXSYSTM:00/LNXSYBUS:00"
    unknown = {"name": "power_meter\n", "power1_average": "4294967295000\n"}
    _chip(sys_root, f"{acpi}/ACPI000D:00", 0, unknown, on_device=True)
    known = {"name": "power_meter\n", "power1_average": "420000000\n"}
    _chip(sys_root, f"{acpi}/ACPI000D:01", 1, {**known, "power1_average_interval": "50\n"})
    carbonctx.configure(
        sys_root=str(sys_root),
        dev_root=str(tmp_path / "dev"),
        proc_root=str(tmp_path / "proc"),
        nvml_library=str(tmp_path / "none.so"),
        estimate="never",
    )
    info = carbonctx.devices()
    ids = {s["id"] for s in info["sources"]}
    assert "hwmon:power_meter:ACPI000D:01:power1" in ids
    assert "hwmon:power_meter:ACPI000D:00:power1" not in ids
    entry = next(u for u in info["unavailable"] if u["what"].endswith("device/power1_average"))
    assert "unknown" in entry["reason"] and "no power reading now" in entry["hint"]


def test_an_amd_gpu_asleep_at_discovery_is_measured_as_asleep_until_it_wakes(
    tmp_path: Path,
) -> None:
    """A discrete AMD GPU runtime-suspended when measuring starts (its PCI device's
    ``power/runtime_status`` says ``suspended``, as ``Documentation/ABI/testing/
    sysfs-devices-power`` describes it; ``amdgpu_pm.c`` then refuses hwmon reads with
    ``EPERM`` on recent kernels and wakes the GPU to answer on older ones). Its power file is
    never read while it sleeps (here it would fail: a directory in its place). It is listed
    as measured, asleep, with how to keep it awake; a region while it sleeps gets 0 J from
    it, within ± at least the 3 W a sleeping card may draw times the region's length, and once
    it wakes its power counts."""
    sys_root = tmp_path / "sys"
    bdf = "0000:0b:00.0"
    hw = _chip(
        sys_root,
        f"pci0000:00/0000:00:01.1/{bdf}",
        2,
        {"name": "amdgpu\n", "power1_label": "PPT\n"},
    )
    (hw / "power1_input").mkdir()
    power = hw / "device" / "power"
    power.mkdir()
    (power / "runtime_status").write_text("suspended\n")
    (power / "control").write_text("auto\n")
    carbonctx.configure(
        sys_root=str(sys_root),
        dev_root=str(tmp_path / "dev"),
        proc_root=str(tmp_path / "proc"),
        nvml_library=str(tmp_path / "none.so"),
        amdsmi_library=str(tmp_path / "absent.so"),
        estimate="never",
    )
    gpu = f"hwmon:amdgpu:{bdf}:power1"
    info = carbonctx.devices()
    (src,) = [s for s in info["sources"] if s["id"] == gpu]
    assert src["domain"] == "gpu" and src["method"] == "integrated-power"
    assert "asleep at discovery" in src["label"], src["label"]
    assert f"echo on > {sys_root}/bus/pci/devices/{bdf}/power/control" in src["label"]
    with carbonctx.track("asleep") as m:
        time.sleep(0.3)
    assert m.by_source[gpu].joules == 0.0
    assert m.gpu_j == 0.0
    u = m.by_source[gpu].uncertainty_j
    assert u is not None and u >= 3.0 * m.duration_s * (1 - 1e-9), (u, m.duration_s)
    assert m.uncertainty_j is not None and m.uncertainty_j >= u
    assert not _status(gpu)["failed"]
    # `carbonctx devices` says so too.
    r = subprocess.run(
        [sys.executable, "-m", "carbonctx", "devices"],
        env={
            **os.environ,
            "CARBONCTX_SYSFS_ROOT": str(sys_root),
            "CARBONCTX_DEV_ROOT": str(tmp_path / "dev"),
            "CARBONCTX_PROC_ROOT": str(tmp_path / "proc"),
            "CARBONCTX_NVML_LIBRARY": str(tmp_path / "none.so"),
            "CARBONCTX_AMDSMI_LIBRARY": str(tmp_path / "absent.so"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(gpu))
    assert "[ok]" in line and "asleep at discovery" in line and "echo on >" in line, line
    # It wakes: 120 W from then on.
    (hw / "power1_input").rmdir()
    (hw / "power1_input").write_text("120000000\n")
    (power / "runtime_status").write_text("active\n")
    time.sleep(0.2)
    with carbonctx.track("awake") as m:
        time.sleep(0.5)
    assert m.by_source[gpu].joules == pytest.approx(120.0 * m.duration_s, rel=0.02)
    assert m.gpu_j == pytest.approx(m.by_source[gpu].joules)

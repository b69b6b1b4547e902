"""Simulated energy hardware, for testing code that uses carbonctx (and carbonctx itself).

:class:`SimulatedMachine` lays out RAPL hardware (powercap zones, MSR device files, the perf PMU's
description) under a directory and keeps its counters moving along known power traces from a
native writer thread; with ``gpus=N`` it also builds a stand-in ``libnvidia-ml.so.1`` (a C
compiler is needed) whose GPUs follow their own traces, and with ``amd_gpus=N`` a stand-in
``libamd_smi.so`` with the KFD topology the ROCm runtime numbers AMD GPUs by. Point carbonctx
at it and compare what it measures with the exact truth::

    from carbonctx.testing import SimulatedMachine, Wave

    with SimulatedMachine(tmp_path, package=Wave(40, 120, 0.05), gpus=1) as sim:
        carbonctx.configure(**sim.settings())
        with carbonctx.track("step") as m:
            work()
        truth = sim.truth_j("package", 0, *m_edges_ns)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from carbonctx import _native

__all__ = [
    "AmdGpuSpec",
    "GpuSpec",
    "SimulatedMachine",
    "Wave",
    "build_fake_amdsmi",
    "build_fake_nvml",
]


@attrs.frozen(slots=True)
class Wave:
    """A square-wave power trace: ``high_w`` for the first ``duty`` of every ``period_s``, then
    ``low_w``. ``period_s=0`` is a constant ``low_w * (1 - duty) + high_w * duty``.

    The trace is defined once, in Rust (``carbonctx-sim``): :meth:`power_w` and :meth:`energy_j`
    call it, and the simulated CPU counters and GPUs follow it. Times are whole nanoseconds."""

    low_w: float
    high_w: float
    period_s: float = 0.0
    duty: float = 0.5

    @classmethod
    def constant(cls, watts: float) -> Wave:
        return cls(watts, watts, 0.0, 1.0)

    def power_w(self, elapsed_s: float) -> float:
        """Power ``elapsed_s`` after the trace's start."""
        return _native.square_wave_power_w(
            self.low_w, self.high_w, self.period_s, self.duty, elapsed_s
        )

    def energy_j(self, elapsed_s: float) -> float:
        """Exact energy from the trace's start to ``elapsed_s`` (0 before the start)."""
        return _native.square_wave_energy_j(
            self.low_w, self.high_w, self.period_s, self.duty, elapsed_s
        )


@attrs.frozen(slots=True)
class GpuSpec:
    """A simulated GPU. ``energy_counter=False`` makes it report power only (pre-Volta)."""

    wave: Wave = Wave(50.0, 250.0, 0.1)
    name: str = "Simulated GPU"
    energy_counter: bool = True
    base_mj: int = 1_000_000


@attrs.frozen(slots=True)
class AmdGpuSpec:
    """A simulated AMD GPU. ``energy_counter=False`` makes it report power only; ``zero=True``
    makes it a paired die that reads 0 (its package reports on another die); ``hwmon_w`` adds
    an amdgpu hwmon directory whose ``power1_average`` holds that constant power. ``bdf`` and
    ``unique_id`` (ROCr's UUID is ``GPU-`` and its 16 hex digits) default to distinct values."""

    wave: Wave = Wave(60.0, 300.0, 0.1)
    name: str = "AMD Instinct MI300X"
    energy_counter: bool = True
    base_mj: int = 1_000_000
    zero: bool = False
    bdf: str | None = None
    unique_id: int | None = None
    hwmon_w: float | None = None
    #: ``current``, ``average`` or ``socket``: the power field the stand-in fills.
    power_field: str = "current"


def _compile(source: str, lib_name: str, directory: str | os.PathLike[str], cc: str | None) -> Path:
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError(f"building the stand-in {lib_name} needs a C compiler (cc or gcc)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / lib_name
    src = resources.files("carbonctx").joinpath(f"_fakes/{source}")
    with resources.as_file(src) as path:
        tmp = out / f".{lib_name}.{os.getpid()}.tmp"
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(path)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"compiling the stand-in {lib_name} failed:\n{r.stderr}")
        os.replace(tmp, lib)
    return lib


def build_fake_nvml(directory: str | os.PathLike[str], compiler: str | None = None) -> Path:
    """Compile the stand-in NVML library into ``directory/libnvidia-ml.so.1``."""
    return _compile("fake_nvml.c", "libnvidia-ml.so.1", directory, compiler)


def build_fake_amdsmi(directory: str | os.PathLike[str], compiler: str | None = None) -> Path:
    """Compile the stand-in AMD SMI library into ``directory/libamd_smi.so``; it reads
    ``fake_amdsmi.conf`` beside it (``python/carbonctx/_fakes/README.md``)."""
    return _compile("fake_amdsmi.c", "libamd_smi.so", directory, compiler)


_DRAM_DEFAULT = Wave(6.0, 6.0, 0.0, 1.0)


def _wave_args(w: Wave) -> tuple[float, float, float, float]:
    return (w.low_w, w.high_w, w.period_s, w.duty)


class SimulatedMachine:
    """Simulated RAPL (and optionally NVML) hardware under ``root`` (a temporary directory if
    None). Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        packages: int = 1,
        package: Wave = Wave(40.0, 120.0, 0.05),
        dram: Wave | None = _DRAM_DEFAULT,
        core: Wave | None = None,
        psys: Wave | None = None,
        wrap_uj: int | None = None,
        update_period_s: float = 0.001,
        powercap: bool = True,
        msr: bool = True,
        gpus: int | Sequence[GpuSpec] = 0,
        gpu_update_s: float = 0.1,
        nvml_library: str | os.PathLike[str] | None = None,
        amd_gpus: int | Sequence[AmdGpuSpec] = 0,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="carbonctx-sim-")
            root = self._tmp.name
        self.root = Path(root)
        self.waves: dict[str, Wave] = {"package": package}
        zones: list[tuple[str, int, float, float, float, float, int | None, float | None]] = []
        for dom, wave in (("package", package), ("core", core), ("dram", dram)):
            if wave is None:
                continue
            self.waves[dom] = wave
            for p in range(packages):
                zones.append(
                    (dom, p, wave.low_w, wave.high_w, wave.period_s, wave.duty, wrap_uj, None)
                )
        if psys is not None:
            self.waves["psys"] = psys
            zones.append(("psys", 0, psys.low_w, psys.high_w, psys.period_s, psys.duty, None, None))
        self.gpus: list[GpuSpec] = (
            [GpuSpec() for _ in range(gpus)] if isinstance(gpus, int) else list(gpus)
        )
        self.amd_gpus: list[AmdGpuSpec] = (
            [AmdGpuSpec() for _ in range(amd_gpus)] if isinstance(amd_gpus, int) else list(amd_gpus)
        )
        self.gpu_update_s = gpu_update_s
        # The native simulator publishes the GPUs' traces (the NVIDIA ones, then the AMD ones)
        # and writes the fake NVML library's configuration (nvml/fake_nvml.conf) next to where
        # the library goes.
        published = [
            (f"{g.name} {k}", g.energy_counter, g.base_mj, *_wave_args(g.wave))
            for k, g in enumerate(self.gpus)
        ] + [(g.name, True, g.base_mj, *_wave_args(g.wave)) for g in self.amd_gpus]
        self._sim = _native.SimMachine(
            self.root,
            packages=packages,
            zones=zones,
            update_period_s=update_period_s,
            powercap=powercap,
            msr=msr,
            gpus=published,
            gpu_update_s=gpu_update_s,
        )
        self.nvml_library: Path | None = None
        if self.gpus:
            gdir = Path(self._sim.nvml_dir())
            if self.amd_gpus:
                # The state file holds the AMD GPUs too: NVML sees only its own (a later key
                # wins).
                with open(gdir / "fake_nvml.conf", "a") as f:
                    f.write(f"devices={len(self.gpus)}\n")
            if nvml_library is not None:
                self.nvml_library = gdir / "libnvidia-ml.so.1"
                shutil.copyfile(nvml_library, self.nvml_library)
            else:
                self.nvml_library = build_fake_nvml(gdir)
        self.amdsmi_library: Path | None = None
        if self.amd_gpus:
            self.amdsmi_library = self._amd_machine()

    def _amd_machine(self) -> Path:
        """The stand-in AMD SMI in ``<root>/amdsmi`` following the published AMD GPUs, the KFD
        topology under the simulated sysfs, and amdgpu hwmon directories where asked for."""
        adir = self.root / "amdsmi"
        sys_root = Path(self._sim.roots()["sys_root"])
        lines = [
            f"devices={len(self.amd_gpus)}",
            f"t0_ns={self.t0_ns}",
            f"state={Path(self._sim.nvml_dir()) / 'gpus.state'}",
        ]
        nodes = sys_root / "class/kfd/kfd/topology/nodes"
        (nodes / "0").mkdir(parents=True, exist_ok=True)
        (nodes / "0" / "properties").write_text("cpu_cores_count 8\nsimd_count 0\n")
        for k, g in enumerate(self.amd_gpus):
            bdf = g.bdf or f"0000:{0x11 + 0x10 * k:02x}:00.0"
            unique = g.unique_id if g.unique_id is not None else 0xA11D0000 + k
            lines += [
                f"gpu{k}.slot={len(self.gpus) + k}",
                f"gpu{k}.name={g.name}",
                f"gpu{k}.bdf={bdf}",
                f"gpu{k}.has_energy={int(g.energy_counter)}",
                f"gpu{k}.zero={int(g.zero)}",
                f"gpu{k}.power_field={g.power_field}",
            ]
            dom, bus, devfn = bdf.split(":")
            dev, fn = devfn.split(".")
            location = (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn, 16)
            node = nodes / str(k + 1)
            node.mkdir(parents=True, exist_ok=True)
            node.joinpath("properties").write_text(
                f"simd_count 304\nlocation_id {location}\ndomain {int(dom, 16)}\n"
                f"unique_id {unique}\n"
            )
            if g.hwmon_w is not None:
                pci = sys_root / "devices/pci0000:00" / bdf
                hw = pci / "hwmon" / f"hwmon{10 + k}"
                hw.mkdir(parents=True, exist_ok=True)
                (hw / "name").write_text("amdgpu\n")
                (hw / "device").symlink_to(pci)
                (hw / "power1_average").write_text(f"{round(g.hwmon_w * 1e6)}\n")
                (sys_root / "class/hwmon").mkdir(parents=True, exist_ok=True)
                (sys_root / "class/hwmon" / f"hwmon{10 + k}").symlink_to(hw)
        lib = build_fake_amdsmi(adir)
        (adir / "fake_amdsmi.conf").write_text("\n".join(lines) + "\n")
        return lib

    @property
    def t0_ns(self) -> int:
        """CLOCK_MONOTONIC instant at which every trace starts."""
        return int(self._sim.t0_ns)

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for :func:`carbonctx.configure` that point it at this machine."""
        s: dict[str, Any] = {k: str(v) for k, v in self._sim.roots().items()}
        s["nvml_library"] = (
            str(self.nvml_library) if self.nvml_library else str(self.root / "no-nvml")
        )
        s["gpu"] = True
        # Without simulated AMD GPUs, none is looked for (a real one must not be found).
        s["amdsmi"] = bool(self.amd_gpus)
        if self.amdsmi_library is not None:
            s["amdsmi_library"] = str(self.amdsmi_library)
        return s

    def env(self) -> dict[str, str]:
        """The same as ``CARBONCTX_*`` environment variables (for subprocesses)."""
        r = self._sim.roots()
        return {
            "CARBONCTX_SYSFS_ROOT": str(r["sys_root"]),
            "CARBONCTX_DEV_ROOT": str(r["dev_root"]),
            "CARBONCTX_PROC_ROOT": str(r["proc_root"]),
            "CARBONCTX_NVML_LIBRARY": str(self.nvml_library or self.root / "no-nvml"),
            "CARBONCTX_AMDSMI": "1" if self.amd_gpus else "0",
            **(
                {"CARBONCTX_AMDSMI_LIBRARY": str(self.amdsmi_library)}
                if self.amdsmi_library is not None
                else {}
            ),
        }

    def start(self) -> SimulatedMachine:
        self._sim.start()
        return self

    def stop(self) -> None:
        self._sim.stop()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SimulatedMachine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def truth_j(self, domain: str, package: int, t_a_ns: int, t_b_ns: int) -> float:
        """Exact energy of a CPU zone between two CLOCK_MONOTONIC instants."""
        return float(self._sim.truth_j(domain, package, t_a_ns, t_b_ns))

    def gpu_truth_j(self, index: int, t_a_ns: int, t_b_ns: int) -> float:
        """Exact energy of a simulated GPU between two instants (its counter lags this by up
        to one update period)."""
        return float(self._sim.gpu_truth_j(index, t_a_ns, t_b_ns))

    def amd_gpu_truth_j(self, index: int, t_a_ns: int, t_b_ns: int) -> float:
        """Exact energy of simulated AMD GPU ``index`` (in ``amd_gpus`` order) between two
        instants."""
        return float(self._sim.gpu_truth_j(len(self.gpus) + index, t_a_ns, t_b_ns))

    def remove_zone(self, domain: str, package: int = 0) -> None:
        """Make a zone vanish mid-run, as a hot-unplugged or unloaded driver would."""
        self._sim.remove_zone(domain, package)

    def fail_reads(self, domain: str, package: int = 0, fail: bool = True) -> None:
        """Make a zone's counter unreadable (garbage) or readable again."""
        self._sim.fail_reads(domain, package, fail)

    @property
    def writes(self) -> int:
        return int(self._sim.write_count())

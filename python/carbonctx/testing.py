"""Simulated energy hardware, for testing code that uses carbonctx (and carbonctx itself).

:class:`SimulatedMachine` lays out RAPL hardware (powercap zones, MSR device files, the perf PMU's
description) under a directory and keeps its counters moving along known power traces from a
native writer thread; with ``gpus=N`` it also builds a stand-in ``libnvidia-ml.so.1`` (a C
compiler is needed) whose GPUs follow their own traces. Point carbonctx at it and compare what
it measures with the exact truth::

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
import weakref
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from carbonctx import _native

__all__ = ["GpuSpec", "SimulatedMachine", "Wave", "build_fake_nvml"]


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


def build_fake_nvml(directory: str | os.PathLike[str], compiler: str | None = None) -> Path:
    """Compile the stand-in NVML library into ``directory/libnvidia-ml.so.1``."""
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("building the stand-in NVML library needs a C compiler (cc or gcc)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libnvidia-ml.so.1"
    src = resources.files("carbonctx").joinpath("_fakes/fake_nvml.c")
    with resources.as_file(src) as path:
        tmp = out / f".libnvidia-ml.{os.getpid()}.so"
        cmd = [cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(path)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"compiling the stand-in NVML library failed:\n{r.stderr}")
        os.replace(tmp, lib)
    return lib


_DRAM_DEFAULT = Wave(6.0, 6.0, 0.0, 1.0)


def _remove_tree(path: str, pid: int) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


class SimulatedMachine:
    """Simulated RAPL (and optionally NVML) hardware under ``root`` (a temporary directory if
    None). Use as a context manager, or call :meth:`start` and :meth:`stop`.

    A forked child sees the counters move (the parent's thread writes them) and may read the
    machine, stop or close it (which leaves the parent's thread and files alone), but not
    start or change it: that raises, naming the process the machine belongs to."""

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
    ) -> None:
        self._pid = os.getpid()
        # A temporary root is removed by the process that made it, never by a forked child
        # (whose exit would otherwise delete the tree the parent's machine still writes).
        self._tmp: weakref.finalize[[str, int], SimulatedMachine] | None = None
        if root is None:
            root = tempfile.mkdtemp(prefix="carbonctx-sim-")
            self._tmp = weakref.finalize(self, _remove_tree, root, self._pid)
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
        self.gpu_update_s = gpu_update_s
        # The native simulator publishes the GPUs' traces and writes the fake library's
        # configuration (nvml/fake_nvml.conf) next to where the library goes.
        self._sim = _native.SimMachine(
            self.root,
            packages=packages,
            zones=zones,
            update_period_s=update_period_s,
            powercap=powercap,
            msr=msr,
            gpus=[
                (
                    f"{g.name} {k}",
                    g.energy_counter,
                    g.base_mj,
                    g.wave.low_w,
                    g.wave.high_w,
                    g.wave.period_s,
                    g.wave.duty,
                )
                for k, g in enumerate(self.gpus)
            ],
            gpu_update_s=gpu_update_s,
        )
        self.nvml_library: Path | None = None
        if self.gpus:
            gdir = Path(self._sim.nvml_dir())
            if nvml_library is not None:
                self.nvml_library = gdir / "libnvidia-ml.so.1"
                shutil.copyfile(nvml_library, self.nvml_library)
            else:
                self.nvml_library = build_fake_nvml(gdir)

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
        return s

    def env(self) -> dict[str, str]:
        """The same as ``CARBONCTX_*`` environment variables (for subprocesses)."""
        r = self._sim.roots()
        return {
            "CARBONCTX_SYSFS_ROOT": str(r["sys_root"]),
            "CARBONCTX_DEV_ROOT": str(r["dev_root"]),
            "CARBONCTX_PROC_ROOT": str(r["proc_root"]),
            "CARBONCTX_NVML_LIBRARY": str(self.nvml_library or self.root / "no-nvml"),
        }

    def start(self) -> SimulatedMachine:
        self._sim.start()
        return self

    def stop(self) -> None:
        self._sim.stop()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp()
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

    def remove_zone(self, domain: str, package: int = 0) -> None:
        """Make a zone vanish mid-run, as a hot-unplugged or unloaded driver would."""
        self._sim.remove_zone(domain, package)

    def fail_reads(self, domain: str, package: int = 0, fail: bool = True) -> None:
        """Make a zone's counter unreadable (garbage) or readable again."""
        self._sim.fail_reads(domain, package, fail)

    def reset_counter(self, domain: str, package: int = 0) -> None:
        """Make a zone's counters start again from zero now (a firmware reset or driver
        reload): a step back that is no wraparound. The truth is unchanged."""
        self._sim.reset_counter(domain, package)

    @property
    def writes(self) -> int:
        return int(self._sim.write_count())

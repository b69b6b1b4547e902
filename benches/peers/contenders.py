"""One adapter per contender, each written against the contender's documented public API.

An adapter has ``load()`` (import and construct; timed), ``enter()``/``exit()`` (one region, as a
user would write it; ``exit`` returns whatever the library hands back) and ``value(raw)`` (that
object turned into joules per source, resolved after the timed loop). Sources are ``package``
(CPU package, RAPL), ``dram`` (RAPL DRAM), ``gpu`` (GPU 0) and ``cpu+dram`` for a library that
reports only their sum. A source a library does not report is absent; one it estimates rather
than measures is listed in ``estimated``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

J_PER_KWH = 3.6e6


class Null:
    """The empty region: the loop's own cost, subtracted from every contender's."""

    name = "none"
    module = "os"
    estimated: tuple[str, ...] = ()
    notes: list[str] = []

    def load(self) -> None:
        pass

    def enter(self) -> None:
        pass

    def exit(self) -> Any:
        return None

    def value(self, raw: Any) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


class Carbonctx:
    name = "carbonctx"
    module = "carbonctx"
    package = "carbonctx"
    estimated: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.notes: list[str] = []

    def load(self) -> None:
        import carbonctx

        self.mod = carbonctx
        # Defaults otherwise (powercap ~1 ms, NVML its default), as a user would run it.
        carbonctx.configure(zone="US", summary_at_exit=False)

    def enter(self) -> None:
        self._t = self.mod.track("region")
        self._m = self._t.__enter__()

    def exit(self) -> Any:
        self._t.__exit__(None, None, None)
        return self._m

    def value(self, raw: Any) -> dict[str, float]:
        r = raw.result()
        return {"package": r.cpu_j, "dram": r.dram_j, "gpu": r.gpu_j}

    def close(self) -> None:
        pass


class Zeus:
    name = "zeus"
    module = "zeus.monitor"
    package = "zeus"
    estimated: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._n = 0

    def load(self) -> None:
        from zeus.monitor import ZeusMonitor

        self.mon = ZeusMonitor(gpu_indices=[0], cpu_indices=[0], approx_instant_energy=True)

    def enter(self) -> None:
        self._n += 1
        self._key = f"r{self._n}"
        self.mon.begin_window(self._key, sync_execution=False)

    def exit(self) -> Any:
        return self.mon.end_window(self._key, sync_execution=False)

    def value(self, raw: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        if raw.cpu_energy:
            out["package"] = float(raw.cpu_energy.get(0, 0.0))
        if raw.dram_energy:
            out["dram"] = float(raw.dram_energy.get(0, 0.0))
        if raw.gpu_energy:
            out["gpu"] = float(raw.gpu_energy.get(0, 0.0))
        return out

    def close(self) -> None:
        pass


class CodeCarbon:
    name = "codecarbon"
    module = "codecarbon"
    package = "codecarbon"
    # Its RAM figure is a model (power per GB of installed memory), not the DRAM counter.
    estimated = ("dram",)

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._n = 0

    def load(self) -> None:
        from codecarbon import OfflineEmissionsTracker

        self.tr = OfflineEmissionsTracker(
            country_iso_code="USA",
            save_to_file=False,
            log_level="error",
            gpu_ids=[0],
            allow_multiple_runs=True,
            output_dir=tempfile.mkdtemp(prefix="ccx-codecarbon-"),
        )

    def enter(self) -> None:
        self._n += 1
        self.tr.start_task(f"r{self._n}")

    def exit(self) -> Any:
        d = self.tr.stop_task(f"r{self._n}")
        return None if d is None else (d.cpu_energy, d.ram_energy, d.gpu_energy)

    def value(self, raw: Any) -> dict[str, float]:
        if raw is None:
            return {}
        cpu, ram, gpu = raw
        return {"package": cpu * J_PER_KWH, "dram": ram * J_PER_KWH, "gpu": gpu * J_PER_KWH}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tr.stop()


class _Collect:
    """A pyJoules handler (anything with ``process(trace)``) that keeps each trace."""

    def __init__(self) -> None:
        self.last: Any = None

    def process(self, trace: Any) -> None:
        self.last = trace


class PyJoules:
    name = "pyjoules"
    module = "pyJoules.energy_meter"
    package = "pyJoules"
    estimated: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.notes: list[str] = []

    def load(self) -> None:
        from pyJoules.device.rapl_device import RaplDramDomain, RaplPackageDomain
        from pyJoules.energy_meter import EnergyContext

        self.EnergyContext = EnergyContext
        self.domains: list[Any] = [RaplPackageDomain(0), RaplDramDomain(0)]
        try:
            from pyJoules.device.nvidia_device import NvidiaGPUDomain

            self.domains.append(NvidiaGPUDomain(0))
            # Constructing a context probes the domains; a missing one raises here.
            with EnergyContext(handler=_Collect(), domains=self.domains, start_tag="probe"):
                pass
        except Exception as e:
            self.notes.append(f"NVIDIA domain unusable, GPU left out: {type(e).__name__}: {e}")
            self.domains = self.domains[:2]
        self.handler = _Collect()

    def enter(self) -> None:
        self._ctx = self.EnergyContext(handler=self.handler, domains=self.domains, start_tag="r")
        self._ctx.__enter__()

    def exit(self) -> Any:
        self._ctx.__exit__(None, None, None)
        return self.handler.last

    def value(self, raw: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for sample in raw:
            for k, v in sample.energy.items():
                if k.startswith("package"):
                    out["package"] = out.get("package", 0.0) + v * 1e-6  # µJ
                elif k.startswith("dram"):
                    out["dram"] = out.get("dram", 0.0) + v * 1e-6
                elif k.startswith("nvidia_gpu"):
                    out["gpu"] = out.get("gpu", 0.0) + v * 1e-3  # mJ
        return out

    def close(self) -> None:
        pass


class Carbontracker:
    """Epochs are its regions. It logs average power per component per epoch; energy per epoch
    is that power times the epoch's duration (what its logs, predictor and report use), here
    read from its components without its PUE factor. Its CPU component is package + DRAM."""

    name = "carbontracker"
    module = "carbontracker.tracker"
    package = "carbontracker"
    estimated: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.notes: list[str] = []
        self._epoch = -1

    def load(self) -> None:
        from carbontracker.tracker import CarbonTracker

        self.tr = CarbonTracker(
            epochs=10**9,
            epochs_before_pred=0,
            monitor_epochs=-1,
            verbose=0,
            log_dir=tempfile.mkdtemp(prefix="ccx-carbontracker-"),
            components="all",
            ignore_errors=True,
            update_interval=1,
        )

    def enter(self) -> None:
        self.tr.epoch_start()

    def exit(self) -> Any:
        self.tr.epoch_end()
        self._epoch += 1
        return self._epoch

    def value(self, raw: Any) -> dict[str, float]:
        th = self.tr.tracker
        out: dict[str, float] = {}
        for comp in th.components:
            e = comp.energy_usage(th.epoch_times)
            if raw < len(e):
                key = {"cpu": "cpu+dram", "gpu": "gpu"}.get(comp.name, comp.name)
                out[key] = float(e[raw]) * J_PER_KWH
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tr.stop()


ALL = {c.name: c for c in (Carbonctx, Zeus, CodeCarbon, PyJoules, Carbontracker)}


def make(name: str) -> Any:
    return Null() if name == "none" else ALL[name]()


def env_for(name: str) -> dict[str, str]:
    """Environment that keeps a contender offline and quiet."""
    e = {
        "CODECARBON_LOG_LEVEL": "error",
        "CODECARBON_SAVE_TO_API": "False",
        "CARBONCTX_SUMMARY": "0",
        "PYTHONWARNINGS": "ignore",
        "TQDM_DISABLE": "1",
    }
    e["HOME"] = os.environ.get("CCX_BENCH_HOME", tempfile.gettempdir())
    return e

"""carbonctx: how much energy and CO2 your code costs, down to a single training step.

::

    import carbonctx

    with carbonctx.track("epoch") as m:
        train_one_epoch()
    print(m.energy_j, m.cpu_j, m.gpu_j, m.co2_g)

    @carbonctx.tracked
    def train_step(batch): ...

    print(carbonctx.stats())

A native sampler thread reads RAPL (powercap, MSR, perf) and NVML energy counters; regions are
resolved against its timeline, so entering and leaving one costs about a microsecond.
"""

from __future__ import annotations

from carbonctx._native import __version__
from carbonctx.errors import (
    CarbonctxError,
    CarbonctxWarning,
    ConfigurationError,
    IntensityLookupError,
    IntensityWarning,
    SamplerError,
    SourcePermissionError,
    SourceUnavailableError,
)

# Importing carbonctx imports only the errors and the native module (not even ``typing``): the
# rest of the public API is imported on first use (PEP 562 ``__getattr__`` below), from the
# modules the ``_LAZY`` table names, once; settings are read and validated then, as before, at
# the first region or ``configure()``. Type checkers see the imports below instead.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from carbonctx._api import (
        configure,
        devices,
        flush,
        recent,
        recent_frame,
        stats,
        write_trace,
    )
    from carbonctx._config import Settings
    from carbonctx._measure.region import Region, Tracker, current, step, track, tracked
    from carbonctx._results.equivalents import (
        Equivalent,
        PueSuggestion,
        equivalents,
        pue_suggestion,
    )
    from carbonctx._results.measurement import Measurement, SourceEnergy
    from carbonctx._results.runs import JobTotal, RunTotals
    from carbonctx._results.statistics import Distribution, NameStats, StatsTable
    from carbonctx._runs.epochs import epochs
    from carbonctx._runs.run import Run
    from carbonctx._runs.total import job_total

    #: Former name of :class:`RunTotals` (a run's forecast or actual figures); kept for old code.
    Estimate = RunTotals
    #: Former name of :class:`Distribution`; kept for old code.
    Summary = Distribution

#: Public name -> (module, name there) of what is imported on first use.
_LAZY: dict[str, tuple[str, str]] = {
    **{
        f: ("carbonctx._api", f)
        for f in ("configure", "devices", "flush", "recent", "recent_frame", "stats", "write_trace")
    },
    "Settings": ("carbonctx._config", "Settings"),
    "Region": ("carbonctx._measure.region", "Region"),
    "Tracker": ("carbonctx._measure.region", "Tracker"),
    "current": ("carbonctx._measure.region", "current"),
    "step": ("carbonctx._measure.region", "step"),
    "track": ("carbonctx._measure.region", "track"),
    "tracked": ("carbonctx._measure.region", "tracked"),
    "Equivalent": ("carbonctx._results.equivalents", "Equivalent"),
    "PueSuggestion": ("carbonctx._results.equivalents", "PueSuggestion"),
    "equivalents": ("carbonctx._results.equivalents", "equivalents"),
    "pue_suggestion": ("carbonctx._results.equivalents", "pue_suggestion"),
    "Measurement": ("carbonctx._results.measurement", "Measurement"),
    "SourceEnergy": ("carbonctx._results.measurement", "SourceEnergy"),
    "JobTotal": ("carbonctx._results.runs", "JobTotal"),
    "RunTotals": ("carbonctx._results.runs", "RunTotals"),
    # Former name of RunTotals (a run's forecast or actual figures); kept for old code.
    "Estimate": ("carbonctx._results.runs", "RunTotals"),
    "Distribution": ("carbonctx._results.statistics", "Distribution"),
    # Former name of Distribution; kept for old code.
    "Summary": ("carbonctx._results.statistics", "Distribution"),
    "NameStats": ("carbonctx._results.statistics", "NameStats"),
    "StatsTable": ("carbonctx._results.statistics", "StatsTable"),
    "epochs": ("carbonctx._runs.epochs", "epochs"),
    "Run": ("carbonctx._runs.run", "Run"),
    "job_total": ("carbonctx._runs.total", "job_total"),
}

__all__ = [
    "CarbonctxError",
    "CarbonctxWarning",
    "ConfigurationError",
    "Distribution",
    "Equivalent",
    "Estimate",
    "IntensityLookupError",
    "IntensityWarning",
    "JobTotal",
    "Measurement",
    "NameStats",
    "PueSuggestion",
    "Region",
    "Run",
    "RunTotals",
    "SamplerError",
    "Settings",
    "SourceEnergy",
    "SourcePermissionError",
    "SourceUnavailableError",
    "StatsTable",
    "Summary",
    "Tracker",
    "__version__",
    "configure",
    "current",
    "devices",
    "epochs",
    "equivalents",
    "flush",
    "job_total",
    "pue_suggestion",
    "recent",
    "recent_frame",
    "stats",
    "step",
    "track",
    "tracked",
    "write_trace",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext carbonctx``: the ``%%carbonctx`` (a cell is a region) and ``%carbonctx``
    magics (see :mod:`carbonctx.integrations.ipython`)."""
    import importlib

    # Imported by name: the integrations sit above the public API and need IPython.
    importlib.import_module("carbonctx.integrations.ipython").load_ipython_extension(ipython)


if not TYPE_CHECKING:  # a type checker flags a misspelt name instead of calling this

    def __getattr__(name: str) -> Any:
        """A public name of the ``_LAZY`` table, imported on first use and kept here (the import
        system's lock makes a first use in two threads at once import the module once)."""
        try:
            module, attr = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        import importlib

        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        _keep_imported()
        return value


#: Names the public classes' annotations use besides each other, and where they are.
_ANNOTATION_NAMES = (
    ("typing", "Any"),
    ("collections.abc", "Mapping"),
    ("collections.abc", "Sequence"),
)


def _keep_imported() -> None:
    """Keep here every public name whose module has been imported by now, and the names the
    public classes' annotations use, importing nothing: the classes say they are carbonctx's,
    so ``typing.get_type_hints`` reads their annotations in this namespace, which holds them as
    it did when carbonctx imported everything at once."""
    import sys

    here = globals()
    wanted = [(m, a, a) for m, a in _ANNOTATION_NAMES]
    wanted += [(m, a, name) for name, (m, a) in _LAZY.items()]
    for module, attr, name in wanted:
        if name not in here:
            value = getattr(sys.modules.get(module), attr, None)
            if value is not None:
                here[name] = value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

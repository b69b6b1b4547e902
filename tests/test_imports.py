"""``import carbonctx`` imports only the errors and the native module; every other public name
is imported on first use (``__getattr__`` in ``carbonctx/__init__.py``), with nothing about it
changed: the same objects, ``from carbonctx import X``, ``dir()``, ``__module__``, and a bad
``CARBONCTX_*`` variable refused where it always was (at the first region or ``configure()``).

Each check runs in a fresh interpreter: this one has imported everything long ago."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import carbonctx
from carbonctx.testing import SimulatedMachine

INIT = Path(carbonctx.__file__)

#: What importing carbonctx may add to a bare interpreter's modules.
EAGER = {"carbonctx", "carbonctx._native", "carbonctx.errors"}
#: Imported with the first region, report or configure(), never with carbonctx.
LAZY_PACKAGES = (
    "carbonctx._api",
    "carbonctx._config",
    "carbonctx._results",
    "carbonctx._output",
    "carbonctx._carbon",
    "carbonctx._bmc",
    "carbonctx._distributed",
    "carbonctx._runs",
    "carbonctx._measure",
)
THIRD_PARTY = ("attrs", "attr", "httpx", "numpy")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONCTX_")}
    env["PYTHONPATH"] = str(INIT.parent.parent)
    env.update(extra)
    return env


def _run(code: str, **extra: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(**extra),
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _modules(code: str) -> set[str]:
    return set(json.loads(_run(code + "\nimport sys, json\nprint(json.dumps(list(sys.modules)))")))


def test_importing_carbonctx_imports_only_the_errors_and_the_native_module() -> None:
    bare = _modules("pass")
    after = _modules("import carbonctx")
    ours = {m for m in after if m == "carbonctx" or m.startswith("carbonctx.")}
    assert ours == EAGER, f"imported with carbonctx: {sorted(ours - EAGER)}; make them lazy"
    assert not [m for m in THIRD_PARTY if m in after]
    # Nothing else either (no typing, json, socket, threading...): only __future__ and warnings,
    # which an interpreter may or may not have imported already.
    assert after - bare - EAGER <= {"__future__", "warnings"}, sorted(after - bare - EAGER)


def test_the_first_region_imports_what_it_needs_and_nothing_from_the_network(
    tmp_path: Path,
) -> None:
    code = (
        "import sys, json, carbonctx\n"
        "before = list(sys.modules)\n"
        "from carbonctx.testing import SimulatedMachine\n"
        f"with SimulatedMachine({str(tmp_path)!r}) as sim:\n"
        "    carbonctx.configure(**sim.settings())\n"
        "    with carbonctx.track('x') as t:\n"
        "        pass\n"
        "    ok = t.result().energy_j >= 0\n"
        "print(json.dumps([before, list(sys.modules), ok]))\n"
    )
    before, after, ok = json.loads(_run(code))
    assert ok
    lazy = [m for m in before if m.startswith(LAZY_PACKAGES) or m.startswith(THIRD_PARTY)]
    assert lazy == [], lazy
    assert {"carbonctx._measure.region", "carbonctx._config", "attrs"} <= set(after)
    assert "httpx" not in after  # no provider is asked anything without a carbon setting
    # Nor is the Redfish client imported without a BMC to read.
    assert not [m for m in after if m.startswith("carbonctx._bmc")]


def _launcher_variable(name: str) -> bool:
    """A variable a launcher sets for the ranks of a job (torchrun, Slurm, MPI, PMIx)."""
    ranks = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
    prefixes = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "MPI_", "I_MPI_", "TORCHELASTIC_")
    return name in ranks or name.startswith(prefixes)


def test_the_first_region_waits_for_neither_numpy_nor_the_carbon_modules(
    sim: SimulatedMachine,
) -> None:
    # What the first `with` imports, with the settings in the environment, so that the region
    # is the first use of everything: the modules it adds, and (an audit hook sees each import
    # statement and the thread that runs it) what the program's own thread imports. Resolving
    # needs numpy and the intensity service: they come with the first batch to resolve, not
    # with the region. No launcher variable is set.
    code = (
        "import json, sys, threading\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event == 'import' and threading.current_thread() is threading.main_thread():\n"
        "        seen.append(args[0])\n"
        "import carbonctx\n"
        "before = set(sys.modules)\n"
        "sys.addaudithook(hook)\n"
        "with carbonctx.track('x') as t:\n"
        "    pass\n"
        "added = sorted(set(sys.modules) - before)\n"
        "first = list(seen)\n"
        "ok = t.result().energy_j >= 0\n"
        "print(json.dumps([added, first, 'numpy' in sys.modules, ok]))\n"
    )
    env = {k: v for k, v in _env(**sim.env()).items() if not _launcher_variable(k)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    added, first, numpy_after, ok = json.loads(out.stdout)
    assert ok
    assert "carbonctx._measure.runtime" in added and "carbonctx._measure.runtime" in first
    heavy = ("numpy", "carbonctx._carbon", "carbonctx._output", "carbonctx._bmc")
    assert [m for m in added if m.startswith(heavy)] == []
    assert [m for m in first if m.startswith(heavy)] == []
    assert "carbonctx._results.statistics" not in added
    # A process that is no rank of a job reads its rank and node, and nothing else of the
    # distributed layer: not the GPU ownership, output paths or collectives.
    assert "carbonctx._distributed.ranks" in added
    others = tuple(f"carbonctx._distributed.{x}" for x in ("devices", "paths", "collectives"))
    assert [m for m in added if m.startswith(others)] == []
    assert "socket" not in added
    # Reading the result has loaded numpy (here, or on the resolver thread before it).
    assert numpy_after


def test_every_public_name_is_there_as_before() -> None:
    code = (
        "import json, pickle, carbonctx\n"
        "names = list(carbonctx.__all__)\n"
        "in_dir = all(n in dir(carbonctx) for n in names)\n"
        "ns = {}\n"
        "exec('from carbonctx import ' + ', '.join(names), ns)\n"
        "same = all(ns[n] is getattr(carbonctx, n) for n in names)\n"
        "star = {}\n"
        "exec('from carbonctx import *', star)\n"
        "aliases = [carbonctx.Estimate is carbonctx.RunTotals,"
        " carbonctx.Summary is carbonctx.Distribution]\n"
        "try:\n"
        "    carbonctx.no_such_name\n"
        "    missing = 'no error'\n"
        "except AttributeError as e:\n"
        "    missing = str(e)\n"
        "print(json.dumps([in_dir, same, sorted(set(names) - set(star)), aliases, missing,"
        " hasattr(carbonctx, 'no_such_name')]))\n"
    )
    in_dir, same, not_starred, aliases, missing, has = json.loads(_run(code))
    assert in_dir and same and not_starred == [] and aliases == [True, True]
    assert missing == "module 'carbonctx' has no attribute 'no_such_name'" and not has


def test_public_classes_say_carbonctx_however_they_were_loaded() -> None:
    # Loaded through the private modules, never through carbonctx's attributes: the classes
    # still say where users find them (help(), reprs, pickles).
    code = (
        "import json, pickle\n"
        "from carbonctx._config import Settings\n"
        "from carbonctx._measure.region import Tracker\n"
        "from carbonctx._results.measurement import Measurement\n"
        "from carbonctx._results.statistics import Distribution, NameStats, StatsTable\n"
        "from carbonctx._results.equivalents import Equivalent, PueSuggestion\n"
        "from carbonctx._results.runs import JobTotal, RunTotals\n"
        "from carbonctx._results.measurement import SourceEnergy\n"
        "from carbonctx._runs.run import Run\n"
        "classes = [Settings, Tracker, Measurement, Distribution, NameStats, StatsTable,"
        " Equivalent, PueSuggestion, JobTotal, RunTotals, SourceEnergy, Run]\n"
        "s = Settings(gpu=False)\n"
        "data = pickle.dumps(s)\n"
        "print(json.dumps([[c.__module__ for c in classes], b'carbonctx' in data,"
        " pickle.loads(data) == s, repr(Settings)]))\n"
    )
    modules, named, round_trip, text = json.loads(_run(code))
    assert modules == ["carbonctx"] * 12
    assert named and round_trip and text == "<class 'carbonctx.Settings'>"


@pytest.mark.parametrize("name", [n for n in carbonctx.__all__ if callable(getattr(carbonctx, n))])
def test_annotations_resolve_when_a_name_is_the_first_one_used(name: str) -> None:
    # typing.get_type_hints (pydantic, jsonargparse, Sphinx) reads a public class's annotations
    # in carbonctx's namespace (its __module__): they resolve with nothing else used before.
    code = (
        "import sys, typing, carbonctx\n"
        "print(len(typing.get_type_hints(getattr(carbonctx, sys.argv[1]))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, name],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_the_lazy_table_names_what_type_checkers_see() -> None:
    # The imports under TYPE_CHECKING (what mypy and IDEs see) and the table __getattr__ reads
    # name the same objects; together with the eager names they are __all__.
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    block = next(
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    )
    seen: dict[str, tuple[str, str]] = {}
    for node in block.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("carbonctx"):
            for alias in node.names:
                seen[alias.asname or alias.name] = (node.module or "", alias.name)
        elif isinstance(node, ast.Assign):
            (target,) = node.targets
            assert isinstance(target, ast.Name) and isinstance(node.value, ast.Name)
            seen[target.id] = seen[node.value.id]
    lazy = carbonctx._LAZY  # type: ignore[attr-defined]
    assert seen == lazy
    eager = {n for n in carbonctx.__all__ if n not in lazy}
    assert eager and not eager & set(lazy)
    assert set(lazy) <= set(carbonctx.__all__)


def test_a_first_use_in_several_threads_at_once_gives_every_thread_the_same_objects() -> None:
    code = (
        "import threading, carbonctx\n"
        "names = ['track', 'tracked', 'Run', 'epochs', 'job_total', 'StatsTable', 'Settings']\n"
        "barrier = threading.Barrier(8)\n"
        "got, errors = [], []\n"
        "def use():\n"
        "    barrier.wait()\n"
        "    try:\n"
        "        got.append([getattr(carbonctx, n) for n in names])\n"
        "    except Exception as e:\n"
        "        errors.append(repr(e))\n"
        "threads = [threading.Thread(target=use) for _ in range(8)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(len(got), errors, all(g == got[0] for g in got))\n"
    )
    assert _run(code).split() == ["8", "[]", "True"]


def test_a_bad_variable_is_refused_at_the_first_region_and_configure_as_before() -> None:
    code = (
        "import carbonctx\n"
        "print('imported')\n"
        "for f in (lambda: carbonctx.configure(), lambda: carbonctx.track('x').__enter__()):\n"
        "    try:\n"
        "        f()\n"
        "        print('accepted')\n"
        "    except carbonctx.ConfigurationError as e:\n"
        "        print('CARBONCTX_GPU' in str(e))\n"
    )
    assert _run(code, CARBONCTX_GPU="maybe").split() == ["imported", "True", "True"]

"""Imports in the Python package run one way: a layer imports only itself and the layers below.

The layers, lowest first (``LAYERS``)::

    errors, _native       exceptions, warnings and the native module: they import nothing of ours
    _config               every setting and CARBONCTX_* variable, validated once
    _results              frozen value objects (Measurement, statistics, run totals) and units
    _output               formats (JSON Lines, CSV, trace, text, HTML) of records and results
    _carbon               zone rules, yearly tables, providers, cache, refresh, service, windows
    _bmc                  the node's wall power from its BMC over Redfish (fed to the sampler)
    _distributed          (reserved) ranks, nodes and collectives, below what measures and runs
    _measure              regions, the process runtime, the resolver, fork and exit
    _runs                 epochs(): forecast maths, budget, run logs, progress
    carbonctx, testing    the public API (the package's __init__, its functions in _api) and
                          simulated hardware
    integrations          (reserved) framework callbacks over the public API
    _cli, __main__        one module per subcommand

Checked from the source with ``ast``, every import statement counted (also those inside
functions and under ``TYPE_CHECKING``): a lower layer importing a higher one, an import cycle
between modules, a module in no layer, or a private name (``_helper``) imported from another
subpackage fails the test. The checker's own tests below show each of those failing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

PACKAGE = "carbonctx"
SOURCE = Path(__file__).resolve().parent.parent / "python" / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    ("carbonctx.errors", "carbonctx._native"),
    ("carbonctx._config",),
    ("carbonctx._results",),
    ("carbonctx._output",),
    ("carbonctx._carbon",),
    ("carbonctx._bmc",),
    ("carbonctx._distributed",),
    ("carbonctx._measure",),
    ("carbonctx._runs",),
    ("carbonctx", "carbonctx._api", "carbonctx.testing"),
    ("carbonctx.integrations",),
    ("carbonctx._cli", "carbonctx.__main__"),
)


# --------------------------------------------------------------------------- the checker


def package_sources(root: Path, package: str) -> tuple[dict[str, str], set[str]]:
    """(module name -> source) of every ``.py`` under ``root``, and every module name there
    (``.pyi`` stubs of native modules included, unparsed)."""
    sources: dict[str, str] = {}
    modules: set[str] = set()
    for path in sorted(root.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join([package, *parts])
        modules.add(name)
        if path.suffix == ".py":
            sources[name] = path.read_text(encoding="utf-8")
    return sources, modules


def _is_package(module: str, modules: set[str]) -> bool:
    return any(m.startswith(module + ".") for m in modules)


def imports_of(
    module: str, source: str, modules: set[str], is_package: bool
) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each import of ours in ``source``."""
    out: list[tuple[str, list[str]]] = []
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    out.append((alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            names: list[str] = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    out.append((sub, []))  # `from pkg import module`
                else:
                    names.append(alias.name)
            if names:
                out.append((target, names))
    return out


def layer_of(module: str, layers: Sequence[Sequence[str]]) -> int | None:
    """Index of the layer whose longest declared prefix matches ``module`` (the package itself,
    its ``__init__``, matches only itself: a new subpackage must be given a layer)."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, layer in enumerate(layers):
        for prefix in layer:
            matches = module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), i)
    return None if best is None else best[1]


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def check(
    sources: Mapping[str, str], modules: set[str], layers: Sequence[Sequence[str]]
) -> list[str]:
    """Every problem found, as a sentence each (empty when the imports are in order)."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sorted(sources.items()):
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module} is in no layer: add it to LAYERS")
            continue
        for target, names in imports_of(module, source, modules, _is_package(module, modules)):
            if target != module:
                graph[module].add(target)
            theirs = layer_of(target, layers)
            if theirs is None:
                problems.append(f"{module} imports {target}, which is in no layer")
            elif theirs > mine:
                problems.append(
                    f"{module} (layer {mine}) imports {target} (layer {theirs}), a higher layer"
                )
            if _subpackage(target) != _subpackage(module):
                for name in names:
                    if name.startswith("_") and not name.startswith("__"):
                        problems.append(
                            f"{module} imports the private {target}.{name} from another "
                            "subpackage: make it a named function of that layer"
                        )
    for cycle in find_cycles(graph):
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


# --------------------------------------------------------------------------- the package


def test_the_package_imports_run_one_way() -> None:
    sources, modules = package_sources(SOURCE, PACKAGE)
    assert "carbonctx._measure.process" in sources  # the walk found the package
    assert check(sources, modules, LAYERS) == []


# --------------------------------------------------------------------------- the checker fails


def _synthetic(files: Mapping[str, str]) -> list[str]:
    return check(files, set(files), LAYERS)


def test_checker_passes_imports_that_go_down() -> None:
    assert (
        _synthetic(
            {
                "carbonctx._results.a": "from carbonctx._config import Settings\n",
                "carbonctx._config": "from carbonctx.errors import ConfigurationError\n",
                "carbonctx.errors": "",
            }
        )
        == []
    )


@pytest.mark.parametrize(
    "source",
    [
        "from carbonctx._measure.runtime import Runtime\n",
        "import carbonctx._measure.runtime\n",
        "def f():\n    from carbonctx._measure import runtime\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from carbonctx._measure.runtime import Runtime\n",
        "from ..._measure.runtime import Runtime\n",
        "from carbonctx import stats\n",  # the public API sits above the layers it uses
    ],
)
def test_checker_fails_when_a_lower_layer_imports_a_higher_one(source: str) -> None:
    problems = _synthetic(
        {
            "carbonctx._results.stats.x": source,
            "carbonctx._results.stats": "",
            "carbonctx._measure.runtime": "",
            "carbonctx": "",
        }
    )
    assert len(problems) == 1 and "a higher layer" in problems[0], problems


def test_checker_fails_on_an_import_cycle_within_a_layer() -> None:
    problems = _synthetic(
        {
            "carbonctx._runs.a": "from carbonctx._runs.b import g\n",
            "carbonctx._runs.b": "def g():\n    from carbonctx._runs import c\n",
            "carbonctx._runs.c": "import carbonctx._runs.a\n",
        }
    )
    assert problems == ["import cycle: carbonctx._runs.a -> carbonctx._runs.b -> carbonctx._runs.c"]


def test_checker_fails_on_a_private_helper_from_another_subpackage() -> None:
    problems = _synthetic(
        {
            "carbonctx._output.html": "from carbonctx._results.units import _fmt_g\n",
            "carbonctx._results.units": "",
            "carbonctx._results.other": "from carbonctx._results.units import _fmt_g\n",
        }
    )
    assert len(problems) == 1 and "private carbonctx._results.units._fmt_g" in problems[0]


def test_checker_fails_on_a_module_in_no_layer() -> None:
    problems = _synthetic({"carbonctx._somewhere": ""})
    assert problems == ["carbonctx._somewhere is in no layer: add it to LAYERS"]

"""What ``import carbonctx`` adds to a bare interpreter, and what the first region then costs.

Each figure is the median wall time of fresh interpreters (subprocesses, run alternately):
``pass``, ``import carbonctx``, ``import numpy`` for scale; and, timed inside the interpreter,
``import carbonctx`` then one ``with track()`` on simulated hardware (``CARBONCTX_*`` variables
point it there), from the import to the end of the ``with``, and the first ``with`` alone; and
a whole short script (import, one region, its energy read, the interpreter's exit), timed
from outside. Optionally a second tree (``--before PATH``, its ``python`` folder, with its
native module built) is timed the same way in the same run. The ``-X importtime`` breakdown of
what importing carbonctx still imports, and of what the first ``with`` imports on the
program's thread (in each tree), are written with the tables.
Run: ``.venv/bin/python benches/bench_import.py [--runs N] [--before /path/to/other/tree]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, write_result
from carbonctx.testing import SimulatedMachine

HERE = Path(__file__).resolve().parent
TREE = HERE.parent / "python"


# Timed inside the interpreter: from the import to the end of the first region, and the
# first region alone.
FIRST_REGION = """
import time
t0 = time.perf_counter()
import carbonctx
t1 = time.perf_counter()
with carbonctx.track("first"):
    pass
t2 = time.perf_counter()
print(t2 - t0, t2 - t1)
"""

# A whole short script, timed from outside: what a user who times one wrapped function pays.
SCRIPT = """
import carbonctx
with carbonctx.track("main") as m:
    pass
print(m.energy_j)
"""

# What the first region imports on the program's thread: -X importtime lines up to the mark.
FIRST_IMPORTS = """
import sys
import carbonctx
sys.stderr.write("import time: mark\\n")
with carbonctx.track("first"):
    pass
sys.stderr.write("import time: mark\\n")
"""


def _env(path: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONCTX_")}
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    env.update(extra or {})
    return env


def timed(code: str, path: Path | None) -> float:
    env = _env(path)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0


def first_region(path: Path, sim_env: dict[str, str]) -> tuple[float, float]:
    """(import to the end of the first region, the first region alone), seconds."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_REGION],
        env=_env(path, sim_env),
        check=True,
        capture_output=True,
        text=True,
    )
    whole, region = out.stdout.split()[-2:]
    return float(whole), float(region)


def script(path: Path, sim_env: dict[str, str]) -> float:
    env = _env(path, sim_env)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def importtime(
    code: str, path: Path | None, extra: dict[str, str] | None = None
) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, indented name) of each module ``code`` imports; a line
    ``import time: mark`` that the code writes comes as (-1, -1, "mark")."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=_env(path, extra),
        check=True,
        capture_output=True,
        text=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        if line == "import time: mark":
            rows.append((-1, -1, "mark"))
            continue
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(own), int(cumulative), name.rstrip()[1:]))
    return rows


def first_imports(path: Path, sim_env: dict[str, str]) -> tuple[int, int, list[tuple[int, str]]]:
    """What the first ``with`` imports on the program's thread (between the marks): (µs in
    all, modules, the tree's first three levels down to 1 ms as (cumulative µs, indented
    name), in ``-X importtime`` order: a module's imports above it)."""
    rows = importtime(FIRST_IMPORTS, path, sim_env)
    marks = [k for k, r in enumerate(rows) if r[2] == "mark"]
    inside = rows[marks[0] + 1 : marks[1]]
    total = sum(c for _, c, n in inside if not n.startswith(" "))
    depth = 3  # levels shown (two spaces of indent each)
    tree = [(c, n) for _, c, n in inside if c >= 1000 and not n.startswith(" " * 2 * depth)]
    return total, len(inside), tree


def breakdown() -> str:
    """What importing carbonctx imports beyond a bare interpreter, and what the module of
    ``carbonctx.track`` (imported at its first use) imports, its largest parts."""
    bare = {name.strip() for _, _, name in importtime("pass", None)}
    rows = importtime("import carbonctx", TREE)
    mine = [(o, c, n) for o, c, n in rows if n.strip() not in bare]
    # An import statement, so that -X importtime logs it (importlib.import_module, which the
    # first use calls, imports the same modules without a line of its own).
    first = importtime("import carbonctx\nimport carbonctx._measure.region", TREE)[len(rows) :]
    total = sum(c for _, c, n in first if not n.startswith(" "))
    parts = sorted(((c, n.strip()) for _, c, n in first if n.startswith("  ") and n[2] != " "))
    return "\n".join(
        [
            "`python -X importtime -c 'import carbonctx'`, the modules a bare interpreter does "
            "not import (µs):",
            "",
            "```",
            "  self | cumulative | module",
            *(f"{o:6d} | {c:10d} | {n}" for o, c, n in mine),
            "```",
            "",
            f"The first use of `carbonctx.track` then imports its module: {total} µs in all, "
            "the largest parts (µs, cumulative):",
            "",
            "```",
            *(f"{c:8d}  {n}" for c, n in parts[::-1][:12]),
            "```",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--before", type=Path, default=None)
    args = ap.parse_args()
    cases: dict[str, tuple[str, Path | None]] = {
        "bare interpreter": ("pass", None),
        "import numpy": ("import numpy", None),
        "import carbonctx": ("import carbonctx", TREE),
    }
    if args.before is not None:
        cases["import carbonctx (before)"] = ("import carbonctx", args.before / "python")
    trees = {"": TREE} | ({} if args.before is None else {" (before)": args.before / "python"})
    times: dict[str, list[float]] = {k: [] for k in cases}
    firsts: dict[str, list[float]] = {k: [] for k in trees}
    alone: dict[str, list[float]] = {k: [] for k in trees}
    scripts: dict[str, list[float]] = {k: [] for k in trees}
    with SimulatedMachine() as sim:
        for _ in range(args.runs):
            for k, (code, path) in cases.items():
                times[k].append(timed(code, path))
            for k, path in trees.items():
                whole, region = first_region(path, sim.env())
                firsts[k].append(whole)
                alone[k].append(region)
                scripts[k].append(script(path, sim.env()))
        first = {k: first_imports(path, sim.env()) for k, path in trees.items()}
    base = statistics.median(times["bare interpreter"])
    rows = "\n".join(
        f"| {k} | {statistics.median(v) * 1e3:.1f} ms | {(statistics.median(v) - base) * 1e3:+.1f} ms |"
        for k, v in times.items()
    )

    def median_rows(case: str, by_tree: dict[str, list[float]]) -> str:
        return "\n".join(
            f"| {case}{k} | {statistics.median(v) * 1e3:.1f} ms |" for k, v in by_tree.items()
        )

    first_rows = median_rows("import carbonctx, then the first `with track()`", firsts)
    alone_rows = median_rows("the first `with track()` alone", alone)
    script_rows = median_rows("a script: import, one region, its energy, exit", scripts)
    first_text = "\n\n".join(
        "\n".join(
            [
                f"{'This tree' if not k else 'The tree before'}: {total} µs in {count} imports; "
                "the first three levels down to 1 ms (µs, cumulative; a module's imports above "
                "it):",
                "",
                "```",
                *(f"{c:8d}  {n}" for c, n in top),
                "```",
            ]
        )
        for k, (total, count, top) in first.items()
    )
    text = f"""# Import time

{machine()}

Median wall time of {args.runs} fresh interpreters per case, run alternately
(`benches/bench_import.py {" ".join(sys.argv[1:])}`).

| case | median | over a bare interpreter |
| --- | --- | --- |
{rows}

Timed inside the interpreter (simulated hardware, one GPU), from `import carbonctx` to the end
of the first region; the first region starts the sampler, whatever the import left to it:

| case | median |
| --- | --- |
{first_rows}
{alone_rows}
{script_rows}

The first region starts the sampler and makes the process's runtime: the settings (and attrs,
which they are made with), the rank and node detection of the distributed layer and the
runtime's own modules. What resolving needs (numpy, the per-name statistics, the result
classes, the carbon intensity service with its zones, tables and providers) is loaded by the
first batch of regions to resolve: on the resolver thread while the program runs (a fork waits
for it), or on the program's thread when it reads a result first. A process that is no rank of a
job does not load the distributed layer's GPU ownership, output paths or collectives. A script
that reads its result and exits loads all of it all the same: the script row is what a short
run pays in all, and it changes little; what changes is that the region itself, and a program
that does other work (I/O, the GPU, a loop) while the resolver thread loads, no longer waits.

What the first `with track()` imports on the program's thread (`-X importtime`, simulated
hardware), in each tree:

{first_text}

{breakdown()}
"""
    print(text)
    write_result("import", text)


if __name__ == "__main__":
    main()

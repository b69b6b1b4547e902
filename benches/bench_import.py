"""What ``import carbonctx`` adds to a bare interpreter, and what the first region then costs.

Each figure is the median wall time of fresh interpreters (subprocesses, run alternately):
``pass``, ``import carbonctx``, ``import numpy`` for scale; and, timed inside the interpreter,
``import carbonctx`` then one ``with track()`` on simulated hardware (``CARBONCTX_*`` variables
point it there), from the import to the end of the ``with``. Optionally a second tree
(``--before PATH``, its ``python`` folder, with its native module built) is timed the same way in
the same run. The ``-X importtime`` breakdown of what importing carbonctx still imports, and the
largest modules its first region imports, are written with the table.
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


# Timed inside the interpreter: from the import to the end of the first region.
FIRST_REGION = """
import time
t0 = time.perf_counter()
import carbonctx
with carbonctx.track("first"):
    pass
print(time.perf_counter() - t0)
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


def first_region(path: Path, sim_env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", FIRST_REGION],
        env=_env(path, sim_env),
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.split()[-1])


def importtime(code: str, path: Path | None) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, indented name) of each module ``code`` imports."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=_env(path),
        check=True,
        capture_output=True,
        text=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        rows.append((int(own), int(cumulative), name.rstrip()[1:]))
    return rows


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
    with SimulatedMachine() as sim:
        for _ in range(args.runs):
            for k, (code, path) in cases.items():
                times[k].append(timed(code, path))
            for k, path in trees.items():
                firsts[k].append(first_region(path, sim.env()))
    base = statistics.median(times["bare interpreter"])
    rows = "\n".join(
        f"| {k} | {statistics.median(v) * 1e3:.1f} ms | {(statistics.median(v) - base) * 1e3:+.1f} ms |"
        for k, v in times.items()
    )
    first_rows = "\n".join(
        f"| import carbonctx, then the first `with track()`{k} | {statistics.median(v) * 1e3:.1f} ms |"
        for k, v in firsts.items()
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

{breakdown()}
"""
    print(text)
    write_result("import", text)


if __name__ == "__main__":
    main()

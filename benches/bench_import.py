"""What ``import carbonctx`` adds to a bare interpreter, and what the first region then costs.

Each figure is the median wall time of fresh interpreters (subprocesses, run alternately):
``pass``, ``import carbonctx``, ``import numpy`` for scale, and ``import carbonctx`` then one
``with track()`` on simulated hardware. Optionally a second tree (``--before PATH``, its
``python`` folder) is timed the same way in the same run.
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

HERE = Path(__file__).resolve().parent
TREE = HERE.parent / "python"


def timed(code: str, path: Path | None) -> float:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0


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
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for k, (code, path) in cases.items():
            times[k].append(timed(code, path))
    base = statistics.median(times["bare interpreter"])
    rows = "\n".join(
        f"| {k} | {statistics.median(v) * 1e3:.1f} ms | {(statistics.median(v) - base) * 1e3:+.1f} ms |"
        for k, v in times.items()
    )
    text = f"""# Import time

{machine()}

Median wall time of {args.runs} fresh interpreters per case, run alternately.

| case | median | over a bare interpreter |
| --- | --- | --- |
{rows}
"""
    print(text)
    write_result("import", text)


if __name__ == "__main__":
    main()

"""Where a region's cold cost goes, counted rather than timed (issue 15): the cache lines a
``with track("step")`` fetches from memory after work that evicts the caches.

A child interpreter runs N iterations of one pass over a 2 MiB buffer and one
``with track("step")``, under valgrind with a 1 MiB last-level cache (so the pass evicts it);
runs of N1 and N2 iterations are diffed, so that start-up and the first region drop out, and so
are two runs with an empty ``with`` in place of the region: the difference of the differences,
divided by N2 - N1, is what a region adds. Counted by callgrind (cachegrind's cache model, one
profile per thread): the program's thread only (the sampler's thread runs as usual; the
resolver thread is kept asleep during the loop, its period set to an hour). A line fetched from
memory (an LL miss) costs tens of nanoseconds (latency, partly overlapped), so the counts say
where the microseconds go without the noise of a loaded machine. One-off events (a collection,
a first use) still leave a few lines per region of noise in the groups of shared code; the
groups of the region's own code are steady.

With ``--tracked``, a call of a ``@tracked`` function is counted over a plain call instead (the
decorated call's ``start`` and ``end`` are the region's code here); with ``--step``, an entry of
a ``carbonctx.step("step")`` handle (made once) over an empty ``with``; ``--output`` turns JSON
Lines output on (a temporary file) for any.

Needs ``valgrind``. Run: ``.venv/bin/python benches/loop_cost_lines.py [--before PATH]
[--tracked | --step] [--output]`` (PATH: another tree, its ``python`` folder with its native module
built, counted in the same run).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine

HERE = Path(__file__).resolve().parent
TREE = HERE.parent / "python"
N1, N2 = 50, 650

CHILD = """
import gc
import sys
import numpy as np
import carbonctx
from carbonctx.testing import SimulatedMachine, Wave

from carbonctx._measure import runtime

class Empty:
    def __enter__(self): return None
    def __exit__(self, *exc): return None

n, kind, output = int(sys.argv[1]), sys.argv[2], sys.argv[3]
runtime.RESOLVE_PERIOD_S = 3600.0  # the resolver thread sleeps through the loop
buf = np.zeros(2 << 20, dtype=np.uint8)
with SimulatedMachine(gpus=1, core=Wave.constant(20.0)) as sim:
    carbonctx.configure(**sim.settings(), output=output or None)
    track = carbonctx.track
    empty = Empty()

    @carbonctx.tracked(name="call")
    def decorated():
        return None

    def plain():
        return None

    handle = carbonctx.step("step")
    with track("warm"):
        pass
    with handle:
        pass
    decorated()
    carbonctx.flush()
    gc.collect()
    gc.disable()  # regions are not collectable; a collection in one run only would be noise
    if kind == "track":
        for _ in range(n):
            np.add(buf, 1, out=buf)
            with track("step"):
                pass
    elif kind == "empty":
        for _ in range(n):
            np.add(buf, 1, out=buf)
            with empty:
                pass
    elif kind == "step":
        for _ in range(n):
            np.add(buf, 1, out=buf)
            with handle:
                pass
    elif kind == "tracked":
        for _ in range(n):
            np.add(buf, 1, out=buf)
            decorated()
    else:
        for _ in range(n):
            np.add(buf, 1, out=buf)
            plain()
"""

#: (group, substrings of the function names in it), first match wins.
GROUPS = (
    (
        "the region's native code",
        (
            "_native::region::",
            "_native::span::",
            "_native::step::",
            "_native::context::",
            "Sampler::mark",
        ),
    ),
    ("PyO3's glue (trampoline, arguments)", ("pyo3::",)),
    ("the context variable (current region)", ("context.c:", "hamt.c:", "hamt_")),
    ("the pending map and name tags (dicts, ints)", ("dictobject.c:", "longobject.c:")),
    ("the with statement's method lookup", ("descrobject.c:", "methodobject.c:")),
    (
        "the region object (type call, allocation, GC, free)",
        ("typeobject.c:", "gcmodule.c:", "obmalloc.c:", "object.c:", "_PyObject_GC"),
    ),
    ("the interpreter (bytecode, calls)", ("ceval.c:", "call.c:", "pycore_")),
    ("anything else on the program's thread", ("",)),
)
#: The buffer pass (the same with and without regions): left out.
SKIP = ("UBYTE_", "ufunc", "PyArray", "npy_")
EVENTS = ("Ir", "ILmr", "DLmr", "DLmw")


def counts(tree: Path, n: int, kind: str, out: Path, output: str = "") -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONCTX_")}
    env["PYTHONPATH"] = str(tree)
    # A script file, not -c: callgrind writes the command line into its output, one line.
    script = out.with_suffix(".py")
    script.write_text(CHILD, encoding="utf-8")
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            "--LL=1048576,16,64",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(script),
            str(n),
            kind,
            output,
        ],
        env=env,
        check=True,
        capture_output=True,
    )


def per_function(path: Path) -> dict[str, list[int]]:
    """Events of the program's thread (callgrind's file ``-01``), by function (self cost)."""
    text = subprocess.run(
        [
            "callgrind_annotate",
            "--threshold=100",
            "--inclusive=no",
            f"--show={','.join(EVENTS)}",
            f"{path}-01",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    number = r"\s*(-?[\d,.]+)(?: \([^)]*\))?"
    row = re.compile(number * len(EVENTS) + r"\s+(\S.*)$")
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        m = row.match(line)
        if m is None or "PROGRAM TOTALS" in line:
            continue
        # One name per function: callgrind adds the recursion depth ('2) and the object file.
        name = re.sub(r"'\d+", "", m.group(len(EVENTS) + 1).split(" [")[0]).strip()
        vals = [int(x.replace(",", "").replace(".", "0")) for x in m.groups()[: len(EVENTS)]]
        prev = out.setdefault(name, [0] * len(EVENTS))
        out[name] = [p + v for p, v in zip(prev, vals, strict=True)]
    return out


def diff(a: dict[str, list[int]], b: dict[str, list[int]]) -> dict[str, list[int]]:
    zero = [0] * len(EVENTS)
    return {
        k: [y - x for x, y in zip(a.get(k, zero), b.get(k, zero), strict=True)]
        for k in set(a) | set(b)
    }


def grouped(
    track: dict[str, list[int]], empty: dict[str, list[int]], regions: int
) -> dict[str, list[float]]:
    """Per region: what the loop with regions adds over the loop with an empty ``with``."""
    sums = {g: [0.0] * len(EVENTS) for g, _ in GROUPS}
    for name in set(track) | set(empty):
        if any(s in name for s in SKIP):
            continue
        group = next(g for g, keys in GROUPS if any(k in name for k in keys))
        a, b = track.get(name, [0] * len(EVENTS)), empty.get(name, [0] * len(EVENTS))
        for i in range(len(EVENTS)):
            sums[group][i] += (a[i] - b[i]) / regions
    return sums


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--tracked", action="store_true", help="a decorated call over a plain one")
    ap.add_argument("--step", action="store_true", help="a step's entry over an empty with")
    ap.add_argument("--output", action="store_true", help="JSON Lines output on")
    args = ap.parse_args()
    measured, baseline = (
        ("tracked", "plain")
        if args.tracked
        else ("step", "empty")
        if args.step
        else ("track", "empty")
    )
    trees = {"this tree": TREE}
    if args.before is not None:
        trees["before"] = args.before / "python"
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, tree in trees.items():
            diffs = {}
            output = str(work / "out.jsonl") if args.output else ""
            for kind in (measured, baseline):
                a, b = work / f"{len(results)}{kind}.a", work / f"{len(results)}{kind}.b"
                counts(tree, N1, kind, a, output)
                counts(tree, N2, kind, b, output)
                diffs[kind] = diff(per_function(a), per_function(b))
            results[label] = grouped(diffs[measured], diffs[baseline], N2 - N1)
    head = " | ".join(f"{label}: {e}" for label in trees for e in EVENTS[1:])
    lines = [f"| group | {head} |", "| --- |" + " --- |" * (len(trees) * (len(EVENTS) - 1))]
    totals = {label: [0.0] * len(EVENTS) for label in trees}
    for g, _ in GROUPS:
        cells = []
        for label in trees:
            v = results[label][g]
            totals[label] = [t + x for t, x in zip(totals[label], v, strict=True)]
            cells += [f"{x:.1f}" for x in v[1:]]
        lines.append(f"| {g} | {' | '.join(cells)} |")
    cells = [f"**{x:.1f}**" for label in trees for x in totals[label][1:]]
    lines.append(f"| all of these | {' | '.join(cells)} |")
    what, over = (
        ("a `@tracked` call", "a plain call")
        if args.tracked
        else ("an entry of a `carbonctx.step` handle", "an empty `with`")
        if args.step
        else ('a `with track("step")`', "an empty `with`")
    )
    text = f"""{machine()}

`benches/loop_cost_lines.py {" ".join(sys.argv[1:])}`: what {what} adds over {over}, per
region, after a pass over a 2 MiB buffer, on the program's thread, under callgrind with a 1 MiB
last-level cache (runs of {N1} and {N2} iterations diffed, with regions and with {over}; JSON
Lines output {"on" if args.output else "off"}). ILmr: lines of code fetched from memory; DLmr,
DLmw: lines of data read, written.

{chr(10).join(lines)}
"""
    print(text)


if __name__ == "__main__":
    main()

"""What a region costs in a realistic loop (issue 15): each region is timed on its own right after
about 20 ms of other work that evicts the caches (passes over a buffer larger than L2), with
every core busy (one spinning process per CPU, started here and stopped at the end).

Per repetition, in turn: an empty ``with`` (the baseline), ``with carbonctx.track("step")``,
``with step`` (a reusable handle, ``step = carbonctx.step("step")`` made once), a
plain call of an empty function (the baseline of the decorator) and a call of the same function
decorated with ``@carbonctx.tracked``; each after its own 20 ms of cache-evicting work. Medians
over the repetitions, with JSON Lines output off and on, in the same run.

Run: ``.venv/bin/python benches/bench_loop_cost.py [repetitions]``; ``--before`` writes
``loop-cost-before.md``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import carbonctx
from _common import machine, simulated, write_result
from carbonctx.testing import Wave

#: Bytes touched between two timed regions: larger than the L2 (and most L3 slices) of the
#: machines this runs on, so the region's code and data are cold.
EVICT_BYTES = 16 << 20
#: The other work between two timed regions.
WORK_S = 0.020
KINDS = ("empty", "track", "step", "plain", "tracked")
#: With ``--floor``, what CPython itself charges for the shape of a region, cold: a new object of
#: a C type entered and left (``threading.Lock``: two C methods, no work), and a context
#: variable set and reset (what ``carbonctx.current()`` needs per region).
FLOOR_KINDS = ("lock", "ctxvar")


class Empty:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def spinners() -> list[subprocess.Popen[bytes]]:
    """One busy process per CPU (not niced): every core stays busy during the bench."""
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]


def evict_passes(buf: np.ndarray) -> int:
    """Passes over the buffer that take about ``WORK_S`` on this machine (as loaded now)."""
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < 0.2:
        np.add(buf, 1, out=buf)
        n += 1
    return max(1, round(n * WORK_S / (time.perf_counter() - t)))


def run(reps: int, buf: np.ndarray, passes: int, kinds: tuple[str, ...]) -> dict[str, list[int]]:
    import contextvars
    import threading

    pc = time.perf_counter_ns
    lock = threading.Lock
    var: contextvars.ContextVar[object] = contextvars.ContextVar("floor", default=None)
    track = carbonctx.track
    step = carbonctx.step("step")
    empty = Empty()

    def plain() -> None:
        return None

    @carbonctx.tracked(name="call")
    def decorated() -> None:
        return None

    calls: dict[str, Callable[[], None]] = {"plain": plain, "tracked": decorated}
    out: dict[str, list[int]] = {k: [] for k in kinds}
    with track("warm"):
        pass
    with step:
        pass
    decorated()
    for _ in range(reps):
        for kind in kinds:
            for _ in range(passes):
                np.add(buf, 1, out=buf)
            if kind == "empty":
                t = pc()
                with empty:
                    pass
                dt = pc() - t
            elif kind == "track":
                t = pc()
                with track("step"):
                    pass
                dt = pc() - t
            elif kind == "step":
                t = pc()
                with step:
                    pass
                dt = pc() - t
            elif kind == "lock":
                t = pc()
                with lock():
                    pass
                dt = pc() - t
            elif kind == "ctxvar":
                t = pc()
                var.reset(var.set(kind))
                dt = pc() - t
            else:
                f = calls[kind]
                t = pc()
                f()
                dt = pc() - t
            out[kind].append(dt)
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    reps = int(args[0]) if args else 60
    floor = "--floor" in sys.argv
    kinds = KINDS + FLOOR_KINDS if floor else KINDS
    buf = np.zeros(EVICT_BYTES, dtype=np.uint8)
    procs = spinners()
    try:
        time.sleep(0.2)
        passes = evict_passes(buf)
        med: dict[str, dict[str, float]] = {}
        for label in ("off", "on"):
            with simulated(gpus=1, core=Wave.constant(20.0)):
                if label == "on":
                    out = Path(tempfile.mkdtemp(prefix="carbonctx-loop-")) / "r.jsonl"
                    carbonctx.configure(output=str(out))
                xs = run(reps, buf, passes, kinds)
                carbonctx.flush()
            med[label] = {k: statistics.median(v) / 1000 for k, v in xs.items()}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    rows = []
    for label in ("off", "on"):
        m = med[label]
        rows.append(
            f"| output {label} | {m['empty']:.2f} | {m['track']:.2f} | "
            f"**+{m['track'] - m['empty']:.2f}** | {m['step']:.2f} | "
            f"**+{m['step'] - m['empty']:.2f}** | {m['plain']:.2f} | {m['tracked']:.2f} | "
            f"**+{m['tracked'] - m['plain']:.2f}** |"
            + (
                f" {m['lock']:.2f} (+{m['lock'] - m['empty']:.2f}) | {m['ctxvar']:.2f} |"
                if floor
                else ""
            )
        )
    floor_head = " `with threading.Lock()` (over empty) | context variable set + reset |"
    floor_rule = " --- | --- |"
    floor_text = (
        "\nThe last two columns (`--floor`): what CPython charges cold for the shape of a region "
        "alone: a new object of a C type entered and left (two C methods that do no work), and "
        "a context variable set and reset, each timed the same way.\n"
    )
    if not floor:
        floor_head = floor_rule = floor_text = ""
    text = f"""# Region cost in a realistic loop

{machine()}

Each region timed on its own after {WORK_S * 1000:.0f} ms of passes over a
{EVICT_BYTES >> 20} MiB buffer ({passes} passes, calibrated at the start), with
{os.cpu_count()} spinning processes (one per CPU, not niced) keeping every core busy; simulated
hardware (package, core and DRAM zones, one GPU). Medians of {reps} repetitions, the five kinds
in turn in each; µs. `with step`: a handle made once (``carbonctx.step("step")``), entered.

| | empty `with` | `with track("step")` | added | `with step` (a `carbonctx.step`) | added | plain call | `@tracked` call | added |{floor_head}
| --- | --- | --- | --- | --- | --- | --- | --- | --- |{floor_rule}
{chr(10).join(rows)}
{floor_text}"""
    print(text)
    write_result("loop-cost-before" if "--before" in sys.argv else "loop-cost", text)


if __name__ == "__main__":
    main()

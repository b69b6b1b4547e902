"""What an epoch end of ``carbonctx.epochs()`` costs the loop (issue 15): the time from the end
of one epoch's body to the start of the next, against a plain ``for`` loop in the same run.

Simulated hardware with a GPU whose energy counter updates every 100 ms (``gpu_update_s``):
the sampler's lag is then about 100 ms. Epochs of 50 ms busy work; medians and worst over
``REPEATS`` runs of ``EPOCHS`` epochs.

Run: ``.venv/bin/python benches/bench_epochs.py``.
"""

from __future__ import annotations

import statistics
import sys
import time

import carbonctx
from _common import busy, machine, simulated, write_result
from carbonctx.testing import Wave

EPOCHS = 20
REPEATS = 3
BODY_S = 0.05


def gaps(loop: object) -> list[float]:
    out: list[float] = []
    t_end = None
    for _ in loop:  # type: ignore[attr-defined]
        t = time.perf_counter()
        if t_end is not None:
            out.append(t - t_end)
        busy(BODY_S)
        t_end = time.perf_counter()
    return out


def main() -> None:
    runs: dict[str, list[float]] = {"epochs": [], "plain": []}
    worst: dict[str, list[float]] = {"epochs": [], "plain": []}
    with simulated(gpus=1, gpu_update_s=0.1, core=Wave.constant(20.0)):
        gaps(carbonctx.epochs(2, progress=False, quiet=True))  # start the sampler
        for _ in range(REPEATS):
            for kind in runs:
                loop = (
                    carbonctx.epochs(EPOCHS, progress=False, quiet=True)
                    if kind == "epochs"
                    else range(EPOCHS)
                )
                xs = gaps(loop)
                runs[kind].append(statistics.median(xs))
                worst[kind].append(max(xs))
    m = {k: statistics.median(v) for k, v in runs.items()}
    w = {k: max(v) for k, v in worst.items()}
    text = f"""# Epoch ends

{machine()}

Simulated hardware, a GPU counter updating every 100 ms; {EPOCHS} epochs of {BODY_S * 1000:.0f} ms
busy work, {REPEATS} runs. The time from the end of one epoch's body to the start of the next.

| loop | median per epoch end | worst |
| --- | --- | --- |
| `for epoch in carbonctx.epochs({EPOCHS})` | {m["epochs"] * 1e3:.3f} ms | {w["epochs"] * 1e3:.3f} ms |
| `for epoch in range({EPOCHS})` (baseline) | {m["plain"] * 1e3:.4f} ms | {w["plain"] * 1e3:.4f} ms |
"""
    print(text)
    write_result("epochs-before" if "--before" in sys.argv else "epochs", text)


if __name__ == "__main__":
    main()

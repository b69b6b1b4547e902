"""``carbonctx demo``: a small training-like loop, measured per step and per epoch."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings

import numpy as np

import carbonctx
from carbonctx import _config, _native
from carbonctx.testing import SimulatedMachine, Wave

__all__ = ["register", "run_demo"]


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number, 1 or more, not {text!r}")
    return n


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="measure a built-in training-like example",
        description="Run a small training-like loop (NumPy) with tracked steps and epochs. "
        "Uses the machine's counters where it has them and simulated hardware otherwise.",
    )
    demo.add_argument("--epochs", type=_count, default=3, help="epochs (default: 3)")
    demo.add_argument("--steps", type=_count, default=150, help="steps per epoch (default: 150)")
    demo.add_argument(
        "--simulate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="simulated hardware: auto (when no counter is found), yes, no",
    )
    demo.add_argument("-o", "--output", default="carbonctx-demo.jsonl")
    demo.add_argument("--trace", default="carbonctx-demo.trace.json")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(
        steps=args.steps,
        epochs=args.epochs,
        simulate=args.simulate,
        output=args.output,
        trace=args.trace,
    )


def run_demo(
    *, steps: int, epochs: int, simulate: str, output: str | None, trace: str | None
) -> int:
    if output:
        # The demo's records are this run's only: a second `carbonctx report` of the file
        # must not merge two runs (configure(output=...) appends, as a training job wants).
        try:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
            with open(output, "w", encoding="utf-8"):
                pass
        except OSError as e:
            print(f"carbonctx demo: cannot write {output}: {e}; no records", file=sys.stderr)
            output = None
    found = _native.discover(**_config.machine(_config.build(None, {})))
    counters = [s for s in found["sources"] if s["method"] != "estimate"]
    sim: SimulatedMachine | None = None
    if simulate == "yes" or (simulate == "auto" and not counters):
        gpus = 1 if shutil.which("cc") or shutil.which("gcc") else 0
        sim = SimulatedMachine(
            package=Wave(35.0, 110.0, 0.05), gpus=gpus, gpu_update_s=0.02
        ).start()
        carbonctx.configure(**sim.settings(), output=output)
        what = "RAPL package and DRAM" + (" and one GPU" if gpus else "")
        print(
            f"No energy counters here: measuring SIMULATED hardware ({what}) that follows a "
            "35/110 W square wave (its GPU counter moves every 20 ms).\n"
            "Run `carbonctx devices` to see what this machine has and why.\n"
        )
    else:
        carbonctx.configure(output=output)
        print("Measuring this machine's energy sources (see `carbonctx devices`).\n")

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((256, 256)) * 0.05
    w2 = rng.standard_normal((256, 10)) * 0.05

    @carbonctx.tracked(name="train_step")
    def train_step(x: np.ndarray) -> float:
        nonlocal w1
        h = np.tanh(x @ w1)
        y = h @ w2
        grad = x.T @ (h * (1 - h * h)) * 1e-4
        w1 -= grad
        return float(np.mean(y * y))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", carbonctx.CarbonctxWarning)
            for epoch in range(epochs):
                with carbonctx.track("epoch", tags={"epoch": epoch}) as m:
                    loss = 0.0
                    for _ in range(steps):
                        loss = train_step(rng.standard_normal((128, 256)))
                r = m.result()
                print(
                    f"epoch {epoch}: {r.duration_s:6.2f} s  {r.energy_j:8.2f} J "
                    f"(cpu {r.cpu_j:.2f}, dram {r.dram_j:.2f}, gpu {r.gpu_j:.2f})  "
                    f"± {r.uncertainty_j or 0:.2f} J  "
                    f"{r.co2_g or 0:.4f} gCO2e  loss {loss:.4f}"
                )
            print()
            print(carbonctx.stats())
            last = carbonctx.recent()[-1]
            if last.carbon is not None:
                z = last.carbon["zone"]
                p = last.carbon["periods"][0]
                print(
                    f"\ncarbon intensity {last.intensity:.0f} gCO2e/kWh for zone {z['zone']} "
                    f"(chosen by: {z['rule']}; from: {p['dataset']}, {p['source']})"
                )
            if trace:
                try:
                    carbonctx.write_trace(trace)
                except OSError as e:
                    print(
                        f"carbonctx demo: cannot write {trace}: {e}; no timeline", file=sys.stderr
                    )
                else:
                    where = os.path.abspath(trace)
                    print(f"timeline: {where} (open it in https://ui.perfetto.dev)")
            if output:
                carbonctx.flush()
                print(
                    f"records:  {os.path.abspath(output)} (this run's only; "
                    f"try: carbonctx report {output})"
                )
    finally:
        carbonctx.configure()  # stop the sampler before the simulated hardware goes away
        if sim is not None:
            sim.close()
    sys.stdout.flush()
    return 0

"""``carbonctx run -- CMD``: measure a whole command."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from carbonctx._measure import process as _process
from carbonctx._results.units import format_table

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "run",
        help="measure a command",
        description="Run a command and measure the machine's energy while it runs. "
        "Exit status is the command's.",
    )
    r.add_argument("-o", "--output", default=None, help="append a JSON Lines record here")
    r.add_argument("--name", default="run", help="region name (default: run)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    r.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import carbonctx

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "usage: carbonctx run [-o OUTPUT] [--name NAME] -- CMD [ARGS...]\n"
            "carbonctx run: give a command after --, e.g. carbonctx run -- python train.py",
            file=sys.stderr,
        )
        return 2
    carbonctx.configure(output=args.output, window=10)
    # The region opens (and the sampler starts) before the command does, so that all of the
    # command is measured, its start-up included.
    with carbonctx.track(args.name, tags={"command": cmd}) as m:
        try:
            proc = subprocess.Popen(cmd)
        except OSError as e:
            print(f"carbonctx run: cannot start {cmd[0]!r}: {e}", file=sys.stderr)
            return 127
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
    r = m.result()
    if "sampler" in r.missing:
        rt = _process.current_runtime()
        why = (rt.start_error if rt is not None else None) or "no sampler"
        print(
            f"\ncarbonctx: `{' '.join(cmd)}` exited with {rc}; it was not measured: {why}",
            file=sys.stderr,
        )
        return rc if rc >= 0 else 128 - rc
    rows = [
        [sid, s.method, f"{s.joules:.2f} J" if s.joules is not None else "missing"]
        for sid, s in r.by_source.items()
    ]
    print(
        f"\ncarbonctx: `{' '.join(cmd)}` exited with {rc} after {r.duration_s:.2f} s",
        file=sys.stderr,
    )
    print("scope: the whole machine (every process), not the command alone", file=sys.stderr)
    if rows:
        print(format_table(["source", "method", "energy"], rows), file=sys.stderr)
    co2 = f"{r.co2_g:.3f} gCO2e" if r.co2_g is not None else "CO2 unknown"
    zone = f" (zone {r.zone}, {r.intensity:.0f} g/kWh)" if r.intensity is not None else ""
    est = " — includes an ESTIMATE" if r.estimated else ""
    print(
        f"total: {r.energy_j:.2f} J = {r.energy_kwh * 1e3:.4f} Wh, {co2}{zone}{est}",
        file=sys.stderr,
    )
    if args.output:
        print(f"records: {args.output}", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc

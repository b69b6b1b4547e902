"""The ``carbonctx`` command.

carbonctx demo                       # a built-in training-like example, measured
carbonctx run -- python train.py     # measure a whole command
carbonctx devices                    # what was found, what was not, why, and what to do
carbonctx report run.jsonl --trace trace.json
carbonctx intensity --forecast --hours 6
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _print_devices(info: dict[str, Any], out: Any) -> None:
    srcs = info["sources"]
    if srcs:
        print("Energy sources in use:", file=out)
        for s in srcs:
            st = s.get("status") or {}
            state = "FAILED: " + str(st.get("last_error")) if st.get("failed") else "ok"
            print(
                f"  {s['id']:<28} {s['domain']:<8} {s['method']:<17} every "
                f"{s['interval_s'] * 1e3:g} ms  {s['label']}  [{state}]",
                file=out,
            )
    else:
        print("No energy source could be used.", file=out)
    if info.get("alternatives"):
        print("\nAlso available (same domains, not read):", file=out)
        for s in info["alternatives"]:
            print(f"  {s['id']:<28} {s['domain']:<8} {s['label']}", file=out)
    if info.get("unavailable"):
        print("\nNot usable:", file=out)
        for u in info["unavailable"]:
            print(f"  [{u['backend']}] {u['what']}: {u['reason']}", file=out)
            if u.get("hint"):
                print(f"      what to do: {u['hint']}", file=out)
    if any(s["method"] == "estimate" for s in srcs):
        print(
            "\nCPU energy is an ESTIMATE (utilisation × TDP), labelled so in every result.",
            file=out,
        )


def cmd_devices(args: argparse.Namespace) -> int:
    import carbonctx

    info = carbonctx.devices()
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        print()
    else:
        _print_devices(info, sys.stdout)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import carbonctx
    from carbonctx._report import format_table

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


def cmd_report(args: argparse.Namespace) -> int:
    if os.path.isdir(args.file):
        from carbonctx._forecast import report_dir

        return report_dir(args.file, args.html)
    from carbonctx._report import (
        chrome_trace,
        format_stats,
        read_jsonl,
        stats_from_records,
        write_csv,
    )

    try:
        regions, power, bad = read_jsonl(args.file)
    except OSError as e:
        print(f"carbonctx report: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    total_j = sum(float(r.get("energy_j") or 0.0) for r in regions if r.get("parent") is None)
    total_g = sum(float(r.get("co2_g") or 0.0) for r in regions if r.get("parent") is None)
    print(
        f"{args.file}: {len(regions)} regions"
        + (f", {bad} unreadable lines skipped" if bad else "")
    )
    print(f"top-level total: {total_j:.2f} J ({total_j / 3.6e6 * 1e3:.4f} Wh), {total_g:.4f} gCO2e")
    print()
    print(format_stats(stats_from_records(regions).values()))
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as f:
            json.dump(chrome_trace(regions, power), f)
        print(f"\ntrace written to {args.trace} (open it in https://ui.perfetto.dev)")
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as f:
            write_csv(regions, f)
        print(f"CSV written to {args.csv}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from carbonctx._demo import run_demo

    return run_demo(
        steps=args.steps,
        epochs=args.epochs,
        simulate=args.simulate,
        output=args.output,
        trace=args.trace,
    )


def build_parser() -> argparse.ArgumentParser:
    from carbonctx import __version__

    p = argparse.ArgumentParser(
        prog="carbonctx",
        description="Energy and CO2 of code, down to a single training step.",
    )
    p.add_argument("--version", action="version", version=f"carbonctx {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    d = sub.add_parser("devices", help="list energy sources, and why others cannot be used")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_devices)

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

    rep = sub.add_parser("report", help="summarise a JSON Lines file, or a directory of run logs")
    rep.add_argument("file", help="a JSON Lines file, or a directory of epochs() run logs")
    rep.add_argument("--html", help="with a directory: write a one-page HTML report here")
    rep.add_argument("--trace", help="write a Chrome trace / Perfetto JSON timeline here")
    rep.add_argument("--csv", help="write the regions as CSV here")
    rep.set_defaults(func=cmd_report)

    demo = sub.add_parser(
        "demo",
        help="measure a built-in training-like example",
        description="Run a small training-like loop (NumPy) with tracked steps and epochs. "
        "Uses the machine's counters where it has them and simulated hardware otherwise.",
    )
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--steps", type=int, default=150)
    demo.add_argument(
        "--simulate",
        choices=["auto", "yes", "no"],
        default="auto",
        help="simulated hardware: auto (when no counter is found), yes, no",
    )
    demo.add_argument("-o", "--output", default="carbonctx-demo.jsonl")
    demo.add_argument("--trace", default="carbonctx-demo.trace.json")
    demo.set_defaults(func=cmd_demo)

    try:
        from carbonctx._intensity_cli import register
    except ImportError:  # pragma: no cover - the intensity module is part of the package
        pass
    else:
        register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from carbonctx.errors import ConfigurationError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = int(args.func(args))
    except ConfigurationError as e:
        print(f"carbonctx: {e}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

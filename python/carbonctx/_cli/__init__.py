"""The ``carbonctx`` command: one module per subcommand, each with a ``register(sub)``.

carbonctx demo                       # a built-in training-like example, measured
carbonctx run -- python train.py     # measure a whole command
carbonctx devices                    # what was found, what was not, why, and what to do
carbonctx report run.jsonl --trace trace.json
carbonctx intensity --forecast --hours 6
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from carbonctx._cli import demo, devices, intensity, report, run
from carbonctx.errors import ConfigurationError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from carbonctx import __version__

    p = argparse.ArgumentParser(
        prog="carbonctx",
        description="Energy and CO2 of code, down to a single training step.",
    )
    p.add_argument("--version", action="version", version=f"carbonctx {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for command in (devices, run, report, demo, intensity):
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
    except ConfigurationError as e:
        print(f"carbonctx: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``carbonctx report big.jsonl | head``): what it did not read
        # goes nowhere, without a traceback, and the status says so as a shell's would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13  # SIGPIPE
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

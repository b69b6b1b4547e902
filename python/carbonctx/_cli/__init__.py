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
import warnings
from collections.abc import Sequence

from carbonctx._cli import demo, devices, intensity, report, run
from carbonctx.errors import CarbonctxWarning, ConfigurationError

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
    for sp in sub.choices.values():
        sp.set_defaults(_parser=sp)  # unknown options are said with the command's own usage
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Said with the usage of the parser that was given them: the command's, unless they
        # came before the command's name (``carbonctx --bogus devices``).
        given = list(sys.argv[1:] if argv is None else argv)
        at = given.index(args.cmd) if args.cmd in given else len(given)
        owner = parser if set(extra) & set(given[:at]) else getattr(args, "_parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    default = warnings.formatwarning

    def plain(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        # carbonctx's own warnings said as a command says them, without the file, line and
        # source line of the library code that raised them (noise to someone who typed a
        # command); others as Python says them.
        if issubclass(category, CarbonctxWarning):
            text = str(message).removeprefix("carbonctx: ")  # some say it themselves
            return f"carbonctx: warning: {text}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = plain
    try:
        return _main(args)
    finally:
        warnings.formatwarning = default


def _main(args: argparse.Namespace) -> int:
    try:
        rc = int(args.func(args))
        if sys.stdout is not None:  # None when started with descriptor 1 closed
            sys.stdout.flush()
    except ConfigurationError as e:
        print(f"carbonctx: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C (``carbonctx run`` takes it itself and passes on the command's status).
        print("carbonctx: interrupted", file=sys.stderr)
        return 128 + 2  # SIGINT, as a shell says it
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

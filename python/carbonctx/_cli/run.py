"""``carbonctx run -- CMD``: measure a whole command."""

from __future__ import annotations

import argparse
import errno
import math
import os
import shlex
import signal
import sys
import time

from carbonctx._measure import process as _process
from carbonctx._results.units import format_table

__all__ = ["KILL_AFTER_S", "register"]

#: How long a command may take to exit after a forwarded signal before it is killed (default).
KILL_AFTER_S = 10.0
#: Signals forwarded to the command.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_WAITED = {*FORWARDED, signal.SIGCHLD}
#: Signals Python ignores that a command must get back at their defaults (as Popen does).
_RESTORED = tuple(
    getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n)
)
#: si_code of a signal the kernel sent (a key typed at the terminal, a hangup): the terminal's
#: foreground process group, the command included, got it too.
_SI_KERNEL = 0x80
#: Longest sleep between checks of the command (a SIGCHLD can go to a thread that was started
#: before this command blocked it).
_WAKE_S = 0.5


def _say(text: str) -> None:
    """Print to stderr; a stderr that is gone (``carbonctx run -- cmd 2>&1 | head``, a full
    disk, a closed descriptor) is given up on, so that this process's status stays the
    command's, as it would be without carbonctx."""
    if sys.stderr is None:
        return  # started with descriptor 2 closed: print() would write to stdout instead
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            pass


def _find(name: str) -> str | None:
    """The file a shell runs for ``name``: the first executable regular file on PATH (a
    directory or a file without the x bit is skipped; the first of the latter is the answer
    when there is nothing else, so that its "permission denied" is said); a name with a ``/``
    is itself. None when there is no such command."""
    if "/" in name:
        return name
    denied = None
    for folder in os.get_exec_path(os.environ):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = denied or path
    return denied


def _start(cmd: list[str], mask: set[int | signal.Signals]) -> int:
    """Start the command as a shell would; its pid, or minus the status a shell would give
    when it cannot be started (127 not found, 126 found but cannot be run), said on stderr."""
    path = _find(cmd[0])
    if path is None:
        _say(f"carbonctx run: {cmd[0]}: command not found")
        return -127
    argv = cmd
    try:
        try:
            return os.posix_spawn(path, argv, os.environ, setsigmask=mask, setsigdef=_RESTORED)
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                raise
            # Neither a binary this machine runs nor a ``#!`` script: a text file is a shell
            # script, run by sh (as shells, env, nice and timeout do); a binary is refused.
            with open(path, "rb") as f:
                head = f.read(80)
            if b"\0" in head.split(b"\n", 1)[0]:
                raise
            argv = ["/bin/sh", path, *cmd[1:]]
            return os.posix_spawn(argv[0], argv, os.environ, setsigmask=mask, setsigdef=_RESTORED)
    except OSError as e:
        why = e.strerror
        if e.errno == errno.ENOENT and os.path.exists(path):
            why = f"its interpreter ({_interpreter(path)}) was not found"
        elif os.path.isdir(path):
            why = "it is a directory"
        _say(f"carbonctx run: cannot start {cmd[0]!r}: {why}")
        # As a shell: 127 when there is no such command (or no interpreter for it), 126 when
        # there is one that cannot be run (not executable, a directory, a binary of another
        # kind, too long an argument list).
        return -127 if e.errno == errno.ENOENT else -126


def _interpreter(path: str) -> str:
    """The ``#!`` line's program, for saying why a script could not start."""
    try:
        with open(path, "rb") as f:
            line = f.readline(256)
    except OSError:
        return "its #! line"
    if not line.startswith(b"#!"):
        return "the loader it names"
    parts = line[2:].split()
    return repr(os.fsdecode(parts[0])) if parts else "an empty #! line"


def _wait(pid: int, kill_after: float) -> int:
    """Wait for the command, forwarding signals; its exit code (-N when signal N ended it)."""
    deadline: float | None = None
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        if deadline is not None and now >= deadline and not killed:
            _say(
                f"carbonctx run: the command did not exit {kill_after:g} s after the signal; "
                "killing it (SIGKILL)"
            )
            os.kill(pid, signal.SIGKILL)
            killed = True
        timeout = _WAKE_S if deadline is None or killed else min(_WAKE_S, deadline - now)
        info = signal.sigtimedwait(_WAITED, max(0.0, timeout))
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        name = signal.Signals(info.si_signo).name
        if info.si_code == _SI_KERNEL:
            continue  # typed at the terminal: the command got it already, and decides
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            continue
        if deadline is None:
            deadline = time.monotonic() + kill_after
        _say(
            f"carbonctx run: forwarded {name} to the command; waiting up to {kill_after:g} s "
            "for it to exit"
        )


def _kill_after(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(
            f"--kill-after takes a number of seconds, 0 or more, not {text!r} "
            "(e.g. --kill-after 30)"
        )
    return v


def _status(rc: int) -> str:
    """How the command ended, as a shell would say it."""
    if rc >= 0:
        return f"exited with {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"was ended by {name} (exit status {128 - rc})"


_USAGE = "carbonctx run [-h] [-o OUTPUT] [--name NAME] [--kill-after SECONDS] -- CMD [ARGS ...]"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "run",
        help="measure a command",
        usage=_USAGE,
        description="Run a command and measure the machine's energy while it runs. "
        "Exit status is the command's (128 + N when signal N ended it; 127 when it is not "
        "found, 126 when it cannot be run; PATH is searched and a script without #! is run by sh, "
        "as a shell does); its standard streams and environment are its own. "
        "SIGTERM, SIGINT and SIGHUP sent to carbonctx are forwarded to the command, which is "
        "killed if it has not exited --kill-after seconds later; the region is recorded either "
        "way. Under a launcher (torchrun, srun, mpirun) each carbonctx is a rank: its record "
        "goes to the rank's file and holds the rank's part of its node.",
    )
    r.add_argument("-o", "--output", default=None, help="append a JSON Lines record here")
    r.add_argument("--name", default="run", help="region name (default: run)")
    r.add_argument(
        "--kill-after",
        type=_kill_after,
        default=KILL_AFTER_S,
        metavar="SECONDS",
        help="after forwarding SIGTERM, SIGINT or SIGHUP to the command, wait this long for "
        f"it to exit, then kill it (SIGKILL) (default: {KILL_AFTER_S:g})",
    )
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    r.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import carbonctx

    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _say(
            f"usage: {_USAGE}\n"
            "carbonctx run: give a command after --, e.g. carbonctx run -- python train.py"
        )
        return 2
    carbonctx.configure(output=args.output, window=10)
    # SIGTERM, SIGINT and SIGHUP are taken synchronously (sigtimedwait), with SIGCHLD: they are
    # blocked before the sampler's threads start, so that those threads inherit the mask and
    # a signal to this process waits for the loop below instead of killing it.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    try:
        # The region opens (and the sampler starts) before the command does, so that all of
        # the command is measured, its start-up included.
        with carbonctx.track(args.name, tags={"command": cmd}) as m:
            pid = _start(cmd, old_mask)
            if pid < 0:
                return -pid
            rc = _wait(pid, args.kill_after)
    finally:
        while signal.sigtimedwait(_WAITED, 0) is not None:
            pass  # signals that came after the command ended: this process is ending anyway
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    r = m.result()
    shown = shlex.join(cmd)
    rt = _process.current_runtime()
    if "sampler" in r.missing:
        why = (rt.start_error if rt is not None else None) or "no sampler"
        _say(f"\ncarbonctx: `{shown}` {_status(rc)}; it was not measured: {why}")
        return rc if rc >= 0 else 128 - rc
    rows = [
        [sid, s.method, f"{s.joules:.2f} J" if s.joules is not None else "missing"]
        for sid, s in r.by_source.items()
    ]
    _say(f"\ncarbonctx: `{shown}` {_status(rc)} after {r.duration_s:.2f} s")
    if r.rank is None:
        _say("scope: the whole machine (every process), not the command alone")
    else:
        # Under a launcher (torchrun, srun, mpirun) each rank's carbonctx is a rank: its figures
        # are the rank's part of its node, so that the ranks' records add up to each node once.
        _say(
            f"scope: rank {r.rank}'s part of node {r.node} (its own GPUs and a share of the "
            "node's CPU and DRAM, every process), not the command alone"
        )
    if rows:
        _say(format_table(["source", "method", "energy"], rows))
    co2 = f"{r.co2_g:.3f} gCO2e" if r.co2_g is not None else "CO2 unknown"
    zone = f" (zone {r.zone}, {r.intensity:.0f} g/kWh)" if r.intensity is not None else ""
    est = " — includes an ESTIMATE" if r.estimated else ""
    _say(f"total: {r.energy_j:.2f} J = {r.energy_kwh * 1e3:.4f} Wh, {co2}{zone}{est}")
    # The file written: a rank's path has its rank added (out.rank1.jsonl), and the output may
    # come from CARBONCTX_OUTPUT rather than -o.
    recorder = rt.recorder if rt is not None else None
    if recorder is not None and r.recorded:
        _say(f"records: {recorder.path}")
    elif recorder is not None:
        _say(f"records: none; {recorder.path} could not be written (see the warning above)")
    return rc if rc >= 0 else 128 - rc

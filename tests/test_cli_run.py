"""``carbonctx run -- CMD`` as a shell runs it: exit statuses a shell would give, the command's
standard streams untouched, and the command's status kept whatever happens to carbonctx's own
streams. Every test starts a real ``carbonctx`` process; only the hardware is simulated."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonctx.testing import SimulatedMachine

#: Generous bound on a command that should take about a second: a hang fails the test.
WAIT_S = 60
CARBONCTX = [sys.executable, "-m", "carbonctx"]


def run(
    *args: str, env: dict[str, str], input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CARBONCTX, "run", *args],
        env={**os.environ, **env},
        input=input,
        capture_output=True,
        timeout=WAIT_S,
        check=False,
    )


def regions(path: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if '"region"' in ln]


# ------------------------------------------------------------------------ exit statuses


def test_a_file_that_cannot_be_executed_exits_126(sim: SimulatedMachine, tmp_path: Path) -> None:
    """As a shell: 126 when the command is there but cannot be run, 127 when it is not there."""
    plain = tmp_path / "script.sh"
    plain.write_text("echo hi\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    for target, status in ((plain, 126), (tmp_path, 126), (tmp_path / "absent", 127)):
        r = run("--", str(target), env=sim.env())
        assert r.returncode == status, (target, r.stderr)
        assert b"cannot start" in r.stderr and b"Traceback" not in r.stderr


def test_a_script_without_a_shebang_is_run_by_sh_as_a_shell_runs_it(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """A text file with the x bit and no ``#!`` line is a shell script (bash, env, nice and
    timeout run it with sh); a file of bytes that is no binary this machine runs is refused."""
    script = tmp_path / "job"
    script.write_text('echo "ran with $# arguments: $*"\nexit 3\n')
    script.chmod(0o755)
    r = run("--", str(script), "a b", "c", env=sim.env())
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"ran with 2 arguments: a b c\n"
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x7fELF\x00\x00\x00 not a binary for this machine\n")
    blob.chmod(0o755)
    r = run("--", str(blob), env=sim.env())
    assert r.returncode == 126 and b"cannot start" in r.stderr, r.stderr


def test_path_is_searched_as_a_shell_searches_it(sim: SimulatedMachine, tmp_path: Path) -> None:
    """A directory or a file without the x bit earlier on PATH is passed over for the command
    further on; a name that is only a directory on PATH is not found (127), one that is only a
    file without the x bit is found and cannot be run (126)."""
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "tool").mkdir(parents=True)
    (first / "other").write_text("echo no\n")
    second.mkdir()
    for name in ("tool", "other"):
        (second / name).write_text(f"#!/bin/sh\necho {name} from second\n")
        (second / name).chmod(0o755)
    env = {**sim.env(), "PATH": f"{first}{os.pathsep}{second}{os.pathsep}{os.environ['PATH']}"}
    for name in ("tool", "other"):
        r = run("--", name, env=env)
        assert (r.returncode, r.stdout) == (0, f"{name} from second\n".encode()), r.stderr
    env["PATH"] = str(first)
    r = run("--", "tool", env=env)
    assert r.returncode == 127 and b"tool: command not found" in r.stderr, r.stderr
    r = run("--", "other", env=env)
    assert r.returncode == 126 and b"Permission denied" in r.stderr, r.stderr


def test_a_script_whose_interpreter_is_missing_says_so(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """The kernel says ENOENT for a script whose ``#!`` program is missing; the script is
    there, so that is said (127, as bash, dash and env give)."""
    script = tmp_path / "train.sh"
    script.write_text(f"#!{tmp_path / 'no-such-shell'}\necho hi\n")
    script.chmod(0o755)
    r = run("--", str(script), env=sim.env())
    assert r.returncode == 127, r.stderr
    assert b"no-such-shell" in r.stderr and b"was not found" in r.stderr, r.stderr


def test_a_signal_death_is_said_by_name(sim: SimulatedMachine) -> None:
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    r = run("--", sys.executable, "-c", kill, env=sim.env())
    assert r.returncode == 128 + signal.SIGTERM
    assert b"was ended by SIGTERM (exit status 143)" in r.stderr


@pytest.mark.parametrize("bad", ["nan", "-1", "inf", "soon"])
def test_a_bad_kill_after_is_a_usage_error(bad: str, sim: SimulatedMachine) -> None:
    r = run("--kill-after", bad, "--", "true", env=sim.env())
    assert r.returncode == 2
    assert b"--kill-after" in r.stderr and b"Traceback" not in r.stderr
    assert r.stdout == b""


# ------------------------------------------------------ the command's status, whatever stderr


def test_the_commands_status_survives_a_stderr_reader_that_went_away(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """``carbonctx run -- cmd 2>&1 | head``: the summary cannot be written, but the status is
    still the command's (not SIGPIPE's), and the record is written."""
    out = tmp_path / "run.jsonl"
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone before carbonctx writes anything
    try:
        p = subprocess.run(
            [*CARBONCTX, "run", "-o", str(out), "--", sys.executable, "-c", "raise SystemExit(3)"],
            env={**os.environ, **sim.env()},
            stdout=subprocess.DEVNULL,
            stderr=w_fd,
            timeout=WAIT_S,
            check=False,
        )
    finally:
        os.close(w_fd)
    assert p.returncode == 3
    assert len(regions(out)) == 1


def test_the_commands_status_survives_a_full_stderr(sim: SimulatedMachine) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with open("/dev/full", "wb") as full:
        p = subprocess.run(
            [*CARBONCTX, "run", "--", sys.executable, "-c", "raise SystemExit(3)"],
            env={**os.environ, **sim.env()},
            stdout=subprocess.DEVNULL,
            stderr=full,
            timeout=WAIT_S,
            check=False,
        )
    assert p.returncode == 3


@pytest.mark.parametrize("closed", ["1", "2"])
def test_closed_descriptors_keep_the_status_and_stdout_clean(
    closed: str, sim: SimulatedMachine, tmp_path: Path
) -> None:
    """Started with stdout or stderr closed (``>&-``, ``2>&-``): the command's status, no
    traceback, and the summary never lands on stdout."""
    out = tmp_path / "run.jsonl"
    line = f'exec "$@" {closed}>&-'
    p = subprocess.run(
        ["sh", "-c", line, "sh", *CARBONCTX, "run", "-o", str(out), "--", "sh", "-c", "exit 3"],
        env={**os.environ, **sim.env()},
        capture_output=True,
        timeout=WAIT_S,
        check=False,
    )
    assert p.returncode == 3, p.stderr
    assert b"Traceback" not in p.stderr + p.stdout
    assert p.stdout == b""
    assert len(regions(out)) == 1


# --------------------------------------------------------------------- what the summary says


def test_a_ranks_summary_says_its_part_and_the_file_written(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """Under a launcher (here torchrun's variables) each rank's carbonctx is a rank: its record
    goes to the rank's file, and the summary says so and what its figures cover."""
    out = tmp_path / "run.jsonl"
    launcher = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    r = run("-o", str(out), "--", "true", env={**sim.env(), **launcher})
    assert r.returncode == 0, r.stderr
    written = tmp_path / "run.rank1.jsonl"
    err = r.stderr.decode()
    assert f"records: {written}" in err
    (rec,) = regions(written)
    assert rec["rank"] == 1
    assert "rank 1's part of node" in err and "whole machine" not in err


def test_the_summary_names_an_output_set_by_the_environment(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    out = tmp_path / "env.jsonl"
    r = run("--", "true", env={**sim.env(), "CARBONCTX_OUTPUT": str(out)})
    assert r.returncode == 0, r.stderr
    assert f"records: {out}" in r.stderr.decode()
    assert len(regions(out)) == 1


def test_an_output_that_cannot_be_written_is_not_claimed(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """``-o`` naming a directory: the command still runs and its status is passed on, the
    warning says why, and the summary does not claim a file of records."""
    r = run("-o", str(tmp_path), "--", "sh", "-c", "exit 4", env=sim.env())
    assert r.returncode == 4
    err = r.stderr.decode()
    assert f"cannot write {tmp_path}" in err
    assert f"records: {tmp_path}\n" not in err
    assert "records: none" in err


def test_warnings_are_said_as_a_commands_not_as_library_code(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = {
        "CARBONCTX_SYSFS_ROOT": str(empty),
        "CARBONCTX_DEV_ROOT": str(empty),
        "CARBONCTX_PROC_ROOT": str(empty),
        "CARBONCTX_NVML_LIBRARY": str(empty / "libnvidia-ml.so.1"),
        "CARBONCTX_ESTIMATE": "never",
    }
    r = run("--", "true", env=bare)
    assert r.returncode == 0, r.stderr
    assert b"carbonctx: warning: " in r.stderr
    assert b"CarbonctxWarning" not in r.stderr and b"carbonctx.track(" not in r.stderr


@pytest.mark.parametrize("ending", [RuntimeError("boom"), SystemExit(3), None])
def test_the_command_format_of_warnings_ends_with_main(
    ending: BaseException | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``main()`` says carbonctx's warnings as a command while it runs and gives the process
    Python's own format back however it ends (a program that calls it keeps its warnings)."""
    import warnings

    from carbonctx._cli import devices, main
    from carbonctx.errors import CarbonctxWarning

    before = warnings.formatwarning
    said: list[str] = []

    def command(args: object) -> int:
        said.append(warnings.formatwarning("no counter", CarbonctxWarning, "x.py", 1, "src"))
        if ending is not None:
            raise ending
        return 0

    monkeypatch.setattr(devices, "cmd_devices", command)
    if ending is None:
        assert main(["devices"]) == 0
    else:
        with pytest.raises(type(ending)):
            main(["devices"])
    assert said == ["carbonctx: warning: no counter\n"]
    assert warnings.formatwarning is before


def test_a_warning_that_names_carbonctx_itself_is_not_prefixed_twice() -> None:
    """A provider that cannot be reached (a closed loopback port) warns, said once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"CARBONCTX_PROVIDERS": "gb", "CARBONCTX_GB_URL": f"http://127.0.0.1:{port}"}
    r = subprocess.run(
        [*CARBONCTX, "intensity", "--zone", "GB", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["current"]["zone"] == "GB"
    assert "carbonctx: warning: live carbon intensity for zone GB is unavailable" in r.stderr
    assert "warning: carbonctx:" not in r.stderr


# ------------------------------------------------------------- the command's streams and argv


def test_arguments_and_binary_streams_pass_through_untouched(sim: SimulatedMachine) -> None:
    argv = ["a b", '"quoted"', "--", "--name", "x", "", "$HOME", "ü"]
    code = (
        "import json, sys; data = sys.stdin.buffer.read(); "
        "sys.stdout.buffer.write(json.dumps(sys.argv[1:]).encode() + b'\\0' + data)"
    )
    blob = bytes(range(256)) * 64
    r = run("--", sys.executable, "-c", code, *argv, env=sim.env(), input=blob)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\0")
    assert json.loads(head) == argv
    assert body == blob
    # The command is shown as a shell would have to type it.
    assert b"""'a b' '"quoted"' -- --name x '' '$HOME'""" in r.stderr


def test_a_command_whose_reader_goes_away_ends_as_in_a_shell(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """``carbonctx run -- yes | head``: yes gets SIGPIPE (not ignored, as Python would leave
    it), carbonctx exits 141 and still records the region."""
    out = tmp_path / "run.jsonl"
    p = subprocess.Popen(
        [*CARBONCTX, "run", "-o", str(out), "--", "yes"],
        env={**os.environ, **sim.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None
    assert p.stdout.read(4) == b"y\ny\n"
    p.stdout.close()
    _, err = p.communicate(timeout=WAIT_S)
    assert p.returncode == 128 + signal.SIGPIPE, err
    assert len(regions(out)) == 1


def test_ctrl_c_at_a_terminal_ends_the_command_and_the_region_is_recorded(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground group: the command gets it
    from the terminal (carbonctx does not send it a second), and carbonctx records the region
    and exits as the command did."""
    out = tmp_path / "run.jsonl"
    pidfile = tmp_path / "child.pid"
    child = (
        "import os, sys, time; open(sys.argv[1] + '.t', 'w').write(str(os.getpid())); "
        "os.rename(sys.argv[1] + '.t', sys.argv[1]); time.sleep(60)"
    )
    argv = [*CARBONCTX, "run", "-o", str(out), "--", sys.executable, "-c", child, str(pidfile)]
    env = {**os.environ, **sim.env()}
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child process
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    said = b""
    try:
        deadline = time.monotonic() + WAIT_S
        while not pidfile.exists():
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.02)
        os.write(fd, b"\x03")  # the terminal's interrupt character
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: every process on the terminal has gone
                    break
                if not chunk:
                    break
                said += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    # Python's KeyboardInterrupt exits 1 or by the signal, as it is caught or not.
    assert os.waitstatus_to_exitcode(status) in (128 + signal.SIGINT, 1), said
    assert b"forwarded" not in said
    assert len(regions(out)) == 1


# --------------------------------------------------------------- usage errors of every command


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["run", "--bogus", "--", "true"], "carbonctx run"),
        (["demo", "--bogus"], "carbonctx demo"),
        (["devices", "stray"], "carbonctx devices"),
        (["intensity", "--bogus"], "carbonctx intensity"),
        (["--bogus", "devices"], "carbonctx"),  # before the command: carbonctx's own
    ],
)
def test_an_unknown_option_is_said_with_the_commands_own_usage(
    argv: list[str], usage: str, tmp_path: Path
) -> None:
    r = subprocess.run(
        [*CARBONCTX, *argv], capture_output=True, text=True, timeout=WAIT_S, check=False
    )
    assert r.returncode == 2 and r.stdout == ""
    assert f"usage: {usage} " in r.stderr
    assert f"{usage}: error: unrecognized arguments: " in r.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
@pytest.mark.parametrize("option", ["--epochs", "--steps"])
def test_the_demo_refuses_a_count_below_one(option: str, bad: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [*CARBONCTX, "demo", option, bad, "--simulate", "yes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"argument {option}: takes a whole number, 1 or more" in r.stderr


def test_the_demo_says_a_timeline_it_cannot_write_and_still_ends_well(tmp_path: Path) -> None:
    short = ["--epochs", "1", "--steps", "3", "--simulate", "yes"]
    r = subprocess.run(
        [*CARBONCTX, "demo", *short, "--trace", str(tmp_path)],  # a directory, not a file
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and f"cannot write {tmp_path}" in r.stderr
    assert "timeline:" not in r.stdout and "records:" in r.stdout


def test_ctrl_c_in_a_command_other_than_run_ends_it_without_a_traceback(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [*CARBONCTX, "demo", "--epochs", "100000", "--steps", "2", "--simulate", "yes"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("epoch "):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=WAIT_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "interrupted" in err

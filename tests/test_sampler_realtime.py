"""``sampler_realtime``: the sampler thread (and no other) runs at SCHED_FIFO 1 where the process
may, else at nice -10; the setting and its variable reach the native sampler, and ``devices``
says what the thread got, as the kernel reports it for that thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import carbonctx
from carbonctx import _config, _native
from carbonctx._measure import process as _runtime
from carbonctx.testing import SimulatedMachine

#: The sampler thread's name as the kernel keeps it (15 characters).
SAMPLER_COMM = "carbonctx-sampl"
SCHED_OTHER, SCHED_FIFO = 0, 1


def _fifo_permitted() -> bool:
    """Whether this process may put a thread in SCHED_FIFO (tried on a scratch thread)."""
    got: list[bool] = []

    def attempt() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            got.append(True)
        except OSError:
            got.append(False)

    t = threading.Thread(target=attempt)
    t.start()
    t.join()
    return got[0]


def _stat(tid: int) -> list[str]:
    """``/proc/self/task/<tid>/stat`` fields, numbered as in proc(5) from 1 (index 0 unused)."""
    text = Path(f"/proc/self/task/{tid}/stat").read_text()
    return ["", "", "", *text[text.rindex(")") + 1 :].split()]


def _policies() -> dict[int, tuple[int, int]]:
    """Every thread of this process: (policy, real-time priority), fields 41 and 40."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            f = _stat(int(task.name))
            out[int(task.name)] = (int(f[41]), int(f[40]))
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return out


def _sampler_tids() -> set[int]:
    tids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == SAMPLER_COMM:
                tids.add(int(task.name))
        except OSError:
            continue
    return tids


def test_the_variable_is_parsed_like_the_other_switches() -> None:
    for text, on in (("0", False), ("off", False), ("false", False), ("1", True), ("on", True)):
        assert _config.from_env({"CARBONCTX_SAMPLER_REALTIME": text}) == {"sampler_realtime": on}
    assert "sampler_realtime" not in _config.from_env({})
    with pytest.raises(carbonctx.ConfigurationError, match="CARBONCTX_SAMPLER_REALTIME"):
        _config.from_env({"CARBONCTX_SAMPLER_REALTIME": "sometimes"})
    for bad in ("yes", 1, 0.0):
        with pytest.raises(carbonctx.ConfigurationError, match=r"sampler_realtime.*True or False"):
            carbonctx.configure(sampler_realtime=bad)  # type: ignore[arg-type]
    assert carbonctx.Settings().sampler_realtime is True


def test_the_native_sampler_says_how_its_thread_is_scheduled(sim: SimulatedMachine) -> None:
    permitted = _fifo_permitted()
    for realtime in (True, False):
        before = set(_policies())
        args = {k: v for k, v in sim.settings().items() if k != "gpu"}
        s = _native.Sampler(**args, realtime=realtime)
        try:
            said = s.scheduling()
            (tid,) = _sampler_tids() - before
            policy, rt_priority = _policies()[tid]
            nice = int(_stat(tid)[19])
        finally:
            s.stop()
        # (Permitted, but where the real-time budget is too small it is not used: it says so.)
        if realtime and permitted and "real-time not used" not in said:
            assert said == "real-time (SCHED_FIFO 1)"
            assert (policy, rt_priority) == (SCHED_FIFO, 1)
        else:
            assert not said.startswith("real-time"), said
            assert (policy, rt_priority) == (SCHED_OTHER, 0)
            if said.startswith("nice "):  # the thread's nice, field 19
                assert int(said.split()[1]) == nice, said
        if realtime and not permitted:
            assert (
                said == "default priority: not permitted"
                or "real-time not permitted" in said
                or "real-time not used" in said
            ), said


@pytest.mark.parametrize("node_sampler", [False, True])
def test_the_setting_reaches_the_sampler_thread_only(
    sim: SimulatedMachine, tmp_path: Path, node_sampler: bool
) -> None:
    permitted = _fifo_permitted()
    node = {"node_sampler": True, "node_dir": str(tmp_path / "shm")} if node_sampler else {}
    for realtime in (True, False):
        carbonctx.configure(**sim.settings(), **node, sampler_realtime=realtime)
        with carbonctx.track("warm"):
            pass
        info = carbonctx.devices()
        if node_sampler:  # the node's shared sampler, read by this process's thread
            assert info["rank"]["node_sampler"]["role"] == "owner"
        (tid,) = {t for t in _sampler_tids() if t in _policies()}
        policies = _policies()
        # (The simulated machine's own writer thread runs at SCHED_FIFO 10: not counted.)
        fifo_1 = {t for t, p in policies.items() if p == (SCHED_FIFO, 1)}
        assert policies[threading.get_native_id()] == (SCHED_OTHER, 0), "the user's thread"
        if realtime and permitted and "real-time not used" not in info["sampler_scheduling"]:
            assert info["sampler_scheduling"] == "real-time (SCHED_FIFO 1)"
            # The sampler thread, and no other (the user's, the resolver's).
            assert fifo_1 == {tid}, {t: policies[t] for t in fifo_1}
        else:
            assert not info["sampler_scheduling"].startswith("real-time")
            assert fifo_1 == set()
        _runtime.reset()


def _devices_cli(env: dict[str, str]) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "carbonctx", "devices"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_devices_says_how_the_sampler_thread_runs(sim: SimulatedMachine) -> None:
    on = _devices_cli(sim.env())
    off = _devices_cli({**sim.env(), "CARBONCTX_SAMPLER_REALTIME": "off"})
    line_on = next(ln for ln in on.splitlines() if ln.startswith("Sampler thread: "))
    line_off = next(ln for ln in off.splitlines() if ln.startswith("Sampler thread: "))
    if _fifo_permitted() and "real-time not used" not in line_on:
        assert line_on == "Sampler thread: real-time (SCHED_FIFO 1)"
        # Permitted real-time, it is permitted a higher nice (the interpreter's nice is 0 here
        # unless the test runs niced).
        assert line_off.startswith("Sampler thread: nice "), line_off
        if os.getpriority(os.PRIO_PROCESS, 0) == 0:
            assert line_off == "Sampler thread: nice -10"
        assert "CAP_SYS_NICE" not in off
    else:
        assert "real-time" not in line_on.removeprefix("Sampler thread: ").split("(")[0]
    bad = subprocess.run(
        [sys.executable, "-m", "carbonctx", "devices"],
        env={**os.environ, **sim.env(), "CARBONCTX_SAMPLER_REALTIME": "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and "CARBONCTX_SAMPLER_REALTIME" in bad.stderr, bad.stderr


def test_not_permitted_says_what_to_do() -> None:
    from carbonctx._cli import devices

    out: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            out.append(text)

    info = {"sources": [], "sampler_scheduling": "default priority: not permitted"}
    devices._print_devices(info, Sink())
    text = "".join(out)
    assert "Sampler thread: default priority: not permitted" in text
    assert "what to do:" in text and "CAP_SYS_NICE" in text and "RLIMIT_RTPRIO" in text


def _cpu_cgroup_with_rt_budgets() -> Path | None:
    """This process's directory in the cgroup v1 hierarchy of the ``cpu`` controller, where
    groups have real-time budgets (RT group scheduling) and this process may make groups."""
    if os.geteuid() != 0:
        return None
    path = next(
        (
            p
            for _, ctl, p in (
                ln.split(":", 2) for ln in Path("/proc/self/cgroup").read_text().splitlines()
            )
            if "cpu" in ctl.split(",")
        ),
        None,
    )
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mine, _, theirs = line.partition(" - ")
        fstype, _, opts = [*theirs.split(" "), "", "", ""][:3]
        f = mine.split(" ")
        if path is not None and fstype == "cgroup" and "cpu" in opts.split(",") and f[3] == "/":
            d = Path(f[4]) / path.lstrip("/")
            return d if (d / "cpu.rt_runtime_us").exists() else None
    return None


def test_a_tiny_real_time_budget_keeps_the_thread_normal_and_devices_says_why(
    sim: SimulatedMachine,
) -> None:
    """In a cgroup whose real-time budget is 1 ms a second, a real-time sampler thread would
    not run for most of each second once it spent it: it stays in the normal class, and
    ``devices`` says why and what to do (run in such a cgroup, made for the test)."""
    parent = _cpu_cgroup_with_rt_budgets()
    if parent is None:
        pytest.skip("no cgroup v1 cpu controller with real-time budgets to make groups in")
    group = parent / f"carbonctx-rt-py-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.rt_runtime_us").write_text("1000")
        r = subprocess.run(
            [
                "sh",
                "-c",
                'echo $$ > "$1/cgroup.procs" && shift && exec "$@"',
                "sh",
                str(group),
                sys.executable,
                "-m",
                "carbonctx",
                "devices",
            ],
            env={**os.environ, **sim.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        group.rmdir()
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("Sampler thread: "))
    assert "real-time (" not in line, line
    assert "real-time not used" in line and "1000 of every 1000000" in line, line
    assert "cpu.rt_runtime_us" in r.stdout and "what to do:" in r.stdout, r.stdout

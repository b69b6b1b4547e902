"""The ``carbonctx`` command as a user runs it: a fresh interpreter, simulated hardware through
``CARBONCTX_*`` variables, and the exit status and output it gives."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import carbonctx
from carbonctx import _cli
from carbonctx._measure import process as _runtime
from carbonctx.testing import SimulatedMachine

#: Generous bound on a command that should take about a second: a hang fails the test.
WAIT_S = 60


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carbonctx", *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


@pytest.fixture
def no_hardware(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty"
    empty.mkdir()
    return {
        "CARBONCTX_SYSFS_ROOT": str(empty),
        "CARBONCTX_DEV_ROOT": str(empty),
        "CARBONCTX_PROC_ROOT": str(empty),
        "CARBONCTX_NVML_LIBRARY": str(empty / "libnvidia-ml.so.1"),
    }


# ------------------------------------------------------------------------------------ devices


def test_devices_lists_the_simulated_sources(sim: SimulatedMachine) -> None:
    r = cli("devices", env=sim.env())
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Energy sources in use:" in out
    for sid, domain in (
        ("powercap:intel-rapl:0 ", "package"),
        ("powercap:intel-rapl:0:0", "dram"),
        ("nvml:0", "gpu"),
    ):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(sid.strip()))
        assert domain in line and "counter" in line and "[ok]" in line
    # The MSR files read the same domains: listed as alternatives, not double-counted.
    assert "Also available" in out and "msr:0:package" in out
    # Each alternative says which source in use measures the same thing.
    alt = next(ln for ln in out.splitlines() if ln.strip().startswith("msr:0:package"))
    assert "(measures what powercap:intel-rapl:0 measures)" in alt, alt
    assert "ESTIMATE" not in out


def test_devices_json_on_simulated_hardware(sim: SimulatedMachine) -> None:
    r = cli("devices", "--json", env=sim.env())
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    by_id = {s["id"]: s for s in info["sources"]}
    assert set(by_id) == {"powercap:intel-rapl:0", "powercap:intel-rapl:0:0", "nvml:0"}
    assert by_id["nvml:0"]["domain"] == "gpu" and by_id["nvml:0"]["method"] == "counter"
    for s in by_id.values():
        assert s["status"]["failed"] is False and s["status"]["last_error"] is None
    assert {a["id"] for a in info["alternatives"]} >= {"msr:0:package", "msr:0:dram"}
    assert info["start_error"] is None


def test_devices_without_hardware_says_why_and_what_to_do(no_hardware: dict[str, str]) -> None:
    r = cli("devices", env=no_hardware)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "No energy source could be used." in out
    assert "Not usable:" in out
    for backend in ("powercap", "perf", "msr", "nvml", "estimate"):
        assert f"[{backend}]" in out, backend
    # NVML's absence is explained with the variable that fixes it.
    nvml_at = out.index("[nvml]")
    assert "CARBONCTX_NVML_LIBRARY" in out[nvml_at : out.index("\n  [", nvml_at + 1)]
    assert out.count("what to do:") >= 4


def test_devices_json_without_hardware_gives_reason_and_hint(
    no_hardware: dict[str, str],
) -> None:
    r = cli("devices", "--json", env=no_hardware)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sources"] == []
    un = {u["backend"]: u for u in info["unavailable"]}
    assert {"powercap", "perf", "msr", "nvml", "estimate"} <= set(un)
    for u in info["unavailable"]:
        assert u["reason"] and u["what"]
    for backend in ("powercap", "perf", "nvml", "estimate"):
        assert un[backend]["hint"], backend
    assert "modprobe" in un["powercap"]["hint"]
    assert "CARBONCTX_NVML_LIBRARY" in un["nvml"]["hint"]


def test_every_unavailable_backend_has_a_hint(no_hardware: dict[str, str]) -> None:
    r = cli("devices", "--json", env=no_hardware)
    info = json.loads(r.stdout)
    missing = [u["backend"] for u in info["unavailable"] if not u["hint"]]
    assert missing == []


def test_devices_in_a_container_that_hides_the_zones(tmp_path: Path) -> None:
    tree = Path(__file__).parent.parent / "rust/sampler/tests/fixtures/container-masked"
    env = {
        "CARBONCTX_SYSFS_ROOT": str(tree / "sys"),
        "CARBONCTX_DEV_ROOT": str(tmp_path),
        "CARBONCTX_PROC_ROOT": str(tree / "proc"),
        "CARBONCTX_NVML_LIBRARY": str(tmp_path / "libnvidia-ml.so.1"),
    }
    r = cli("devices", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("[powercap]"))
    assert "intel-rapl:0, intel-rapl:0:0" in lines[at] and "cannot see" in lines[at]
    assert "container" in lines[at]
    assert "systempaths=unconfined" in lines[at + 1] and "what to do:" in lines[at + 1]


# ------------------------------------------------------------------------------ devices --check


def test_devices_check_json_measures_each_source(sim: SimulatedMachine) -> None:
    r = cli("devices", "--check", "--json", "--duration", "1", env=sim.env())
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["duration_s"] == 1.0 and "100 x max(update period" in info["rule"]
    by_id = {s["id"]: s for s in info["sources"]}
    assert set(by_id) == {"powercap:intel-rapl:0", "powercap:intel-rapl:0:0", "nvml:0"}
    # The simulated counters update every 1 ms (RAPL) and every 100 ms (the GPU): generous
    # bounds, since a loaded machine reads late.
    expected = {"powercap:intel-rapl:0": 0.001, "powercap:intel-rapl:0:0": 0.001, "nvml:0": 0.1}
    for sid, period in expected.items():
        s = by_id[sid]
        assert s["errors"] == 0 and s["reads"] > 3, s
        assert period / 3 < s["update_period_s"] < period * 3, s
        assert 0 < s["read_cost_s"] < 0.05, s
        assert s["reading"] == "averaged", s
        # The stated rule: 100 x max(update, poll interval) + 200 x read cost.
        rule = 100 * max(s["update_period_s"], s["poll_interval_s"]) + 200 * s["read_cost_s"]
        assert s["shortest_region_s"] == pytest.approx(rule, rel=1e-6), s
    pkg = by_id["powercap:intel-rapl:0"]
    # The powercap range in joules, and how long it lasts at the power seen (40-120 W).
    assert pkg["wrap_j"] == pytest.approx(pkg["wrap"] * 1e-6)
    assert 30 < pkg["mean_power_w"] < 130, pkg
    assert pkg["wrap_after_s"] == pytest.approx(pkg["wrap_j"] / pkg["mean_power_w"], rel=1e-6)
    assert by_id["nvml:0"]["wrap_j"] is None  # NVML's 64-bit millijoule counter never wraps
    assert by_id["nvml:0"]["shortest_region_s"] > 3 > pkg["shortest_region_s"]


def test_devices_check_uses_the_configured_poll_interval(sim: SimulatedMachine) -> None:
    # Polled every 10 ms, a 1 ms counter's edges are placed to 5 ms: regions need about 1 s.
    env = {**sim.env(), "CARBONCTX_INTERVALS": "powercap=10"}
    r = cli("devices", "--check", "--json", "--duration", "0.5", env=env)
    assert r.returncode == 0, r.stderr
    by_id = {s["id"]: s for s in json.loads(r.stdout)["sources"]}
    pkg = by_id["powercap:intel-rapl:0"]
    assert pkg["poll_interval_s"] == pytest.approx(0.01)
    assert 0.0003 < pkg["update_period_s"] < 0.003, pkg  # still seen at its own rate
    assert 1.0 <= pkg["shortest_region_s"] < 1.1, pkg
    assert by_id["nvml:0"]["poll_interval_s"] == pytest.approx(0.02)


def test_devices_check_prints_a_table(sim: SimulatedMachine) -> None:
    r = cli("devices", "--check", "--duration", "0.5", env=sim.env())
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Checked 3 source(s), each read for 0.5 s:" in out
    header = next(ln for ln in out.splitlines() if ln.strip().startswith("source"))
    for col in ("domain", "reading", "updates every", "read cost", "wraps after", "shortest ~1%"):
        assert col in header, col
    for sid in ("powercap:intel-rapl:0 ", "powercap:intel-rapl:0:0", "nvml:0"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(sid.strip() + " "))
        assert "averaged" in line and " ms" in line, line
    gpu = next(ln for ln in out.splitlines() if ln.strip().startswith("nvml:0"))
    assert "no wrap" in gpu
    assert "Rule: shortest region within ~1%" in out


def test_devices_check_without_hardware_says_so(no_hardware: dict[str, str]) -> None:
    r = cli("devices", "--check", "--duration", "0.2", env=no_hardware)
    assert r.returncode == 0, r.stderr
    assert "nothing to check" in r.stdout and "[powercap]" in r.stdout
    r = cli("devices", "--check", "--json", "--duration", "0.2", env=no_hardware)
    info = json.loads(r.stdout)
    assert info["sources"] == [] and info["unavailable"]


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "nan", "inf", "601"])
def test_devices_check_refuses_a_bad_duration(bad: str, no_hardware: dict[str, str]) -> None:
    r = cli("devices", "--check", f"--duration={bad}", env=no_hardware)
    assert r.returncode == 2
    assert "--duration takes a number of seconds above 0 and at most 600" in r.stderr
    assert repr(bad) in r.stderr
    assert r.stdout == ""


def test_devices_duration_needs_check(no_hardware: dict[str, str]) -> None:
    r = cli("devices", "--duration", "3", env=no_hardware)
    assert r.returncode == 2
    assert "--duration applies to --check" in r.stderr


# ------------------------------------------------------------------------------------ run


def test_run_exits_with_the_commands_status_and_prints_the_summary(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    out = tmp_path / "run.jsonl"
    r = cli(
        "run",
        "-o",
        str(out),
        "--",
        sys.executable,
        "-c",
        "import sys; sys.exit(3)",
        env=sim.env(),
    )
    assert r.returncode == 3, r.stderr
    err = r.stderr
    assert "exited with 3" in err
    assert "whole machine" in err
    for sid in ("powercap:intel-rapl:0", "powercap:intel-rapl:0:0", "nvml:0"):
        assert sid in err
    assert "total:" in err and "gCO2e" in err and "zone DE" in err
    (rec,) = [json.loads(ln) for ln in out.read_text().splitlines() if '"region"' in ln]
    assert rec["name"] == "run" and rec["energy_j"] > 0
    assert rec["tags"]["command"][-1] == "import sys; sys.exit(3)"


def test_run_measures_the_whole_command(sim: SimulatedMachine, tmp_path: Path) -> None:
    """The region covers the command from before it starts to after it ends."""
    out = tmp_path / "run.jsonl"
    r = cli("run", "-o", str(out), "--name", "nap", "--", "sleep", "0.5", env=sim.env())
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(ln) for ln in out.read_text().splitlines() if '"region"' in ln]
    assert rec["name"] == "nap"
    assert rec["duration_s"] >= 0.5
    assert rec["cpu_j"] > 0


def test_run_passes_a_signal_death_on_as_128_plus_the_signal(sim: SimulatedMachine) -> None:
    r = cli("run", "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 15)", env=sim.env())
    assert r.returncode == 128 + 15, r.stderr


@pytest.mark.parametrize("argv", [["run"], ["run", "--"]])
def test_run_without_a_command_is_a_usage_error(argv: list[str], sim: SimulatedMachine) -> None:
    r = cli(*argv, env=sim.env())
    assert r.returncode == 2
    assert "usage" in r.stderr.lower() and "--" in r.stderr
    assert r.stdout == ""


def test_run_with_a_missing_program_exits_127(sim: SimulatedMachine, tmp_path: Path) -> None:
    r = cli("run", "--", str(tmp_path / "no-such-program"), env=sim.env())
    assert r.returncode == 127
    assert "cannot start" in r.stderr


# ------------------------------------------------------------------------------------ report


@pytest.fixture
def jsonl(sim: SimulatedMachine, tmp_path: Path) -> Path:
    """A JSON Lines file from real regions: 2 epochs of 3 nested steps, and power records."""
    path = tmp_path / "regions.jsonl"
    carbonctx.configure(output=str(path))
    for _ in range(2):
        with carbonctx.track("epoch"):
            for _ in range(3):
                with carbonctx.track("step"):
                    time.sleep(0.02)
    time.sleep(0.15)  # at least one power record
    _runtime.reset()  # resolves and closes the file, as exit would
    return path


def test_report_prints_per_name_statistics(jsonl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["report", str(jsonl)]) == 0
    out = capsys.readouterr().out
    assert "8 regions" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split()}
    assert rows["step"][1] == "6" and rows["epoch"][1] == "2"
    assert "top-level total:" in out
    recs = [json.loads(ln) for ln in jsonl.read_text().splitlines()]
    top = sum(r["energy_j"] for r in recs if r.get("kind") == "region" and r["parent"] is None)
    assert f"top-level total: {top:.2f} J" in out


def test_report_skips_a_cut_line_and_says_so(
    jsonl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with jsonl.open("a") as f:
        f.write('{"kind": "region", "name": "cut')  # a killed writer's last line
    assert _cli.main(["report", str(jsonl)]) == 0
    out = capsys.readouterr().out
    assert "8 regions, 1 unreadable lines skipped" in out


def test_report_of_a_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli.main(["report", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_report_writes_a_chrome_trace(jsonl: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    r = cli("report", str(jsonl), "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    doc = json.loads(trace.read_text())
    events = doc["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert sorted(e["name"] for e in slices) == ["epoch"] * 2 + ["step"] * 6
    for e in slices:
        assert e["dur"] > 0 and e["ts"] > 0
        assert e["args"]["energy_j"] > 0 and e["args"]["cpu_j"] > 0
        assert {"dram_j", "gpu_j", "co2_g"} <= set(e["args"])
    # Steps sit inside their epoch on the same track.
    epochs = [e for e in slices if e["name"] == "epoch"]
    for s in (e for e in slices if e["name"] == "step"):
        assert any(
            p["tid"] == s["tid"] and p["ts"] <= s["ts"] and s["ts"] + s["dur"] <= p["ts"] + p["dur"]
            for p in epochs
        )
    counters = [e for e in events if e["ph"] == "C"]
    assert counters, "no power counter track"
    for c in counters:
        assert "powercap:intel-rapl:0" in c["args"]
        assert all(isinstance(v, (int, float)) and v >= 0 for v in c["args"].values())
    # Package power under the 40/120 W wave averages between its levels.
    pkg = [c["args"]["powercap:intel-rapl:0"] for c in counters]
    assert all(30 <= w <= 130 for w in pkg), pkg


def test_report_writes_csv_with_a_header(jsonl: Path, tmp_path: Path) -> None:
    out = tmp_path / "regions.csv"
    r = cli("report", str(jsonl), "--csv", str(out))
    assert r.returncode == 0, r.stderr
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {"name", "start", "duration_s", "energy_j", "co2_g"} <= set(rows[0])
    assert sorted({r["name"] for r in rows}) == ["epoch", "step"]
    assert all(float(r["energy_j"]) > 0 for r in rows)


# ------------------------------------------------------------------------------------ demo


def test_demo_runs_on_simulated_hardware_and_writes_its_files(tmp_path: Path) -> None:
    r = cli("demo", "--steps", "5", "--epochs", "2", "--simulate", "yes", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SIMULATED" in r.stdout
    assert "epoch 0:" in r.stdout and "epoch 1:" in r.stdout
    jsonl = tmp_path / "carbonctx-demo.jsonl"
    trace = tmp_path / "carbonctx-demo.trace.json"
    assert jsonl.is_file() and trace.is_file()
    recs = [json.loads(ln) for ln in jsonl.read_text().splitlines()]
    names = [r["name"] for r in recs if r.get("kind") == "region"]
    assert names.count("train_step") == 10 and names.count("epoch") == 2
    assert any(e["ph"] == "X" for e in json.loads(trace.read_text())["traceEvents"])


# ------------------------------------------------------------------------------------ misc


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"carbonctx {carbonctx.__version__}"


def test_no_command_is_a_usage_error() -> None:
    r = cli()
    assert r.returncode == 2
    assert "usage:" in r.stderr


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("argv", [["devices"], ["run", "--", "true"]])
def test_an_interval_no_sampler_can_use_is_a_clear_error(
    argv: list[str], sim: SimulatedMachine
) -> None:
    r = cli(*argv, env={**sim.env(), "CARBONCTX_INTERVALS": "powercap=2e22"})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "CARBONCTX_INTERVALS" in r.stderr and "at most" in r.stderr


def test_run_without_a_sampler_exits_with_the_commands_status(
    sim: SimulatedMachine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from carbonctx import _native

    def refuse(**kwargs: object) -> None:
        raise carbonctx.SamplerError("the sampler refused to start (simulated)")

    monkeypatch.setattr(_native, "Sampler", refuse)
    with pytest.warns(carbonctx.CarbonctxWarning, match="could not start"):
        rc = _cli.main(["run", "--", sys.executable, "-c", "import sys; sys.exit(4)"])
    assert rc == 4
    err = capsys.readouterr().err
    assert "exited with 4" in err and "not measured" in err and "refused" in err


# ------------------------------------------------------------------------------------ signals

#: The command: says it started (its pid in a file), then sleeps; SIGTERM ends it by default.
CHILD = """
import os, sys, time
mode = sys.argv[2]
if mode == "ignore":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "clean":
    import signal
    def bye(sig, frame):
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGHUP, bye)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
for _ in range(600):
    time.sleep(0.1)
"""


def _run_and_signal(
    sim: SimulatedMachine, tmp_path: Path, sig: int, mode: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], int, Path]:
    out = tmp_path / "run.jsonl"
    pidfile = tmp_path / "child.pid"
    child_argv = [sys.executable, "-c", CHILD, str(pidfile), mode]
    p = subprocess.Popen(
        [sys.executable, "-m", "carbonctx", "run", "-o", str(out), *extra, "--", *child_argv],
        env={**os.environ, **sim.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not pidfile.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.02)
        child = int(pidfile.read_text())
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=WAIT_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr), child, out


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_a_signal_records_the_region_and_exits_as_the_command(
    sig: int, sim: SimulatedMachine, tmp_path: Path
) -> None:
    r, child, out = _run_and_signal(sim, tmp_path, sig, "default")
    # The command died of the signal (SIGINT: Python's KeyboardInterrupt exits 1 or by the
    # signal), and carbonctx passes that on instead of dying first and orphaning it.
    assert r.returncode in ((128 + sig, 1) if sig == signal.SIGINT else (128 + sig,)), r.stderr
    assert _gone(child), "the command was left running"
    assert f"forwarded {signal.Signals(sig).name}" in r.stderr
    (rec,) = [json.loads(ln) for ln in out.read_text().splitlines() if '"region"' in ln]
    assert rec["name"] == "run" and rec["energy_j"] > 0


def test_run_passes_on_a_clean_exit_after_a_signal(sim: SimulatedMachine, tmp_path: Path) -> None:
    r, child, _ = _run_and_signal(sim, tmp_path, signal.SIGTERM, "clean")
    assert r.returncode == 0, r.stderr
    assert "exited with 0" in r.stderr and _gone(child)


def test_run_kills_a_command_that_ignores_the_signal_after_the_bound(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    r, child, out = _run_and_signal(sim, tmp_path, signal.SIGTERM, "ignore", "--kill-after", "0.2")
    assert r.returncode == 128 + signal.SIGKILL, r.stderr
    assert "killing it" in r.stderr and _gone(child)
    (rec,) = [json.loads(ln) for ln in out.read_text().splitlines() if '"region"' in ln]
    assert rec["name"] == "run"

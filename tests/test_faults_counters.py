"""Counters that step back, stall, vanish and return (issue 10, item 3): nothing invented.

A counter that goes back though no wraparound explains it (a driver reload, a firmware reset)
leaves a gap: the regions across it say which source is missing and why, and no region counts
the counter's whole range as energy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import carbonctx
from carbonctx._measure import process as _runtime
from carbonctx.testing import SimulatedMachine, Wave


@pytest.fixture
def cpu_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """Powercap only (the MSRs absent), one package at 50 W and DRAM at 6 W; the package
    counter starts at 1000 J of its 262,143 J range."""
    m = SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(50.0), dram=Wave.constant(6.0), msr=False
    )
    m.start()
    carbonctx.configure(**m.settings(), cpu_backends=["powercap"])
    yield m
    _runtime.reset()
    m.close()


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.001)


def test_a_counter_reset_is_a_gap_not_a_wraparound(cpu_sim: SimulatedMachine) -> None:
    with carbonctx.track("before") as before:
        busy(0.02)
    assert 0 < before.energy_j < 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with carbonctx.track("across") as across:
            busy(0.01)
            cpu_sim.reset_counter("package")
            busy(0.01)
        across.result()
        results = []
        for _ in range(5):
            with carbonctx.track("after") as m:
                busy(0.02)
            results.append(m)
        assert carbonctx.flush()
    pkg = next(k for k, s in across.by_source.items() if s.domain == "package")
    # Nothing invented: the package's figure across the reset is unknown, and says so.
    assert across.by_source[pkg].joules is None
    assert "reset" in str(across.by_source[pkg].note)
    assert pkg in across.missing
    assert not across.energy_j > 1000  # 262,134 J in 20 ms when taken for a wrap
    # Regions after the reset measure again, at about 56 W.
    for m in results:
        assert not m.missing, m.missing
        assert 0.5 < m.energy_j / m.duration_s < 200
    # One warning that names the source and the reason.
    msgs = [str(w.message) for w in caught if pkg in str(w.message)]
    assert len(msgs) == 1, msgs
    assert "stepped back" in msgs[0]
    status = {s["id"]: s["status"] for s in carbonctx.devices()["sources"]}
    assert status[pkg]["resets"] == 1 and status[pkg]["wraps"] == 0


# ----------------------------------------------------------------------- item 12: fork


def test_a_simulated_machine_in_a_forked_child_neither_panics_nor_disturbs_the_parent(
    tmp_path: Path,
) -> None:
    code = """
        import json, os, sys, time
        from carbonctx.testing import SimulatedMachine
        m = SimulatedMachine()  # a temporary root
        m.start()
        time.sleep(0.05)
        root = m.root
        pid = os.fork()
        if pid == 0:
            out = {"truth": m.truth_j("package", 0, m.t0_ns, m.t0_ns + 10**9)}
            try:
                m.fail_reads("package")
            except Exception as e:
                out["change"] = f"{type(e).__name__}: {e}"
            m.stop()
            m.close()
            out["root_kept"] = root.exists()
            print(json.dumps(out), flush=True)
            del m
            sys.exit(0)  # a normal exit: finalizers and destructors run
        _, status = os.waitpid(pid, 0)
        before = m.writes
        time.sleep(0.05)
        print(json.dumps({
            "child_status": status, "root_kept": root.exists(), "moving": m.writes > before,
        }), flush=True)
        m.close()
        print(json.dumps({"removed": not root.exists()}))
    """
    script = tmp_path / "fork_sim.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "panicked" not in r.stderr and "Panic" not in r.stderr, r.stderr
    child, parent, end = (json.loads(ln) for ln in r.stdout.splitlines())
    assert child["truth"] == pytest.approx(80.0)  # 40/120 W square wave over one second
    assert "belongs to process" in child["change"] and child["root_kept"] is True
    assert parent == {"child_status": 0, "root_kept": True, "moving": True}
    assert end == {"removed": True}


# ----------------------------------------------------------------------- item 7: estimates in VMs


def vm_tree(root: Path, model: str, vcpus: int) -> dict[str, str]:
    """A virtual machine without energy counters: /proc of a guest with ``vcpus`` vCPUs of the
    host's ``model`` and the hypervisor flag; empty /sys and /dev; no NVML."""
    (root / "proc").mkdir(parents=True)
    (root / "sys").mkdir()
    (root / "dev").mkdir()
    cpuinfo = "".join(
        f"processor\t: {p}\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\n"
        f"physical id\t: 0\nsiblings\t: {vcpus}\ncpu cores\t: {vcpus}\n"
        "flags\t\t: fpu vme de pse tsc msr pae sse sse2 syscall nx lm hypervisor\n\n"
        for p in range(vcpus)
    )
    (root / "proc" / "cpuinfo").write_text(cpuinfo)
    (root / "proc" / "stat").write_text("cpu  0 0 0 1000 0 0 0 0 0 0\ncpu0 0 0 0 500 0 0 0 0\n")
    return {
        "sys_root": str(root / "sys"),
        "dev_root": str(root / "dev"),
        "proc_root": str(root / "proc"),
        "nvml_library": str(root / "no-nvml"),
    }


def test_an_estimate_in_a_vm_is_the_guests_share_and_labelled_an_upper_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    carbonctx.configure(**vm_tree(tmp_path / "vm", "AMD EPYC 7763 64-Core Processor", 2))
    with pytest.warns(carbonctx.CarbonctxWarning, match="upper bound"), carbonctx.track("s") as m:
        pass
    m.result()
    (src,) = m.by_source.values()
    assert src.method == "estimate" and m.estimated
    assert "2 vCPUs of a 64-core package" in src.label and "upper bound" in src.label
    (dev,) = carbonctx.devices()["sources"]
    assert "upper bound" in dev["label"]
    from carbonctx import _cli

    assert _cli.main(["devices"]) == 0
    assert "UPPER BOUND" in capsys.readouterr().out

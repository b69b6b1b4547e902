"""Peer comparison on one simulated machine: run every contender, compute truth, write results.

Run through ``bash benches/peers/run.sh`` (it prepares the benchmark's own environment). This
process owns the simulated machine: its native writer thread keeps the counter files current, and
each contender runs in a child that sees those same files (bind mounts) at /sys/class/powercap,
/dev/cpu and, for NVML, the stand-in libnvidia-ml.so.1 on the loader path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = REPO / "benches" / "results"
sys.path.insert(0, str(HERE))

import contextlib

import contenders

ORDER = ["carbonctx", "zeus", "codecarbon", "pyjoules", "carbontracker"]
SOURCES = ["package", "dram", "gpu", "cpu+dram"]

# The load: package 40/120 W square wave, 50 ms period (as in DESIGN.md); DRAM constant 6 W;
# one GPU 50/250 W, 200 ms period, energy counter updating every 100 ms (an H100's cadence). The
# GPU period is not the update period: the stand-in's power reading is the trace at the last
# update, so equal periods would always read the high phase and bias every power-sampling peer.
PACKAGE = (40.0, 120.0, 0.05)
DRAM_W = 6.0
GPU_UPDATE_S = 0.1
GPU_WAVE = (50.0, 250.0, 0.2)
# "Wraps every second": the package averages 80 W, so an 80 J range wraps about once a second.
WRAP_UJ = 80_000_000


RAPL_RANGE_UJ = 262_143_328_850  # a real package zone's max_energy_range_uj
OFFSET_J = 1000.0


class Machine:
    """The simulated machine for one phase.

    ``SimulatedMachine`` provides the MSR files, /proc/cpuinfo, the stand-in NVML (and its t0)
    and the exact truth. The powercap tree is laid out here and kept current by
    ``rapl_writer.c`` (a separate process, same trace, same t0), whose updates are single
    whole-value writes: see the comment at the top of that file for why.
    """

    def __init__(self, root: Path, wrap: bool, build: Path) -> None:
        from carbonctx.testing import GpuSpec, SimulatedMachine, Wave

        if root.exists():
            shutil.rmtree(root)
        self.root = root
        self.wrap_range = WRAP_UJ if wrap else RAPL_RANGE_UJ + 1
        self.sim = SimulatedMachine(
            root,
            package=Wave(*PACKAGE),
            dram=Wave.constant(DRAM_W),
            gpus=[GpuSpec(wave=Wave(*GPU_WAVE))],
            gpu_update_s=GPU_UPDATE_S,
            wrap_uj=WRAP_UJ if wrap else None,
            update_period_s=0.001,
            powercap=False,
        )
        self.waves = {"package": Wave(*PACKAGE), "dram": Wave.constant(DRAM_W)}
        dev = root / "sys/devices/virtual/powercap/intel-rapl"
        cls = root / "sys/class/powercap"
        zones = {"package": dev / "intel-rapl:0", "dram": dev / "intel-rapl:0/intel-rapl:0:0"}
        cls.mkdir(parents=True, exist_ok=True)
        zones["dram"].mkdir(parents=True, exist_ok=True)
        (dev / "enabled").write_text("1\n")
        # Links as on real sysfs; they resolve inside the contender's namespace, where this
        # tree is bind-mounted at /sys/devices/virtual/powercap and /sys/class/powercap.
        os.symlink("/sys/class/powercap", dev / "subsystem")
        for name, rel in (
            ("intel-rapl", "intel-rapl"),
            ("intel-rapl:0", "intel-rapl/intel-rapl:0"),
            ("intel-rapl:0:0", "intel-rapl/intel-rapl:0/intel-rapl:0:0"),
        ):
            os.symlink(f"/sys/devices/virtual/powercap/{rel}", cls / name)
        for dom, d in zones.items():
            (d / "name").write_text(("package-0" if dom == "package" else "dram") + "\n")
            (d / "enabled").write_text("1\n")
            (d / "max_energy_range_uj").write_text(f"{self.wrap_range - 1}\n")
        self.sim.start()
        build_nvml_shim(self.sim)
        # Some peers decide there is an NVIDIA GPU only if `nvidia-smi --help` runs.
        (root / "bin").mkdir()
        smi = root / "bin/nvidia-smi"
        smi.write_text(
            "#!/bin/sh\n# stand-in for the peer benchmark: answers --help only\n"
            'if [ "$1" = --help ]; then echo \'NVIDIA System Management Interface '
            "(stand-in)'; exit 0; fi\necho 'nvidia-smi stand-in: only --help' >&2; "
            "exit 9\n"
        )
        smi.chmod(0o755)
        exe = build / "rapl_writer"
        if not exe.exists() or exe.stat().st_mtime < (HERE / "rapl_writer.c").stat().st_mtime:
            subprocess.run(
                [
                    shutil.which("cc") or "gcc",
                    "-O2",
                    "-o",
                    str(exe),
                    str(HERE / "rapl_writer.c"),
                    "-lm",
                ],
                check=True,
            )
        self.stop_file = root / ".stop-writer"
        args = [str(exe), str(self.sim.t0_ns), "1000000", str(self.stop_file)]
        for dom, d in zones.items():
            w = self.waves[dom]
            args += [
                str(d / "energy_uj"),
                repr(w.low_w),
                repr(w.high_w),
                repr(w.period_s),
                repr(w.duty),
                repr(OFFSET_J),
                str(self.wrap_range),
            ]
        self.writer = subprocess.Popen(args)
        time.sleep(0.05)
        if self.writer.poll() is not None:
            raise RuntimeError("the powercap writer exited at once")

    def truth_j(self, domain: str, package: int, ta: int, tb: int) -> float:
        return self.sim.truth_j(domain, package, ta, tb)

    def gpu_truth_j(self, index: int, ta: int, tb: int) -> float:
        return self.sim.gpu_truth_j(index, ta, tb)

    def check(self) -> float:
        """Largest relative gap between the written package counter and truth over 0.5 s."""
        f = self.root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj"
        from carbonctx import _native  # noqa: F401 - same clock as time.monotonic_ns

        ta = time.monotonic_ns()
        a = int(f.read_text())
        time.sleep(0.5)
        b = int(f.read_text())
        tb = time.monotonic_ns()
        got = ((b - a) % self.wrap_range) * 1e-6
        t = self.truth_j("package", 0, ta, tb)
        return abs(got - t) / t

    def close(self) -> None:
        self.stop_file.touch()
        try:
            self.writer.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.writer.kill()
            self.writer.wait()
        self.sim.close()


def build_nvml_shim(sim: Any) -> None:
    """Put ``nvml_arch_shim.c`` in front of the stand-in NVML, in ``<root>/nvml-shim``: a
    ``libnvidia-ml.so.1`` that links to a copy of the stand-in (which reads its configuration
    from beside itself) and adds the one call Zeus needs that the stand-in lacks."""
    src = Path(sim.nvml_library).parent
    d = sim.root / "nvml-shim"
    d.mkdir(exist_ok=True)
    shutil.copyfile(src / "libnvidia-ml.so.1", d / "libccx_fake_nvml.so")
    shutil.copyfile(src / "fake_nvml.conf", d / "fake_nvml.conf")
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            str(d / "libnvidia-ml.so.1"),
            str(HERE / "nvml_arch_shim.c"),
            "-Wl,--no-as-needed",
            f"-L{d}",
            "-l:libccx_fake_nvml.so",
            "-Wl,-rpath,$ORIGIN",
        ],
        check=True,
    )


def run_worker(name: str, phase: str, sim_root: Path, out: Path, timeout_s: float) -> dict:
    env = dict(os.environ)
    env.update(contenders.env_for(name))
    for k in [k for k in env if k.startswith("CARBONCTX_") and k.endswith("ROOT")]:
        del env[k]  # every contender reads the real paths
    cmd = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "-n",
        "--",
        "bash",
        str(HERE / "ns_exec.sh"),
        str(sim_root),
        sys.executable,
        str(HERE / "worker.py"),
        name,
        phase,
        str(out),
    ]
    log = out.with_suffix(".log")
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as lf:
        p = subprocess.Popen(
            cmd,
            env=env,
            stdout=lf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(out.parent),
        )
        try:
            p.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        # Helper processes a contender leaves behind share the worker's process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    res: dict[str, Any] = {}
    if out.exists():
        try:
            res = json.loads(out.read_text())
        except ValueError:
            res = {}
    res.setdefault("contender", name)
    res["wall_s"] = time.monotonic() - t0
    if timed_out:
        res["ok"] = False
        res["error"] = f"timed out after {timeout_s:.0f} s" + (
            " (last completed step saved)" if res.get("load_s") is not None else ""
        )
    if not res.get("ok") and "error" not in res:
        res["error"] = "worker died: " + log.read_text()[-1500:]
    res["log_tail"] = log.read_text()[-1500:]
    return res


def truth_for(sim: Any, src: str, ta: int, tb: int) -> float:
    if src == "package":
        return sim.truth_j("package", 0, ta, tb)
    if src == "dram":
        return sim.truth_j("dram", 0, ta, tb)
    if src == "gpu":
        return sim.gpu_truth_j(0, ta, tb)
    if src == "cpu+dram":
        return sim.truth_j("package", 0, ta, tb) + sim.truth_j("dram", 0, ta, tb)
    raise KeyError(src)


def score(sim: Any, res: dict) -> None:
    """Add truth and relative errors to each region, and summaries per length and source."""
    acc = res.get("acc") or {}
    summary: dict[str, dict[str, Any]] = {}
    for length, regs in acc.items():
        per_src: dict[str, list[float]] = {}
        sums: dict[str, list[float]] = {}
        for r in regs:
            got = r.get("got") or {}
            r["truth"] = {}
            r["err"] = {}
            for src, v in got.items():
                if src not in SOURCES or v is None:
                    continue
                t = truth_for(sim, src, r["ta"], r["tb"])
                r["truth"][src] = t
                e = (v - t) / t if t else float("nan")
                r["err"][src] = e
                per_src.setdefault(src, []).append(e)
                s = sums.setdefault(src, [0.0, 0.0])
                s[0] += v
                s[1] += t
        out: dict[str, Any] = {}
        for src, errs in per_src.items():
            a = sorted(abs(e) for e in errs)
            out[src] = {
                "n": len(a),
                "median_abs": a[len(a) // 2]
                if len(a) % 2
                else (a[len(a) // 2 - 1] + a[len(a) // 2]) / 2,
                "worst_abs": a[-1],
                "sum_err": sums[src][0] / sums[src][1] - 1 if sums[src][1] else None,
            }
        summary[length] = out
    res["acc_summary"] = summary


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for c in contenders.ALL.values():
        try:
            out[c.name] = metadata.version(c.package)
        except metadata.PackageNotFoundError:
            out[c.name] = "not installed"
    for extra in ("nvidia-ml-py", "psutil", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[extra] = metadata.version(extra)
    return out


def machine() -> dict[str, str]:
    import platform

    info = {"kernel": platform.release(), "python": platform.python_version()}
    try:
        ls = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in ls.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Vendor ID", "Hypervisor vendor"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="contenders to run")
    ap.add_argument("--scale", type=float, default=float(os.environ.get("CCX_BENCH_SCALE", 1)))
    ap.add_argument("--work", default="/tmp/carbonctx-peers")
    ap.add_argument("--install-log", default=None)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print(
            "peers benchmark: needs root and unshare(1) to bind simulated hardware over "
            "/sys/class/powercap in a private mount namespace; skipped."
        )
        return 0
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "-n", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        print(
            f"peers benchmark: unshare -m -n does not work here ({probe.stderr.strip()}); skipped."
        )
        return 0

    os.environ["CCX_BENCH_SCALE"] = str(args.scale)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = args.only or ORDER
    installs = {}
    if args.install_log and Path(args.install_log).exists():
        installs = json.loads(Path(args.install_log).read_text())

    # Warm the file cache for every contender's modules (untimed), so that no contender's
    # import time pays for a cold disk because it was installed last.
    for n in names:
        mod = contenders.make(n).module
        subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, check=False)

    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {n: {} for n in names}
    for phase, wrap in (("main", False), ("wrap", True)):
        sim = Machine(work / f"sim-{phase}", wrap, work)
        gap = sim.check()
        print(f"simulated machine ({phase}): package counter vs truth over 0.5 s: {gap:.3%}")
        try:
            for n in names:
                if installs.get(n, {}).get("ok") is False:
                    results[n][phase] = {
                        "ok": False,
                        "error": "not installed: " + installs[n].get("error", "")[-300:],
                    }
                    continue
                print(f"[{time.monotonic() - started:6.1f}s] {phase:5s} {n} ...", flush=True)
                limit = 150 * max(args.scale, 0.3) if phase == "main" else 60
                r = run_worker(n, phase, sim.root, work / f"{n}-{phase}.json", limit)
                score(sim, r)
                results[n][phase] = r
                status = "ok" if r.get("ok") else f"FAILED: {r.get('error', '')[:200]}"
                print(f"           {n}: {status} ({r['wall_s']:.1f} s)", flush=True)
        finally:
            sim.close()

    doc = {
        "commit": args.commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": versions(),
        "installs": installs,
        "setup": {
            "package_wave_w_period_s": PACKAGE,
            "dram_w": DRAM_W,
            "gpu_wave": GPU_WAVE,
            "gpu_update_s": GPU_UPDATE_S,
            "rapl_update_s": 0.001,
            "wrap_uj": WRAP_UJ,
            "scale": args.scale,
        },
        "suite_wall_s": time.monotonic() - started,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers-latest.json").write_text(json.dumps(doc, indent=1, default=str))
    import report

    report.write(doc, RESULTS)
    print(
        f"wrote {RESULTS / 'peers-latest.md'} and peers-error.png "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

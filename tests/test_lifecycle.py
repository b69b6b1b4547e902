"""Process lifecycle: fork (os.fork, multiprocessing, DataLoader-like workers), interpreter exit,
and SIGKILL. Each scenario runs in a fresh interpreter pointed at the simulated machine, so that
forking never touches the pytest process and exit behaviour is the real one."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from carbonctx._output.jsonl import read_jsonl
from carbonctx.testing import SimulatedMachine, Wave

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: Generous bound for a subprocess that should take about a second: a hang fails the test.
WAIT_S = 40


def run_script(
    tmp_path: Path,
    sim: SimulatedMachine,
    code: str,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sim.env(), **(extra_env or {})}
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def last_json(stdout: str) -> Any:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(("{", "["))]
    assert lines, f"no JSON line in the output:\n{stdout}"
    return json.loads(lines[-1])


# The parent measures, forks a child that reports what it sees over a pipe (with a bounded
# wait on both sides), then measures again.
FORK_SCRIPT = """
    import json, os, select, sys, time
    import carbonctx

    def busy(s):
        end = time.monotonic() + s
        while time.monotonic() < end:
            pass

    with carbonctx.track("parent-before") as before:
        busy(0.05)
    parent_before = before.cpu_j

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = {"pid": os.getpid()}
        try:
            with carbonctx.track("child") as c:
                busy(0.05)
            try:
                res = c.result(timeout=10)
                out["cpu_j"] = res.cpu_j
                out["result_pid"] = res.pid
                out["sources"] = sorted(res.by_source)
                out["missing"] = list(res.missing)
            except carbonctx.CarbonctxError as e:
                out["error"] = type(e).__name__
                out["message"] = str(e)
            out["start_error"] = carbonctx.devices()["start_error"]
            out["stats"] = {k: v.count for k, v in carbonctx.stats().items()}
        except BaseException as e:  # report anything, never hang the parent
            out["fatal"] = repr(e)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 1.0)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    for _ in range(300):  # reap the child, bounded: a hung child is killed
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    child = json.loads(data) if data else None

    with carbonctx.track("parent-after") as after:
        busy(0.05)
    print(json.dumps({
        "parent_pid": os.getpid(),
        "child": child,
        "parent_before": parent_before,
        "parent_after": after.cpu_j,
        "parent_stats": {k: v.count for k, v in carbonctx.stats().items()},
    }))
"""


def test_a_forked_child_starts_its_own_sampler_and_the_parent_keeps_measuring(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    r = run_script(tmp_path, sim, FORK_SCRIPT)
    assert r.returncode == 0, r.stderr
    doc = last_json(r.stdout)
    child = doc["child"]
    assert child is not None, f"the child never answered:\n{r.stderr}"
    assert "fatal" not in child and "error" not in child, child
    # The child measured with a sampler of its own: its region is its own, with energy.
    assert child["result_pid"] == child["pid"] != doc["parent_pid"]
    assert child["cpu_j"] > 0
    assert "powercap:intel-rapl:0" in child["sources"]
    assert child["start_error"] is None
    # The child's statistics are its own: nothing inherited from the parent.
    assert child["stats"] == {"child": 1}
    # The parent keeps measuring after the fork, and its statistics exclude the child's.
    assert doc["parent_before"] > 0 and doc["parent_after"] > 0
    assert doc["parent_stats"] == {"parent-before": 1, "parent-after": 1}


def test_a_forked_child_with_fork_disabled_reports_it_has_no_sampler(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    r = run_script(tmp_path, sim, FORK_SCRIPT, {"CARBONCTX_ON_FORK": "disable"})
    assert r.returncode == 0, r.stderr
    doc = last_json(r.stdout)
    child = doc["child"]
    assert child is not None, f"the child never answered:\n{r.stderr}"
    assert "fatal" not in child, child
    # The region ran (the program is never broken); reading it raises nothing (strict is off):
    # its figures are NaN, it says the sampler is missing, and the runtime says why.
    assert "error" not in child, child
    assert child["missing"] == ["sampler"] and math.isnan(child["cpu_j"])
    assert "on_fork" in child["start_error"]
    assert doc["parent_before"] > 0 and doc["parent_after"] > 0


def test_forking_never_drops_the_parents_native_sampler_in_the_child(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """The child holds a copy of the parent's sampler whose thread does not exist there:
    dropping it joins a missing thread (a panic, or a hang). Several forks, each must be clean.
    """
    code = """
        import os, time
        import carbonctx
        with carbonctx.track("p") as m:
            time.sleep(0.01)
        m.cpu_j
        for _ in range(5):
            time.sleep(0.03)
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        print("done")
    """
    r = run_script(tmp_path, sim, code)
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout
    assert "panicked" not in r.stderr and "PanicException" not in r.stderr, r.stderr


def test_a_region_ended_before_the_fork_but_unresolved_fails_fast_in_the_child(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """A handle inherited from the parent must never wait on the parent's sampler."""
    code = """
        import json, os, time
        import carbonctx
        with carbonctx.track("warm") as w:
            pass
        w.cpu_j
        with carbonctx.track("inherited") as m:
            pass
        pid = os.fork()  # right after the exit: m is almost surely unresolved here
        if pid == 0:
            t = time.monotonic()
            try:
                m.result(timeout=20)
                out = {"resolved": True}
            except carbonctx.CarbonctxError as e:
                out = {"error": type(e).__name__}
            out["waited_s"] = time.monotonic() - t
            print(json.dumps(out), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print(json.dumps({"parent_reads": m.cpu_j >= 0}))
    """
    r = run_script(tmp_path, sim, code)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    child = next(d for d in lines if "waited_s" in d)
    # Either the result was already resolved in the parent (and copied), or the child is told
    # at once that it has no sampler: never the 20 s timeout of a wait on a missing thread.
    assert child.get("resolved") or child.get("error") == "SamplerError", child
    assert child["waited_s"] < 15, child
    assert {"parent_reads": True} in lines


MP_SCRIPT = """
    import json, multiprocessing as mp, os, sys, time
    import carbonctx

    @carbonctx.tracked
    def load(i):
        end = time.monotonic() + 0.005
        while time.monotonic() < end:
            pass
        return i * i

    def info(_):
        st = carbonctx.stats()
        s = st.get("load")
        return {
            "pid": os.getpid(),
            "count": s.count if s else 0,
            "energy": s.energy_j.total if s else None,
            "start_error": carbonctx.devices()["start_error"],
        }

    def worker(q_in, q_out):
        # A DataLoader-like worker loop: items in, decorated calls, results out.
        while True:
            item = q_in.get(timeout=30)
            if item is None:
                break
            q_out.put(("item", load(item)))
        q_out.put(("stats", info(None)))

    if __name__ == "__main__":
        for i in range(3):
            load(i)  # the parent has measured before forking
        # Fork at once, while the parent's resolver thread handles its first results: a fork
        # during an import there would leave the workers a lock that is never released.
        ctx = mp.get_context("fork")
        mode = sys.argv[1] if len(sys.argv) > 1 else "pool"
        if mode == "pool":
            with ctx.Pool(2) as pool:
                squares = pool.map_async(load, range(20)).get(timeout=30)
                infos = pool.map_async(info, range(2), chunksize=1).get(timeout=30)
            out = {"squares": squares, "infos": infos}
        else:
            q_in, q_out = ctx.Queue(), ctx.Queue()
            p = ctx.Process(target=worker, args=(q_in, q_out))
            p.start()
            for i in range(10):
                q_in.put(i)
            q_in.put(None)
            items, stats = [], None
            while stats is None:
                kind, value = q_out.get(timeout=30)
                if kind == "item":
                    items.append(value)
                else:
                    stats = value
            p.join(timeout=30)
            out = {"items": items, "worker": stats, "exitcode": p.exitcode}
        load(100)
        out["parent_count"] = carbonctx.stats()["load"].count
        out["parent_pid"] = os.getpid()
        print(json.dumps(out))
"""


def test_multiprocessing_fork_pool_workers_measure_with_their_own_sampler(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    env = {**os.environ, **sim.env()}
    script = tmp_path / "mp.py"
    script.write_text(textwrap.dedent(MP_SCRIPT), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, str(script), "pool"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    doc = last_json(r.stdout)
    assert doc["squares"] == [i * i for i in range(20)]
    # Every worker measured (a sampler of its own, no start error) and the parent kept going.
    worker_calls = 0
    for info in doc["infos"]:
        assert info["pid"] != doc["parent_pid"]
        assert info["start_error"] is None
        if info["count"]:
            assert info["energy"] > 0
        worker_calls += info["count"]
    assert worker_calls >= 1
    # The parent's counts are its own: 3 before the fork and 1 after, none of the workers'.
    assert doc["parent_count"] == 4


@pytest.mark.parametrize("on_fork", ["restart", "disable"])
def test_a_decorated_function_in_a_dataloader_like_worker(
    sim: SimulatedMachine, tmp_path: Path, on_fork: str
) -> None:
    env = {**os.environ, **sim.env(), "CARBONCTX_ON_FORK": on_fork}
    script = tmp_path / "loader.py"
    script.write_text(textwrap.dedent(MP_SCRIPT), encoding="utf-8")
    r = subprocess.run(
        [sys.executable, str(script), "process"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    doc = last_json(r.stdout)
    # The decorated function always runs and returns its value in the worker.
    assert doc["items"] == [i * i for i in range(10)]
    assert doc["exitcode"] == 0
    worker = doc["worker"]
    if on_fork == "restart":
        assert worker["start_error"] is None
        assert worker["count"] == 10 and worker["energy"] > 0
    else:
        assert "on_fork" in worker["start_error"]
        assert worker["count"] == 0
    assert doc["parent_count"] == 4


def test_exit_with_regions_still_resolving_writes_them_all_and_the_summary(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    out = tmp_path / "runs" / "regions.jsonl"
    code = """
        import carbonctx

        @carbonctx.tracked
        def step(i):
            return i + 1

        for i in range(500):
            step(i)
        with carbonctx.track("last"):
            pass
        # The script ends here: the last regions resolve during interpreter exit.
    """
    r = run_script(tmp_path, sim, code, {"CARBONCTX_OUTPUT": str(out), "CARBONCTX_SUMMARY": "1"})
    assert r.returncode == 0, r.stderr
    regions, _power, bad = read_jsonl(str(out))
    assert bad == 0
    names = [rec["name"] for rec in regions]
    assert names.count("step") == 500 and names.count("last") == 1
    assert sorted(rec["id"] for rec in regions) == list(range(1, 502))
    # The summary table goes to stderr, with a row per name and its count.
    assert "carbonctx summary" in r.stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in r.stderr.splitlines() if ln.strip()}
    assert rows.get("step") == "500" and rows.get("last") == "1"
    assert r.stdout == ""


def test_no_summary_unless_asked(sim: SimulatedMachine, tmp_path: Path) -> None:
    code = """
        import carbonctx
        with carbonctx.track("x"):
            pass
    """
    r = run_script(tmp_path, sim, code)
    assert r.returncode == 0, r.stderr
    assert "carbonctx summary" not in r.stderr


def test_sigkill_leaves_every_finished_region_in_a_readable_file(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    out = tmp_path / "killed.jsonl"
    n = 40
    code = f"""
        import sys, time
        import carbonctx

        for i in range({n}):
            with carbonctx.track("step", tags={{"i": i}}) as m:
                time.sleep(0.001)
        m.energy_j  # the last region is resolved, so every earlier one is too
        print("ready", flush=True)
        time.sleep(60)
    """
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    env = {**os.environ, **sim.env(), "CARBONCTX_OUTPUT": str(out)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + WAIT_S
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                break
        assert line.strip() == "ready", f"the child never got ready: {proc.poll()=}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    raw = out.read_text(encoding="utf-8")
    assert raw.endswith("\n")
    records = [json.loads(ln) for ln in raw.splitlines() if ln.strip()]  # every line parses
    steps = [rec for rec in records if rec.get("kind") == "region" and rec["name"] == "step"]
    assert sorted(rec["id"] for rec in steps) == list(range(1, n + 1))
    assert sorted(rec["tags"]["i"] for rec in steps) == list(range(n))
    assert all(rec["energy_j"] > 0 for rec in steps)


def test_the_resolver_thread_imports_only_while_a_fork_waits_for_it(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    """A fork while a thread is importing leaves the child with that module's import lock held
    by a thread that does not exist there: the child hangs on its next use of the module (seen
    with multiprocessing fork pools right after the first regions). The first region does not
    wait for what resolving needs (numpy, the intensity service): the first batch loads it,
    often on the resolver thread, and only while holding the lock a fork waits for; the
    resolver thread imports nothing anywhere else."""
    code = """
        import json, sys, threading, time
        imports = []

        def hook(event, args):
            if event == "import" and threading.current_thread().name.startswith("carbonctx"):
                from carbonctx._measure import resolver
                imports.append([args[0], resolver._LOADING.locked()])

        sys.addaudithook(hook)
        import carbonctx

        @carbonctx.tracked
        def step():
            time.sleep(0.001)

        for _ in range(5):
            step()
        with carbonctx.track("handle"):
            time.sleep(0.001)
        time.sleep(0.5)  # the resolver thread, not this one, resolves them
        print(json.dumps(imports))
    """
    for extra in ({}, {"CARBONCTX_OUTPUT": str(tmp_path / "o.jsonl")}):
        r = run_script(tmp_path, sim, code, extra)
        assert r.returncode == 0, r.stderr
        imports = last_json(r.stdout)
        outside = [name for name, held in imports if not held]
        assert outside == [], f"imports on the resolver thread without the lock ({extra})"
        if not extra:
            # No output: numpy came with the first batch, on the resolver thread.
            assert "numpy" in [name for name, _ in imports]


def test_a_fork_while_the_first_batch_loads_leaves_a_child_that_can_import(
    sim: SimulatedMachine, tmp_path: Path
) -> None:
    # Forks every millisecond or so from the first region on, across the resolver thread's
    # loading of numpy and the intensity service: each child imports them and measures a
    # region of its own (a child that hung would keep the parent waiting past its bound).
    code = """
        import json, os, sys, time
        import carbonctx

        with carbonctx.track("first"):
            time.sleep(0.002)
        kids, ok = 0, 0
        end = time.monotonic() + 0.4
        while time.monotonic() < end and "numpy" not in sys.modules or kids < 5:
            pid = os.fork()
            if pid == 0:
                import numpy, numpy.random
                import carbonctx._carbon.service
                with carbonctx.track("child") as m:
                    pass
                os._exit(0 if m.energy_j >= 0 else 3)
            kids += 1
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    ok += os.waitstatus_to_exitcode(status) == 0
                    break
                time.sleep(0.002)
            else:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        print(json.dumps([kids, ok, "numpy" in sys.modules]))
    """
    r = run_script(tmp_path, sim, code)
    assert r.returncode == 0, r.stderr
    kids, ok, loaded = last_json(r.stdout)
    assert loaded and kids >= 5 and ok == kids, (kids, ok)


# Workers that leave without the interpreter's exit hooks: Process children started by fork and
# forkserver, and Pool workers under every start method (their exit is os._exit after
# multiprocessing's own exit function, or SIGTERM from Pool.terminate(), which leaving
# `with Pool(...)` calls). The workers' last regions end just before they leave.
MP_EXIT_SCRIPT = """
    import json, multiprocessing as mp, os, sys, time
    import carbonctx

    @carbonctx.tracked
    def load(i):
        end = time.monotonic() + 0.002
        while time.monotonic() < end:
            pass
        return i * i

    def work(first):
        for i in range(first, first + 10):
            with carbonctx.track("item", tags={"i": i}):
                load(i)

    def item(i):
        with carbonctx.track("item", tags={"i": i}):
            return load(i)

    if __name__ == "__main__":
        method, mode = sys.argv[1], sys.argv[2]
        with carbonctx.track("parent"):  # the parent measures before it starts workers
            pass
        ctx = mp.get_context(method)
        if mode == "process":
            ps = [ctx.Process(target=work, args=(10 * k,)) for k in range(2)]
            for p in ps:
                p.start()
            for p in ps:
                p.join(30)
            codes = [p.exitcode for p in ps]
        elif mode == "pool":
            with ctx.Pool(2) as pool:
                squares = pool.map(item, range(20), chunksize=1)
            codes = [sum(squares)]
        else:  # "pool-close": close() and join(), workers leave on their own
            pool = ctx.Pool(2)
            squares = pool.map(item, range(20), chunksize=1)
            pool.close()
            pool.join()
            codes = [sum(squares)]
        print(json.dumps({"codes": codes}))
"""


@pytest.mark.parametrize(
    ("method", "mode"),
    [
        ("fork", "process"),
        ("forkserver", "process"),
        ("spawn", "process"),
        ("fork", "pool"),
        ("forkserver", "pool"),
        ("spawn", "pool"),
        ("fork", "pool-close"),
    ],
)
def test_multiprocessing_workers_record_every_finished_region(
    tmp_path: Path, method: str, mode: str
) -> None:
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    try:
        out = tmp_path / "regions.jsonl"
        script = tmp_path / "mp_exit.py"
        script.write_text(textwrap.dedent(MP_EXIT_SCRIPT), encoding="utf-8")
        env = {**os.environ, **m.env(), "CARBONCTX_OUTPUT": str(out), "CARBONCTX_SUMMARY": "1"}
        r = subprocess.run(
            [sys.executable, str(script), method, mode],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT_S * 2,
            check=False,
        )
    finally:
        m.close()
    assert r.returncode == 0, r.stderr
    codes = last_json(r.stdout)["codes"]
    assert codes == ([0, 0] if mode == "process" else [sum(i * i for i in range(20))])
    regions, _power, bad = read_jsonl(str(out))
    assert bad == 0
    items = [rec for rec in regions if rec["name"] == "item"]
    # Every region the workers finished is written, once, with energy.
    assert sorted(rec["tags"]["i"] for rec in items) == list(range(20))
    assert sum(rec["name"] == "load" for rec in regions) == 20
    assert all(rec["energy_j"] > 0 for rec in items)
    assert [rec["name"] for rec in regions].count("parent") == 1
    # One summary table, the main process's: the workers print none.
    assert r.stderr.count("carbonctx summary") == 1, r.stderr


DATALOADER_SCRIPT = """
    import json
    import carbonctx
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Items(Dataset):
        def __len__(self):
            return 24

        @carbonctx.tracked(name="load")
        def __getitem__(self, i):
            with carbonctx.track("item", tags={"i": int(i)}):
                return torch.tensor([i * i])

    if __name__ == "__main__":
        loader = DataLoader(Items(), batch_size=4, num_workers=2)  # fork workers on Linux
        print(json.dumps({"total": sum(int(b.sum()) for b in loader)}))
"""


@pytest.mark.timeout(180)  # torch is imported in the script: slow on a loaded machine
def test_a_torch_dataloaders_workers_record_every_item(tmp_path: Path) -> None:
    """The README's DataLoader case, with real torch: each worker's items are written, the last
    ones included (the workers leave through os._exit when the epoch ends)."""
    pytest.importorskip("torch")
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    try:
        out = tmp_path / "regions.jsonl"
        script = tmp_path / "loader.py"
        script.write_text(textwrap.dedent(DATALOADER_SCRIPT), encoding="utf-8")
        r = subprocess.run(
            [sys.executable, str(script)],
            env={**os.environ, **m.env(), "CARBONCTX_OUTPUT": str(out)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT_S * 3,
            check=False,
        )
    finally:
        m.close()
    assert r.returncode == 0, r.stderr
    assert last_json(r.stdout) == {"total": sum(i * i for i in range(24))}
    regions, _power, bad = read_jsonl(str(out))
    assert bad == 0
    items = [rec for rec in regions if rec["name"] == "item"]
    assert sorted(rec["tags"]["i"] for rec in items) == list(range(24))
    assert sum(rec["name"] == "load" for rec in regions) == 24

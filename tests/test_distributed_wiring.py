"""The runtime in a job, in this process (launcher variables set by the test): settings, the
one warning for inconsistent variables, GPU ownership, shares, output paths, devices(),
job_total() outside a job, and a lone process left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import carbonctx
from carbonctx import ConfigurationError
from carbonctx._measure import process
from carbonctx.errors import CarbonctxWarning
from carbonctx.testing import SimulatedMachine, Wave

TORCHRUN = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "wiring",
}


@pytest.fixture
def sim2(tmp_path: Path, fake_nvml: Path) -> Iterator[SimulatedMachine]:
    """A node with two GPUs."""
    with SimulatedMachine(
        tmp_path / "hw", package=Wave.constant(80.0), gpus=2, nvml_library=fake_nvml
    ) as m:
        yield m


def launch(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def measure(sim: SimulatedMachine, **settings: object) -> carbonctx.Measurement:
    carbonctx.configure(**sim.settings(), **settings)  # type: ignore[arg-type]
    with carbonctx.track("step") as m:
        time.sleep(0.05)
    return m.result()


LIGHTNING_MAIN = {
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "41077",
    "NODE_RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "2",
}


def test_a_launch_after_configure_is_seen_by_the_first_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # configure() at the script's top, then Trainer.fit: Lightning's launcher sets its variables
    # in this (main) process's environment and starts local rank 1, then the first region opens
    for k in ("RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "TORCHELASTIC_RUN_ID", *LIGHTNING_MAIN):
        monkeypatch.delenv(k, raising=False)
    carbonctx.configure()
    launch(monkeypatch, **LIGHTNING_MAIN)
    info = process.runtime().rank_info
    assert (info.launcher, info.rank, info.world_size, info.distributed) == (
        "lightning",
        0,
        2,
        True,
    )
    # Lightning's teardown deletes WORLD_SIZE after the fit: the process stays the job's rank
    monkeypatch.delenv("WORLD_SIZE")
    carbonctx.configure()
    assert process.runtime().rank_info == info


def test_rank_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    launch(
        monkeypatch,
        CARBONCTX_RANK="3",
        CARBONCTX_WORLD_SIZE="4",
        CARBONCTX_LOCAL_RANK="1",
        CARBONCTX_LOCAL_WORLD_SIZE="2",
        CARBONCTX_NODE="n1",
        CARBONCTX_JOB="j",
        CARBONCTX_GPUS="1, GPU-abc",
    )
    s = carbonctx.configure()
    assert (s.rank, s.world_size, s.local_rank, s.local_world_size) == (3, 4, 1, 2)
    assert (s.node, s.job, s.gpus) == ("n1", "j", (1, "GPU-abc"))
    info = process.runtime().rank_info
    assert (info.rank, info.node, info.job, info.launcher) == (3, "n1", "j", "settings")
    assert info.distributed


@pytest.mark.parametrize(
    ("var", "value", "match"),
    [
        ("CARBONCTX_RANK", "x", "CARBONCTX_RANK"),
        # a digit int() does not read (superscript two) is as bad as any other text
        ("CARBONCTX_RANK", "\u00b2", "CARBONCTX_RANK"),
        ("CARBONCTX_GPUS", "gpu0", "CARBONCTX_GPUS"),
        ("CARBONCTX_GPUS", "0,\u00b9", "CARBONCTX_GPUS"),
        ("CARBONCTX_OUTPUT", "out-{pid}.jsonl", "{pid}"),
    ],
)
def test_bad_settings_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, match: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError, match=match):
        carbonctx.configure()


def test_settings_that_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="below"):
        carbonctx.configure(rank=2, world_size=2)
    launch(monkeypatch, **TORCHRUN)
    with pytest.raises(ConfigurationError, match="CARBONCTX_LOCAL_RANK"):
        carbonctx.configure(local_rank=5)


@pytest.mark.parametrize(
    "env",
    [{"RANK": "1"}, {**TORCHRUN, "LOCAL_RANK": "2"}],
    ids=["rank-without-world-size", "local-rank-past-local-world-size"],
)
def test_inconsistent_variables_warn_once_and_measure_alone(
    monkeypatch: pytest.MonkeyPatch, sim2: SimulatedMachine, env: dict[str, str]
) -> None:
    launch(monkeypatch, **env)
    with pytest.warns(CarbonctxWarning, match="inconsistent") as caught:
        m = measure(sim2)
        with carbonctx.track("again"):
            pass
        carbonctx.configure(window=10)  # a new runtime: still the same process
        with carbonctx.track("again"):
            pass
    assert len([w for w in caught if "inconsistent" in str(w.message)]) == 1
    # Measured on its own: both GPUs, the whole CPU, no rank fields.
    assert sorted(s.id for s in m.by_source.values() if s.domain == "gpu") == ["nvml:0", "nvml:1"]
    assert all(s.share == 1.0 and s.share_rule is None for s in m.by_source.values())
    assert m.rank is None and "rank" not in m.to_dict()


def test_a_rank_reports_its_gpu_and_its_share(
    monkeypatch: pytest.MonkeyPatch, sim2: SimulatedMachine
) -> None:
    launch(monkeypatch, **TORCHRUN)
    m = measure(sim2)
    gpus = [s for s in m.by_source.values() if s.domain == "gpu"]
    assert [s.id for s in gpus] == ["nvml:1"]
    pkg = next(s for s in m.by_source.values() if s.domain == "package")
    assert pkg.share == 0.5 and pkg.node_joules == pytest.approx(2 * (pkg.joules or 0))
    assert m.cpu_j == pytest.approx(pkg.joules)
    assert (m.rank, m.local_rank, m.job) == (1, 1, "wiring")
    d = m.to_dict()
    assert d["rank"] == 1 and d["by_source"][pkg.id]["share"] == 0.5
    info = carbonctx.devices()
    rank = info["rank"]
    assert rank["gpus"]["indices"] == [1] and rank["gpus"]["rule"] == "local-rank"
    # The sampler reads only this rank's GPU (its gpus argument), not every GPU it can see.
    assert [s["id"] for s in info["sources"] if s["domain"] == "gpu"] == ["nvml:1"]
    # Two local ranks: the node's shared sampler, this lone process its owner.
    assert rank["launcher"] == "torchrun" and "node's shared sampler" in rank["sampler"]
    assert rank["node_sampler"]["role"] == "owner"
    assert rank["shared_sources"]["share"] == 0.5


def test_one_visible_gpu_of_several_is_the_ranks(
    monkeypatch: pytest.MonkeyPatch, sim2: SimulatedMachine
) -> None:
    # Slurm's --gpus-per-task: each rank sees only its own GPU.
    launch(monkeypatch, **TORCHRUN, CUDA_VISIBLE_DEVICES="1")
    m = measure(sim2)
    assert [s.id for s in m.by_source.values() if s.domain == "gpu"] == ["nvml:1"]
    assert carbonctx.devices()["rank"]["gpus"]["rule"] == "only-visible"


def test_the_gpu_setting_overrides(monkeypatch: pytest.MonkeyPatch, sim2: SimulatedMachine) -> None:
    launch(monkeypatch, **TORCHRUN)
    m = measure(sim2, gpus=[0])
    assert [s.id for s in m.by_source.values() if s.domain == "gpu"] == ["nvml:0"]
    assert carbonctx.devices()["rank"]["gpus"]["rule"] == "setting"
    carbonctx.configure(gpus=[])
    with carbonctx.track("none") as m2:
        pass
    assert m2.gpu_j == 0 and not [s for s in m2.by_source.values() if s.domain == "gpu"]


def test_output_paths_per_rank(
    monkeypatch: pytest.MonkeyPatch, sim2: SimulatedMachine, tmp_path: Path
) -> None:
    launch(monkeypatch, **TORCHRUN)
    measure(sim2, output=str(tmp_path / "{job}" / "r{rank:02d}.jsonl"))
    carbonctx.flush()
    process.reset()
    lines = (tmp_path / "wiring" / "r01.jsonl").read_text().splitlines()
    rec = next(json.loads(x) for x in lines if json.loads(x)["kind"] == "region")
    assert (rec["rank"], rec["local_rank"], rec["job"]) == (1, 1, "wiring")
    assert rec["node"]
    # A plain path gets the rank: every rank its own file.
    measure(sim2, output=str(tmp_path / "plain.jsonl"))
    process.reset()
    assert (tmp_path / "plain.rank1.jsonl").exists() and not (tmp_path / "plain.jsonl").exists()


def test_job_total_outside_a_job(sim: SimulatedMachine) -> None:
    with carbonctx.track("step") as m:
        time.sleep(0.02)
    total = carbonctx.job_total(m)
    assert (total.ranks, total.engine) == (1, "local")
    assert total.energy_j == pytest.approx(m.energy_j) and total.gpu_j == pytest.approx(m.gpu_j)
    run = carbonctx.epochs(2, quiet=True)
    for _ in run:
        time.sleep(0.01)
    t = carbonctx.job_total()
    assert t.energy_j == pytest.approx(run.actual.energy_j) and t.forecast is run.forecast
    with pytest.raises(ConfigurationError):
        carbonctx.job_total("epoch")  # type: ignore[arg-type]


def test_a_lone_process_is_as_before(sim: SimulatedMachine) -> None:
    with carbonctx.track("step") as m:
        pass
    d = m.result().to_dict()
    assert not {"rank", "local_rank", "node", "job"} & set(d)
    for s in d["by_source"].values():
        assert not {"share", "share_rule", "node_joules"} & set(s)
    rank = carbonctx.devices()["rank"]
    assert rank["distributed"] is False and rank["gpus"] is None


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run(
        [sys.executable, *args],
        env={**base, **env, "PYTHONWARNINGS": "default"},
        capture_output=True,
        text=True,
        timeout=30,  # a hang fails well within pytest's limit
        check=False,
    )


def test_devices_command_in_a_job(sim2: SimulatedMachine) -> None:
    r = _run(["-m", "carbonctx", "devices"], {**sim2.env(), **TORCHRUN})
    assert r.returncode == 0, r.stderr
    assert "Job: rank 1 of 2 (local rank 1 of 2)" in r.stdout
    assert "GPUs it reports: nvml:1 (local-rank" in r.stdout
    assert "share 0.5 of the node" in r.stdout and "the node's shared sampler" in r.stdout


SCRIPT = """
import time, carbonctx
run = carbonctx.epochs(2, quiet=True)
for _ in run:
    time.sleep(0.05)
print("done", run.epochs_done, run.engine)
"""


def test_inconsistent_variables_in_a_real_process(sim2: SimulatedMachine) -> None:
    r = _run(["-c", SCRIPT], {**sim2.env(), "RANK": "1", "LOCAL_RANK": "0"})
    assert r.returncode == 0, r.stderr
    assert "done 2 local" in r.stdout
    assert r.stderr.count("inconsistent") == 1, r.stderr
    assert "RANK=1 is set but no world size is" in r.stderr


class _FakeCuda:
    def __init__(self, device: int) -> None:
        self.device = device

    def is_initialized(self) -> bool:
        return True

    def is_available(self) -> bool:
        return True

    def current_device(self) -> int:
        return self.device


class _FakeTorch:
    def __init__(self, device: int) -> None:
        self.cuda = _FakeCuda(device)


def test_torchs_current_device_is_read_at_the_first_region(
    monkeypatch: pytest.MonkeyPatch, sim2: SimulatedMachine
) -> None:
    # Local rank 0 whose script made GPU 1 current after importing carbonctx (and configuring
    # it): ownership is decided at the first region, so torch's choice counts.
    launch(monkeypatch, **{**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0"})
    carbonctx.configure(**sim2.settings())  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "torch", _FakeTorch(1))
    with carbonctx.track("step") as m:
        time.sleep(0.02)
    assert [s.id for s in m.by_source.values() if s.domain == "gpu"] == ["nvml:1"]
    gpus = carbonctx.devices()["rank"]["gpus"]
    assert gpus["rule"] == "torch-current" and gpus["indices"] == [1]


def test_a_gpu_without_per_rank_ownership_is_split_not_counted_per_rank() -> None:
    # An Intel GPU (hwmon) has no per-rank owner here: each of the node's two ranks reports
    # half of it, as for the package, so that adding up ranks counts it once.
    from carbonctx._distributed import RankInfo
    from carbonctx._measure.ranks import RankPlan, column_shares, share_of

    info = RankInfo(rank=1, world_size=2, local_rank=1, local_world_size=2, distributed=True)
    share, rule = share_of(info)
    plan = RankPlan(info, None, None, share, rule)
    sources = [
        {"id": "powercap:intel-rapl:0", "backend": "powercap", "domain": "package", "index": 0},
        {"id": "hwmon:xe:0000:03:00.0:energy1", "backend": "hwmon", "domain": "gpu", "index": 0},
    ]
    (pkg, gpu) = column_shares(sources, plan)
    assert pkg[0] == gpu[0] == 0.5
    assert gpu[1] is not None and "without per-rank ownership" in gpu[1]
    # Outside a job it is the process's own, whole.
    lone = RankPlan(RankInfo(), None, None, 1.0, "")
    assert [f for f, _ in column_shares(sources, lone)] == [1.0, 1.0]

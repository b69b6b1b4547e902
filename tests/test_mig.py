"""NVIDIA MIG instances, against the stand-in NVML partitioned into instances (``gpuK.mig``): a
process on a MIG instance measures its whole GPU (NVML's energy counter is the GPU's, which its
instances share), ranks on instances of one GPU count that GPU once, and a MIG UUID that names
no instance is reported with what to do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx import _native
from carbonctx._measure import process
from carbonctx.testing import GpuSpec, SimulatedMachine, Wave

#: The instances of GPU 1 (slots 0 and 2; slot 1 is empty), as nvidia-smi -L lists them.
MIG = ("MIG-5e1f0c2a-8d3b-5a7e-9c4d-2b6f1e8a7c30", "MIG-9a4c7e21-3f6d-5b8a-8e2c-7d1b4f9a6e52")
UNKNOWN = "MIG-00000000-dead-beef-0000-000000000000"

TORCHRUN = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "mig"}


def partition(sim: SimulatedMachine, gpu: int, slots: list[str]) -> None:
    """Gives GPU ``gpu`` of the stand-in these MIG slots (read at the next nvmlInit)."""
    assert sim.nvml_library is not None
    with open(sim.nvml_library.parent / "fake_nvml.conf", "a") as f:
        f.write(f"gpu{gpu}.mig={','.join(slots)}\n")


@pytest.fixture
def sim(tmp_path: Path, fake_nvml: Path) -> Iterator[SimulatedMachine]:
    """Two GPUs far apart in power (a rank reading the wrong one would show); GPU 1 has two
    MIG instances."""
    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave.constant(80.0),
        gpus=[GpuSpec(wave=Wave.constant(60.0)), GpuSpec(wave=Wave.constant(300.0))],
        gpu_update_s=0.01,
        nvml_library=fake_nvml,
    ) as m:
        partition(m, 1, [MIG[0], "", MIG[1]])
        yield m


def measure(sim: SimulatedMachine, seconds: float = 0.3) -> tuple[carbonctx.Measurement, float]:
    """One region; and the exact energy of GPU 1 over it."""
    carbonctx.configure(**sim.settings())
    with carbonctx.track("step") as m:
        time.sleep(seconds)
    r = m.result()
    offset = process.runtime()._offset
    t0, t1 = (round((t - offset) * 1e9) for t in (r.start, r.end))
    return r, sim.gpu_truth_j(1, t0, t1)


def gpu_sources(r: carbonctx.Measurement) -> dict[str, Any]:
    return {k: s for k, s in r.by_source.items() if s.domain == "gpu"}


def test_the_listing_carries_each_gpus_instances(sim: SimulatedMachine) -> None:
    listed = _native.nvml_gpus(nvml_library=str(sim.nvml_library))
    assert listed["unavailable"] == []
    assert [(g["index"], g["mig_uuids"]) for g in listed["gpus"]] == [(0, []), (1, list(MIG))]
    assert all(str(g["uuid"]).startswith("GPU-") for g in listed["gpus"])
    missing = _native.nvml_gpus(nvml_library=str(sim.root / "no-such-libnvidia-ml.so.1"))
    assert missing["gpus"] == [] and "CARBONCTX_NVML_LIBRARY" in missing["unavailable"][0]["hint"]


def test_a_process_on_a_mig_instance_measures_its_whole_gpu(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG[1])
    r, truth = measure(sim)
    gpus = gpu_sources(r)
    assert list(gpus) == ["nvml:1"], gpus
    assert r.gpu_j == pytest.approx(truth, rel=0.1)
    found = carbonctx.devices()
    src = next(s for s in found["sources"] if s["id"] == "nvml:1")
    assert MIG[1] in src["label"] and "whole GPU" in src["label"]
    assert not [u for u in found["unavailable"] if u["backend"] == "nvml"]


def test_the_gpu_setting_may_name_an_instance(sim: SimulatedMachine) -> None:
    carbonctx.configure(**sim.settings(), gpus=[MIG[0]])
    with carbonctx.track("step") as m:
        time.sleep(0.05)
    assert list(gpu_sources(m.result())) == ["nvml:1"]
    assert carbonctx.devices()["rank"]["gpus"]["rule"] == "setting"


def test_a_mig_uuid_that_names_no_instance_is_reported(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UNKNOWN)
    r, _ = measure(sim, 0.05)
    assert not gpu_sources(r) and r.gpu_j == 0
    (u,) = [u for u in carbonctx.devices()["unavailable"] if "no MIG instance" in u["reason"]]
    assert UNKNOWN in u["what"] and "nvidia-smi -L" in u["hint"]


def test_a_rank_on_an_unknown_instance_reads_no_gpu_and_says_why(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    for k, v in {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UNKNOWN)
    r, _ = measure(sim, 0.05)
    assert not gpu_sources(r)
    found = carbonctx.devices()
    assert found["rank"]["gpus"]["rule"] == "none-visible"
    assert UNKNOWN in found["rank"]["gpus"]["reason"]
    (u,) = [u for u in found["unavailable"] if "no MIG instance" in u["reason"]]
    assert UNKNOWN in u["what"] and "nvidia-smi -L" in u["hint"]


@pytest.mark.parametrize("node_sampler", [False, True])
def test_ranks_on_instances_of_one_gpu_count_it_once(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine, node_sampler: bool
) -> None:
    # Each rank in turn, as launched on its own instance; the rank on the GPU's first instance
    # (in NVML's order) reports the whole GPU, the other none: added up, the GPU counts once.
    results = {}
    for rank, mig in ((0, MIG[1]), (1, MIG[0])):
        for k, v in {**TORCHRUN, "RANK": str(rank), "LOCAL_RANK": str(rank)}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mig.upper())  # either case, as CUDA takes
        monkeypatch.setenv("CARBONCTX_NODE_SAMPLER", "1" if node_sampler else "0")
        r, truth = measure(sim)
        own = carbonctx.devices()["rank"]["gpus"]
        assert own["shared"] and own["visible"] == [1]
        results[rank] = (r, truth, own)
        process.reset()
    r0, _, own0 = results[0]
    assert own0["rule"] == "mig-other" and own0["indices"] == []
    assert r0.gpu_j == 0
    assert all(s.share == 0 for s in gpu_sources(r0).values())
    r1, truth1, own1 = results[1]
    assert own1["rule"] == "mig-first" and own1["indices"] == [1]
    src = gpu_sources(r1)
    assert list(src) == ["nvml:1"] and src["nvml:1"].share == 1.0
    assert "mig-first" in str(src["nvml:1"].share_rule)
    assert r1.gpu_j == pytest.approx(truth1, rel=0.1)


def test_two_ranks_at_once_on_instances_of_one_gpu_add_up_to_it(
    tmp_path: Path, fake_nvml: Path
) -> None:
    # Both ranks as subprocesses sharing the node's sampler, over one common span.
    from test_distributed_measure import rank_env, run_ranks

    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave.constant(80.0),
        gpus=[GpuSpec(wave=Wave.constant(60.0)), GpuSpec(wave=Wave(100.0, 300.0, 0.2))],
        gpu_update_s=0.01,
        nvml_library=fake_nvml,
    ) as sim:
        partition(sim, 1, [MIG[0], "", MIG[1]])
        envs = [
            rank_env(
                sim,
                tmp_path,
                **TORCHRUN,
                RANK=str(r),
                LOCAL_RANK=str(r),
                GROUP_RANK="0",
                CUDA_VISIBLE_DEVICES=MIG[1 - r],
            )
            for r in range(2)
        ]
        results = run_ranks(sim, tmp_path, envs)
        truth = [sim.gpu_truth_j(1, r["t0_ns"], r["t1_ns"]) for r in results]
    assert [r["devices"]["gpus"]["rule"] for r in results] == ["mig-other", "mig-first"]
    assert results[0]["gpu_j"] == 0
    assert results[1]["gpu_j"] == pytest.approx(truth[1], rel=0.01)
    assert sum(r["gpu_j"] for r in results) == pytest.approx(truth[1], rel=0.01)


# ---------------------------------------------------------------------------- the rules alone


def test_instances_are_asked_for_only_where_one_is_named() -> None:
    from carbonctx._distributed.devices import names_mig

    assert names_mig({"CUDA_VISIBLE_DEVICES": f"0,{MIG[0].upper()}"})
    assert names_mig({}, ["GPU-1234", MIG[1]])
    assert not names_mig({"CUDA_VISIBLE_DEVICES": "0,GPU-1234"}, [1])
    assert not names_mig({})


def test_an_instance_listed_in_the_legacy_form_is_matched_too() -> None:
    # Drivers before R470 name instances MIG-GPU-<uuid>/<gi>/<ci>: the rank on the first one
    # listed reports the GPU, the rank on another none.
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus

    parent = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
    legacy = (f"MIG-{parent}/1/0", f"MIG-{parent}/2/0")
    gpus = [Gpu(0, "GPU-ffff0000-0000-0000-0000-000000000000"), Gpu(1, parent, None, legacy)]
    rules = []
    for rank, mig in enumerate(reversed(legacy)):
        env = {**TORCHRUN, "RANK": str(rank), "LOCAL_RANK": str(rank), "CUDA_VISIBLE_DEVICES": mig}
        own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
        rules.append((own.rule, own.indices, own.shared))
    assert rules == [("mig-other", (), True), ("mig-first", (1,), True)]


def test_cuda_gives_a_process_its_first_mig_instance_only() -> None:
    # CUDA enumerates one MIG instance per process (NVIDIA's MIG user guide): a second MIG entry,
    # of another GPU, makes that GPU neither visible nor a device ordinal of this process.
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus, visible_gpus
    from carbonctx.errors import ConfigurationError

    gpus = [Gpu(0, "GPU-aaaa", None, (UNKNOWN,)), Gpu(1, "GPU-bbbb", None, MIG)]
    env = {"CUDA_VISIBLE_DEVICES": f"{MIG[1]},{UNKNOWN}"}
    assert [g.index for g in visible_gpus(gpus, env)] == [1]
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
    assert (own.rule, own.indices) == ("all-visible", (1,))
    with pytest.raises(ConfigurationError, match="sees 1 GPU"):
        owned_gpus(detect_ranks(env, warn=False), gpus, env, override=[1], modules={})
    # Another instance of the same GPU adds nothing.
    env = {"CUDA_VISIBLE_DEVICES": f"{MIG[0]},{MIG[1]}"}
    assert [g.index for g in visible_gpus(gpus, env)] == [1]


def test_a_rank_off_the_first_instance_says_how_its_gpu_is_reported_if_no_rank_is_there() -> None:
    # The rank on the first instance reports the GPU; where the job has none there, the other
    # ranks' reason says which instance that is and which setting makes one of them report it.
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus

    gpus = [Gpu(0, "GPU-aaaa"), Gpu(1, "GPU-bbbb", None, MIG)]
    env = {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": MIG[1]}
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
    assert own.rule == "mig-other" and own.indices == ()
    assert MIG[0] in own.reason and "CARBONCTX_GPUS" in own.reason
    # As the reason says: the setting on that rank reports the whole GPU.
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, override=[MIG[1]], modules={})
    assert (own.rule, own.indices) == ("setting", (1,))

"""NVIDIA MIG instances, against the stand-in NVML partitioned into instances (``gpuK.mig``): a
process on a MIG instance reads its whole GPU (NVML's energy counter is the GPU's, which its
instances share) and reports the GPU's energy times its instance's share of the GPU's slices, so
that the processes on one GPU's instances add up to it, whatever each of them sees; where NVML
does not give the slices, ranks fall back to the first-instance rule and say so; a MIG UUID that
names no instance is reported with what to do."""

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

#: The instances of GPU 1 (slots 0 and 2; slot 1 is empty), as nvidia-smi -L lists them: a 3g
#: and a 4g instance of its 7 slices.
MIG = ("MIG-5e1f0c2a-8d3b-5a7e-9c4d-2b6f1e8a7c30", "MIG-9a4c7e21-3f6d-5b8a-8e2c-7d1b4f9a6e52")
SLICES = {MIG[0]: 3, MIG[1]: 4}
LAYOUT = [f"{MIG[0]}:3", "", f"{MIG[1]}:4"]
UNKNOWN = "MIG-00000000-dead-beef-0000-000000000000"

TORCHRUN = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "mig"}


def partition(sim: SimulatedMachine, gpu: int, slots: list[str], *extra: str) -> None:
    """Gives GPU ``gpu`` of the stand-in these MIG slots (``UUID:slices``), and ``extra``
    configuration lines (read at the next nvmlInit; a later line overrides)."""
    assert sim.nvml_library is not None
    with open(sim.nvml_library.parent / "fake_nvml.conf", "a") as f:
        f.write(f"gpu{gpu}.mig={','.join(slots)}\n")
        f.writelines(f"{line}\n" for line in extra)


@pytest.fixture
def sim(tmp_path: Path, fake_nvml: Path) -> Iterator[SimulatedMachine]:
    """Two GPUs far apart in power (a rank reading the wrong one would show); GPU 1 has two
    MIG instances, of 3 and 4 of its 7 slices."""
    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave.constant(80.0),
        gpus=[GpuSpec(wave=Wave.constant(60.0)), GpuSpec(wave=Wave.constant(300.0))],
        gpu_update_s=0.01,
        nvml_library=fake_nvml,
    ) as m:
        partition(m, 1, LAYOUT)
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


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, visible: str) -> None:
    for k, v in {**TORCHRUN, "RANK": str(rank), "LOCAL_RANK": str(rank)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_the_listing_carries_each_gpus_instances_and_slices(sim: SimulatedMachine) -> None:
    listed = _native.nvml_gpus(nvml_library=str(sim.nvml_library))
    assert listed["unavailable"] == []
    assert [(g["index"], g["mig_uuids"]) for g in listed["gpus"]] == [(0, []), (1, list(MIG))]
    assert all(str(g["uuid"]).startswith("GPU-") for g in listed["gpus"])
    gpu0, gpu1 = listed["gpus"]
    # Slices are asked for only where a GPU has instances.
    assert (gpu0["slices"], gpu0["slices_error"], gpu0["mig_instances"]) == (None, None, [])
    assert (gpu1["slices"], gpu1["slices_error"]) == (7, None)
    got = [
        (m["uuid"], m["slices"], m["gpu_instance_id"], m["compute_instance_id"])
        for m in gpu1["mig_instances"]
    ]
    assert got == [(MIG[0], 3, 1, 0), (MIG[1], 4, 3, 0)]
    assert "MIG 3g." in gpu1["mig_instances"][0]["name"]
    missing = _native.nvml_gpus(nvml_library=str(sim.root / "no-such-libnvidia-ml.so.1"))
    assert missing["gpus"] == [] and "CARBONCTX_NVML_LIBRARY" in missing["unavailable"][0]["hint"]


def test_a_process_on_a_mig_instance_reports_its_share_of_the_gpu(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    # Not a rank of a job: it uses 4 of the GPU's 7 slices, so it reports 4/7 of the GPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG[1])
    r, truth = measure(sim)
    gpus = gpu_sources(r)
    assert list(gpus) == ["nvml:1"], gpus
    src = gpus["nvml:1"]
    assert src.share == pytest.approx(4 / 7)
    assert "4 of 7 slices" in str(src.share_rule) and "approximation" in str(src.share_rule)
    assert "MIG instance 4g." in str(src.share_rule) and MIG[1] in str(src.share_rule)
    assert src.node_joules == pytest.approx(truth, rel=0.1)
    assert r.gpu_j == pytest.approx(truth * 4 / 7, rel=0.1)
    found = carbonctx.devices()
    own = found["rank"]["gpus"]
    assert own["rule"] == "mig-slices" and own["indices"] == [1]
    assert own["mig_share"]["gpu"] == 1 and own["mig_share"]["share"] == pytest.approx(4 / 7)
    # The source itself is the whole GPU: the share is the process's.
    src_info = next(s for s in found["sources"] if s["id"] == "nvml:1")
    assert MIG[1] in src_info["label"] and "whole GPU" in src_info["label"]
    assert not [u for u in found["unavailable"] if u["backend"] == "nvml"]


def test_the_gpu_setting_may_name_an_instance(sim: SimulatedMachine) -> None:
    # Its share of the GPU, as for a process on it.
    carbonctx.configure(**sim.settings(), gpus=[MIG[0]])
    with carbonctx.track("step") as m:
        time.sleep(0.05)
    src = gpu_sources(m.result())
    assert list(src) == ["nvml:1"] and src["nvml:1"].share == pytest.approx(3 / 7)
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
def test_ranks_on_instances_of_one_gpu_report_their_shares(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine, node_sampler: bool
) -> None:
    # Each rank in turn, as launched on its own instance: each reports its slices' share.
    for rank, mig in ((0, MIG[1]), (1, MIG[0])):
        as_rank(monkeypatch, rank, mig.upper())  # either case, as CUDA takes
        monkeypatch.setenv("CARBONCTX_NODE_SAMPLER", "1" if node_sampler else "0")
        r, truth = measure(sim)
        own = carbonctx.devices()["rank"]["gpus"]
        assert own["shared"] and own["visible"] == [1]
        assert own["rule"] == "mig-slices" and own["indices"] == [1]
        src = gpu_sources(r)
        assert list(src) == ["nvml:1"]
        assert src["nvml:1"].share == pytest.approx(SLICES[mig] / 7)
        assert f"{SLICES[mig]} of 7 slices" in str(src["nvml:1"].share_rule)
        assert r.gpu_j == pytest.approx(truth * SLICES[mig] / 7, rel=0.1)
        process.reset()


def test_a_process_that_sees_only_its_own_instance_reports_its_share(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    # In a container or under a device cgroup NVML shows each process only its own instance:
    # it looks like the GPU's first, yet reports 4/7 of the GPU, not the whole.
    partition(sim, 1, ["", "", f"{MIG[1]}:4"])
    as_rank(monkeypatch, 0, MIG[1])
    r, truth = measure(sim)
    own = carbonctx.devices()["rank"]["gpus"]
    assert own["rule"] == "mig-slices" and own["indices"] == [1]
    assert gpu_sources(r)["nvml:1"].share == pytest.approx(4 / 7)
    assert r.gpu_j == pytest.approx(truth * 4 / 7, rel=0.1)


def test_a_legacy_instance_name_reports_its_share(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    # MIG-GPU-<uuid>/<gi>/<ci> names the 4-slice instance (GPU instance 3 in the stand-in).
    parent = _native.nvml_gpus(nvml_library=str(sim.nvml_library))["gpus"][1]["uuid"]
    as_rank(monkeypatch, 1, f"MIG-{parent}/3/0")
    r, truth = measure(sim)
    assert carbonctx.devices()["rank"]["gpus"]["rule"] == "mig-slices"
    assert gpu_sources(r)["nvml:1"].share == pytest.approx(4 / 7)
    assert r.gpu_j == pytest.approx(truth * 4 / 7, rel=0.1)


def test_without_the_slices_ranks_fall_back_to_the_first_instance_rule(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    # The driver refuses the slice calls: the rank on the GPU's first instance reports it whole,
    # the other none, each saying why, with one warning.
    partition(sim, 1, LAYOUT, "gpu1.mig_slices=0")
    results = {}
    for rank, mig in ((0, MIG[1]), (1, MIG[0])):
        as_rank(monkeypatch, rank, mig)
        with pytest.warns(carbonctx.CarbonctxWarning, match="first-instance rule") as w:
            r, truth = measure(sim)
        assert len([x for x in w if "slices" in str(x.message)]) == 1
        results[rank] = (r, truth, carbonctx.devices()["rank"]["gpus"])
        process.reset()
    r0, _, own0 = results[0]
    assert own0["rule"] == "mig-other" and own0["indices"] == [] and r0.gpu_j == 0
    assert "slices" in own0["reason"] and "Not Supported" in own0["reason"]
    assert own0["mig_share"] is None
    r1, truth1, own1 = results[1]
    assert own1["rule"] == "mig-first" and own1["indices"] == [1]
    src = gpu_sources(r1)["nvml:1"]
    assert src.share == 1.0 and "mig-first" in str(src.share_rule)
    assert r1.gpu_j == pytest.approx(truth1, rel=0.1)


def test_without_the_slices_a_process_alone_reports_the_whole_gpu_and_says_so(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    partition(sim, 1, LAYOUT, "gpu1.mig_slices=0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG[1])
    with pytest.warns(carbonctx.CarbonctxWarning, match="reported whole"):
        r, truth = measure(sim)
    own = carbonctx.devices()["rank"]["gpus"]
    assert own["rule"] == "all-visible" and "slices" in own["reason"]
    assert r.gpu_j == pytest.approx(truth, rel=0.1)


def _two_ranks(
    tmp_path: Path, fake_nvml: Path, instances: list[str]
) -> tuple[list[dict[str, Any]], list[float]]:
    """Two ranks of one job as subprocesses sharing the node's sampler, on GPU 1 split as
    LAYOUT, rank r given the instance `instances[r]`: their results and each one's GPU truth
    over its span."""
    from test_distributed_measure import rank_env, run_ranks

    with SimulatedMachine(
        tmp_path / "hw",
        package=Wave.constant(80.0),
        gpus=[GpuSpec(wave=Wave.constant(60.0)), GpuSpec(wave=Wave(100.0, 300.0, 0.2))],
        gpu_update_s=0.01,
        nvml_library=fake_nvml,
    ) as sim:
        partition(sim, 1, LAYOUT)
        envs = [
            rank_env(
                sim,
                tmp_path,
                **TORCHRUN,
                RANK=str(r),
                LOCAL_RANK=str(r),
                GROUP_RANK="0",
                CUDA_VISIBLE_DEVICES=instance,
            )
            for r, instance in enumerate(instances)
        ]
        results = run_ranks(sim, tmp_path, envs)
        truth = [sim.gpu_truth_j(1, r["t0_ns"], r["t1_ns"]) for r in results]
    return results, truth


def test_two_ranks_at_once_on_instances_of_one_gpu_add_up_to_it(
    tmp_path: Path, fake_nvml: Path
) -> None:
    # Both ranks as subprocesses sharing the node's sampler, over one common span: 3/7 and 4/7
    # of the GPU, 7/7 together.
    results, truth = _two_ranks(tmp_path, fake_nvml, [MIG[0], MIG[1]])
    assert [r["devices"]["gpus"]["rule"] for r in results] == ["mig-slices", "mig-slices"]
    for r, t, slices in zip(results, truth, (3, 4), strict=True):
        assert r["gpu_j"] == pytest.approx(t * slices / 7, rel=0.01)
        assert r["by_source"]["nvml:1"]["share"] == pytest.approx(slices / 7)
    assert sum(r["by_source"]["nvml:1"]["share"] for r in results) == pytest.approx(1.0)
    # One common span: the two add up to the GPU's exact energy over it.
    assert truth[0] == pytest.approx(truth[1], rel=0.005)
    assert sum(r["gpu_j"] for r in results) == pytest.approx(truth[1], rel=0.01)


# ---------------------------------------------------------------------------- the rules alone


def test_instances_are_asked_for_only_where_one_is_named() -> None:
    from carbonctx._distributed.devices import names_mig

    assert names_mig({"CUDA_VISIBLE_DEVICES": f"0,{MIG[0].upper()}"})
    assert names_mig({}, ["GPU-1234", MIG[1]])
    assert not names_mig({"CUDA_VISIBLE_DEVICES": "0,GPU-1234"}, [1])
    assert not names_mig({})
    # In a container set up for one instance, CUDA_VISIBLE_DEVICES is usually unset.
    assert names_mig({"NVIDIA_VISIBLE_DEVICES": MIG[0]})
    # There, CUDA's device 0 is the container's one device: the instance.
    assert names_mig({"NVIDIA_VISIBLE_DEVICES": MIG[0], "CUDA_VISIBLE_DEVICES": "0"})
    assert not names_mig({"NVIDIA_VISIBLE_DEVICES": MIG[0], "CUDA_VISIBLE_DEVICES": "1"})
    assert not names_mig(
        {"NVIDIA_VISIBLE_DEVICES": f"{MIG[0]},{MIG[1]}", "CUDA_VISIBLE_DEVICES": "0"}
    )


def test_each_process_reports_its_instances_share_without_knowing_the_others() -> None:
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus
    from carbonctx._distributed.devices import MigInstance

    parent = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
    a100 = "NVIDIA A100-SXM4-40GB"
    inst = (
        MigInstance(MIG[0], f"{a100} MIG 3g.20gb", 1, 0, 3),
        MigInstance(MIG[1], f"{a100} MIG 2g.10gb", 5, 0, 2),
    )
    gpu = Gpu(0, parent, a100, MIG, inst, 7)
    shares = []
    for env in (
        {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": MIG[0]},
        {**TORCHRUN, "RANK": "1", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": f"MIG-{parent}/5/0"},
        {"NVIDIA_VISIBLE_DEVICES": MIG[1]},  # no rank, in a container
        # A rank in such a container whose launcher sets CUDA_VISIBLE_DEVICES to its device 0.
        {**TORCHRUN, "RANK": "1", "NVIDIA_VISIBLE_DEVICES": MIG[1], "CUDA_VISIBLE_DEVICES": "0"},
    ):
        own = owned_gpus(detect_ranks(env, warn=False), [gpu], env, modules={})
        assert own.indices == (0,) and own.rule == "mig-slices" and own.warning is None
        assert own.mig_share is not None and own.mig_share[0] == 0
        shares.append(own.mig_share[1])
        assert f"of 7 slices of {parent}" in own.mig_share[2]
    assert shares == pytest.approx([3 / 7, 2 / 7, 2 / 7, 2 / 7])
    own = owned_gpus(detect_ranks(env, warn=False), [gpu], {"CUDA_VISIBLE_DEVICES": MIG[0]})
    assert own.mig_share is not None and "MIG instance 3g.20gb" in own.mig_share[2]
    # A GPU instance of 4 slices split into two compute instances (two MIG devices) of 2: each
    # process counts its compute instance's 2, so with the 3g instance they add up to 7/7.
    split = (
        inst[0],
        MigInstance(MIG[1], f"{a100} MIG 2c.4g.20gb", 2, 0, 4, None, 2),
        MigInstance(UNKNOWN, f"{a100} MIG 2c.4g.20gb", 2, 1, 4, None, 2),
    )
    gpu = Gpu(0, parent, a100, (MIG[0], MIG[1], UNKNOWN), split, 7)
    total = 0.0
    for mig in gpu.mig_uuids:
        env = {"CUDA_VISIBLE_DEVICES": mig}
        own = owned_gpus(detect_ranks(env, warn=False), [gpu], env, modules={})
        assert own.mig_share is not None
        total += own.mig_share[1]
        if mig == UNKNOWN:
            assert (
                "2 of 7 slices (its compute instance's, of its GPU instance's 4)"
                in (own.mig_share[2])
            )
            assert "MIG instance 2c.4g.20gb" in own.mig_share[2]
    assert total == pytest.approx(1.0)
    # Slices NVML gives, but more than the GPU's: not believed.
    bad = Gpu(0, parent, a100, MIG, inst, 2)
    env = {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": MIG[0]}
    own = owned_gpus(detect_ranks(env, warn=False), [bad], env, modules={})
    assert own.rule == "mig-first" and own.warning and "3 slices of the GPU's 2" in own.reason


def test_a_legacy_name_nvml_does_not_place_reports_the_whole_gpu_and_warns() -> None:
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus

    parent = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
    env = {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": f"MIG-{parent}/9/0"}
    own = owned_gpus(detect_ranks(env, warn=False), [Gpu(0, parent, None, MIG)], env, modules={})
    assert (own.rule, own.indices, own.mig_share) == ("mig-unplaced", (0,), None)
    assert own.warning and "once per rank" in own.warning


def test_without_slices_an_instance_listed_in_the_legacy_form_is_matched_too() -> None:
    # Drivers before R470 name instances MIG-GPU-<uuid>/<gi>/<ci>; without slices: the rank
    # on the first one listed reports the GPU, the rank on another none.
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


def test_without_slices_a_rank_off_the_first_instance_says_how_its_gpu_is_reported() -> None:
    # Without the slices, the rank on the first instance reports the GPU; where the job has none
    # there, the other ranks' reason says which instance that is and which setting makes one of
    # them report it.
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus

    gpus = [Gpu(0, "GPU-aaaa"), Gpu(1, "GPU-bbbb", None, MIG)]
    env = {**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": MIG[1]}
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
    assert own.rule == "mig-other" and own.indices == ()
    assert MIG[0] in own.reason and "CARBONCTX_GPUS" in own.reason
    # As the reason says: the setting on that rank reports the whole GPU.
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, override=[MIG[1]], modules={})
    assert (own.rule, own.indices) == ("setting", (1,))


# ---------------------------------------------------------------------------- one report per
# instance among a job's processes; a MIG GPU named by index


def mig_capabilities(proc_root: Path, gpu: int, *gis: int) -> None:
    """The driver's capability files of ``gpu``'s GPU instances (NVIDIA's MIG user guide,
    "Device Nodes and Capabilities"): how a MIG GPU is noticed without a MIG- entry."""
    for gi in gis:
        d = proc_root / f"driver/nvidia/capabilities/gpu{gpu}/mig/gi{gi}"
        (d / "ci0").mkdir(parents=True, exist_ok=True)
        (d / "access").write_text(f"DeviceFileMinor: {gi * 9 + 3}\nDeviceFileMode: 292\n")
        (d / "ci0/access").write_text(f"DeviceFileMinor: {gi * 9 + 4}\nDeviceFileMode: 292\n")


def test_a_mig_gpu_named_by_index_reports_the_instance_cuda_picks(
    monkeypatch: pytest.MonkeyPatch, sim: SimulatedMachine
) -> None:
    # CUDA_VISIBLE_DEVICES=1 on GPU 1 in MIG mode: CUDA runs on its first MIG device available
    # (NVIDIA's MIG user guide), the 3-slice one NVML lists first: 3/7 of the GPU, not all of it.
    mig_capabilities(Path(sim.settings()["proc_root"]), 1, 1, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    r, truth = measure(sim)
    src = gpu_sources(r)
    assert list(src) == ["nvml:1"]
    assert src["nvml:1"].share == pytest.approx(3 / 7)
    rule = str(src["nvml:1"].share_rule)
    assert "first MIG device available" in rule and MIG[0] in rule and "R570" in rule
    assert r.gpu_j == pytest.approx(truth * 3 / 7, rel=0.1)
    own = carbonctx.devices()["rank"]["gpus"]
    assert own["rule"] == "mig-slices" and own["mig_share"]["share"] == pytest.approx(3 / 7)
    assert "not ranks of this process's job" in own["reason"]


def test_mig_gpus_among_several_named_by_index_are_reported_whole_with_a_warning() -> None:
    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus
    from carbonctx._distributed.devices import MigInstance
    from carbonctx._distributed.mig import mig_on_machine

    parent = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
    inst = (MigInstance(MIG[0], "A100 MIG 3g.20gb", 1, 0, 3), MigInstance(MIG[1], None, 2, 0, 4))
    gpus = [Gpu(0, "GPU-aaaa"), Gpu(1, parent, None, MIG, inst, 7)]
    # One GPU seen, in MIG mode, by index or by its GPU- UUID, a rank or not: its first instance.
    for env in (
        {"CUDA_VISIBLE_DEVICES": "1"},
        {**TORCHRUN, "RANK": "1", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": parent[:12]},
    ):
        own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
        assert (own.rule, own.indices, own.warning) == ("mig-slices", (1,), None)
        assert own.mig_share is not None and own.mig_share[1] == pytest.approx(3 / 7)
        assert "first MIG device available" in own.reason
    # Which instance of which GPU is not known among several: whole, and a warning says so.
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
    assert (own.rule, own.indices, own.mig_share) == ("all-visible", (0, 1), None)
    assert own.warning and "GPU(s) 1 are in MIG mode and reported whole" in own.warning
    assert "MIG-<uuid>" in own.warning
    # A plain GPU by index: nothing changes.
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    own = owned_gpus(detect_ranks(env, warn=False), gpus, env, modules={})
    assert (own.rule, own.mig_share, own.warning) == ("all-visible", None, None)
    assert not mig_on_machine("/nonexistent")


def test_one_process_of_a_job_reports_an_instance_the_others_report_nothing(
    tmp_path: Path,
) -> None:
    import fcntl
    import os

    from carbonctx._distributed import Gpu, detect_ranks, owned_gpus
    from carbonctx._distributed.claims import one_report
    from carbonctx._distributed.devices import MigInstance

    parent = "GPU-0a1b2c3d-0000-1111-2222-333344445555"
    inst = (MigInstance(MIG[0], "A100 MIG 3g.20gb", 1, 0, 3), MigInstance(MIG[1], None, 2, 0, 4))
    gpus = [Gpu(0, parent, None, MIG, inst, 7)]

    def plan(rank: int, entry: str, directory: Path) -> Any:
        env = {
            **TORCHRUN,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "CUDA_VISIBLE_DEVICES": entry,
        }
        info = detect_ranks(env, warn=False, proc_root="/nonexistent", hostname="n")
        return info, one_report(owned_gpus(info, gpus, env, modules={}), info, str(directory))

    # Another process of the job holds the claim on instance 1/0 (named either way, it is one
    # instance): this rank reports 0 for the GPU and says who reports it.
    info, _ = plan(0, MIG[1], tmp_path / "a")  # instance 2/0; makes the directory
    from carbonctx._distributed.claims import _path

    key = f"{parent.lower()}/1/0"
    fd = os.open(_path(str(tmp_path / "a"), info.job_key, key), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"rank 7 (local rank 7, pid 1)")
        for entry in (MIG[0], f"MIG-{parent}/1/0"):
            _, own = plan(1, entry, tmp_path / "a")
            assert (own.rule, own.indices, own.mig_share) == ("mig-claimed", (), None)
            assert own.shared and "rank 7 (local rank 7, pid 1)" in own.reason
    finally:
        os.close(fd)
    # Nobody holds it: this rank reports the share, and says it does for the job's others.
    _, own = plan(1, MIG[0], tmp_path / "b")
    assert own.rule == "mig-slices" and own.mig_share[1] == pytest.approx(3 / 7)
    assert "for every process of its job on it" in own.mig_share[2]
    # Again in this process (a second runtime): still this one.
    _, again = plan(1, MIG[0], tmp_path / "b")
    assert again.rule == "mig-slices"
    # Where no lock file can be made: every rank reports, and a warning says it counts again.
    blocker = tmp_path / "file"
    blocker.write_text("")
    _, own = plan(1, MIG[0], blocker)
    assert own.rule == "mig-slices" and own.warning and "counts its share again" in own.warning


def test_two_ranks_at_once_on_one_instance_count_it_once(tmp_path: Path, fake_nvml: Path) -> None:
    # Both ranks as subprocesses given the same instance: one reports its 3/7 of the GPU, the
    # other none, so the job counts the instance once.
    results, truth = _two_ranks(tmp_path, fake_nvml, [MIG[0], MIG[0]])
    rules = sorted(r["devices"]["gpus"]["rule"] for r in results)
    assert rules == ["mig-claimed", "mig-slices"]
    (loser,) = [r for r in results if r["devices"]["gpus"]["rule"] == "mig-claimed"]
    (winner,) = [r for r in results if r["devices"]["gpus"]["rule"] == "mig-slices"]
    assert f"rank {winner['devices']['rank']}" in loser["devices"]["gpus"]["reason"]
    assert loser["gpu_j"] == 0
    assert winner["by_source"]["nvml:1"]["share"] == pytest.approx(3 / 7)
    assert sum(r["gpu_j"] for r in results) == pytest.approx(truth[0] * 3 / 7, rel=0.01)


def test_a_forked_child_does_not_inherit_the_claim(tmp_path: Path) -> None:
    # A DataLoader-like worker forked from the rank that reports the instance: the claim stays
    # with the rank (the worker, asking for itself, is told who reports it), and goes with it:
    # once the rank has exited, the next process of the job takes it though the worker lives.
    import os
    import signal
    import subprocess
    import sys

    from carbonctx._distributed.claims import claim_instance

    where, ready = str(tmp_path / "shm"), tmp_path / "worker"
    script = f"""
import os, sys, time
from carbonctx._distributed.claims import claim_instance
assert claim_instance("jkey", "gpu-x/1/0", "rank 0", {where!r}) == (True, "rank 0")
if os.fork() == 0:
    got = claim_instance("jkey", "gpu-x/1/0", "worker", {where!r})
    open({str(ready)!r} + ".tmp", "w").write(f"{{os.getpid()}} {{got[0]}} {{got[1]}}")
    os.rename({str(ready)!r} + ".tmp", {str(ready)!r})
    time.sleep(60)
    os._exit(0)
while not os.path.exists({str(ready)!r}):
    time.sleep(0.01)
"""
    # Output to a file: a pipe would stay open in the worker until it exits.
    with open(tmp_path / "err", "w") as err:
        done = subprocess.run([sys.executable, "-c", script], stderr=err, timeout=60)
    assert done.returncode == 0, (tmp_path / "err").read_text()
    pid, mine, who = ready.read_text().split(" ", 2)
    try:
        assert (mine, who) == ("False", "rank 0")
        assert claim_instance("jkey", "gpu-x/1/0", "rank 1", where) == (True, "rank 1")
    finally:
        os.kill(int(pid), signal.SIGKILL)

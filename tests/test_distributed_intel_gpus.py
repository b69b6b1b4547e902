"""Intel GPUs per rank: ZE_AFFINITY_MASK and ONEAPI_DEVICE_SELECTOR decide which a rank sees,
and a rank reports its own (read from xe hwmon files laid out as the kernel makes them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonctx import _config
from carbonctx._distributed.devices import Gpu, intel_visible, owned_gpus, visible_gpus
from carbonctx._distributed.ranks import RankInfo
from carbonctx._measure.ranks import column_shares, plan_gpus

# Numbered after other vendors' GPUs, as the sampler numbers them.
CARDS = [Gpu(index=2 + i, uuid=f"0000:{0x18 + i:02x}:00.0", name="xe") for i in range(4)]


def job(local: int, local_world: int = 4) -> RankInfo:
    return RankInfo(
        rank=local,
        world_size=local_world,
        local_rank=local,
        local_world_size=local_world,
        node="n",
        job_key="k",
        launcher="mpiexec",
        distributed=True,
    )


def seen(env: dict[str, str]) -> list[int]:
    return [g.index for g in visible_gpus(CARDS, env, vendor="intel")]


@pytest.mark.parametrize(
    ("env", "indices"),
    [
        ({}, [2, 3, 4, 5]),
        ({"ZE_AFFINITY_MASK": ""}, [2, 3, 4, 5]),
        ({"ZE_AFFINITY_MASK": "1"}, [3]),
        ({"ZE_AFFINITY_MASK": "3,1"}, [3, 5]),  # Level Zero keeps its own order
        ({"ZE_AFFINITY_MASK": "0.1,2"}, [2, 4]),
        ({"ZE_AFFINITY_MASK": "9"}, []),
        ({"ONEAPI_DEVICE_SELECTOR": "level_zero:2"}, [4]),
        ({"ONEAPI_DEVICE_SELECTOR": "level_zero:gpu"}, [2, 3, 4, 5]),
        ({"ONEAPI_DEVICE_SELECTOR": "opencl:0"}, [2, 3, 4, 5]),
        ({"ONEAPI_DEVICE_SELECTOR": "*:*;!level_zero:0"}, [3, 4, 5]),
        ({"ONEAPI_DEVICE_SELECTOR": "!level_zero:*"}, []),
        # The selector counts among the GPUs the mask left.
        ({"ZE_AFFINITY_MASK": "1,3", "ONEAPI_DEVICE_SELECTOR": "level_zero:1"}, [5]),
    ],
)
def test_visible_intel_gpus(env: dict[str, str], indices: list[int]) -> None:
    assert seen(env) == indices


def test_tiles_of_a_gpu() -> None:
    env = {"ZE_AFFINITY_MASK": "1.0,1.1,2.1"}
    gpus, partial = intel_visible(CARDS, env)
    assert [g.index for g in gpus] == [3, 4]
    assert partial == {3: frozenset({0, 1}), 4: frozenset({1})}


def test_a_rank_reports_the_gpu_its_mask_gives_it() -> None:
    # One GPU per rank through the mask (mpiexec's GPU binding scripts): its own, whatever
    # the local rank.
    own = owned_gpus(job(0), CARDS, {"ZE_AFFINITY_MASK": "3"}, vendor="intel")
    assert own.indices == (5,) and own.rule == "only-visible"
    # No mask: one GPU per local rank, as for the other vendors.
    assert owned_gpus(job(2), CARDS, {}, vendor="intel").indices == (4,)


def test_ranks_on_tiles_of_one_gpu_count_it_once() -> None:
    masks = ["0.0", "0.1", "1.0", "1.1"]
    owned = [
        owned_gpus(job(k), CARDS, {"ZE_AFFINITY_MASK": m}, vendor="intel")
        for k, m in enumerate(masks)
    ]
    assert [o.indices for o in owned] == [(2,), (), (3,), ()]
    assert all(o.shared for o in owned)
    assert "not tile 0" in owned[1].reason


def _xe(sys_root: Path, bdf: str, n: int) -> None:
    dev = sys_root / "devices" / "pci0000:00" / bdf
    hw = dev / "hwmon" / f"hwmon{n}"
    hw.mkdir(parents=True)
    (sys_root / "class" / "hwmon").mkdir(parents=True, exist_ok=True)
    (sys_root / "class" / "hwmon" / f"hwmon{n}").symlink_to(hw)
    (hw / "device").symlink_to(dev)
    (hw / "name").write_text("xe\n")
    (hw / "energy1_label").write_text("card\n")
    (hw / "energy1_input").write_text("1000000\n")


def test_plan_reports_this_ranks_intel_gpu_only(tmp_path: Path) -> None:
    for k, bdf in enumerate(("0000:18:00.0", "0000:42:00.0")):
        _xe(tmp_path / "sys", bdf, k)
    settings = _config.build(
        None,
        {
            "sys_root": str(tmp_path / "sys"),
            "proc_root": str(tmp_path / "proc"),
            "nvml_library": str(tmp_path / "none.so"),
            "amdsmi_library": str(tmp_path / "none.so"),
        },
        env={},
    )
    sources = [
        {"id": "powercap:intel-rapl:0", "backend": "powercap", "domain": "package", "index": 0},
        {"id": "hwmon:xe:0000:18:00.0:energy1", "backend": "hwmon", "domain": "gpu", "index": 0},
        {"id": "hwmon:xe:0000:42:00.0:energy1", "backend": "hwmon", "domain": "gpu", "index": 1},
    ]
    plan = plan_gpus(job(0, 2), settings, env={"ZE_AFFINITY_MASK": "1"}, modules={})
    assert plan.intel_ownership is not None
    assert plan.intel_devices == ("0000:42:00.0",)
    shares = column_shares(sources, plan)
    assert [f for f, _ in shares] == [0.5, 0.0, 1.0]
    assert "this rank's GPU" in str(shares[2][1])
    assert plan.describe()["intel_gpus"]["indices"] == [1]
    # The other rank, without a mask: its local rank's GPU.
    other = plan_gpus(job(1, 2), settings, env={}, modules={})
    assert [f for f, _ in column_shares(sources, other)] == [0.5, 0.0, 1.0]
    assert other.intel_devices == ("0000:42:00.0",)

"""GPU ownership: which visible GPUs a rank reports, never another rank's."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from carbonctx._distributed.devices import Gpu, owned_gpus, visible_gpus
from carbonctx._distributed.ranks import RankInfo
from carbonctx.errors import ConfigurationError


def uuid(i: int) -> str:
    return f"GPU-{i}{i}{i}{i}abcd-1234-5678-9abc-def012345678"


# GPU 4 is in MIG mode, with one instance (a GPU listed with instances is in MIG mode: CUDA
# then runs on one of them, which the MIG tests cover).
GPUS = [
    Gpu(index=i, uuid=uuid(i), name="NVIDIA H100", mig_uuids=(f"MIG-{i}mig",) if i == 4 else ())
    for i in range(8)
]
SINGLE = RankInfo(node="n", job_key="k")


def rank(local: int | None, local_world: int | None, r: int = 0, world: int = 8) -> RankInfo:
    return RankInfo(
        rank=r,
        world_size=world,
        local_rank=local,
        local_world_size=local_world,
        node="n",
        job_key="k",
        launcher="torchrun",
        distributed=True,
    )


class FakeCuda:
    def __init__(self, initialised: bool, current: int) -> None:
        self.initialised = initialised
        self.current = current

    def is_initialized(self) -> bool:
        return self.initialised

    def current_device(self) -> int:
        assert self.initialised, "current_device would initialise CUDA"
        return self.current


class FakeTorch:
    def __init__(self, initialised: bool = True, current: int = 0) -> None:
        self.cuda = FakeCuda(initialised, current)


def torch_modules(initialised: bool = True, current: int = 0) -> dict[str, Any]:
    return {"torch": FakeTorch(initialised, current)}


# ---------------------------------------------------------------------------- visible devices


def test_unset_means_every_gpu() -> None:
    assert visible_gpus(GPUS[:4], {}) == GPUS[:4]


@pytest.mark.parametrize(
    ("value", "indices"),
    [
        ("", []),
        ("2,0", [2, 0]),
        (" 3 , 1 ", [3, 1]),
        ("0,9,1", [0]),  # CUDA stops at the first entry naming no device
        ("1,-1,2", [1]),
        ("NoDevFiles", []),
        ("1,1,2", [1, 2]),
        (uuid(3), [3]),
        ("GPU-5555", [5]),  # a unique prefix, as CUDA accepts
        ("GPU-", []),  # ambiguous prefix: names no one device
        (f"{uuid(2)},0", [2, 0]),
        ("MIG-4mig", [4]),  # a MIG instance counts as its parent GPU
        (f"MIG-{uuid(6)}/1/0", [6]),  # legacy MIG-GPU-<uuid>/gi/ci form
        ("MIG-unknown", []),
    ],
)
def test_cuda_visible_devices(value: str, indices: list[int]) -> None:
    assert [g.index for g in visible_gpus(GPUS, {"CUDA_VISIBLE_DEVICES": value})] == indices


def test_amd_rocr_then_hip() -> None:
    env = {"ROCR_VISIBLE_DEVICES": "1,2,3", "HIP_VISIBLE_DEVICES": "2,0"}
    assert [g.index for g in visible_gpus(GPUS, env, vendor="amd")] == [3, 1]
    assert [
        g.index for g in visible_gpus(GPUS[:3], {"CUDA_VISIBLE_DEVICES": "1"}, vendor="amd")
    ] == [1]
    with pytest.raises(ValueError, match="unknown GPU vendor"):
        visible_gpus(GPUS, {}, vendor="apple")


# ---------------------------------------------------------------------------- ownership


def test_outside_a_job_every_visible_gpu() -> None:
    own = owned_gpus(SINGLE, GPUS[:4], {"CUDA_VISIBLE_DEVICES": "3,1"}, modules={})
    assert own.indices == (3, 1)
    assert own.ordinals == (0, 1)
    assert own.rule == "all-visible"


def test_one_rank_per_gpu_by_local_rank() -> None:
    for local in range(4):
        own = owned_gpus(rank(local, 4), GPUS[:4], {}, modules={})
        assert own.indices == (local,)
        assert own.rule == "local-rank"


def test_local_rank_counts_among_the_visible_gpus() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "6,7"}
    assert owned_gpus(rank(1, 2), GPUS, env, modules={}).indices == (7,)


def test_a_rank_that_sees_one_gpu_reports_it() -> None:
    own = owned_gpus(rank(3, 4), GPUS, {"CUDA_VISIBLE_DEVICES": "5"}, modules={})
    assert (own.indices, own.ordinals, own.rule) == ((5,), (0,), "only-visible")


def test_no_visible_gpu() -> None:
    own = owned_gpus(rank(0, 2), GPUS, {"CUDA_VISIBLE_DEVICES": ""}, modules={})
    assert own.indices == () and own.rule == "none-visible"


def test_fewer_ranks_than_gpus_one_each() -> None:
    own = owned_gpus(rank(1, 2), GPUS[:4], {}, modules={})
    assert own.indices == (1,)
    assert "2 of the 4 visible GPUs belong to no local rank" in own.reason


def test_more_ranks_than_gpus_report_each_gpu_once() -> None:
    owners = [owned_gpus(rank(lr, 4), GPUS[:2], {}, modules={}) for lr in range(4)]
    assert [o.indices for o in owners] == [(0,), (1,), (), ()]
    assert all(o.shared for o in owners)


def test_unknown_local_rank_uses_rank_modulo() -> None:
    own = owned_gpus(rank(None, None, r=5), GPUS[:4], {}, modules={})
    assert own.indices == (1,) and own.rule == "rank-modulo"
    assert "LOCAL_RANK" in own.reason


def test_local_rank_beyond_the_gpus_reports_none() -> None:
    # A rank whose local rank has no GPU while the local world size is not known.
    own = owned_gpus(rank(5, None), GPUS[:4], {}, modules={})
    assert own.indices == ()


def test_no_gpu_is_reported_by_two_ranks_of_a_node() -> None:
    for local_world, n in itertools.product(range(1, 9), range(0, 9)):
        counts: Counter[int] = Counter()
        for lr in range(local_world):
            counts.update(owned_gpus(rank(lr, local_world), GPUS[:n], {}, modules={}).indices)
        assert all(c == 1 for c in counts.values()), (local_world, n, counts)
        assert len(counts) == min(n, local_world), (local_world, n, counts)


# ---------------------------------------------------------------------------- torch


def test_torch_current_device_wins() -> None:
    own = owned_gpus(rank(0, 2), GPUS[:4], {}, modules=torch_modules(current=3))
    assert (own.indices, own.rule) == ((3,), "torch-current")


def test_torch_not_initialised_is_not_asked() -> None:
    own = owned_gpus(rank(1, 2), GPUS[:2], {}, modules=torch_modules(initialised=False))
    assert (own.indices, own.rule) == ((1,), "local-rank")


def test_torch_device_zero_on_another_local_rank_means_set_device_was_not_called() -> None:
    own = owned_gpus(rank(1, 2), GPUS[:2], {}, modules=torch_modules(current=0))
    assert own.indices == (1,)
    assert "set_device" in own.reason


def test_torch_that_fails_is_ignored() -> None:
    class Broken:
        @property
        def cuda(self) -> Any:
            raise RuntimeError("no CUDA driver")

    own = owned_gpus(rank(1, 2), GPUS[:2], {}, modules={"torch": Broken()})
    assert own.indices == (1,)


def test_torch_current_device_counts_among_the_visible() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6"}
    own = owned_gpus(rank(0, 3), GPUS, env, modules=torch_modules(current=2))
    assert own.indices == (6,) and own.ordinals == (2,)


# ---------------------------------------------------------------------------- the setting


def test_setting_lists_ordinals_or_uuids() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3,2"}
    own = owned_gpus(rank(0, 2), GPUS, env, override=[1], modules=torch_modules(current=0))
    assert (own.indices, own.rule) == ((2,), "setting")
    assert owned_gpus(SINGLE, GPUS, env, override=[uuid(3)], modules={}).indices == (3,)
    assert owned_gpus(rank(0, 2), GPUS, env, override=[], modules={}).indices == ()


@pytest.mark.parametrize("bad", [[2], [-1], ["GPU-nope"], [True]])
def test_setting_naming_an_unseen_gpu_raises(bad: list[Any]) -> None:
    with pytest.raises(ConfigurationError, match="GPU setting"):
        owned_gpus(rank(0, 2), GPUS, {"CUDA_VISIBLE_DEVICES": "3,2"}, override=bad, modules={})


def test_mixed_gpus_without_pci_order_are_noted() -> None:
    gpus = [Gpu(0, uuid(0), "NVIDIA A100"), Gpu(1, uuid(1), "NVIDIA T4")]
    own = owned_gpus(rank(1, 2), gpus, {}, modules={})
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in own.reason
    own = owned_gpus(rank(1, 2), gpus, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, modules={})
    assert "CUDA_DEVICE_ORDER" not in own.reason

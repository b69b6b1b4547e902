"""Collectives: which engine, where the tensor goes, and the local fallback (no processes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from carbonctx._distributed import collectives
from carbonctx._distributed.collectives import allreduce_sum, any_rank, engine, gather_objects


class FakeDevice:
    def __init__(self, kind: str, index: int | None = None) -> None:
        self.kind, self.index = kind, index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeDevice) and (self.kind, self.index) == (
            other.kind,
            other.index,
        )

    def __repr__(self) -> str:
        return f"FakeDevice({self.kind!r}, {self.index!r})"


class FakeTensor:
    def __init__(self, data: list[float], dtype: str, device: FakeDevice) -> None:
        self.data, self.dtype, self.device = list(data), dtype, device

    def cpu(self) -> FakeTensor:
        return FakeTensor(self.data, self.dtype, FakeDevice("cpu"))

    def tolist(self) -> list[float]:
        return list(self.data)


class FakeCuda:
    @staticmethod
    def current_device() -> int:
        return 1


class FakeTorch:
    float64 = "float64"
    cuda = FakeCuda()

    @staticmethod
    def device(kind: str, index: int | None = None) -> FakeDevice:
        return FakeDevice(kind, index)

    @staticmethod
    def tensor(data: list[float], dtype: str, device: FakeDevice) -> FakeTensor:
        return FakeTensor(data, dtype, device)


class FakeDist:
    """A process group of ``size`` ranks whose other ranks each contribute ``others``."""

    class ReduceOp:
        SUM = "sum"

    def __init__(self, backend: str, size: int = 2, others: float = 10.0) -> None:
        self.backend, self.size, self.others = backend, size, others
        self.seen: list[FakeTensor] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_backend(self) -> str:
        return self.backend

    def get_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return self.size

    def all_reduce(self, t: FakeTensor, op: str) -> None:
        assert op == "sum"
        self.seen.append(t)
        t.data = [x + self.others * (self.size - 1) for x in t.data]

    def all_gather_object(self, out: list[Any], obj: Any) -> None:
        out[:] = [obj] * self.size


def torch_modules(dist: FakeDist) -> dict[str, Any]:
    return {"torch": FakeTorch(), "torch.distributed": dist}


def test_local_when_nothing_is_initialised() -> None:
    assert engine({}) == "local"
    assert allreduce_sum([1, 2.5], modules={}) == [1.0, 2.5]
    assert any_rank(True, modules={}) is True
    assert any_rank(False, modules={}) is False
    assert gather_objects({"a": 1}, modules={}) == [{"a": 1}]
    assert collectives.world({}) == (0, 1)


def test_torch_imported_but_not_initialised_is_local() -> None:
    dist = FakeDist("gloo")
    dist.is_initialized = lambda: False  # type: ignore[method-assign]
    assert engine(torch_modules(dist)) == "local"


@pytest.mark.parametrize(
    ("backend", "device"),
    [
        ("gloo", FakeDevice("cpu")),
        ("mpi", FakeDevice("cpu")),
        ("cpu:gloo,cuda:nccl", FakeDevice("cpu")),
        ("nccl", FakeDevice("cuda", 1)),
    ],
)
def test_torch_tensor_goes_where_the_backend_wants_it(backend: str, device: FakeDevice) -> None:
    dist = FakeDist(backend)
    mods = torch_modules(dist)
    assert engine(mods) == "torch"
    assert allreduce_sum([1.0, 2.0], modules=mods) == [11.0, 12.0]
    (t,) = dist.seen
    assert t.dtype == "float64"
    assert t.device == device


def test_torch_any_rank_and_gather() -> None:
    mods = torch_modules(FakeDist("gloo", size=3, others=1.0))
    assert any_rank(False, modules=mods) is True  # the other ranks said yes
    assert gather_objects(5, modules=mods) == [5, 5, 5]
    assert collectives.world(mods) == (0, 3)


class FakeComm:
    def Get_rank(self) -> int:
        return 1

    def Get_size(self) -> int:
        return 2

    def Allreduce(self, send: np.ndarray, recv: np.ndarray, op: str) -> None:
        assert send.dtype == np.float64 and op == "sum"
        recv[:] = send * 2

    def allgather(self, obj: Any) -> list[Any]:
        return [obj, obj]


class FakeMPI:
    SUM = "sum"
    COMM_WORLD = FakeComm()

    def __init__(self, initialised: bool = True, finalised: bool = False) -> None:
        self.initialised, self.finalised = initialised, finalised

    def Is_initialized(self) -> bool:
        return self.initialised

    def Is_finalized(self) -> bool:
        return self.finalised


def test_mpi() -> None:
    mods = {"mpi4py.MPI": FakeMPI()}
    assert engine(mods) == "mpi"
    assert allreduce_sum([1.5, 2], modules=mods) == [3.0, 4.0]
    assert gather_objects("x", modules=mods) == ["x", "x"]
    assert collectives.world(mods) == (1, 2)


@pytest.mark.parametrize(("init", "fin"), [(False, False), (True, True)])
def test_mpi_not_running_is_local(init: bool, fin: bool) -> None:
    assert engine({"mpi4py.MPI": FakeMPI(init, fin)}) == "local"


def test_torch_wins_over_mpi() -> None:
    mods = torch_modules(FakeDist("gloo")) | {"mpi4py.MPI": FakeMPI()}
    assert engine(mods) == "torch"

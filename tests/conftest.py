"""Shared fixtures: a clean carbonctx per test, and simulated hardware for the real sampler."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from carbonctx._measure import process as _runtime
from carbonctx.testing import SimulatedMachine, Wave, build_fake_nvml

# The intensity tests' shared fixtures (clock, server, client): a provider's local HTTP server.
pytest_plugins = ("intensity_server",)

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.fixture(autouse=True)
def _clean_carbonctx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for k in list(os.environ):
        if k.startswith("CARBONCTX_") or k in (
            "CUDA_VISIBLE_DEVICES",
            "HIP_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES",
            "GPU_DEVICE_ORDINAL",
            "AWS_REGION",
            "TZ",
        ):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CARBONCTX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CARBONCTX_ZONE", "DE")
    # The node's shared sampler keeps its segment and lock files here, not in /dev/shm.
    monkeypatch.setenv("CARBONCTX_NODE_DIR", str(tmp_path / "shm"))
    _runtime.reset()
    yield
    _runtime.reset()


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_CC:
        pytest.skip("needs a C compiler to build the stand-in NVML library")
    return build_fake_nvml(tmp_path_factory.mktemp("nvml"))


@pytest.fixture
def sim(tmp_path: Path, fake_nvml: Path) -> Iterator[SimulatedMachine]:
    """A one-package machine (40/120 W square wave at 50 ms, 6 W DRAM) and one GPU, running."""
    m = SimulatedMachine(
        tmp_path / "hw",
        package=Wave(40.0, 120.0, 0.05),
        dram=Wave.constant(6.0),
        gpus=1,
        nvml_library=fake_nvml,
    )
    m.start()
    import carbonctx

    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()

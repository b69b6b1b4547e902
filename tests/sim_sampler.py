"""For tests that drive the native sampler directly on a simulated machine: the sampler
pointed at it, and the drained regions' package figures against its truth."""

from __future__ import annotations

from typing import Any

import numpy as np

from carbonctx import _native
from carbonctx.testing import SimulatedMachine


def sampler_for(sim: SimulatedMachine, **kw: Any) -> _native.Sampler:
    """A native sampler reading `sim` (its GPUs by the stand-in library), with `kw` on top."""
    args = {k: v for k, v in sim.settings().items() if k != "gpu"}
    args.update(kw)
    return _native.Sampler(**args)


def package_rows(sim: SimulatedMachine, drained: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Each drained region's package error (absolute) and uncertainty, both relative to the
    simulator's truth over the region; `drained` is what `Sampler.drain()` returned (the
    package the first source)."""
    n, _ids, _tags, t0b, t1b, jb, ub = drained
    t0 = np.frombuffer(t0b, dtype=np.uint64).tolist()
    t1 = np.frombuffer(t1b, dtype=np.uint64).tolist()
    j = np.frombuffer(jb, dtype=np.float64).reshape(n, -1)[:, 0]
    u = np.frombuffer(ub, dtype=np.float64).reshape(n, -1)[:, 0]
    truth = np.array([sim.truth_j("package", 0, a, b) for a, b in zip(t0, t1, strict=True)])
    return np.abs(j - truth) / truth, u / truth

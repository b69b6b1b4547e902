"""The Lightning callback on a real (tiny) training run on the CPU, on simulated hardware.

The figures it logs (through ``self.log``, read back from a logger) must add up, within 1 %, to
the same run measured with ``track()`` around ``trainer.fit()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import carbonctx  # noqa: E402
from carbonctx._measure import process as _runtime  # noqa: E402
from carbonctx.integrations.lightning import CarbonctxCallback  # noqa: E402
from carbonctx.testing import SimulatedMachine, Wave  # noqa: E402

pytestmark = [
    # Lightning's own advice about this tiny CPU setup (no workers in the data loaders; GPU
    # available but unused on device hosts); not about the callback.
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    # Lightning 2.6 builds torch.utils._pytree.LeafSpec, which torch 2.10+ deprecates.
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"),
]


@pytest.fixture
def cpu_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A machine without a GPU (see the Hugging Face test: the final wait for a GPU counter
    is several per cent of a run this short)."""
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()


class Memory(L.loggers.Logger):  # type: ignore[misc]
    """A logger that keeps every (step, metrics) it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def values(self, key: str) -> list[float]:
        return [m[key] for _, m in self.rows if key in m]


class Regression(L.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        # A heavier step's time, without loading the machine: the simulated power does not
        # depend on the work, and a longer run makes the fixed edges (setup before the first
        # hook, teardown after the last) a smaller part of it.
        time.sleep(0.003)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loaders() -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1800, 16, generator=g)
    y = x.sum(dim=1, keepdim=True)
    train = torch.utils.data.TensorDataset(x[:1600], y[:1600])
    val = torch.utils.data.TensorDataset(x[1600:], y[1600:])
    return (
        torch.utils.data.DataLoader(train, batch_size=8),  # 200 steps per epoch
        torch.utils.data.DataLoader(val, batch_size=40),
    )


def _trainer(
    cb: CarbonctxCallback, logger: Memory, tmp_path: Path, epochs: int, every: int = 1
) -> Any:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[cb],
        logger=logger,
        log_every_n_steps=every,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


def test_logged_figures_add_up_to_the_run_measured_around_fit(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    cb, logger = CarbonctxCallback(), Memory()
    trainer = _trainer(cb, logger, tmp_path, epochs=3)
    train, val = _loaders()
    model = Regression()
    with carbonctx.track("whole") as whole:
        trainer.fit(model, train, val)
    epochs = logger.values("epoch_energy_j")
    assert len(epochs) == 3 and all(e > 0 for e in epochs)
    # Lightning keeps logged values as float32 tensors.
    assert epochs == pytest.approx([e["energy_j"] for e in cb.epochs], rel=1e-6)
    logged = math.fsum(epochs)
    logged_co2 = math.fsum(logger.values("epoch_co2_g"))
    err = abs(logged - whole.energy_j) / whole.energy_j
    err_co2 = abs(logged_co2 - whole.co2_g) / whole.co2_g
    print(f"Lightning: logged {logged:.3f} J, track() {whole.energy_j:.3f} J: {err:.4%}")
    assert err < 0.01 and err_co2 < 0.01
    # What runs after the last epoch is in the callback's total, not in the logs.
    assert cb.total_j == pytest.approx(whole.energy_j, rel=0.01)
    # Per step: one value per step (zeros while the sampler had nothing new), never more than
    # the epochs' total; validation runs on their own.
    steps = logger.values("energy_j")
    assert len(steps) == 600
    assert 0.5 * logged < math.fsum(steps) <= logged
    assert all(v >= 0 for v in steps)
    assert len(logger.values("val_energy_j")) == 3
    assert 0 < math.fsum(logger.values("val_energy_j")) < logged
    # The framework's own record of what was logged last.
    metrics = trainer.logged_metrics
    for key in ("epoch_energy_j", "epoch_co2_g", "val_energy_j", "energy_forecast_kwh"):
        assert float(metrics[key]) > 0
    assert {"lightning.train", "lightning.val"} <= set(carbonctx.stats())


def test_budget_stops_training_after_the_first_epoch(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    cb, logger = CarbonctxCallback(budget_kwh=1e-9), Memory()
    trainer = _trainer(cb, logger, tmp_path, epochs=5, every=20)
    train, val = _loaders()
    trainer.fit(Regression(), train, val)
    assert cb.budget_exceeded is not None and cb.budget_exceeded["epoch"] == 1
    assert len(cb.epochs) == 1
    assert trainer.current_epoch == 1
    # Step figures at the steps Lightning writes (every 20th): what was resolved since the
    # previous one, so that they still cover most of the epoch.
    steps = logger.values("energy_j")
    assert len(steps) == 200 // 20
    epoch = cb.epochs[0]["energy_j"]
    assert 0.5 * epoch < math.fsum(steps) <= epoch * (1 + 1e-6)  # float32, as Lightning keeps them


_STANDALONE = """
import sys
sys.modules["lightning"] = None  # as if only the pytorch-lightning distribution were installed
import json, warnings
warnings.simplefilter("ignore")
import pytorch_lightning as pl
import torch
import carbonctx
from carbonctx.testing import SimulatedMachine
from carbonctx.integrations.lightning import CarbonctxCallback

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

with SimulatedMachine(sys.argv[1]) as sim:
    carbonctx.configure(**sim.settings())
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1))
    cb = CarbonctxCallback()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, callbacks=[cb], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, default_root_dir=sys.argv[1],
    )
    trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=8))
    print(json.dumps({
        "base": type(cb).__mro__[1].__module__,
        "lightning": "lightning" in sys.modules and sys.modules["lightning"] is not None,
        "epochs": [e["energy_j"] for e in cb.epochs],
        "logged": float(trainer.logged_metrics["epoch_energy_j"]),
    }))
"""


@pytest.mark.timeout(240)
def test_the_standalone_pytorch_lightning_package_is_enough(tmp_path: Path) -> None:
    # The `pytorch-lightning` distribution installs `pytorch_lightning` only: the callback must
    # import and log with it when `lightning` is not there.
    pytest.importorskip("pytorch_lightning")
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _STANDALONE, str(tmp_path / "hw")],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["base"].startswith("pytorch_lightning") and not got["lightning"]
    assert len(got["epochs"]) == 2 and all(e > 0 for e in got["epochs"])
    assert got["logged"] == pytest.approx(got["epochs"][-1], rel=1e-6)


# Both distributions installed, and the program's Trainer the standalone one's, given the
# callback alone (``callbacks=cb``: the Trainer wraps a Callback of its own package in a list).
_ONLY = 'sys.modules["lightning"] = None  # as if only the pytorch-lightning distribution'
_BOTH = _STANDALONE.replace(_ONLY, "# (both distributions)").replace(
    "callbacks=[cb]", "callbacks=cb"
)


@pytest.mark.timeout(240)
def test_with_both_distributions_a_standalone_trainer_takes_the_callback(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_lightning")
    pytest.importorskip("lightning")
    import json
    import subprocess
    import sys

    assert "callbacks=cb," in _BOTH and _ONLY not in _BOTH
    out = subprocess.run(
        [sys.executable, "-c", _BOTH, str(tmp_path / "hw")],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["lightning"]  # both imported: the callback is a Callback of each
    assert len(got["epochs"]) == 2 and all(e > 0 for e in got["epochs"])
    assert got["logged"] == pytest.approx(got["epochs"][-1], rel=1e-6)


_SPAWNED = """
import sys, warnings
import torch
import lightning.pytorch as L
import carbonctx
from carbonctx.testing import SimulatedMachine
from carbonctx.integrations.lightning import CarbonctxCallback

class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

if __name__ == "__main__":
    with SimulatedMachine(sys.argv[1]) as sim:
        carbonctx.configure(**sim.settings())
        data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        cb = CarbonctxCallback()
        trainer = L.Trainer(
            accelerator="cpu", devices=int(sys.argv[3]), strategy=sys.argv[2], max_epochs=1,
            callbacks=[cb],
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=sys.argv[1],
        )
        trainer.fit(Model(), torch.utils.data.DataLoader(data, batch_size=8))
        print("logged", float(trainer.callback_metrics["epoch_energy_j"]), "kept", cb.total_j)
"""


@pytest.mark.timeout(240)
def test_a_fit_in_spawned_workers_says_the_callback_keeps_nothing_here(tmp_path: Path) -> None:
    # ddp_spawn (as ddp_fork and ddp_notebook) trains in workers that get a copy of the
    # callback: its attributes in this process stay empty, which must be said, not left as a
    # run that spent nothing. (A file: spawned workers import the main module by its path.)
    import subprocess
    import sys

    script = tmp_path / "spawned_fit.py"
    script.write_text(_SPAWNED)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "hw"), "ddp_spawn", "1"],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    said = out.stderr.count("CarbonctxCallback: this fit runs in worker processes")
    assert said == 1, out.stderr[-3000:]
    words = out.stdout.split()
    logged, kept = float(words[words.index("logged") + 1]), float(words[words.index("kept") + 1])
    assert logged > 0 and kept == 0.0  # what the warning says


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("strategy", "devices"), [("ddp", 2), ("auto", 1)])
def test_a_fit_in_this_process_says_nothing_of_workers(
    tmp_path: Path, strategy: str, devices: int
) -> None:
    # strategy="ddp" (what devices=N picks in a script) runs rank 0 in this process and starts
    # the other ranks as new runs of the script, each with a callback of its own; a
    # single-device fit is this process's: the callback keeps its figures, nothing to say.
    import subprocess
    import sys

    script = tmp_path / "fit.py"
    script.write_text(_SPAWNED)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "hw"), strategy, str(devices)],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CarbonctxCallback: this fit runs in worker" not in out.stderr
    words = out.stdout.split()
    kept = [float(words[i + 1]) for i, w in enumerate(words) if w == "kept"]
    assert len(kept) == devices and all(k > 0 for k in kept), out.stdout

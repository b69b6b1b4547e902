"""The Lightning callback through the Trainer's other paths, on a real (tiny) run on the CPU:
``max_steps`` in the middle of an epoch, an exception (and ``KeyboardInterrupt``) in the middle
of an epoch, ``validate``/``test``/``predict`` after ``fit`` with the same callback, the same
callback in two fits, and a fit resumed from a checkpoint (``ckpt_path``).

Simulated hardware without a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import carbonctx  # noqa: E402
from callback_common import handles  # noqa: E402
from carbonctx.integrations.lightning import CarbonctxCallback  # noqa: E402
from test_integrations_lightning import Memory, Regression, cpu_sim  # noqa: E402, F401

pytestmark = [
    pytest.mark.usefixtures("cpu_sim"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*:FutureWarning"),
]


class Model(Regression):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self.net(batch[0])


class Boom(L.Callback):  # type: ignore[misc]
    def __init__(self, at: int, exc: BaseException) -> None:
        self.at, self.exc = at, exc

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.at:
            raise self.exc


def _loaders(n: int = 320) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 80, 16, generator=g)
    y = x.sum(dim=1, keepdim=True)
    train = torch.utils.data.TensorDataset(x[:n], y[:n])
    val = torch.utils.data.TensorDataset(x[n:], y[n:])
    return (
        torch.utils.data.DataLoader(train, batch_size=8),  # 40 steps per epoch
        torch.utils.data.DataLoader(val, batch_size=40),
    )


def _trainer(tmp_path: Path, *callbacks: Any, **kw: Any) -> Any:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "log_every_n_steps": 10,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
    }
    settings.update(kw)
    return L.Trainer(callbacks=list(callbacks), **settings)


def test_max_steps_in_the_middle_of_an_epoch_ends_it_with_its_figures(tmp_path: Path) -> None:
    cb, logger = CarbonctxCallback(), Memory()
    trainer = _trainer(tmp_path, cb, logger=logger, max_epochs=5, max_steps=60)
    with carbonctx.track("whole") as whole:
        trainer.fit(Model(), *_loaders())
    assert trainer.global_step == 60
    assert [e["epoch"] for e in cb.epochs] == [0.0, 1.0]
    assert logger.values("epoch_energy_j") == pytest.approx([e["energy_j"] for e in cb.epochs])
    # The epochs hold the run but for Lightning's work before setup and after the last epoch
    # (the first fit of a process imports on the way: more of a short run on a loaded machine).
    logged = math.fsum(e["energy_j"] for e in cb.epochs)
    assert 0.85 * whole.energy_j < logged <= cb.total_j < whole.energy_j
    # The sanity check is not a validation run: one, after the whole first epoch (the second
    # stops before its end, without one).
    assert len(logger.values("val_energy_j")) == 1
    assert carbonctx.stats()["lightning.val"].count == 1


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_mid_epoch_keeps_what_was_measured(tmp_path: Path, exc: Any) -> None:
    cb = CarbonctxCallback()
    trainer = _trainer(tmp_path, cb, Boom(50, exc), logger=Memory())
    # Lightning turns a KeyboardInterrupt into a graceful stop, then exits (SystemExit).
    with carbonctx.track("whole") as whole, pytest.raises((type(exc), SystemExit)):
        trainer.fit(Model(), *_loaders())
    assert len(cb.epochs) == 1
    assert cb.total_j > cb.epochs[0]["energy_j"] > 0
    # Every region it measured (the second epoch's steps up to the exception included) is in
    # the total: only Lightning's work before ``setup`` and after ``on_exception`` is not.
    stats = carbonctx.stats()
    measured = math.fsum(stats[k].energy_j.total for k in ("lightning.train", "lightning.val"))
    assert cb.total_j == pytest.approx(measured, rel=1e-9)
    assert 0.9 * whole.energy_j < cb.total_j < whole.energy_j
    assert cb._open is None
    # The same callback in a second fit: measured afresh.
    cb2_logger = Memory()
    again = _trainer(tmp_path, cb, logger=cb2_logger, max_epochs=1)
    with carbonctx.track("again") as whole2:
        again.fit(Model(), *_loaders())
    assert [e["epoch"] for e in cb.epochs] == [0.0]
    assert 0.9 * whole2.energy_j < cb.total_j < whole2.energy_j


def test_validate_test_and_predict_after_fit_leave_the_fit_figures(tmp_path: Path) -> None:
    cb = CarbonctxCallback()
    trainer = _trainer(tmp_path, cb, logger=Memory(), max_epochs=1)
    model = Model()
    train, val = _loaders()
    trainer.fit(model, train, val)
    total, epochs = cb.total_j, list(cb.epochs)
    trainer.validate(model, val)
    trainer.test(model, val)
    preds = trainer.predict(model, val)
    assert len(preds) == 2
    assert cb.total_j == total and cb.epochs == epochs
    # A second fit of the same trainer and callback (one more epoch) starts afresh.
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model, train, val)
    assert [e["epoch"] for e in cb.epochs] == [1.0]


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_a_fit_resumed_from_a_checkpoint_continues_its_epochs_and_budget(tmp_path: Path) -> None:
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = CarbonctxCallback()
    first = _trainer(tmp_path, cb, ckpt, logger=Memory(), max_epochs=2, enable_checkpointing=True)
    first.fit(Model(), *_loaders())
    before = [dict(e) for e in cb.epochs]
    assert [e["epoch"] for e in before] == [0.0, 1.0]
    # Resumed for two more epochs: epochs 2 and 3, the first two's figures kept, and a budget
    # that the whole run's forecast exceeds after its first resumed epoch.
    spent = math.fsum(e["energy_j"] for e in before)
    cb2, logger = CarbonctxCallback(budget_kwh=1.5 * spent / 3.6e6), Memory()
    ckpt2 = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2", save_last=True)
    second = _trainer(tmp_path, cb2, ckpt2, logger=logger, max_epochs=4, enable_checkpointing=True)
    second.fit(Model(), *_loaders(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [e["epoch"] for e in cb2.epochs] == [0.0, 1.0, 2.0]
    assert cb2.epochs[:2] == before
    forecast = logger.values("energy_forecast_kwh")[-1] * 3.6e6
    third = cb2.epochs[2]["energy_j"]
    assert forecast == pytest.approx((spent + third) * 4 / 3, rel=1e-4)
    assert cb2.total_j >= spent + third  # the run's total: the checkpoint's and the resumed
    assert cb2.budget_exceeded is not None and cb2.budget_exceeded["epoch"] == 3
    assert second.current_epoch == 3
    # validate/test(ckpt_path=...) restore the callbacks too: the fit's figures stay.
    figures = (cb2.total_j, [dict(e) for e in cb2.epochs])
    second.validate(Model(), _loaders()[1], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert (cb2.total_j, cb2.epochs) == figures


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_checkpoint_without_the_callbacks_figures_forecasts_from_the_resumed_epochs(
    tmp_path: Path,
) -> None:
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _trainer(tmp_path, ckpt, logger=Memory(), max_epochs=2, enable_checkpointing=True)
    first.fit(Model(), *_loaders())
    cb, logger = CarbonctxCallback(), Memory()
    second = _trainer(tmp_path, cb, logger=logger, max_epochs=4)
    second.fit(Model(), *_loaders(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [e["epoch"] for e in cb.epochs] == [2.0, 3.0]
    # The whole run at the resumed epochs' rate: 4 epochs of their mean.
    forecast = logger.values("energy_forecast_kwh")
    mean = [cb.epochs[0]["energy_j"], (cb.epochs[0]["energy_j"] + cb.epochs[1]["energy_j"]) / 2]
    assert [f * 3.6e6 for f in forecast] == pytest.approx([4 * m for m in mean], rel=1e-4)


def test_gradient_accumulation_logs_each_batch_once_and_early_stopping_ends_cleanly(
    tmp_path: Path,
) -> None:
    cb, logger = CarbonctxCallback(), Memory()
    stop = L.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=1e9)
    trainer = _trainer(tmp_path, cb, stop, logger=logger, max_epochs=5, accumulate_grad_batches=2)
    trainer.fit(Model(), *_loaders())
    # min_delta is never met: the second validation stops the fit.
    assert trainer.current_epoch == 2 and [e["epoch"] for e in cb.epochs] == [0.0, 1.0]
    assert trainer.global_step == 40  # 20 optimizer steps per epoch
    steps = logger.values("energy_j")
    logged = math.fsum(e["energy_j"] for e in cb.epochs)
    # Each log carries what was resolved since the previous one: on a loaded machine the sampler
    # may not have resolved any step of so short a fit by then (0 J logged, never more than the
    # epochs' figures).
    assert steps and 0 <= math.fsum(steps) <= logged * (1 + 1e-6)
    assert logger.values("epoch_energy_j") == pytest.approx([e["energy_j"] for e in cb.epochs])
    assert len(logger.values("val_energy_j")) == 2
    assert cb._open is None


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch.*")
@pytest.mark.parametrize("stop", ["max_epochs", "max_steps"])
def test_a_fit_resumed_in_the_middle_of_an_epoch_forecasts_from_what_its_figures_cover(
    tmp_path: Path, stop: str
) -> None:
    # A checkpoint every 10 steps; the fit ends in an exception at step 25, in the first of two
    # 40-step epochs, and resumes from step 20: half of epoch 0 ran before it, in no figure.
    bound = {"max_epochs": 2} if stop == "max_epochs" else {"max_epochs": -1, "max_steps": 80}
    ckpt = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=10, save_top_k=-1
    )
    first = _trainer(
        tmp_path,
        CarbonctxCallback(),
        ckpt,
        Boom(25, RuntimeError("preempted")),
        logger=Memory(),
        enable_checkpointing=True,
        **bound,
    )
    with pytest.raises(RuntimeError):
        first.fit(Model(), *_loaders())
    cb, logger = CarbonctxCallback(), Memory()
    second = _trainer(tmp_path, cb, logger=logger, **bound)
    second.fit(Model(), *_loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=20.ckpt"))
    assert second.global_step == 80
    assert [e["epoch"] for e in cb.epochs] == [0.0, 1.0]
    # Epoch 0's figure is its second half; the forecast counts it as half an epoch (20 steps):
    # the whole run at the rate measured, not the resumed part taken for the whole epoch.
    e0, e1 = (e["energy_j"] for e in cb.epochs)
    forecast = [f * 3.6e6 for f in logger.values("energy_forecast_kwh")]
    assert forecast == pytest.approx([e0 * 80 / 20, (e0 + e1) * 80 / 60], rel=1e-4)


class Handles(L.Callback):  # type: ignore[misc]
    """After the callback: how many handles it holds at each step's end."""

    def __init__(self, cb: Any) -> None:
        self.cb, self.seen = cb, [0]

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.seen.append(handles(self.cb))


def test_a_long_epoch_holds_no_handle_per_step(tmp_path: Path) -> None:
    # One epoch of 800 steps (as one epoch of a whole run over a stream): the steps' regions are
    # counted as they resolve, not kept to the epoch's end.
    cb = CarbonctxCallback()
    probe = Handles(cb)
    train, val = _loaders(800)
    trainer = _trainer(tmp_path, cb, probe, logger=Memory(), max_epochs=1, num_sanity_val_steps=0)
    with carbonctx.track("whole") as whole:
        trainer.fit(Model(), torch.utils.data.DataLoader(train.dataset, batch_size=1), val)
    assert trainer.global_step == 800
    assert max(probe.seen) < 300  # the regions logged every 10 steps, and those resolving
    stats = carbonctx.stats()
    measured = math.fsum(stats[k].energy_j.total for k in ("lightning.train", "lightning.val"))
    # Every region counted once: the epoch, and after it the end of fit.
    assert cb.total_j == pytest.approx(measured, rel=1e-9)
    assert 0.95 * cb.total_j < cb.epochs[0]["energy_j"] < cb.total_j
    assert 0.95 * whole.energy_j < cb.total_j < whole.energy_j

"""The Keras callback through fit's other paths, on a real (tiny) run on the CPU (PyTorch
backend): ``stop_training`` set in the middle of an epoch, an exception
(and ``KeyboardInterrupt``) in the middle of an epoch, ``evaluate``/``predict`` with the same
callback, the same callback in two fits, and a fit resumed with ``initial_epoch``.

Simulated hardware without a GPU.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend before", allow_module_level=True)

import carbonctx  # noqa: E402
from callback_common import handles  # noqa: E402
from carbonctx.integrations.keras import CarbonctxCallback  # noqa: E402
from test_integrations_keras import Batches, _data, _model, cpu_sim  # noqa: E402, F401

pytestmark = [
    pytest.mark.usefixtures("cpu_sim"),
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

N = 320  # 40 batches of 8 per epoch


class Boom(keras.callbacks.Callback):  # type: ignore[misc]
    """Raises ``exc`` (or sets ``stop_training``) after batch ``at`` of epoch ``epoch``."""

    def __init__(self, epoch: int, at: int, exc: BaseException | None) -> None:
        super().__init__()
        self.epoch, self.at, self.exc, self.now = epoch, at, exc, -1

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.now = epoch

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.now == self.epoch and batch == self.at:
            if self.exc is None:
                self.model.stop_training = True
            else:
                raise self.exc


def _fit(model: Any, *callbacks: Any, **kw: Any) -> Any:
    x, y, vx, vy = _data()
    settings: dict[str, Any] = {"batch_size": 8, "epochs": 2, "verbose": 0}
    settings.update(kw)
    return model.fit(x[:N], y[:N], validation_data=(vx, vy), callbacks=list(callbacks), **settings)


def test_stop_training_in_the_middle_of_an_epoch_ends_it_with_its_figures() -> None:
    cb = CarbonctxCallback(batch_size=8)
    with carbonctx.track("whole") as whole:
        history = _fit(_model(), cb, Boom(1, 9, None), epochs=4)
    assert [e["epoch"] for e in cb.epochs] == [0.0, 1.0]
    assert [e["samples"] for e in cb.epochs] == [N, 80]
    assert history.history["epoch_energy_j"] == [e["energy_j"] for e in cb.epochs]
    assert 0.9 * whole.energy_j < cb.total_j < whole.energy_j


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_mid_epoch_keeps_what_was_measured(exc: BaseException) -> None:
    cb = CarbonctxCallback(batch_size=8)
    with carbonctx.track("whole") as whole, pytest.raises(type(exc)):
        _fit(_model(), cb, Boom(1, 20, exc))
    # Keras calls no callback after an exception: the first epoch is counted, and the second's
    # batches that ended before it are in the total.
    assert len(cb.epochs) == 1
    stats = carbonctx.stats()
    ended = math.fsum(stats[k].energy_j.total for k in ("keras.train", "keras.val"))
    assert cb.total_j == pytest.approx(ended, rel=1e-9)
    assert 1.1 * cb.epochs[0]["energy_j"] < cb.total_j < whole.energy_j
    # The callback's region does not outlive the fit: it is no parent of the regions after.
    with carbonctx.track("after") as after:
        pass
    assert after.result().parent is None
    # The same callback in the next fit measures it afresh.
    _fit(_model(), cb, epochs=1)
    assert [e["epoch"] for e in cb.epochs] == [0.0]


def test_evaluate_and_predict_with_the_same_callback_leave_the_fit_figures() -> None:
    cb = CarbonctxCallback(batch_size=8)
    model = _model()
    _fit(model, cb, epochs=1)
    total, epochs = cb.total_j, [dict(e) for e in cb.epochs]
    _, _, vx, vy = _data()
    model.evaluate(vx, vy, batch_size=40, verbose=0, callbacks=[cb])
    model.predict(vx, batch_size=40, verbose=0, callbacks=[cb])
    assert cb.total_j == total and cb.epochs == epochs


def test_a_fit_resumed_with_initial_epoch_numbers_and_forecasts_the_whole_run() -> None:
    cb = CarbonctxCallback(batch_size=8)
    model = _model()
    _fit(model, cb, epochs=2)
    history = _fit(model, cb, epochs=4, initial_epoch=2)
    assert [e["epoch"] for e in cb.epochs] == [2.0, 3.0]
    # The run is epochs 0-3: those before the resume at the rate of the resumed ones.
    e2, e3 = (e["energy_j"] for e in cb.epochs)
    want = [e2 * 4 / 3.6e6, (e2 + e3) * 2 / 3.6e6]
    assert history.history["energy_forecast_kwh"] == pytest.approx(want, rel=1e-9)
    assert cb.total_j >= (e2 + e3) * (1 - 1e-9)


def test_backup_and_restore_resumes_the_epochs_and_the_budget_holds_the_whole_run(
    tmp_path: Path,
) -> None:
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    cb = CarbonctxCallback(batch_size=8)
    model = _model()
    with pytest.raises(RuntimeError):
        _fit(model, backup, cb, Boom(2, 5, RuntimeError("preempted")), epochs=6)
    first = [e["energy_j"] for e in cb.epochs]
    assert len(first) == 2
    # Restarted: the run continues at epoch 2; its forecast is all six epochs (the two before
    # the restart at the resumed epoch's rate), and the budget stops it cleanly.
    cb = CarbonctxCallback(batch_size=8, budget_kwh=1e-9)
    history = _fit(model, backup, cb, epochs=6)
    assert [e["epoch"] for e in cb.epochs] == [2.0]
    assert cb.budget_exceeded is not None and cb.budget_exceeded["epoch"] == 2
    assert history.history["energy_forecast_kwh"] == pytest.approx(
        [cb.epochs[0]["energy_j"] * 6 / 3.6e6], rel=1e-9
    )
    assert len(history.history["loss"]) == 1


def test_an_epochs_loop_of_one_epoch_fits_stops_on_its_budget_cleanly() -> None:
    cb = CarbonctxCallback(batch_size=8)
    model = _model()
    run = carbonctx.epochs(6, budget_kwh=1e-9, quiet=True)
    for epoch in run:
        _fit(model, cb, initial_epoch=epoch, epochs=epoch + 1)
    assert run.stop_reason is not None and "budget" in run.stop_reason
    assert 1 <= run.epochs_done < 6
    # Each fit is measured on its own, with Keras's epoch number, inside the run's epoch.
    assert [e["epoch"] for e in cb.epochs] == [float(run.epochs_done - 1)]
    regions = {m.id: m for m in carbonctx.recent()}
    trains = [m for m in regions.values() if m.name == "keras.train"]
    assert trains and all(regions[m.parent].name == "epoch" for m in trains)


class Handles(keras.callbacks.Callback):  # type: ignore[misc]
    """After the callback: how many handles it holds at each batch's end."""

    def __init__(self, cb: Any) -> None:
        super().__init__()
        self.cb, self.seen = cb, [0]

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.seen.append(handles(self.cb))


def test_a_long_epoch_holds_no_handle_per_batch() -> None:
    # One epoch of 320 batches: their regions are counted as they resolve, not kept to its end.
    cb = CarbonctxCallback(batch_size=1)
    probe = Handles(cb)
    with carbonctx.track("whole") as whole:
        _fit(_model(), cb, probe, epochs=1, batch_size=1)
    assert len(probe.seen) == N + 1
    assert max(probe.seen) < 120  # those resolving
    stats = carbonctx.stats()
    measured = math.fsum(stats[k].energy_j.total for k in ("keras.train", "keras.val"))
    assert cb.total_j == pytest.approx(measured, rel=1e-9)
    assert 0.9 * whole.energy_j < cb.epochs[0]["energy_j"] <= cb.total_j < whole.energy_j

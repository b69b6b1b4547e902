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
from typing import Any

import pytest

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend before", allow_module_level=True)

import carbonctx  # noqa: E402
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


def test_a_fit_resumed_with_initial_epoch_numbers_and_forecasts_its_epochs() -> None:
    cb = CarbonctxCallback(batch_size=8)
    model = _model()
    _fit(model, cb, epochs=2)
    history = _fit(model, cb, epochs=4, initial_epoch=2)
    assert [e["epoch"] for e in cb.epochs] == [2.0, 3.0]
    # The rest of fit() (epochs 2 and 3) at the rate of its own epochs.
    spent = [cb.epochs[0]["energy_j"], cb.epochs[0]["energy_j"] + cb.epochs[1]["energy_j"]]
    want = [spent[0] * 2 / 3.6e6, spent[1] / 3.6e6]
    assert history.history["energy_forecast_kwh"] == pytest.approx(want, rel=1e-9)
    assert math.isfinite(cb.total_j) and cb.total_j > spent[1] * (1 - 1e-9)


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

"""The Keras 3 callback on a real (tiny) training run on the CPU (PyTorch backend), on simulated
hardware.

The figures it logs (read back from Keras's own History and from a CSVLogger's file) must add up,
within 1 %, to the same run measured with ``track()`` around ``model.fit()``.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Keras picks its backend when first imported: the PyTorch one (torch is in the test extra).
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"
pytest.importorskip("torch")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend before", allow_module_level=True)

import numpy as np  # noqa: E402

import carbonctx  # noqa: E402
from carbonctx._measure import process as _runtime  # noqa: E402
from carbonctx.integrations.keras import CarbonctxCallback  # noqa: E402
from carbonctx.testing import SimulatedMachine, Wave  # noqa: E402

TRAIN, VAL, BATCH = 1600, 200, 8  # 200 steps per epoch

pytestmark = [
    # Keras turns each logged torch tensor into a number through numpy with copy=False, which
    # numpy 2 deprecates for torch's __array__; as an error, Keras would keep the tensor (and its
    # CSVLogger then fails on it). About Keras and torch, not about the callback.
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


@pytest.fixture
def cpu_sim(tmp_path: Path) -> Iterator[SimulatedMachine]:
    """A machine without a GPU (the final wait for a GPU counter would be several per cent of a
    run this short)."""
    m = SimulatedMachine(tmp_path / "hw", package=Wave(40.0, 120.0, 0.05), dram=Wave.constant(6.0))
    m.start()
    carbonctx.configure(**m.settings())
    yield m
    _runtime.reset()
    m.close()


class Slow(keras.layers.Layer):  # type: ignore[misc]
    """A heavier step's time without loading the machine: the simulated power does not depend on
    the work, and a longer run makes the fixed edges (before the first hook, after the last) a
    smaller part of it."""

    def call(self, x: Any, training: bool | None = None) -> Any:
        if training:
            time.sleep(0.005)
        return x


class Batches(keras.callbacks.Callback):  # type: ignore[misc]
    """Keeps the logs of every training batch (a reporter listed after the callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.rows.append(dict(logs or {}))


def _model() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            Slow(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _data() -> tuple[Any, Any, Any, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((TRAIN + VAL, 16)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    return x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:]


def test_logged_figures_add_up_to_the_run_measured_around_fit(
    cpu_sim: SimulatedMachine, tmp_path: Path
) -> None:
    cb, batches = CarbonctxCallback(batch_size=BATCH, samples=TRAIN), Batches()
    csv_path = tmp_path / "log.csv"
    model = _model()
    x, y, vx, vy = _data()
    with carbonctx.track("whole") as whole:
        history = model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=3,
            validation_data=(vx, vy),
            validation_batch_size=40,
            verbose=0,
            callbacks=[cb, batches, keras.callbacks.CSVLogger(str(csv_path))],
        )
    h = history.history
    epochs = h["epoch_energy_j"]
    assert len(epochs) == 3 and all(e > 0 for e in epochs)
    assert epochs == [e["energy_j"] for e in cb.epochs]
    logged = math.fsum(epochs)
    logged_co2 = math.fsum(h["epoch_co2_g"])
    err = abs(logged - whole.energy_j) / whole.energy_j
    err_co2 = abs(logged_co2 - whole.co2_g) / whole.co2_g
    print(f"Keras: logged {logged:.3f} J, track() {whole.energy_j:.3f} J: {err:.4%}")
    assert err < 0.01 and err_co2 < 0.01
    # What runs after the last epoch is in the callback's total, not in the logs.
    assert cb.total_j == pytest.approx(whole.energy_j, rel=0.01)
    assert h["epoch_energy_j_per_sample"] == pytest.approx([e / TRAIN for e in epochs])
    val = h["val_energy_j"]
    assert len(val) == 3 and all(0 < v < e for v, e in zip(val, epochs, strict=True))
    # The forecast at the end of epoch k is the spent energy × 3 / k.
    spent = np.cumsum(epochs)
    want = [s * 3 / (k + 1) / 3.6e6 for k, s in enumerate(spent)]
    assert h["energy_forecast_kwh"] == pytest.approx(want, rel=1e-9)
    # The CSVLogger listed after the callback wrote the same figures.
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epoch_energy_j"]) for r in rows] == pytest.approx(epochs, rel=1e-12)
    assert [float(r["val_co2_g"]) for r in rows] == pytest.approx(h["val_co2_g"], rel=1e-12)
    # Per batch: one value per batch (zeros while the sampler had nothing new), never more than
    # the epochs' total; the sample count is the batch size.
    assert len(batches.rows) == 3 * TRAIN // BATCH
    steps = [r["energy_j"] for r in batches.rows]
    assert all(v >= 0 for v in steps)
    assert 0.5 * logged < math.fsum(steps) <= logged
    per_sample = [r for r in batches.rows if "energy_j_per_sample" in r]
    assert per_sample and all(r["energy_j_per_sample"] >= 0 for r in per_sample)
    assert {"keras.train", "keras.val"} <= set(carbonctx.stats())


def test_budget_stops_training_after_the_first_epoch(cpu_sim: SimulatedMachine) -> None:
    # 48 samples a batch: the epoch's last batch holds 16, which ``samples`` lets it count.
    cb = CarbonctxCallback(budget_kwh=1e-9, batch_size=48, samples=TRAIN)
    x, y, _, _ = _data()
    history = _model().fit(x, y, batch_size=48, epochs=5, verbose=0, callbacks=[cb])
    assert cb.budget_exceeded is not None and cb.budget_exceeded["epoch"] == 0
    assert "budget_kwh" in cb.budget_exceeded["message"]
    assert len(history.history["loss"]) == 1 == len(history.history["epoch_energy_j"])
    assert len(cb.epochs) == 1 and cb.epochs[0]["samples"] == TRAIN
    per_sample = history.history["epoch_energy_j_per_sample"]
    assert per_sample == [history.history["epoch_energy_j"][0] / TRAIN]


def test_bad_arguments_say_what_to_give() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        CarbonctxCallback(batch_size=0)
    with pytest.raises(TypeError, match="whole number"):
        CarbonctxCallback(samples=1.5)  # type: ignore[arg-type]
    with pytest.raises(carbonctx.ConfigurationError, match="budget_kwh"):
        CarbonctxCallback(budget_kwh=-1)

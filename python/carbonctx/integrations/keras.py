"""Keras 3: energy and CO2 per batch and per epoch in ``logs``, a forecast and a budget stop.

::

    import keras
    from carbonctx.integrations.keras import CarbonctxCallback

    cb = CarbonctxCallback(batch_size=32, budget_kwh=50)
    history = model.fit(x, y, batch_size=32, epochs=10, validation_split=0.1,
                        callbacks=[cb, keras.callbacks.CSVLogger("log.csv")])
    print(history.history["epoch_energy_j"], cb.total_j, cb.epochs)

Any backend (TensorFlow, JAX, PyTorch): the callback only uses Keras's callback hooks.

**Order.** Keras hands one ``logs`` dict to the callbacks in the order of ``callbacks=``, then to
``History`` and the progress bar: the figures reach ``History`` (``history.history``) and every
callback listed after this one. List it before ``CSVLogger``, ``TensorBoard`` and the W&B or
MLflow callbacks.

Figures:

* per training batch (``on_train_batch_end``): ``energy_j``, ``co2_g`` and, with
  ``batch_size`` given, ``energy_j_per_sample``. Nothing waits inside a step: a batch's figures
  are what the sampler has resolved since the previous batch (normally the previous batch
  itself; RAPL counters move every millisecond, a GPU's every 20-100 ms). They are this
  process's own (no collective per step);
* per epoch (``on_epoch_end``, exact, after one wait): ``epoch_energy_j`` and ``epoch_co2_g``
  (the epoch's batches, its validation and what runs in between), ``epoch_energy_j_per_sample``
  (with ``batch_size``), ``val_energy_j`` and ``val_co2_g`` (the validation alone, in epochs
  that validate) and ``energy_forecast_kwh`` (the whole run at the rate so far). In a
  distributed job (``torch.distributed`` or MPI already initialised) they are the job's, summed
  over ranks at each epoch's end: a collective, which every rank reaches.

The run is cut into contiguous regions (``keras.train``, ``keras.val`` in ``carbonctx.stats()``)
from ``on_train_begin`` to ``on_train_end``; the epochs' figures add up to all of it except what
runs after the last epoch ends, which is in :attr:`CarbonctxCallback.total_j` but comes after the
last log. A budget (``budget_kwh``, ``budget_co2_kg``) is checked against the forecast at each
epoch's end and stops training (``model.stop_training``); the decision is joint over ranks.

Each ``fit()`` is measured on its own (a second one with the same callback starts afresh). A
resumed run (``initial_epoch``, or ``BackupAndRestore`` after an interruption) keeps Keras's
epoch numbers, and its forecast (and budget) is the whole run, epochs 0 to ``epochs`` - 1, the
epochs before the resume counted at the rate of the resumed ones. ``evaluate()`` and
``predict()`` are not measured. Keras calls no callback after an exception in ``fit()``:
``total_j`` then holds every batch that ended before it, and the callback's region, opened in a
context of its own, is the parent of no later region. So its regions nest in the region open where
``fit()`` was called, and a region opened inside a step (eager backends) nests there too, beside
them, not in ``keras.train``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import keras

from carbonctx._distributed import collectives
from carbonctx.integrations._common import J_PER_KWH, Budget, Regions, Tally, figures, put

__all__ = ["CarbonctxCallback"]


class CarbonctxCallback(keras.callbacks.Callback):
    """Adds energy and CO2 figures to the logs of every batch and epoch (see the module's
    documentation). ``name`` prefixes the regions' names; ``tags`` go into every record.

    ``batch_size`` is the number of samples in one step of this process (as given to ``fit``);
    ``samples`` the number of training samples per epoch, when the last batch is a short one
    (``len(x)`` less the validation split). Without ``batch_size`` there is no per-sample figure.

    After fit: ``total_j``, ``total_co2_g`` (this process's own figures, ``on_train_begin`` to
    ``on_train_end``), ``epochs`` (one dict per epoch with the job's ``epoch``, ``energy_j``,
    ``co2_g``, ``val_energy_j``, ``samples``), ``budget_exceeded`` (None or what was exceeded).
    """

    def __init__(
        self,
        *,
        name: str = "keras",
        tags: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        samples: int | None = None,
        budget_kwh: float | None = None,
        budget_co2_kg: float | None = None,
        job_totals: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in (("batch_size", batch_size), ("samples", samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{arg}={value!r}: give a whole number of samples, or leave it out")
            if value is not None and value < 1:
                raise ValueError(f"{arg}={value!r} must be at least 1")
        self.name = name
        self.tags = dict(tags) if tags else None
        self.batch_size = batch_size
        self.samples = samples
        self.budget = Budget(budget_kwh, budget_co2_kg)
        self.job_totals = job_totals
        self._total = [0.0, 0.0]
        self.epochs: list[dict[str, float]] = []
        self._regions = Regions()
        self._open: Any = None
        self._phase = "train"
        self._in_batch = 0  # samples of the batches in the open region
        self._epoch_samples = 0
        self._last_batch = -1
        # Ended training regions not yet logged per batch: (region, samples in it).
        self._steps: deque[tuple[Any, int]] = deque()
        # Ended regions of this epoch (validation included), and its validation alone.
        self._epoch = Tally()
        self._val: list[Any] = []
        self._first_epoch: int | None = None

    @property
    def total_j(self) -> float:
        """This process's joules from ``on_train_begin``: the epochs', and every region ended
        since (after an exception in ``fit``, which Keras tells no callback, the batches that
        ended before it)."""
        return self._total[0] + self._epoch.read()[0]

    @property
    def total_co2_g(self) -> float:
        """This process's grams of CO2e, as :attr:`total_j`."""
        return self._total[1] + self._epoch.read()[1]

    @property
    def budget_exceeded(self) -> dict[str, Any] | None:
        """None, or what was exceeded (``epoch``, ``message``, ``forecast_kwh``...)."""
        return self.budget.exceeded

    # ------------------------------------------------------------------ regions

    def _split(self, phase: str | None) -> None:
        """End the open region and file it; open the next one for ``phase`` (None: none)."""
        ended = self._open
        if ended is not None:
            self._regions.end(ended)
            self._epoch.add(ended)
            if self._phase == "train":
                self._steps.append((ended, self._in_batch))
            else:
                self._val.append(ended)
        self._in_batch = 0
        self._open = None
        if phase is not None:
            self._phase = phase
            self._open = self._regions.open(f"{self.name}.{phase}", self.tags)

    def _add_total(self, regions: Tally) -> tuple[float, float]:
        j, g = regions.read()
        self._total[0] += j
        self._total[1] += g
        return j, g

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._open is not None:  # a fit that ended in an exception: Keras said nothing
            self._split(None)
        self._regions = Regions()
        self._total = [0.0, 0.0]
        self.epochs = []
        self.budget.exceeded = None
        self._epoch.clear()
        self._steps.clear()
        self._val.clear()
        self._first_epoch = None
        self._split("train")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epoch_samples = 0
        self._last_batch = -1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._open is None:
            return
        # With steps_per_execution > 1 (TensorFlow, JAX) Keras calls back once per execution,
        # with the index of its last step.
        steps = max(1, batch - self._last_batch)
        self._last_batch = batch
        n = (self.batch_size or 0) * steps
        if n and self.samples is not None:
            n = max(0, min(n, self.samples - self._epoch_samples))
        self._epoch_samples += n
        self._in_batch += n
        self._split("train")
        self._epoch.fold()  # in the next batch's region: it takes time
        # What the sampler has resolved; never wait inside a step.
        j = g = 0.0
        samples = 0
        while self._steps and self._steps[0][0].done:
            region, k = self._steps.popleft()
            m = region.result()
            j += m.energy_j
            g += m.co2_g if m.co2_g is not None else math.nan
            samples += k
        if logs is not None:
            out: dict[str, float] = {}
            put(out, "energy_j", j)
            put(out, "co2_g", g)
            if samples > 0:
                put(out, "energy_j_per_sample", j / samples)
            logs.update(out)

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Validation inside fit(); an evaluate() of its own is not measured here.
        if self._open is not None and self._phase == "train":
            self._split("val")

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._open is not None and self._phase == "val":
            self._split("train")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._open is None:
            return
        self._split("train")
        # The epoch's figure covers what the batches have not logged yet.
        self._steps.clear()
        validated = bool(self._val)
        j, g = self._add_total(self._epoch)
        vj, vg = figures(self._val)
        self._epoch.clear()
        self._val.clear()
        local = [j, g, vj, vg, float(self._epoch_samples)]
        job_j, job_g, job_vj, job_vg, samples = (
            collectives.allreduce_sum(local) if self.job_totals else local
        )
        self.epochs.append(
            {
                "epoch": float(epoch),
                "energy_j": job_j,
                "co2_g": job_g,
                "val_energy_j": job_vj if validated else math.nan,
                "samples": samples,
            }
        )
        out: dict[str, float] = {}
        put(out, "epoch_energy_j", job_j)
        put(out, "epoch_co2_g", job_g)
        if samples > 0:
            put(out, "epoch_energy_j_per_sample", job_j / samples)
        if validated:
            put(out, "val_energy_j", job_vj)
            put(out, "val_co2_g", job_vg)
        first = self._first_epoch if self._first_epoch is not None else epoch
        planned = (self.params or {}).get("epochs")
        done = epoch - first + 1
        fc_kwh = fc_co2_kg = math.nan
        # The run is epochs 0 to ``epochs`` - 1 (Keras: with ``initial_epoch``, ``epochs`` is the
        # final epoch); those before this fit() (BackupAndRestore, a resumed run) are counted at
        # the rate of this fit()'s epochs.
        if isinstance(planned, int) and planned > first and done > 0:
            scale = planned / done
            fc_kwh = math.fsum(e["energy_j"] for e in self.epochs) * scale / J_PER_KWH
            fc_co2_kg = math.fsum(e["co2_g"] for e in self.epochs) * scale / 1e3
            put(out, "energy_forecast_kwh", fc_kwh)
        if logs is not None:
            logs.update(out)
        # Every rank takes part at every epoch's end, with a budget or not.
        if self.budget.check(fc_kwh, fc_co2_kg, epoch=epoch) and self.model is not None:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._open is None:
            return
        self._split(None)
        self._add_total(self._epoch)
        self._epoch.clear()
        self._steps.clear()
        self._val.clear()

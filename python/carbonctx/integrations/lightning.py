"""Lightning (``lightning.pytorch``): energy and CO2 per step and per epoch through ``self.log``.

The callback works with either distribution of Lightning 2.x: ``lightning`` (``import
lightning.pytorch as L``) or the standalone ``pytorch-lightning`` (``import pytorch_lightning as
pl``), whichever is installed; with both installed, the callback is a ``Callback`` of both, so
that a Trainer of either takes it.

::

    from carbonctx.integrations.lightning import CarbonctxCallback

    cb = CarbonctxCallback(budget_kwh=50)
    trainer = L.Trainer(max_epochs=10, callbacks=[cb])
    trainer.fit(model, train_loader, val_loader)
    print(trainer.logged_metrics["epoch_energy_j"], cb.total_j, cb.epochs)

Every figure goes through ``pl_module.log(..., sync_dist=True, reduce_fx="sum")``, so that the
loggers (and ``trainer.logged_metrics``, ``trainer.callback_metrics``) get the job's figures
summed over ranks:

* per training step that Lightning writes to its loggers (every ``log_every_n_steps``):
  ``energy_j`` and ``co2_g``, with ``energy_j_per_sample`` (the job's joules over the job's
  samples). Nothing waits inside a step: the figures are what the sampler has resolved since
  the previous such step (RAPL counters move every millisecond; a GPU's every 20-100 ms), so
  an epoch's last step or so is in the epoch's figure only;
* per epoch (at ``on_train_epoch_end``, exact, after one wait): ``epoch_energy_j`` and
  ``epoch_co2_g`` (the epoch's training steps, its validation and the data loading in between),
  and ``energy_forecast_kwh`` (the whole run at the rate so far, with ``max_epochs`` or
  ``max_steps`` set);
* per validation run (at ``on_validation_epoch_end``): ``val_energy_j`` and ``val_co2_g``.

The run is cut into contiguous regions (``lightning.train``, ``lightning.val`` in
``carbonctx.stats()``) from ``setup`` to the end of fit; the epochs' figures add up to all of it
except what runs after the last epoch ends (the last checkpoint, ``on_fit_end``), which is in
:attr:`CarbonctxCallback.total_j` but cannot be logged. A budget (``budget_kwh``,
``budget_co2_kg``) is checked against the forecast at each epoch's end and stops training through
``trainer.should_stop``; the decision is joint over ranks (every rank stops after the same epoch).

**Workers Lightning starts.** With ``strategy="ddp_spawn"``, ``"ddp_fork"`` or
``"ddp_notebook"`` (what ``devices=N`` picks in a notebook) the fit runs in processes Lightning
starts, each with a copy of the callback: the figures reach the loggers and
``trainer.callback_metrics`` (which Lightning brings back), but the attributes (``total_j``,
``epochs``...) of the callback in the process that called ``fit()`` stay empty, and a warning
says so. ``strategy="ddp"`` (what ``devices=N`` picks in a script) and ``torchrun`` run rank 0
in that process.

The sanity check's validation is not a validation run (it counts in the first epoch). A fit that
ends in an exception (``KeyboardInterrupt`` included) keeps what it measured in ``total_j``. The
callback's ``state_dict`` (its epochs and totals) goes into Lightning's checkpoints, so that a fit
resumed with ``ckpt_path`` continues them: its forecast and budget are the whole run's (from a
checkpoint without them, the forecast counts the resumed epochs only, at their rate). A checkpoint
saved in the middle of an epoch holds the epochs finished before it: that epoch's steps before the
checkpoint are in no figure, and the forecast counts that epoch for the part run since. A
checkpoint keys the state by the callback's ``name``: Lightning refuses two callbacks of one name
in a Trainer (their logged keys would be the same too).
``validate``, ``test`` and ``predict`` are not measured, and leave the fit's figures as they
are (``ckpt_path`` included).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Mapping
from typing import Any

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.utilities.data import extract_batch_size
except ImportError:  # the standalone ``pytorch-lightning`` distribution, without ``lightning``
    from pytorch_lightning import Callback
    from pytorch_lightning.utilities.data import extract_batch_size

import carbonctx
from carbonctx._distributed import collectives
from carbonctx.integrations._common import J_PER_KWH, Budget, Tally, figures

__all__ = ["CarbonctxCallback"]

# With both distributions installed, each Trainer checks for its own package's Callback
# (``callbacks=cb`` without a list, LightningCLI): the callback is one of both then.
_BASES: tuple[type, ...] = (Callback,)
if Callback.__module__.startswith("lightning."):
    try:
        from pytorch_lightning import Callback as _StandaloneCallback
    except ImportError:
        pass
    else:
        _BASES = (Callback, _StandaloneCallback)


def _batch_size(batch: Any) -> int:
    try:
        return int(extract_batch_size(batch))
    except Exception:
        return 0


class CarbonctxCallback(*_BASES):  # type: ignore[misc]
    """Logs energy and CO2 per step, per validation run and per epoch (see the module's
    documentation). ``name`` prefixes the regions' names; ``tags`` go into every record.

    After fit: ``total_j``, ``total_co2_g`` (the rank's own figures, everything from ``setup``
    to the end of fit), ``epochs`` (one dict per epoch with the job's ``energy_j`` and
    ``co2_g``, and this rank's own ``rank_energy_j`` and ``rank_co2_g``), ``budget_exceeded``
    (None, or what was exceeded).
    """

    def __init__(
        self,
        *,
        name: str = "lightning",
        tags: Mapping[str, Any] | None = None,
        budget_kwh: float | None = None,
        budget_co2_kg: float | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.tags = dict(tags) if tags else None
        self.budget = Budget(budget_kwh, budget_co2_kg)
        self.total_j = 0.0
        self.total_co2_g = 0.0
        self.epochs: list[dict[str, float]] = []
        self._open: Any = None
        self._phase = "train"
        self._samples = 0
        # Ended regions not yet logged per step: (region, samples in it).
        self._steps: deque[tuple[Any, int]] = deque()
        # Ended regions of this epoch, summed as they resolve.
        self._epoch = Tally()
        self._val: list[Any] = []
        # A fit resumed from a checkpoint: its first step, and the callback's state in the
        # checkpoint (load_state_dict), taken up when training starts.
        self._start_step = 0
        self._loaded: dict[str, Any] | None = None
        # What ``epochs`` covers, for the forecast: epochs (a fraction for one resumed in its
        # middle, whose steps before the resume are in no figure) and optimizer steps.
        self._counted = [0.0, 0.0]
        self._epoch_step0 = 0  # the step at which this fit began counting the epoch
        self._epoch_batches = 0  # batches of this epoch run in this fit
        self._last_batch = -1  # the epoch's index of the last one
        # The process that made the callback: a fit in processes Lightning starts with a copy
        # of it (ddp_spawn, ddp_fork, ddp_notebook) keeps its attributes there.
        self._pid = os.getpid()

    # ------------------------------------------------------------------ checkpoints

    @property
    def state_key(self) -> str:
        return str(self._generate_state_key(name=self.name))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a fit resumed from it (``ckpt_path``) continues the
        epochs, the totals, the forecast and the budget of the run."""
        return {
            "epochs": [dict(e) for e in self.epochs],
            "total_j": self.total_j,
            "total_co2_g": self.total_co2_g,
            "counted": list(self._counted),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks for validate/test/predict(ckpt_path=...) too: the state
        # is taken up only when a fit starts training from it (on_train_start).
        self._loaded = dict(state_dict)

    def _take_up_checkpoint(self) -> None:
        state, self._loaded = self._loaded, None
        if state is None:
            return
        self.epochs = [dict(e) for e in state.get("epochs", [])]
        counted = state.get("counted")
        if counted is None:  # saved at an epoch's end, without what its epochs cover
            counted = [float(len(self.epochs)), self._start_step]
        self._counted = [float(counted[0]), float(counted[1])]
        # The epochs are the job's; the totals rank 0's own (it writes the checkpoint): another
        # rank's total counts from the resume.
        if collectives.world()[0] == 0:
            self.total_j += float(state.get("total_j", 0.0))
            self.total_co2_g += float(state.get("total_co2_g", 0.0))

    # ------------------------------------------------------------------ regions

    def _split(self, phase: str) -> Any:
        """End the open region, file it, open the next one for ``phase``; the ended one."""
        ended = self._open
        if ended is not None:
            ended.__exit__(None, None, None)
            self._epoch.add(ended)
            if self._phase == "train":
                self._steps.append((ended, self._samples))
            else:
                self._val.append(ended)
        self._samples = 0
        self._phase = phase
        self._open = carbonctx.track(f"{self.name}.{phase}", tags=self.tags).__enter__()
        return ended

    def _end(self) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._epoch.add(self._open)
            self._open = None
        j, g = self._epoch.read()
        self.total_j += j
        self.total_co2_g += g
        self._epoch.clear()
        self._steps.clear()
        self._val.clear()

    @staticmethod
    def _log(
        pl_module: Any, key: str, value: float, *, on_step: bool, sync: bool = True, **kw: Any
    ) -> None:
        kw.setdefault("reduce_fx", "sum")
        pl_module.log(
            key,
            float(value),
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=sync,
            batch_size=1,
            **kw,
        )

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._loaded = None  # a checkpoint's state comes after setup
        if stage == "fit" and self._pid != os.getpid() and trainer.global_rank == 0:
            warnings.warn(
                "CarbonctxCallback: this fit runs in worker processes Lightning started with a "
                "copy of the callback (strategy ddp_spawn, ddp_fork or ddp_notebook): the "
                "figures reach the loggers and trainer.callback_metrics, but the callback's "
                "total_j, total_co2_g and epochs in the process that called fit() stay empty; "
                'use strategy="ddp" (or torchrun) to keep them there',
                carbonctx.CarbonctxWarning,
                stacklevel=2,
            )
        if stage == "fit":
            self.total_j = self.total_co2_g = 0.0
            self.epochs = []
            self.budget.exceeded = None
            self._epoch.clear()
            self._steps.clear()
            self._val.clear()
            self._open = None
            self._counted = [0.0, 0.0]
            self._split("train")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # After a checkpoint's restore: the steps before it are the checkpoint's.
        self._start_step = trainer.global_step
        self._take_up_checkpoint()
        # A fit resumed in the middle of an epoch starts counting it here (Lightning calls no
        # on_train_epoch_start for it).
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epoch_step0 = trainer.global_step
        self._epoch_batches = 0
        self._last_batch = -1

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch_batches += 1
        self._last_batch = batch_idx
        if self._open is None:
            return
        self._samples += _batch_size(batch)
        self._split("train")
        self._epoch.fold()  # in the next step's region: it takes time
        # Lightning writes step figures to its loggers every log_every_n_steps steps: read and
        # log only then (its self.log costs far more than a region) what the sampler has
        # resolved since; never wait inside a step. Every rank decides alike (the same steps)
        # and then logs, zeros included: sync_dist is a collective.
        if not _logs_now(trainer):
            return
        j = g = 0.0
        n = 0
        while self._steps and self._steps[0][0].done:
            region, samples = self._steps.popleft()
            m = region.result()
            j += m.energy_j
            g += m.co2_g if m.co2_g is not None else math.nan
            n += samples
        self._log(pl_module, "energy_j", j, on_step=True)
        self._log(pl_module, "co2_g", g, on_step=True)
        # The ranks resolve their steps at different times: whether a rank has samples to
        # divide by is its own, and a key logged with sync_dist by some ranks only would leave
        # the others waiting. The job's ratio comes from one sum over ranks, the same on each.
        job_j, job_n = collectives.allreduce_sum([j, float(n)])
        if job_n > 0:
            self._log(pl_module, "energy_j_per_sample", job_j / job_n, on_step=True, sync=False)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._open is not None and not trainer.sanity_checking:
            self._split("val")

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._open is None or trainer.sanity_checking or self._phase != "val":
            return
        self._split("train")
        j, g = figures(self._val)
        self._val.clear()
        self._log(pl_module, "val_energy_j", j, on_step=False)
        self._log(pl_module, "val_co2_g", g, on_step=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._open is None:
            return
        self._split("train")
        # The epoch's figure holds what the steps have not logged yet (and the handles of an
        # epoch's steps are not kept past it).
        self._steps.clear()
        j, g = self._epoch.read()
        self.total_j += j
        self.total_co2_g += g
        self._epoch.clear()
        job_j, job_g = collectives.allreduce_sum([j, g])
        spent_j = math.fsum(e["energy_j"] for e in self.epochs) + job_j
        spent_g = math.fsum(e["co2_g"] for e in self.epochs) + job_g
        self.epochs.append(
            {
                "epoch": float(trainer.current_epoch),
                "energy_j": job_j,
                "co2_g": job_g,
                "rank_energy_j": j,
                "rank_co2_g": g,
            }
        )
        # Each rank logs its own; sync_dist sums them into the job's, as logged per step.
        self._log(pl_module, "epoch_energy_j", j, on_step=False)
        self._log(pl_module, "epoch_co2_g", g, on_step=False)
        # What the epochs cover: an epoch resumed in its middle counts for the part run since
        # (its batches before are in no figure). Without the checkpoint's figures, a resumed fit
        # forecasts from its own epochs and steps.
        ran = self._epoch_batches / (self._last_batch + 1) if self._last_batch >= 0 else 0.0
        self._counted[0] += ran
        self._counted[1] += trainer.global_step - self._epoch_step0
        scale = _remaining_scale(trainer, *self._counted)
        fc_kwh = fc_co2_kg = math.nan
        if scale is not None:
            fc_kwh = spent_j * scale / J_PER_KWH
            fc_co2_kg = spent_g * scale / 1e3
            self._log(pl_module, "energy_forecast_kwh", fc_kwh, on_step=False, reduce_fx="mean")
        self._check_budget(trainer, fc_kwh, fc_co2_kg)

    def _check_budget(self, trainer: Any, fc_kwh: float, fc_co2_kg: float) -> None:
        # Every rank takes part at every epoch's end, with a budget or not.
        if self.budget.check(fc_kwh, fc_co2_kg, epoch=len(self.epochs)):
            trainer.should_stop = True

    @property
    def budget_exceeded(self) -> dict[str, Any] | None:
        """None, or what was exceeded (``epoch``, ``message``, ``forecast_kwh``...)."""
        return self.budget.exceeded

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._end()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._end()


def _logs_now(trainer: Any) -> bool:
    """Whether Lightning writes this step's figures to its loggers (every log_every_n_steps
    steps, and when training stops): the same answer on every rank."""
    due = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    return True if due is None else bool(due)


def _remaining_scale(trainer: Any, epochs_done: float, done_steps: float) -> float | None:
    """(the whole run) / (what has been counted: ``epochs_done`` epochs, ``done_steps``
    optimizer steps), from max_steps or max_epochs; None if unbounded."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and done_steps > 0:
        by_steps: float | None = trainer.max_steps / done_steps
    else:
        by_steps = None
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0 and epochs_done > 0:
        by_epochs: float | None = max_epochs / epochs_done
    else:
        by_epochs = None
    options = [s for s in (by_steps, by_epochs) if s is not None]
    return min(options) if options else None

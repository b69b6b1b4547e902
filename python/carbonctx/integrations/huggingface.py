"""Hugging Face ``Trainer``: energy and CO2 in every log, epoch totals and a budget stop.

::

    from carbonctx.integrations.huggingface import attach

    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val)
    cb = attach(trainer, budget_kwh=50)      # or callbacks=[CarbonctxCallback()] (see below)
    trainer.train()
    print(cb.total_j, cb.epochs)

The training run is cut into contiguous regions (``hf.train``, ``hf.eval``) from
``on_train_begin`` to the final log. Entering and leaving a region costs about a microsecond and
nothing waits for the hardware inside a step: figures are read when the Trainer logs. They are
opened in a context of their own, so that one left open by an exception is no parent of later
regions: they nest in the region open where training began (a ``carbonctx.track`` around
``train()``), and a region opened inside a step (in the model's code) nests there too, beside
them, not in ``hf.train``. Each log then carries what was spent since the previous log:

* training logs: ``energy_j``, ``co2_g``, ``energy_j_per_sample`` (optimizer steps × the global
  batch, capped at the dataset's length per epoch), ``energy_j_per_token`` (when the Trainer
  counts tokens: ``include_num_input_tokens_seen``), ``energy_forecast_kwh`` (what the whole run
  will cost at the rate so far), and, in the first log after an epoch, ``epoch_energy_j`` and
  ``epoch_co2_g`` (its evaluation included; the last epoch's in the final log). A log that closes
  several epochs (epochs shorter than ``logging_steps``, ``logging_strategy="no"``) has their sum
  there and each one's own in ``epoch_energy_j_<n>``, ``epoch_co2_g_<n>`` (``n`` from 1);
* evaluation logs during training: ``eval_energy_j``, ``eval_co2_g``, ``eval_energy_j_per_sample``
  (prefix as the metrics'), the evaluation alone (a ``trainer.predict`` run during training, by a
  callback, is measured as one and counted in the next evaluation log, or in the final log);
* the final log: ``energy_j`` and ``co2_g`` since the previous log, and ``train_energy_j``,
  ``train_co2_g`` for the whole run. The ``energy_j`` and ``eval_energy_j`` values of all logs
  add up to ``train_energy_j``, and so do their ``epoch_energy_j``.

**The best model's load.** With ``load_best_model_at_end``, the Trainer loads the best checkpoint
after the final log: that is a region of its own (``hf.load_best_model``), in ``total_j`` and
``total_co2_g`` (they are ``train_energy_j`` plus it) and in ``load_best_model`` (None without
it); it is added to the final log's ``log_history`` entry and to the metrics ``train()`` returns
as ``load_best_model_energy_j`` and ``load_best_model_co2_g``, after the reporters saw that log.

**Order.** The Trainer calls its callbacks in list order with one ``logs`` dict, and the
reporting callbacks (W&B, MLflow, TensorBoard, Comet...) come before those passed in
``callbacks=``: they would have written their logs before this callback adds to them.
:func:`attach` puts the callback right after ``DefaultFlowCallback`` (which decides when to log
and evaluate) and before every reporter. Passed in ``callbacks=``, the figures still reach
``trainer.state.log_history`` and later callbacks, and a warning says the reporters missed them.

**Runs that do not end normally, and resumed runs.** A run that ends in an exception
(``KeyboardInterrupt`` included) keeps what it spent in ``total_j`` and ``epochs`` (with
:func:`attach`; it cannot be logged). ``train(resume_from_checkpoint=...)`` continues the
checkpoint's epochs and totals from its ``log_history``: ``train_energy_j``, the forecast and the
budget are the whole run's (what was spent after the checkpoint's last log and before the
interruption is not in the checkpoint, so not in them). With ``auto_find_batch_size`` the
Trainer runs its loop again with a smaller batch after running out of memory: what the failed
tries spent comes with the first log (and epoch) of the next, and samples are counted with the
Trainer's batch (``state.train_batch_size``).

**Distributed jobs.** Under ``torch.distributed`` the figures are the job's (summed over ranks
at every log, a collective: the Trainer logs on every rank at the same steps), so rank 0's
reporters log the job's energy; ``job_totals=False`` keeps each rank's own (resumed, a rank other
than 0 counts from the resume: the checkpoint's ``log_history`` is rank 0's). The budget decision
is joint: every rank stops after the same step. The best model's load is summed in the Trainer's
``on_train_end`` (a rank that found no best checkpoint to load adds nothing; with :func:`attach`,
one that failed after the final log brings its share as ``train()`` raises, so that the others
do not wait for it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

import carbonctx
from carbonctx._distributed import collectives
from carbonctx.integrations import _hf_attach as hf_attach
from carbonctx.integrations import _hf_logs as hf_logs
from carbonctx.integrations._common import J_PER_KWH, Budget, Regions, figures, put

__all__ = ["CarbonctxCallback", "attach"]


class CarbonctxCallback(TrainerCallback):
    """Adds energy and CO2 figures to the Trainer's logs (see the module's documentation).

    ``name`` prefixes the regions' names (``hf.train``, ``hf.eval``: they appear in
    ``carbonctx.stats()``); ``tags`` are copied into every region's record. ``budget_kwh`` and
    ``budget_co2_kg`` stop training (``control.should_training_stop``) after the first log at
    which the run's forecast exceeds them.
    Epochs run from one ``on_epoch_begin`` to the next (the closing log, evaluation and save
    of an epoch are its own); an epoch's totals go with the first log after it.

    After training: ``total_j``, ``total_co2_g``, ``epochs`` (one dict per epoch: ``epoch``,
    ``energy_j``, ``co2_g``), ``load_best_model`` (None, or ``energy_j`` and ``co2_g`` of the
    best model's load after the final log: ``total_j`` is the epochs and it),
    ``budget_exceeded`` (None or what was exceeded).
    """

    def __init__(
        self,
        *,
        name: str = "hf",
        tags: Mapping[str, Any] | None = None,
        budget_kwh: float | None = None,
        budget_co2_kg: float | None = None,
        job_totals: bool = True,
    ) -> None:
        self.name = name
        self.tags = dict(tags) if tags else None
        self.budget = Budget(budget_kwh, budget_co2_kg)
        self.job_totals = job_totals
        self.attached = False
        self.total_j = 0.0
        self.total_co2_g = 0.0
        self.epochs: list[dict[str, float]] = []
        self.load_best_model: dict[str, float] | None = None
        self._early = False
        self._try_batch: int | None = None  # the Trainer's batch in the last try begun
        self._regions = Regions()
        self._reset()

    def _reset(self) -> None:
        self._open: Any = None
        # After a final log with load_best_model_at_end: the best model's load (its region, on a
        # rank that loads), and the final log's dicts (the metrics train() returns, its
        # log_history entry) that learn its figures.
        self._tail: Any = None
        self._final: list[dict[str, Any]] | None = None
        self._phase = "train"
        self._epoch_index = 0
        # Regions ended and not yet read: (phase, epoch index, region).
        self._closed: list[tuple[str, int, Any]] = []
        # Local figures not yet emitted, per phase ("train"/"eval"): [J, g].
        self._pending: dict[str, list[float]] = {"train": [0.0, 0.0], "eval": [0.0, 0.0]}
        self._epoch_local: dict[int, list[float]] = {}
        self._epochs_emitted = 0
        self._eval_next = False
        self._epochs_begun = 0
        self._dataset_len: int | None = None
        self._samples = 0
        self._epoch_samples = 0
        self._samples_logged = 0
        self._tokens_logged = 0
        self._last_log_step = -1
        self._warned_order = False
        # A run resumed from a checkpoint: its first step, and whether the checkpoint's
        # log_history held this callback's figures (the energy spent before it).
        self._start_step = 0
        self._prior_known = False
        self._prior = (0.0, 0.0)

    # ------------------------------------------------------------------ regions

    def _split(self, phase: str) -> None:
        """End the open region (if any) and open the next one, for ``phase``."""
        if self._open is not None:
            self._regions.end(self._open)
            self._closed.append((self._phase, self._epoch_index, self._open))
        self._phase = phase
        self._open = self._regions.open(f"{self.name}.{phase}", self.tags)

    def _stop_regions(self) -> None:
        if self._open is not None:
            self._regions.end(self._open)
            self._closed.append((self._phase, self._epoch_index, self._open))
            self._open = None

    def _read_closed(self) -> None:
        """Read every ended region (waits for the sampler to pass the last one's end)."""
        for phase, epoch, region in self._closed:
            m = region.result()
            j = m.energy_j
            g = m.co2_g if m.co2_g is not None else math.nan
            pend = self._pending[phase]
            pend[0] += j
            pend[1] += g
            ep = self._epoch_local.setdefault(epoch, [0.0, 0.0])
            ep[0] += j
            ep[1] += g
        self._closed.clear()

    def _job(self, values: list[float]) -> list[float]:
        if not self.job_totals:
            return values
        return collectives.allreduce_sum(values)

    # ------------------------------------------------------------------ Trainer events

    def begin(self) -> None:
        """Start measuring a training run now (``attach`` calls it when ``train()`` is called,
        so that the Trainer's setup before ``on_train_begin`` is measured too)."""
        for region in (self._open, self._tail):
            if region is not None:
                # A run that ended in an exception without attach(): nothing told the callback.
                self._regions.end(region)
        self._reset()
        self._regions = Regions()
        self.total_j = self.total_co2_g = 0.0
        self.epochs = []
        self.load_best_model = None
        self.budget.exceeded = None
        self._split("train")
        self._early = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer runs its training loop again with a halved batch after running out of
        # memory (no on_train_end in between): what the failed try spent stays in the run.
        # (Without attach(), a new train() after one that raised is told apart by its batch:
        # it starts with the one that try had.)
        batch, prev = getattr(state, "train_batch_size", None), self._try_batch
        retry = getattr(args, "auto_find_batch_size", False) and self._open is not None
        retry = retry and (self.attached or batch is None or prev is None or batch < prev)
        carried = self._retry() if retry and not self._early else None
        self._try_batch = batch
        if carried is None and not self._early:
            self.begin()
        self._early = False
        self._dataset_len = hf_logs.length(kwargs.get("train_dataloader"))
        self._tokens_logged = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if state.global_step > 0:
            self._resume(state)
        if carried is not None:  # given with the first log and the first epoch of the new try
            ep = self._epoch_local.setdefault(self._epoch_index, [0.0, 0.0])
            for acc in (self._pending["train"], ep):
                acc[0], acc[1] = acc[0] + carried[0], acc[1] + carried[1]
        if not self.attached and not self._warned_order and hf_logs.reports(args):
            self._warned_order = True
            warnings.warn(
                "CarbonctxCallback was passed in callbacks=, so the Trainer's reporting "
                "callbacks run before it and never see its figures (log_history does): use "
                "carbonctx.integrations.huggingface.attach(trainer) instead",
                carbonctx.CarbonctxWarning,
                stacklevel=2,
            )

    def _retry(self) -> tuple[float, float]:
        """Start over for the Trainer's new try, keeping the open region: what this run spent
        so far (logged or not, beyond a checkpoint's figures), which the new try's
        ``log_history`` has none of."""
        self._read_closed()
        j = self.total_j - self._prior[0] + math.fsum(p[0] for p in self._pending.values())
        g = self.total_co2_g - self._prior[1] + sum(p[1] for p in self._pending.values())
        opened, phase, regions = self._open, self._phase, self._regions
        self._reset()
        self._open, self._phase, self._regions = opened, phase, regions
        self.total_j = self.total_co2_g = 0.0
        self.epochs = []
        self.budget.exceeded = None
        if phase != "train":
            self._split("train")  # the failed try's evaluation is part of what it spent
        return j, g

    def _resume(self, state: Any) -> None:
        """A run resumed from a checkpoint: its epochs continue the checkpoint's, and its totals
        (and forecast, and budget) hold the figures logged before it (``log_history``)."""
        self._start_step = state.global_step
        self._epoch_index = self._epochs_emitted = math.floor((state.epoch or 0.0) + 1e-6)
        if not self.job_totals and collectives.world()[0] != 0:
            # Its log_history holds rank 0's own figures (rank 0 writes it), not this rank's:
            # this rank's figures before the checkpoint are unknown.
            return
        j, g, known, epochs = hf_logs.prior(state.log_history, state.global_step)
        self._prior_known = known
        for n, (ej, eg) in enumerate(epochs, 1):
            self.epochs.append({"epoch": float(n), "energy_j": ej, "co2_g": eg})
        self.total_j, self.total_co2_g = j, g
        self._prior = (j, g)
        # What was logged and not yet given to an epoch: the epoch in progress at the
        # checkpoint (or, at an epoch's end, the epoch just finished), given with it.
        rest = [
            j - math.fsum(e["energy_j"] for e in self.epochs),
            g - math.fsum(e["co2_g"] for e in self.epochs),
        ]
        if self._prior_known:
            if len(self.epochs) < self._epoch_index:
                self._epochs_emitted = self._epoch_index - 1
            # The checkpoint's figures are the job's already: one rank brings them to the sum.
            if self.job_totals and collectives.world()[0] != 0:
                rest = [0.0, 0.0]
            self._epoch_local[self._epochs_emitted] = rest

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_samples = 0
        if self._open is not None and self._epochs_begun > 0:
            # The previous epoch (its closing log, evaluation and save included) ends here.
            self._split(self._phase)
            self._epoch_index += 1
        self._epochs_begun += 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The Trainer's batch, smaller than the arguments' after auto_find_batch_size's retries
        # (only then: a checkpoint's state holds the batch it was trained with).
        auto = getattr(args, "auto_find_batch_size", False)
        per_device = (auto and getattr(state, "train_batch_size", None)) or args.train_batch_size
        batch = per_device * args.gradient_accumulation_steps * max(args.world_size, 1)
        if self._dataset_len is not None:
            batch = max(0, min(batch, self._dataset_len - self._epoch_samples))
        self._epoch_samples += batch
        self._samples += batch
        self._plan_eval(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._plan_eval(state, control)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # An evaluation the Trainer did not plan at a step's end (``eval_on_start``, one per
        # eval dataset): without attach(), its first batch is the first sign of it.
        if self._open is not None and self._phase == "train" and not self._eval_next:
            self._split("eval")

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any
    ) -> None:
        # ``trainer.predict`` during training (a callback's, e.g. in ``on_evaluate``): it logs
        # nothing, so its end is the end of its region; training resumes in a region of its own.
        if self._open is not None and self._phase == "eval":
            self._split("train")

    def evaluating(self) -> None:
        """An evaluation starts now (``attach`` calls it from ``trainer.evaluate``): during
        training it is measured on its own."""
        if self._open is not None and self._phase == "train" and not self._eval_next:
            self._split("eval")

    def _plan_eval(self, state: Any, control: Any) -> None:
        """An evaluation follows (after the log, if one is due): measure it on its own."""
        if not control.should_evaluate or self._open is None:
            return
        if control.should_log and state.global_step > self._last_log_step:
            self._eval_next = True  # the log comes first and switches
        elif self._phase != "eval":
            self._split("eval")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs is None or self._open is None:
            return
        kind = hf_logs.phase_of(logs)
        before = set(logs)
        if kind == "final":
            self._stop_regions()
        elif kind == "train":
            self._last_log_step = state.global_step
            self._split("eval" if self._eval_next else "train")
            self._eval_next = False
        else:
            self._split("train")
        self._read_closed()
        added = self._emit(kind, state, control, logs, kw.get("eval_dataloader"))
        # The Trainer appended a copy of ``logs`` to log_history before calling back.
        hist = getattr(state, "log_history", None)
        entry = None
        if hist and hist[-1].get("step") == state.global_step and before <= set(hist[-1]):
            entry = hist[-1]
            entry.update(added)
        if kind == "final" and getattr(args, "load_best_model_at_end", False):
            # The Trainer loads the best checkpoint after this log (when it found one), then
            # calls on_train_end: a region of its own, counted there.
            self._final = [logs] if entry is None else [logs, entry]
            if hf_logs.loads_best(args, state):
                self._tail = self._regions.open(f"{self.name}.load_best_model", self.tags)

    def _read_tail(self, args: Any) -> None:
        """Count the best model's load (after the final log) in the totals."""
        final, self._final = self._final, None
        region, self._tail = self._tail, None
        j = g = 0.0
        if region is not None:
            self._regions.end(region)
            j, g = figures((region,))
        if final is not None:
            # Every rank passed the final log (its figures were summed there), with the same
            # load_best_model_at_end: each comes to this sum, from the Trainer's on_train_end or,
            # when something failed after that log (a reporter, the load), from attach()'s
            # wrapper as train() raises, so that the others wait for no one. Whether a rank
            # loads depends on what its filesystem holds: one that does not adds nothing.
            try:
                j, g = self._job([j, g])
            except Exception:
                if args is not None:
                    raise
                # Raising already, and the process group failed too: this rank's own figure.
        if region is None and not j > 0:
            return
        self.total_j += j
        self.total_co2_g += g
        self.load_best_model = {"energy_j": j, "co2_g": g}
        for d in final or ():
            put(d, "load_best_model_energy_j", j)
            put(d, "load_best_model_co2_g", g)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Normally the final log has ended the last region already. After an exception
        # (attach()'s wrapper calls this) what was not logged yet goes into the totals and the
        # finished epochs: it cannot be logged, and it is not lost. No collective then (the
        # other ranks may never come), except the best model's load's after the final log.
        self._read_tail(args)
        self._stop_regions()
        self._read_closed()
        for ph in self._pending.values():
            self.total_j += ph[0]
            self.total_co2_g += ph[1]
            ph[0] = ph[1] = 0.0
        for e in sorted(self._epoch_local):
            if self._epochs_emitted <= e < self._epoch_index:
                ej, eg = self._epoch_local[e]
                self.epochs.append({"epoch": float(e + 1), "energy_j": ej, "co2_g": eg})
        self._epoch_local.clear()
        self._epochs_emitted = self._epoch_index

    # ------------------------------------------------------------------ figures

    def _emit(
        self, kind: str, state: Any, control: Any, logs: dict[str, Any], eval_loader: Any
    ) -> dict[str, float]:
        is_eval = kind not in ("train", "final")
        ph = "eval" if is_eval else "train"
        local = list(self._pending[ph])
        if kind == "final":
            # A prediction's region with no evaluation log after it: the final log carries it,
            # so that the logs add up to the run.
            local = [a + b for a, b in zip(local, self._pending["eval"], strict=True)]
            self._pending["eval"] = [0.0, 0.0]
        last = self._epoch_index + 1 if kind == "final" else self._epoch_index
        ready = sorted(e for e in self._epoch_local if self._epochs_emitted <= e < last)
        vec = local + [v for e in ready for v in self._epoch_local[e]]
        summed = self._job(vec)
        self._pending[ph] = [0.0, 0.0]
        for e in ready:
            del self._epoch_local[e]
        j, g = summed[0], summed[1]
        self.total_j += j
        self.total_co2_g += g
        out: dict[str, float] = {}
        prefix = f"{kind}_" if is_eval else ""
        put(out, f"{prefix}energy_j", j)
        put(out, f"{prefix}co2_g", g)
        if is_eval:
            n = hf_logs.length(eval_loader)
            if n:
                put(out, f"{prefix}energy_j_per_sample", j / n)
        else:
            samples = self._samples - self._samples_logged
            self._samples_logged = self._samples
            if samples > 0:
                put(out, "energy_j_per_sample", j / samples)
            tokens_now = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            tokens = tokens_now - self._tokens_logged
            self._tokens_logged = tokens_now
            if tokens > 0:
                put(out, "energy_j_per_token", j / tokens)
        closed = [(e + 1, summed[2 + 2 * i], summed[3 + 2 * i]) for i, e in enumerate(ready)]
        for n, ej, eg in closed:
            self.epochs.append({"epoch": float(n), "energy_j": ej, "co2_g": eg})
        hf_logs.epoch_figures(out, closed)
        self._epochs_emitted = last
        if kind == "final":
            put(out, "train_energy_j", self.total_j)
            put(out, "train_co2_g", self.total_co2_g)
        elif kind == "train":
            self._forecast_and_budget(state, control, out)
        logs.update(out)
        return out

    def _forecast_and_budget(self, state: Any, control: Any, out: dict[str, float]) -> None:
        # What was spent, and the rest of the run at this train() call's rate. A resumed run's
        # steps before the checkpoint are in the totals when the checkpoint's log_history has
        # this callback's figures; else they are counted at this call's rate too.
        done, total, start = state.global_step, state.max_steps, self._start_step
        j0, g0 = self._prior
        session_j, session_g = self.total_j - j0, self.total_co2_g - g0
        fc_j = fc_g = math.nan
        if done > start and total and total > 0:
            if self._prior_known or start == 0:
                left = max(total - done, 0) / (done - start)
                fc_j, fc_g = self.total_j + session_j * left, self.total_co2_g + session_g * left
            else:
                fc_j, fc_g = session_j * total / (done - start), session_g * total / (done - start)
        fc_kwh = fc_j / J_PER_KWH
        put(out, "energy_forecast_kwh", fc_kwh)
        # A joint decision: every rank stops after the same step. Every rank takes part at
        # every training log, with a budget or not.
        if self.budget.check(fc_kwh, fc_g / 1e3, step=done):
            control.should_training_stop = True

    @property
    def budget_exceeded(self) -> dict[str, Any] | None:
        """None, or what was exceeded (``step``, ``message``, ``forecast_kwh``...)."""
        return self.budget.exceeded


def attach(trainer: Any, callback: CarbonctxCallback | None = None, **kwargs: Any) -> Any:
    """Put ``callback`` (or a new ``CarbonctxCallback(**kwargs)``) into ``trainer``'s callbacks
    right after ``DefaultFlowCallback``, before the reporting callbacks; returns it. A
    CarbonctxCallback already there (passed in ``callbacks=``) is moved, not duplicated.

    It also wraps ``trainer.train`` (on this instance) so that measuring starts when ``train()``
    is called: the Trainer's setup before its first callback (optimizer, data loaders,
    accelerator) is part of the run's figures, and a run that ends in an exception keeps what
    it spent in ``total_j`` and ``epochs``; and ``trainer.evaluate``, so that every evaluation
    during training is measured from its start."""
    existing = [c for c in trainer.callback_handler.callbacks if isinstance(c, CarbonctxCallback)]
    if callback is None:
        callback = existing[0] if existing and not kwargs else CarbonctxCallback(**kwargs)
    hf_attach.install(trainer, callback, existing)
    return callback

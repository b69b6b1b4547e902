"""The Hugging Face callback through the Trainer's other paths, on a real (tiny) run on the CPU:
gradient accumulation, an evaluation before the first step, early stopping, an exception in the
middle of an epoch, the same callback in two runs, and a run resumed from a checkpoint.

Simulated hardware without a GPU; the model is built from a config (nothing is downloaded).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import carbonctx  # noqa: E402
from carbonctx.integrations.huggingface import CarbonctxCallback, attach  # noqa: E402
from test_integrations_huggingface import Tokens, cpu_sim  # noqa: E402, F401

# Simulated hardware without a GPU (see test_integrations_huggingface).
pytestmark = pytest.mark.usefixtures("cpu_sim")


def _trainer(tmp_path: Path, *callbacks: Any, **kw: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "num_train_epochs": 2,
        "logging_steps": 4,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    settings.update(kw)
    return transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config),
        args=transformers.TrainingArguments(**settings),
        train_dataset=Tokens(100, 1),  # 13 batches of 8 per epoch, the last one of 4 samples
        eval_dataset=Tokens(48, 2),
        callbacks=list(callbacks),
    )


def _logged(hist: list[dict[str, Any]]) -> float:
    return math.fsum(h.get("energy_j", 0.0) + h.get("eval_energy_j", 0.0) for h in hist)


class Boom(transformers.TrainerCallback):  # type: ignore[misc]
    """Raises ``exc`` at the end of optimizer step ``at``."""

    def __init__(self, at: int, exc: BaseException) -> None:
        self.at, self.exc = at, exc

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.at:
            raise self.exc


def test_gradient_accumulation_counts_optimizer_steps_and_their_samples(tmp_path: Path) -> None:
    # 13 batches per epoch, 4 per optimizer step: 4 steps per epoch, the last of one batch.
    trainer = _trainer(tmp_path, gradient_accumulation_steps=4, logging_steps=2)
    cb = attach(trainer)
    with carbonctx.track("whole") as whole:
        trainer.train()
    assert trainer.state.global_step == 8
    hist = trainer.state.log_history
    train_logs = [h for h in hist if "loss" in h]
    assert [h["step"] for h in train_logs] == [2, 4, 6, 8]
    # Samples per log: 2 steps of 4 x 8, then 32 + the epoch's last 4.
    samples = [h["energy_j"] / h["energy_j_per_sample"] for h in train_logs]
    assert samples == pytest.approx([64, 36, 64, 36])
    assert cb.total_j == pytest.approx(_logged(hist), rel=1e-9)
    assert 0.97 * whole.energy_j < cb.total_j <= whole.energy_j  # all but train()'s edges
    assert [e["epoch"] for e in cb.epochs] == [1.0, 2.0]


class OutOfMemory(transformers.TrainerCallback):  # type: ignore[misc]
    """The device running out of memory (the one thing simulated) at optimizer step ``at``
    while the Trainer's batch is over ``fits`` samples: as a CUDA allocation fails."""

    def __init__(self, at: int, fits: int) -> None:
        self.at, self.fits = at, fits

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.train_batch_size > self.fits and state.global_step == self.at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("attached", [True, False])
def test_auto_find_batch_size_keeps_the_failed_try_and_counts_the_smaller_batch(
    tmp_path: Path, attached: bool
) -> None:
    # The Trainer halves the batch (16 -> 8) and runs its training loop again, calling
    # on_train_begin again with no on_train_end in between: what the failed try spent is part
    # of the run, and the samples are those of the batch the Trainer uses now.
    cb = CarbonctxCallback()
    trainer = _trainer(
        tmp_path,
        *([] if attached else [cb]),
        per_device_train_batch_size=16,
        auto_find_batch_size=True,
        logging_steps=2,
    )
    if attached:
        attach(trainer, cb)
    trainer.add_callback(OutOfMemory(at=3, fits=8))
    with carbonctx.track("whole") as whole:
        trainer.train()
    assert trainer.state.train_batch_size == 8 and trainer.state.global_step == 26
    hist = trainer.state.log_history
    train_logs = [h for h in hist if "loss" in h]
    # Samples per log: 2 steps of 8; an epoch (13 batches) ends with 4, in a log of 12.
    samples = [h["energy_j"] / h["energy_j_per_sample"] for h in train_logs]
    assert samples == pytest.approx([16.0] * 6 + [12.0] + [16.0] * 5 + [12.0])
    (final,) = [h for h in hist if "train_energy_j" in h]
    assert final["train_energy_j"] == pytest.approx(_logged(hist), rel=1e-9)
    assert cb.total_j == pytest.approx(final["train_energy_j"], rel=1e-9)
    assert math.fsum(e["energy_j"] for e in cb.epochs) == pytest.approx(cb.total_j, rel=1e-9)
    assert [e["epoch"] for e in cb.epochs] == [1.0, 2.0]
    # The failed try is in the run: all of train() but its edges (without attach(), the
    # Trainer's setup before its first callback).
    low = 0.97 if attached else 0.8
    assert low * whole.energy_j < cb.total_j <= whole.energy_j


def test_a_new_train_after_one_that_raised_is_no_retry(tmp_path: Path) -> None:
    # With auto_find_batch_size and the callback in callbacks=, nothing tells it that a train()
    # that raised (not for memory) has ended: the next train() is a run of its own, not a try
    # of the first with a smaller batch, and carries nothing of the first.
    cb = CarbonctxCallback()
    trainer = _trainer(tmp_path, cb, auto_find_batch_size=True, logging_steps=2, max_steps=6)
    trainer.add_callback(Boom(3, ValueError("a bug")))
    with pytest.raises(ValueError):
        trainer.train()
    first = cb.total_j
    assert first > 0
    trainer.callback_handler.callbacks = [
        c for c in trainer.callback_handler.callbacks if not isinstance(c, Boom)
    ]
    with carbonctx.track("second") as second:
        trainer.train()
    hist = trainer.state.log_history
    (final,) = [h for h in hist if "train_energy_j" in h]
    assert cb.total_j == pytest.approx(final["train_energy_j"], rel=1e-9)
    assert cb.total_j <= second.energy_j  # nothing of the first run
    samples = [h["energy_j"] / h["energy_j_per_sample"] for h in hist if "loss" in h]
    assert samples == pytest.approx([16.0] * 3)


def test_a_run_resumed_with_another_batch_counts_its_own(tmp_path: Path) -> None:
    # The checkpoint's trainer state holds the batch it was trained with (8); resumed with 4
    # per device (no auto_find_batch_size), the Trainer uses 4, and so do the sample counts.
    first = _trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=4)
    first.train()
    checkpoint = tmp_path / "out" / "checkpoint-4"
    assert checkpoint.is_dir()
    second = _trainer(tmp_path, per_device_train_batch_size=4, max_steps=12)
    attach(second)
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.state.train_batch_size == 8  # (the checkpoint's)
    logs = [h for h in second.state.log_history if "loss" in h and h["step"] > 4]
    samples = [h["energy_j"] / h["energy_j_per_sample"] for h in logs]
    assert samples == pytest.approx([16.0, 16.0])  # 4 steps of 4 per log


@pytest.mark.parametrize("attached", [True, False])
def test_an_evaluation_before_the_first_step_is_its_own(tmp_path: Path, attached: bool) -> None:
    # attach() sees it start; passed in callbacks=, its first batch says so.
    cb = CarbonctxCallback()
    trainer = _trainer(tmp_path, cb, eval_on_start=True, eval_strategy="epoch", num_train_epochs=1)
    if attached:
        attach(trainer, cb)
    trainer.train()
    hist = trainer.state.log_history
    evals = [h for h in hist if "eval_loss" in h]
    assert len(evals) == 2
    assert all(h["eval_energy_j"] > 0 for h in evals)
    stats = carbonctx.stats()
    assert stats["hf.eval"].count == 2
    assert math.fsum(h["eval_energy_j"] for h in evals) == pytest.approx(
        stats["hf.eval"].energy_j.total, rel=1e-9
    )
    assert cb.total_j == pytest.approx(_logged(hist), rel=1e-9)


class PredictsAfterEvaluations(transformers.TrainerCallback):  # type: ignore[misc]
    """Runs ``trainer.predict`` after each evaluation (sample predictions for a reporter), and
    marks the start of every training step with a region of its own."""

    trainer: Any = None

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.trainer.predict(Tokens(16, 5))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        with carbonctx.track("step_mark"):
            pass


@pytest.mark.parametrize("attached", [True, False])
def test_a_prediction_during_training_is_no_evaluation_of_the_steps_after_it(
    tmp_path: Path, attached: bool
) -> None:
    # predict() logs nothing: its end (on_predict) ends its region, and the training steps after
    # it are training again.
    cb = CarbonctxCallback()
    predicts = PredictsAfterEvaluations()
    trainer = _trainer(tmp_path, cb, predicts, eval_strategy="steps", eval_steps=4, max_steps=12)
    predicts.trainer = trainer
    if attached:
        attach(trainer, cb)
    trainer.train()
    regions = carbonctx.recent()
    marks = [m.start for m in regions if m.name == "step_mark"]
    assert len(marks) == 12
    for name, inside in (("hf.eval", 0), ("hf.train", 12)):
        spans = [(m.start, m.end) for m in regions if m.name == name]
        assert sum(any(a <= t <= b for a, b in spans) for t in marks) == inside, name
    # The predictions' energy is in the logs (the last one's in the final log): they add up.
    hist = trainer.state.log_history
    assert hist[-1]["train_energy_j"] == pytest.approx(_logged(hist), rel=1e-9)
    assert cb.total_j == pytest.approx(hist[-1]["train_energy_j"], rel=1e-9)
    assert math.fsum(e["energy_j"] for e in cb.epochs) == pytest.approx(cb.total_j, rel=1e-9)


def test_early_stopping_ends_the_run_with_every_figure(tmp_path: Path) -> None:
    trainer = _trainer(
        tmp_path,
        transformers.EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e9),
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="eval_loss",
        num_train_epochs=5,
    )
    cb = attach(trainer)
    with carbonctx.track("whole") as whole:
        trainer.train()
    # The threshold is never met: the run stops at the second evaluation.
    assert trainer.state.global_step == 4
    hist = trainer.state.log_history
    assert "train_energy_j" in hist[-1]
    assert cb.total_j == pytest.approx(_logged(hist), rel=1e-9)
    assert 0.97 * whole.energy_j < cb.total_j <= whole.energy_j  # all but train()'s edges
    assert len([h for h in hist if "eval_energy_j" in h]) == 2


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_mid_epoch_keeps_what_was_measured(tmp_path: Path, exc: BaseException) -> None:
    trainer = _trainer(tmp_path, Boom(6, exc))
    cb = attach(trainer)
    with carbonctx.track("whole") as whole, pytest.raises(type(exc)):
        trainer.train()
    # Everything up to the exception is in the totals (what was logged and what was not).
    assert cb.total_j > _logged(trainer.state.log_history) > 0
    assert 0.97 * whole.energy_j < cb.total_j <= whole.energy_j  # all but train()'s edges
    # Nothing is left open, and the callback measures the next run afresh.
    assert cb._open is None
    trainer.callback_handler.pop_callback(Boom)
    trainer.args.max_steps = 4
    trainer.train()
    assert cb.total_j == pytest.approx(_logged(trainer.state.log_history), rel=1e-9)


def test_the_same_callback_passed_in_callbacks_survives_an_exception_and_a_second_run(
    tmp_path: Path,
) -> None:
    cb = CarbonctxCallback()
    first = _trainer(tmp_path, cb, Boom(3, RuntimeError("boom")), max_steps=8)
    with pytest.raises(RuntimeError):
        first.train()
    # The region open at the exception is no parent of the regions after it.
    with carbonctx.track("after") as after:
        pass
    assert after.result().parent is None
    second = _trainer(tmp_path, cb, max_steps=4)
    second.train()
    assert cb.total_j == pytest.approx(_logged(second.state.log_history), rel=1e-9)
    assert second.state.log_history[-1]["train_energy_j"] == pytest.approx(cb.total_j, rel=1e-9)
    # The first run's region was closed, not left running.
    assert carbonctx.stats()["hf.train"].count >= 2


def test_a_resumed_run_continues_the_epochs_and_the_totals_of_its_checkpoint(
    tmp_path: Path,
) -> None:
    # First: 2 of 3 epochs (26 steps), a checkpoint at step 26 (an epoch's end and a log).
    first = _trainer(
        tmp_path,
        num_train_epochs=3,
        max_steps=39,
        logging_steps=13,
        save_strategy="steps",
        save_steps=26,
    )
    first.add_callback(Boom(27, RuntimeError("preempted")))
    cb1 = attach(first)
    with pytest.raises(RuntimeError):
        first.train()
    checkpoint = tmp_path / "out" / "checkpoint-26"
    assert checkpoint.is_dir()
    saved = [h for h in first.state.log_history if h["step"] <= 26]
    before = _logged(saved)
    assert 0 < before < cb1.total_j
    # Then: the same run resumed; its epoch is the third, and its totals hold the first two.
    second = _trainer(
        tmp_path, num_train_epochs=3, max_steps=39, logging_steps=13, save_strategy="no"
    )
    cb = attach(second)
    second.train(resume_from_checkpoint=str(checkpoint))
    hist = second.state.log_history
    assert [e["epoch"] for e in cb.epochs] == [1.0, 2.0, 3.0]
    resumed = [h for h in hist if h["step"] > 26]
    now = _logged(resumed)
    assert hist[-1]["train_energy_j"] == pytest.approx(before + now, rel=1e-9)
    assert cb.total_j == pytest.approx(before + now, rel=1e-9)
    assert math.fsum(e["energy_j"] for e in cb.epochs) == pytest.approx(cb.total_j, rel=1e-9)
    # The forecast at the last step is the whole run (all three epochs), not the resumed part.
    last = [h for h in resumed if "energy_forecast_kwh" in h][-1]
    assert last["step"] == 39
    assert last["energy_forecast_kwh"] * 3.6e6 == pytest.approx(
        before + now - hist[-1]["energy_j"], rel=1e-9
    )


def test_a_budget_stop_under_gradient_accumulation_ends_the_run_cleanly(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, gradient_accumulation_steps=2, logging_steps=3)
    cb = attach(trainer, budget_kwh=1e-9)
    trainer.train()
    assert trainer.state.global_step == 3  # the first log, after 3 optimizer steps
    assert cb.budget_exceeded is not None and cb.budget_exceeded["step"] == 3
    hist = trainer.state.log_history
    assert hist[-1]["train_energy_j"] == pytest.approx(_logged(hist), rel=1e-9)
    assert hist[0]["energy_j"] / hist[0]["energy_j_per_sample"] == pytest.approx(3 * 2 * 8)
    assert cb._open is None


def test_one_callback_attached_to_two_trainers_in_turn_measures_each(tmp_path: Path) -> None:
    cb = CarbonctxCallback()
    first = _trainer(tmp_path, max_steps=4)
    attach(first, cb)
    attach(first, cb)  # again: one callback in the list, one wrapper
    assert sum(isinstance(c, CarbonctxCallback) for c in first.callback_handler.callbacks) == 1
    first.train()
    second = _trainer(tmp_path, Boom(3, RuntimeError("boom")), max_steps=8)
    attach(second, cb)
    with carbonctx.track("whole") as whole, pytest.raises(RuntimeError):
        second.train()
    # The second trainer's train() is wrapped too: what it spent before the exception is kept.
    assert cb.total_j > _logged(second.state.log_history)
    assert 0.97 * whole.energy_j < cb.total_j <= whole.energy_j


def test_a_region_inside_a_step_nests_where_training_began(tmp_path: Path) -> None:
    # The callback's regions are in a context of their own: a step's region is their sibling.
    marks = PredictsAfterEvaluations()
    trainer = _trainer(tmp_path, marks, max_steps=3)
    attach(trainer)
    with carbonctx.track("whole") as whole:
        trainer.train()
    regions = carbonctx.recent()
    outer = whole.result().id
    steps = [m for m in regions if m.name == "step_mark"]
    ours = [m for m in regions if m.name in ("hf.train", "hf.eval")]
    assert len(steps) == 3 and ours
    assert all(m.parent == outer for m in steps + ours)

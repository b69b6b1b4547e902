"""How ``huggingface.attach`` puts its callback into a Trainer: right after
``DefaultFlowCallback``, before the reporting callbacks, and with the trainer's ``train`` and
``evaluate`` wrapped so that measuring starts when they are called (see ``attach``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Attachable", "install"]


class Attachable(Protocol):
    """What the wrappers call of the callback (``CarbonctxCallback``)."""

    attached: bool

    def begin(self) -> None: ...

    def evaluating(self) -> None: ...

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None: ...


def install(trainer: Any, callback: Attachable, existing: Sequence[Any]) -> None:
    """Put ``callback`` into ``trainer``'s callbacks right after ``DefaultFlowCallback``,
    removing those in ``existing`` (callbacks of its kind already there), and wrap
    ``trainer.train`` and ``trainer.evaluate`` for it."""
    from transformers.trainer_callback import DefaultFlowCallback

    cbs: list[Any] = trainer.callback_handler.callbacks
    for c in existing:
        cbs.remove(c)
    at = next((i + 1 for i, c in enumerate(cbs) if isinstance(c, DefaultFlowCallback)), 0)
    cbs.insert(at, callback)
    callback.attached = True
    # One wrapper per trainer, for the callback attached last (the same callback may be
    # attached to several trainers, one after the other).
    train = _unwrapped(trainer.train)
    evaluate = _unwrapped(trainer.evaluate)

    @functools.wraps(train)
    def measured_train(*args: Any, **kw: Any) -> Any:
        # The Trainer builds its optimizer and data loaders before the first callback.
        callback.begin()
        try:
            return train(*args, **kw)
        finally:
            callback.on_train_end(None, None, None)

    @functools.wraps(evaluate)
    def measured_evaluate(*args: Any, **kw: Any) -> Any:
        # Every evaluation during training, planned at a step's end or not (eval_on_start,
        # one per eval dataset), is measured on its own from its start.
        callback.evaluating()
        return evaluate(*args, **kw)

    for wrapper in (measured_train, measured_evaluate):
        wrapper.__carbonctx__ = True  # type: ignore[attr-defined]
    trainer.train = measured_train
    trainer.evaluate = measured_evaluate


def _unwrapped(method: Any) -> Any:
    return method.__wrapped__ if getattr(method, "__carbonctx__", False) else method

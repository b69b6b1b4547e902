"""The Hugging Face callback's figures in the Trainer's logs: which kind of log it is, the epochs
a log closes, what a checkpoint's ``log_history`` holds of a run resumed from it, and what the
Trainer's arguments say (reporters, the best model's load).

A log closes every epoch that ended since the previous log: one in the usual case, several when
the epochs are shorter than ``logging_steps`` or only the final log comes
(``logging_strategy="no"``). ``epoch_energy_j`` and ``epoch_co2_g`` are always the epochs it
closes, together; when it closes more than one, ``epoch_energy_j_<n>`` and ``epoch_co2_g_<n>``
carry each one's own (``n`` counted from 1). The logs' ``epoch_energy_j`` thus add up to the
epochs, and every reporter gets each epoch's figure. No key is ``epoch_energy_j/<n>``: a store
that keeps a key's ``/`` as a folder or namespace (MLflow's file store) cannot hold a metric
``epoch_energy_j`` and one under it, and refuses the whole log.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from carbonctx.integrations._common import put

__all__ = ["Prior", "epoch_figures", "length", "loads_best", "phase_of", "prior", "reports"]

#: Keys this callback writes that are not an increment of the run (totals, epochs, the load of
#: the best model after the final log): a resumed run does not add them up again.
_NOT_INCREMENTS = ("train_", "load_best_model_")
#: Each epoch's own figures in a log that closes several: these, then its number.
_NUMBERED_J, _NUMBERED_G = "epoch_energy_j_", "epoch_co2_g_"


def epoch_figures(out: dict[str, float], closed: Sequence[tuple[int, float, float]]) -> None:
    """Write the epochs a log closes, ``(number, joules, grams)`` each, into ``out``."""
    if not closed:
        return
    put(out, "epoch_energy_j", math.fsum(j for _, j, _ in closed))
    put(out, "epoch_co2_g", sum(g for _, _, g in closed))  # NaN when one has no intensity
    if len(closed) > 1:
        for n, j, g in closed:
            put(out, f"{_NUMBERED_J}{n}", j)
            put(out, f"{_NUMBERED_G}{n}", g)


def _epochs_in(entry: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(joules, grams) of each epoch one log closed, in order."""
    numbered = sorted(
        int(k[len(_NUMBERED_J) :])
        for k in entry
        if k.startswith(_NUMBERED_J) and k[len(_NUMBERED_J) :].isdigit()
    )
    if numbered:
        return [
            (entry[f"{_NUMBERED_J}{n}"], entry.get(f"{_NUMBERED_G}{n}", math.nan)) for n in numbered
        ]
    if "epoch_energy_j" in entry:
        return [(entry["epoch_energy_j"], entry.get("epoch_co2_g", math.nan))]
    return []


class Prior(NamedTuple):
    """What a checkpoint's ``log_history`` holds of this callback's figures."""

    energy_j: float
    co2_g: float
    #: Whether it holds any (a checkpoint of a run measured without the callback holds none).
    known: bool
    #: (joules, grams) of each epoch closed in its logs, in order.
    epochs: list[tuple[float, float]]


def prior(log_history: Iterable[Mapping[str, Any]], step: int) -> Prior:
    """The figures logged up to optimizer step ``step`` (the checkpoint's): the sum of every
    log's increments (``energy_j`` and each evaluation's ``<prefix>_energy_j``) and the epochs
    they closed."""
    j = g = 0.0
    known = False
    epochs: list[tuple[float, float]] = []
    for h in log_history:
        if h.get("step", 0) > step:
            continue
        for key in h:
            if not key.endswith("energy_j") or "/" in key:
                continue
            prefix = key[: -len("energy_j")]
            if prefix and not prefix.endswith("_"):
                continue
            if prefix.startswith(_NOT_INCREMENTS) or prefix.startswith("epoch_"):
                continue
            known = True
            j += h[key]
            g += h.get(f"{prefix}co2_g", math.nan)
        epochs.extend(_epochs_in(h))
    return Prior(j, g, known, epochs)


def phase_of(logs: Mapping[str, Any]) -> str:
    """``"final"``, ``"train"`` or an evaluation's metric prefix (``"eval"``, ``"test"``...)."""
    if "train_loss" in logs and "total_flos" in logs:
        return "final"
    for key in logs:
        if key.endswith("_runtime") and not key.startswith("train_"):
            return key[: -len("_runtime")]
    return "train"


def length(dl: Any) -> int | None:
    """The number of samples behind a data loader, when its dataset has a length."""
    try:
        return len(dl.dataset) if dl is not None else None
    except (TypeError, AttributeError):
        return None


def loads_best(args: Any, state: Any) -> bool:
    """Whether the Trainer loads the best checkpoint after the final log (its condition)."""
    return bool(getattr(args, "load_best_model_at_end", False)) and (
        getattr(state, "best_model_checkpoint", None) is not None
    )


def reports(args: Any) -> bool:
    """Whether the Trainer runs reporting callbacks (``report_to``)."""
    report_to = getattr(args, "report_to", None)
    if not report_to:
        return False
    if isinstance(report_to, str):
        report_to = [report_to]
    return any(r not in ("none", None) for r in report_to)

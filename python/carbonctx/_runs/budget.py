"""A run's budget: limits on the forecast energy and CO2, and what to do when one is exceeded."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from carbonctx._results.runs import RunTotals
from carbonctx.errors import CarbonctxWarning, ConfigurationError

__all__ = ["Budget", "check_epochs_args", "check_limit"]

#: ``"stop"``, ``"warn"`` or a callable taking the run.
OnBudget = str | Callable[[Any], object]


def check_limit(value: float | None, name: str) -> float | None:
    """A budget argument as a positive finite float (None stays None)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{name}={value!r} is not a number: give a positive limit, or leave it out"
        ) from None
    if not (v > 0 and math.isfinite(v)):
        raise ConfigurationError(f"{name}={value!r} must be a positive, finite number")
    return v


class Budget:
    """Compared with the central forecast after every epoch; acts once, when first exceeded."""

    __slots__ = ("co2_kg", "exceeded", "kwh", "on_budget")

    def __init__(self, kwh: float | None, co2_kg: float | None, on_budget: OnBudget) -> None:
        self.kwh = kwh
        self.co2_kg = co2_kg
        self.on_budget = on_budget
        self.exceeded: dict[str, Any] | None = None

    @property
    def action(self) -> str:
        return self.on_budget if isinstance(self.on_budget, str) else "callback"

    def check(
        self,
        fc: RunTotals,
        i: int,
        n: int,
        run_id: str,
        stop: Callable[[str], None],
        run: object,
    ) -> None:
        """After epoch ``i`` of ``n``: stop, warn or call back when ``fc`` is over a limit."""
        if self.exceeded is not None:
            return
        over: list[str] = []
        detail: dict[str, Any] = {}
        if self.kwh is not None and fc.energy_kwh > self.kwh:
            over.append(f"forecast energy {fc.energy_kwh:.4g} kWh exceeds budget_kwh={self.kwh:g}")
            detail["energy_kwh"] = {"forecast": fc.energy_kwh, "budget": self.kwh}
        if self.co2_kg is not None and fc.co2_kg is not None and fc.co2_kg > self.co2_kg:
            over.append(f"forecast CO2e {fc.co2_kg:.4g} kg exceeds budget_co2_kg={self.co2_kg:g}")
            detail["co2_kg"] = {"forecast": fc.co2_kg, "budget": self.co2_kg}
        if not over:
            return
        where = f"after epoch {i + 1} of {n}"
        text = "budget exceeded: " + "; ".join(over) + f" ({where})"
        self.exceeded = {
            "after_epoch": i + 1,
            "action": self.action,
            "message": text,
            **detail,
        }
        if self.on_budget == "stop":
            if i < n - 1:
                stop(text + "; stopped")
        elif self.on_budget == "warn":
            warnings.warn(f"carbonctx run {run_id}: {text}", CarbonctxWarning, stacklevel=4)
        elif callable(self.on_budget):
            self.on_budget(run)

    def to_dict(self) -> dict[str, Any]:
        """The final record's ``budget``."""
        return {
            "budget_kwh": self.kwh,
            "budget_co2_kg": self.co2_kg,
            "on_budget": self.action,
            "exceeded": self.exceeded,
        }


def check_epochs_args(
    n: object, forecast_after: object, on_budget: object, name: object, progress: object
) -> None:
    """Raise :class:`ConfigurationError` for arguments of ``epochs()`` that cannot be used."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigurationError(f"epochs(n={n!r}): n is the number of epochs, an int >= 1")
    if isinstance(forecast_after, bool) or not isinstance(forecast_after, int):
        raise ConfigurationError(f"forecast_after={forecast_after!r} must be an int >= 1")
    if not 1 <= forecast_after <= n:
        raise ConfigurationError(
            f"forecast_after={forecast_after} must be between 1 and the number of epochs ({n})"
        )
    if not (on_budget in ("stop", "warn") or callable(on_budget)):
        raise ConfigurationError(
            f"on_budget={on_budget!r}: use 'stop', 'warn', or a function taking the run"
        )
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"name={name!r} must be a non-empty string")
    if progress is not None and not isinstance(progress, bool):
        raise ConfigurationError(f"progress={progress!r} must be True, False or None")

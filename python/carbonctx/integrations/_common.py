"""What the training callbacks share: a region's figures, the forecast and the budget decision.

The callbacks (Hugging Face, Lightning, Keras) differ in when their framework calls them; what
they compute at those points is the same and lives here, so that each says it once.
"""

from __future__ import annotations

import contextvars
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import carbonctx
from carbonctx._distributed import collectives
from carbonctx._runs.budget import check_limit

__all__ = ["J_PER_KWH", "Budget", "Regions", "Tally", "figures", "put"]

J_PER_KWH = 3.6e6


def figures(regions: Iterable[Any]) -> tuple[float, float]:
    """(joules, grams of CO2e) of ended regions, summed (waits for the sampler to pass the last
    one's end). CO2 is NaN when a region has no intensity, so that a sum never hides a gap."""
    j = g = 0.0
    for region in regions:
        m = region.result()
        j += m.energy_j
        g += m.co2_g if m.co2_g is not None else math.nan
    return j, g


class Tally:
    """Ended regions summed as the sampler resolves them: (joules, grams of CO2e).

    A long epoch (one epoch of a whole run: ``max_steps`` over a stream) ends a region per step;
    each handle keeps its result (a few KB) once read. Kept until the epoch's end they would grow
    with the run: :meth:`fold` counts the resolved ones and lets them go, without waiting.
    """

    __slots__ = ("_g", "_j", "_waiting")

    def __init__(self) -> None:
        self._waiting: deque[Any] = deque()
        self._j = self._g = 0.0

    def add(self, region: Any) -> None:
        self._waiting.append(region)

    def fold(self) -> None:
        """Count the regions resolved so far, without waiting (call it inside a region: it
        takes time)."""
        while self._waiting and self._waiting[0].done:
            self._count(self._waiting.popleft())

    def _count(self, region: Any) -> None:
        j, g = figures((region,))
        self._j += j
        self._g += g

    def read(self) -> tuple[float, float]:
        """The sum of every region added (waits for the sampler to pass the last one's end)."""
        while self._waiting:
            self._count(self._waiting.popleft())
        return self._j, self._g

    def clear(self) -> None:
        self._waiting.clear()
        self._j = self._g = 0.0


class Regions:
    """Opens and ends a callback's contiguous regions in a context of their own.

    A framework that ends in an exception may never call its callback again (Keras, the
    Hugging Face Trainer): the region open then would stay the current region of the thread,
    the parent of every region after it. Entered in a copy of the caller's context, it nests
    in what was open when training began, and nothing nests in it.
    """

    __slots__ = ("_ctx",)

    def __init__(self) -> None:
        self._ctx = contextvars.copy_context()

    def open(self, name: str, tags: Mapping[str, Any] | None) -> Any:
        return self._ctx.run(carbonctx.track(name, tags=tags).__enter__)

    def end(self, region: Any) -> None:
        self._ctx.run(region.__exit__, None, None, None)


def put(out: dict[str, float], key: str, value: float) -> None:
    """``out[key] = value`` when the value is a finite number (loggers choke on NaN)."""
    if math.isfinite(value):
        out[key] = float(value)


class Budget:
    """Limits on a run's forecast energy (kWh) and CO2e (kg), decided jointly over the ranks.

    :meth:`check` is a collective (``collectives.any_rank``): every rank must call it at the same
    points, with a budget or not, or the others wait at it. It returns True once, at the first
    check at which any rank's forecast exceeds a limit; ``exceeded`` then says what (``where``'s
    items, ``message``, ``forecast_kwh``, ``forecast_co2_kg``).
    """

    __slots__ = ("co2_kg", "exceeded", "kwh")

    def __init__(self, kwh: float | None, co2_kg: float | None) -> None:
        self.kwh = check_limit(kwh, "budget_kwh")
        self.co2_kg = check_limit(co2_kg, "budget_co2_kg")
        self.exceeded: dict[str, Any] | None = None

    def check(self, fc_kwh: float, fc_co2_kg: float, **where: Any) -> bool:
        over: list[str] = []
        if self.kwh is not None and fc_kwh > self.kwh:
            over.append(f"forecast energy {fc_kwh:.4g} kWh exceeds budget_kwh={self.kwh:g}")
        if self.co2_kg is not None and fc_co2_kg > self.co2_kg:
            over.append(f"forecast CO2e {fc_co2_kg:.4g} kg exceeds budget_co2_kg={self.co2_kg:g}")
        if not collectives.any_rank(bool(over)) or self.exceeded is not None:
            return False
        self.exceeded = {
            **where,
            "message": "; ".join(over) or "another rank's forecast exceeds the budget",
            "forecast_kwh": fc_kwh,
            "forecast_co2_kg": fc_co2_kg,
        }
        return True

"""Epochs whose figures are not yet known: ``epochs()`` never waits for the sampler at an
epoch end.

An epoch's region resolves when the sampler has read past its end (about one poll interval;
100 ms or more with a slow GPU counter), and the loop must not wait for that. So the epoch that
has just ended waits here, and what is counted at an epoch end (actual, forecast, budget, log,
progress) are the earlier epochs already resolved:

* outside a job: every earlier epoch already resolved, in order, never waiting (an epoch shorter
  than the sampler's lag may wait several epochs);
* in a distributed job: exactly the previous epoch (summing it over the ranks is a collective,
  and every rank must call it at the same point), waiting for it only if it has not resolved a
  whole epoch after it ended.

So a budget decision lags one epoch: the check at the end of epoch ``i`` sees epochs up to
``i - 1``, and a run stopped by its budget runs one epoch more than the figures alone would
have allowed. What is left when the loop ends is counted then (waiting for the sampler).
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["EpochLag"]


def _resolved(region: Any) -> bool:
    """The region's result is known, or will not be (no sampler): reading it will not wait."""
    if region.done:
        return True
    rt = getattr(region, "_rt", None)
    return rt is None or rt.sampler is None


class EpochLag:
    """Ended epochs (index, region) waiting to be counted, oldest first."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: deque[tuple[int, Any]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def ended(self, i: int, region: Any, joint: bool) -> list[tuple[int, Any]]:
        """Epoch ``i`` has ended: the earlier epochs to count now (see the module)."""
        out: list[tuple[int, Any]] = []
        if joint:
            while self._waiting:
                out.append(self._waiting.popleft())
        else:
            while self._waiting and _resolved(self._waiting[0][1]):
                out.append(self._waiting.popleft())
        self._waiting.append((i, region))
        return out

    def rest(self) -> list[tuple[int, Any]]:
        """Everything still waiting (the loop has ended)."""
        out = list(self._waiting)
        self._waiting.clear()
        return out

"""pandas DataFrames of regions, one row per region (``carbonctx[pandas]``).

::

    from carbonctx.integrations.frames import recent_frame

    df = recent_frame()                      # the most recent regions, indexed by region id
    df.groupby("tag.model")["energy_j"].sum()

Columns: every field of a :class:`~carbonctx.Measurement` (``missing`` joined with commas),
then ``joules.<source id>`` per source and ``tag.<key>`` per tag. For the per-name statistics
use ``carbonctx.stats().to_pandas()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import carbonctx
from carbonctx._results.notebook import measurements_frame

__all__ = ["frame", "recent_frame"]


def frame(measurements: Iterable[carbonctx.Measurement]) -> Any:
    """A DataFrame of the given measurements (``track()`` results, ``carbonctx.recent()``)."""
    return measurements_frame(m.result() if hasattr(m, "result") else m for m in measurements)


def recent_frame() -> Any:
    """A DataFrame of ``carbonctx.recent()``: the most recent ``configure(window=...)`` regions
    (1000 by default). For every region of a long run, record them with
    ``configure(output=FILE)`` and read the JSON Lines file."""
    return frame(carbonctx.recent())

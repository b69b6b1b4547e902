"""What the framework callbacks' tests share."""

from __future__ import annotations

from collections import deque
from typing import Any

import carbonctx


def handles(cb: Any) -> int:
    """The region handles a callback holds (each keeps its result once read)."""
    n = 0
    for v in vars(cb).values():
        items = getattr(v, "_waiting", v)
        if isinstance(items, (list, deque)):
            n += sum(
                isinstance(x, carbonctx.Tracker)
                or (isinstance(x, tuple) and isinstance(x[0], carbonctx.Tracker))
                for x in items
            )
    return n

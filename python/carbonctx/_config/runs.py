"""Settings of runs of epochs: where run logs go, whether to draw the progress line."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from carbonctx._config.variables import environ


def log_dir(
    given: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Path | None:
    """Where run logs go: the argument, else ``CARBONCTX_LOG_DIR``, else nowhere."""
    if given is None:
        value = environ(env).get("CARBONCTX_LOG_DIR", "").strip()
        given = value or None
    return Path(given) if given is not None else None


def progress(given: bool | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether to draw the progress line: the argument, else off when ``CARBONCTX_PROGRESS``
    is 0/false/no/off, else when stderr is a terminal."""
    if given is not None:
        return bool(given)
    if environ(env).get("CARBONCTX_PROGRESS", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False

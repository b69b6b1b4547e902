"""Exceptions raised by carbonctx.

Instrumentation never raises into the measured program unless asked to (``strict=True``); these
are what it raises when asked, and what configuration mistakes raise straight away::

    CarbonctxError
    ├── ConfigurationError            (also ValueError) a setting that cannot be used
    ├── SourceUnavailableError        an energy source that was required is missing
    │   └── SourcePermissionError     (also PermissionError) it exists but cannot be read
    ├── SamplerError                  the native sampler failed or was stopped
    └── IntensityLookupError          no carbon-intensity figure could be found

Degraded measurement (a source that failed, an estimate in place of a counter) is reported
with a :class:`CarbonctxWarning`, once per cause, and in every affected result::

    CarbonctxWarning                  (a RuntimeWarning) measurement is degraded
    └── IntensityWarning              a carbon-intensity provider failed; fallbacks are used
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "CarbonctxError",
    "CarbonctxWarning",
    "ConfigurationError",
    "IntensityLookupError",
    "IntensityWarning",
    "SamplerError",
    "SourcePermissionError",
    "SourceUnavailableError",
]


class CarbonctxError(Exception):
    """Base class of every error carbonctx raises."""


class ConfigurationError(CarbonctxError, ValueError):
    """A setting (argument or ``CARBONCTX_*`` variable) that cannot be used; it is named."""


class SourceUnavailableError(CarbonctxError):
    """A required energy source is missing; the message says why and what to do."""


class SourcePermissionError(SourceUnavailableError, PermissionError):
    """An energy source exists but this process may not read it."""


class SamplerError(CarbonctxError):
    """The native sampler could not start, or failed."""


class IntensityLookupError(CarbonctxError):
    """No carbon-intensity figure could be found for a zone and time."""


class CarbonctxWarning(RuntimeWarning):
    """Measurement is degraded: a source failed or is missing, or a figure is an estimate."""


class IntensityWarning(CarbonctxWarning):
    """A carbon-intensity provider failed; figures fall back to cached or tabulated values."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: The command line is carbonctx's own user: warnings may point at its lines.
_CLI_DIR = _PACKAGE_DIR + "_cli" + os.sep


def _inside(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR) and not filename.startswith(_CLI_DIR)


def warn(message: str, category: type[Warning] = CarbonctxWarning) -> None:
    """Issue a warning attributed to the user's line: the first caller outside carbonctx
    (``stacklevel`` found by walking out of the package's frames; the command line counts as
    a user). Not public API."""
    f = sys._getframe(1)
    level = 2
    while f.f_back is not None and _inside(f.f_code.co_filename):
        f = f.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)

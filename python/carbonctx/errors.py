"""Exceptions raised by carbonctx.

Instrumentation never raises into the measured program unless asked to (``strict=True``); these
are what it raises when asked, and what configuration mistakes raise straight away::

    CarbonctxError
    ├── ConfigurationError            (also ValueError) a setting that cannot be used
    ├── SourceUnavailableError        an energy source that was required is missing
    │   └── SourcePermissionError     (also PermissionError) it exists but cannot be read
    ├── SamplerError                  the native sampler failed or was stopped
    └── IntensityLookupError          no carbon-intensity figure could be found
"""

from __future__ import annotations

__all__ = [
    "CarbonctxError",
    "ConfigurationError",
    "IntensityLookupError",
    "SamplerError",
    "SourcePermissionError",
    "SourceUnavailableError",
]


class CarbonctxError(Exception):
    """Base class of every error carbonctx raises."""


class ConfigurationError(CarbonctxError, ValueError):
    """A setting (argument or ``CARBONCTX_*`` variable) that cannot be used. The message names it."""


class SourceUnavailableError(CarbonctxError):
    """A required energy source is missing; the message says why and what to do."""


class SourcePermissionError(SourceUnavailableError, PermissionError):
    """An energy source exists but this process may not read it."""


class SamplerError(CarbonctxError):
    """The native sampler could not start, or failed."""


class IntensityLookupError(CarbonctxError):
    """No carbon-intensity figure could be found for a zone and time."""

"""carbonctx: energy and CO2 of your code, down to a single training step."""

from carbonctx._native import __version__

__all__ = ["__version__"]

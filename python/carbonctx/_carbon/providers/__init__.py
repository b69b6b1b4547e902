"""Live carbon-intensity providers, one module each, behind one protocol (``base.Provider``).

Each answers "what were (or will be) the intensities of this zone around now" as a list of
``Intensity`` periods, over an injected ``httpx.Client``; every way a request can fail becomes a
``ProviderError`` whose ``kind`` drives back-off and warnings (in ``_carbon.refresh``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from carbonctx._carbon.providers.base import FAILURE_KINDS, Fetched, Provider, ProviderError
from carbonctx._carbon.providers.dk import DkProvider
from carbonctx._carbon.providers.electricitymaps import ElectricityMapsProvider
from carbonctx._carbon.providers.gb import GbProvider
from carbonctx._carbon.providers.http import DEFAULT_LIMITS, Limits

__all__ = [
    "FAILURE_KINDS",
    "DkProvider",
    "ElectricityMapsProvider",
    "Fetched",
    "GbProvider",
    "Limits",
    "Provider",
    "ProviderError",
    "build_providers",
]


def build_providers(
    ids: tuple[str, ...],
    urls: Mapping[str, str],
    token: str | None,
    clock: Callable[[], float],
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Provider, ...]:
    """The providers named by ``ids``, in that order, at their base URLs."""
    built: list[Provider] = []
    for pid in ids:
        if pid == "electricitymaps":
            built.append(ElectricityMapsProvider(urls[pid], token=token, limits=limits))
        elif pid == "gb":
            built.append(GbProvider(urls[pid], limits=limits))
        else:
            built.append(DkProvider(urls[pid], clock=clock, limits=limits))
    return tuple(built)

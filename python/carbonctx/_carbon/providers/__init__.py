"""Live carbon-intensity providers, one module each, behind one protocol (``base.Provider``).

Each answers "what were (or will be) the intensities of this zone around now" as a list of
``Intensity`` periods, over an injected ``httpx.Client``; every way a request can fail becomes a
``ProviderError`` whose ``kind`` drives back-off and warnings (in ``_carbon.refresh``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from carbonctx._carbon.providers.base import FAILURE_KINDS, Fetched, Provider, ProviderError
from carbonctx._carbon.providers.dk import DkProvider
from carbonctx._carbon.providers.eia import EiaProvider
from carbonctx._carbon.providers.electricitymaps import ElectricityMapsProvider
from carbonctx._carbon.providers.entsoe import EntsoeProvider
from carbonctx._carbon.providers.gb import GbProvider
from carbonctx._carbon.providers.http import DEFAULT_LIMITS, Limits
from carbonctx._carbon.providers.watttime import WattTimeProvider

if TYPE_CHECKING:
    from carbonctx._config import CarbonSettings

__all__ = [
    "FAILURE_KINDS",
    "DkProvider",
    "EiaProvider",
    "ElectricityMapsProvider",
    "EntsoeProvider",
    "Fetched",
    "GbProvider",
    "Limits",
    "Provider",
    "ProviderError",
    "WattTimeProvider",
    "build_providers",
]


def build_providers(
    cs: CarbonSettings,
    clock: Callable[[], float],
    limits: Limits = DEFAULT_LIMITS,
    *,
    by_coordinates: bool = True,
) -> tuple[Provider, ...]:
    """The providers named by the settings, in their order, at their base URLs.

    With coordinates in the settings, providers that accept them are asked by coordinates;
    ``by_coordinates=False`` (a zone given explicitly) keeps Electricity Maps on the zone.
    """
    built: list[Provider] = []
    urls = cs.urls
    lat, lon = cs.coordinates or (None, None)
    for pid in cs.provider_ids:
        if pid == "electricitymaps":
            token = cs.electricitymaps_token
            built.append(
                ElectricityMapsProvider(
                    urls[pid],
                    token=token,
                    version=cs.electricitymaps_api,
                    limits=limits,
                    latitude=lat if by_coordinates else None,
                    longitude=lon if by_coordinates else None,
                )
            )
        elif pid == "gb":
            built.append(GbProvider(urls[pid], limits=limits))
        elif pid == "eia":
            built.append(EiaProvider(urls[pid], key=cs.eia_key, limits=limits))
        elif pid == "entsoe":
            built.append(EntsoeProvider(urls[pid], token=cs.entsoe_token, limits=limits))
        elif pid == "watttime":
            built.append(
                WattTimeProvider(
                    urls[pid],
                    username=cs.watttime_username,
                    password=cs.watttime_password,
                    region=cs.watttime_region,
                    latitude=lat,
                    longitude=lon,
                    limits=limits,
                )
            )
        else:
            built.append(DkProvider(urls[pid], clock=clock, limits=limits))
    return tuple(built)

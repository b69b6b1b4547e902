"""CO2 for measured regions: the runtime's intensity service, and a g/J figure for statistics.

Failures are noted (warned once, reported), never raised: measurement goes on without CO2.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carbonctx import _config
from carbonctx._config import Settings
from carbonctx._results.units import J_PER_KWH

if TYPE_CHECKING:
    from carbonctx._carbon.service import IntensityService

__all__ = ["RegionCarbon"]

#: How long the g/J used for per-name statistics is reused before it is looked up again.
G_PER_J_TTL_S = 10.0


class RegionCarbon:
    """The intensity service for one runtime, made on first use from its settings."""

    def __init__(self, settings: Settings, note: Callable[[str, str], None]) -> None:
        self._settings = settings
        self._note = note
        self._service: IntensityService | None = None
        self._error: str | None = None
        self._g_per_j: float | None = None
        self._g_per_j_at = 0.0
        # Made once, by whichever thread asks first (the resolver's first batch, or a run's
        # forecast on the program's thread): the others wait for it.
        self._making = threading.Lock()

    def check(self) -> None:
        """Check the carbon settings now, as making the service first does (the service is
        made later, with the first batch): settings it would refuse are noted here, so that
        they are warned of at the first region as before, and no service is made."""
        kwargs = self._settings.intensity_kwargs()
        del kwargs["zone"]  # checked with the settings (process._checked)
        try:
            _config.carbon_settings(env=_config.environ(), **kwargs)
        except Exception as e:
            with self._making:
                if self._service is None and self._error is None:
                    self._error = f"no carbon intensity: {e}"
                    self._note("intensity", self._error)

    def service(self) -> IntensityService | None:
        if self._service is not None or self._error is not None:
            return self._service
        with self._making:
            if self._service is None and self._error is None:
                try:
                    # Imported on first use (with the first batch to resolve): the carbon
                    # modules are not needed by a program that only marks regions.
                    from carbonctx._carbon.service import IntensityService

                    self._service = IntensityService(**self._settings.intensity_kwargs())
                except Exception as e:
                    self._error = f"no carbon intensity: {e}"
                    self._note("intensity", self._error)
        return self._service

    def grams_per_joule(self) -> float | None:
        """Current g/J (PUE applied), looked up at most every ``G_PER_J_TTL_S``."""
        now = time.monotonic()
        if self._g_per_j is None or now - self._g_per_j_at > G_PER_J_TTL_S:
            svc = self.service()
            if svc is not None:
                try:
                    cur = svc.current()
                    pue = float(getattr(svc, "pue", 1.0) or 1.0)
                    self._g_per_j = cur.g_per_kwh * pue / J_PER_KWH
                except Exception as e:
                    self._note("intensity-current", f"carbon intensity lookup failed: {e}")
            self._g_per_j_at = now
        return self._g_per_j

    def for_region(
        self, energy_j: float, start: float, end: float
    ) -> tuple[float | None, float | None, str | None, dict[str, Any] | None]:
        """(co2_g, intensity, zone, carbon details) of one region; Nones when unknown."""
        svc = self.service()
        if svc is None:
            return None, None, None, None
        try:
            c = svc.co2(energy_j, start, end)
            return c.co2_g, c.intensity_g_per_kwh, c.zone.zone, c.to_dict()
        except Exception as e:
            self._note("co2", f"CO2 could not be computed: {e}")
            return None, None, None, None

    def close(self) -> None:
        if self._service is not None:
            with contextlib.suppress(Exception):
                self._service.close()

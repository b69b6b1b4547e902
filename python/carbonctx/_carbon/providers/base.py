"""What a live provider is: the :class:`Provider` protocol and the :class:`ProviderError` every
failed request becomes (its ``kind`` drives back-off and warnings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import httpx

    from carbonctx._carbon.intensity import Intensity

__all__ = ["FAILURE_KINDS", "Provider", "ProviderError"]


class ProviderError(Exception):
    """A provider request failed. ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


#: Failure kinds and what they mean to a user.
FAILURE_KINDS = {
    "timeout": "the request timed out",
    "connection": "could not connect",
    "auth": "the token was refused",
    "rate-limited": "the provider asked us to slow down",
    "server": "the provider had a server error",
    "malformed": "the answer could not be read",
    "unknown-zone": "the provider does not know this zone",
    "http": "the provider refused the request",
    "no-data": "the provider had no values for this zone and time",
    "throttled": "held back to respect the provider's request limit",
    "error": "an unexpected error",
}


class Provider(Protocol):
    """What the intensity service needs of a live provider."""

    id: ClassVar[str]
    name: ClassVar[str]
    #: seconds a fetched value counts as fresh: the provider's update cadence
    ttl_s: ClassVar[float]
    #: how long past its period a value may stand in for "now" when nothing newer is known
    max_age_s: ClassVar[float]
    has_forecast: ClassVar[bool]

    def covers(self, zone: str) -> bool: ...

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> list[Intensity]:
        """Periods for ``zone``: ``kind="recent"`` (past day up to now) or ``"forecast"``."""
        ...
